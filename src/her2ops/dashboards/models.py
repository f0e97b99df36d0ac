"""Models page (engineers): versions with lineage and test metrics, a paired comparison of two
versions on the same frozen test partition, and promotion to champion with a reason."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from her2ops.dashboards.session import page_link, require_area
from her2ops.dashboards.ui import attempt, clear_cache, escape_markdown, load
from her2ops.pipelines import dashboard_queries as q
from her2ops.pipelines.promotion import promote_with_reason

CORE_PAGE = "core"


def render() -> None:
    user = require_area("models")
    actor = user["username"]
    st.title("Models")
    versions = load(q.model_overview, actor=actor)
    if not versions:
        st.info("No registered model version yet (her2ops train).")
        return
    st.subheader("Registered versions")
    st.dataframe(pd.DataFrame([_row(v) for v in versions]), hide_index=True)
    # options are version numbers (stable across promotions); the aliases are only their labels
    labels = {int(v["version"]): v for v in versions}
    groups = load(q.ensembles, actor=actor)
    if groups:
        st.caption("ensembles (members are the versions above)")
        st.dataframe(
            pd.DataFrame(
                [{**g, "members": ", ".join(f"v{m}" for m in g["members"])} for g in groups]
            ),
            hide_index=True,
        )

    st.subheader("Test evaluation")
    champion = next((i for i, v in enumerate(labels.values()) if "champion" in v["aliases"]), 0)
    chosen = labels[
        st.selectbox(
            "version",
            list(labels),
            index=champion,
            format_func=_name(labels),
            key=_key("eval_version", labels),
        )
    ]
    _evaluation(chosen)

    st.subheader("Compare two versions on the same test partition")
    _compare(actor, labels)

    st.subheader("Promote to champion")
    _promote(actor, labels)


def _key(name: str, labels: dict[int, dict[str, Any]]) -> str:
    """A widget key that changes when any alias moves, so that version pickers (whose labels
    show the aliases) are rebuilt after a promotion instead of keeping stale labels."""
    token = ";".join(f"{v}:{','.join(info['aliases'])}" for v, info in sorted(labels.items()))
    return f"{name}-{token}"


def _name(labels: dict[int, dict[str, Any]]) -> Any:
    def name(version: int) -> str:
        aliases = labels[version]["aliases"] if version in labels else []
        return f"v{version}" + (f" ({', '.join(aliases)})" if aliases else "")

    return name


def _row(v: dict[str, Any]) -> dict[str, Any]:
    m = v["metrics"]
    return {
        "version": v["version"],
        "aliases": ", ".join(v["aliases"]),
        "profile": v["profile"],
        "split": v["split"],
        "labels": v["label_snapshot_hash"][:12],
        "code": v["code_version"][:12],
        "test accuracy": m.get("test_accuracy"),
        "test kappa": m.get("test_quadratic_kappa"),
        "test ECE": m.get("test_ECE"),
        "created": v["created_at"][:19],
    }


def _evaluation(v: dict[str, Any]) -> None:
    ev = v["evaluation"]
    if ev is None:
        st.info(f"v{v['version']} has no test evaluation yet (her2ops evaluate {v['version']}).")
        return
    st.caption(
        f"{ev['cores']} test cores, N = {ev['n_sets']}, k = {ev['top_k']}, split {v['split']}"
    )
    left, right = st.columns(2)
    with left:
        st.dataframe(pd.DataFrame(ev["table"]), hide_index=True, height=420)
    with right:
        if ev["confusion_matrix"]:
            names = ["0", "1+", "2+", "3+"]
            st.caption("confusion matrix (rows: consensus, columns: predicted)")
            st.dataframe(pd.DataFrame(ev["confusion_matrix"], index=names, columns=names))
        for kind, path in v["plots"].items():
            st.image(path, caption=kind)


def _compare(actor: str, labels: dict[int, dict[str, Any]]) -> None:
    if len(labels) < 2:
        st.info("Two versions are needed for a comparison.")
        return
    names = list(labels)
    # default: the champion against the challenger (else the two newest)
    ia = next((i for i, v in enumerate(labels.values()) if "champion" in v["aliases"]), 1)
    ib = next((i for i, v in enumerate(labels.values()) if "challenger" in v["aliases"]), 0)
    if ia == ib:
        ia, ib = 1, 0
    cols = st.columns(2)
    a = cols[0].selectbox(
        "version A", names, index=ia, format_func=_name(labels), key=_key("cmp_a", labels)
    )
    b = cols[1].selectbox(
        "version B", names, index=ib, format_func=_name(labels), key=_key("cmp_b", labels)
    )
    if st.button("Compare", key="cmp_go"):
        st.session_state["comparison"] = (
            (a, b),
            attempt(q.compare_models, actor=actor, a=str(a), b=str(b)),
        )
    pair, result = st.session_state.get("comparison") or (None, None)
    if not result or pair != (a, b):  # never show the figures of another pair
        return
    va, vb = result["versions"]
    st.caption(
        f"split {result['split']}, {result['partition']} partition"
        + (" (frozen)" if result["frozen"] else " (NOT frozen)")
        + f", {result['cores']} cores scored by both"
    )
    mcols = st.columns(3)
    mcols[0].metric(f"v{va['version']} accuracy", f"{va['accuracy']:.3f}")
    mcols[1].metric(f"v{vb['version']} accuracy", f"{vb['accuracy']:.3f}")
    mc = result["mcnemar"]
    mcols[2].metric("McNemar p", f"{mc['p_value']:.4f}")
    st.caption(
        f"only v{va['version']} right: {mc['only_a_correct']}, only v{vb['version']} right: "
        f"{mc['only_b_correct']}, chi² (continuity-corrected) {mc['chi2']:.3f}"
    )
    differ = result["differ"]
    if not differ:
        st.info("The two versions agree on every core.")
        return
    st.dataframe(pd.DataFrame(differ), hide_index=True, height=260)
    core = st.selectbox("open a core", [d["core"] for d in differ], key="cmp_core")
    page_link(CORE_PAGE, f"Open core {escape_markdown(core)}", core=core)


def _promote(actor: str, labels: dict[int, dict[str, Any]]) -> None:
    with st.form("promote"):
        target = st.selectbox(
            "version", list(labels), format_func=_name(labels), key=_key("promote", labels)
        )
        reason = st.text_area("reason (required, audited)", key="promote_reason")
        force = st.checkbox(
            "force: the champion was evaluated on a different test partition", key="promote_force"
        )
        submitted = st.form_submit_button("Promote")
    if submitted:
        done = attempt(
            promote_with_reason,
            actor=actor,
            ref=str(target),
            reason=reason,
            force=force,
        )
        if done is not None:
            clear_cache()
            st.session_state["promoted"] = done
            st.rerun()
    done = st.session_state.get("promoted")
    if done:
        st.success(
            f"v{done['version']} is now {done['alias']}"
            + (f" (was v{done['previous']})" if done.get("previous") else "")
        )

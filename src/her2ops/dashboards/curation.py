"""Curation page (lab managers): how far curation is, where the disagreements are, split balance
and the label export. Agreement statistics have a page of their own (they read every vote)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from her2ops.dashboards.session import require_area
from her2ops.dashboards.ui import attempt, load
from her2ops.pipelines import dashboard_queries as q


def render() -> None:
    user = require_area("curation")
    actor = user["username"]
    st.title("Curation")
    overview = load(q.curation_overview, actor=actor)
    labelled = sum(overview["score_counts"].values())
    cols = st.columns(5)
    cols[0].metric("cores", f"{overview['n_cores']:,}")
    cols[1].metric("votes", f"{overview['n_votes']:,}")
    cols[2].metric("labelled", f"{labelled:,}")
    cols[3].metric("needs adjudication", f"{overview['needs_adjudication']['total']:,}")
    cols[4].metric("ingest failures", f"{overview['ingest_failures']['total']:,}")

    left, right = st.columns(2)
    with left:
        st.subheader("Cores by consensus status")
        st.bar_chart(_series(overview["label_status"], "status", "cores"), x="status", y="cores")
    with right:
        st.subheader("Labelled cores by score")
        st.bar_chart(_series(overview["score_counts"], "score", "cores"), x="score", y="cores")

    st.subheader("Progress per week")
    weeks = load(q.activity_by_week, actor=actor)
    if weeks:
        st.bar_chart(pd.DataFrame(weeks), x="week", y=["votes", "labels"], stack=False)
    else:
        st.info("No votes yet.")

    left, right = st.columns(2)
    with left:
        st.subheader("Cores needing adjudication")
        _table(overview["needs_adjudication"], "No core needs adjudication.")
    with right:
        st.subheader("Ingest failures")
        _table(overview["ingest_failures"], "No ingest failures.")

    _splits(actor, overview["splits"])
    _export(actor, overview["splits"])


def _series(counts: dict[str, int], key: str, value: str) -> pd.DataFrame:
    return pd.DataFrame({key: list(counts), value: list(counts.values())})


def _table(block: dict[str, object], empty: str) -> None:
    rows = block["cores"]
    assert isinstance(rows, list)
    if not rows:
        st.info(empty)
        return
    st.dataframe(pd.DataFrame(rows), hide_index=True, height=260)
    if block["total"] != len(rows):
        st.caption(f"first {len(rows)} of {block['total']:,}")


def _splits(actor: str, splits: list[str]) -> None:
    st.subheader("Split balance")
    if not splits:
        st.info("No split yet (her2ops split create).")
        return
    name = st.selectbox("split", splits, key="curation_split")
    balance = load(q.split_balance, actor=actor, split=name)
    st.caption(
        f"{balance['patients']:,} patients, seed {balance['seed']}"
        + (" · frozen" if balance["frozen"] else "")
        + (
            f" · {balance['unassigned_patients']} unassigned"
            if balance["unassigned_patients"]
            else ""
        )
    )
    cols = st.columns(2)
    for col, unit in zip(cols, ("by_patient", "by_core"), strict=True):
        data = balance.get(unit)
        with col:
            st.caption(unit.replace("_", " "))
            if not data:
                st.info("no labelled cores")
                continue
            rows = [
                {"partition": part, "class": cls, "count": n}
                for part, info in data["partitions"].items()
                for cls, n in info["counts"].items()
            ]
            st.bar_chart(pd.DataFrame(rows), x="partition", y="count", color="class", stack=True)


def _export(actor: str, splits: list[str]) -> None:
    st.subheader("Label export")
    split = st.selectbox("partition column from split", ["(none)", *splits], key="export_split")
    if st.button("Prepare export"):
        text = attempt(q.label_export_csv, actor=actor, split=None if split == "(none)" else split)
        if text is not None:
            st.session_state["label_export"] = text
    text = st.session_state.get("label_export")
    if text:
        st.download_button("Download labels.csv", text, file_name="labels.csv", mime="text/csv")

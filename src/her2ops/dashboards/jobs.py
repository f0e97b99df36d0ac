"""Jobs page (engineers, lab managers): submit train/score/evaluate/ensemble jobs, watch queued
and running jobs with their progress, attempts, worker and errors; cancel and retry.

The table refreshes itself every few seconds (a fragment), so progress is live while the page is
open. Every action is a jobs use case, which checks the kind's own permission.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from her2ops.dashboards.session import require_area
from her2ops.dashboards.ui import attempt, escape_markdown, load
from her2ops.pipelines import dashboard_queries as q
from her2ops.pipelines import jobs as jobs_uc

REFRESH_S = 3
ACTIVE = ["queued", "running"]


def render() -> None:
    user = require_area("jobs")
    actor = user["username"]
    st.title("Jobs")
    _submit(actor)
    st.subheader("Jobs")
    only_active = st.toggle("only queued and running", value=False, key="jobs_active")
    _table(actor, only_active)
    _act(actor)


def _submit(actor: str) -> None:
    kinds = {k["kind"]: k for k in load(q.submittable_kinds, actor=actor)}
    if not kinds:
        st.info("Your role submits no job kind.")
        return
    st.subheader("Submit")
    kind = st.selectbox("kind", list(kinds), key="job_kind")
    spec = kinds[kind]
    with st.form(f"submit-{kind}"):
        values: dict[str, str] = {}
        cols = st.columns(3)
        for i, p in enumerate(spec["params"]):
            label = p["name"] + (" *" if p["name"] in spec["required"] else "")
            values[p["name"]] = cols[i % 3].text_input(
                label, key=f"job_{kind}_{p['name']}", help=f"{p['help']} ({p['type']})"
            )
        submitted = st.form_submit_button("Submit")
    if submitted:
        params = {k: v.strip() for k, v in values.items() if v.strip()}
        view = attempt(jobs_uc.submit_job, actor=actor, kind=kind, params=params)
        if view is not None:
            what = "submitted" if view["created"] else "was already submitted"
            st.success(f"job {view['id']} ({view['kind']}) {what}: {view['status']}")


@st.fragment(run_every=REFRESH_S)
def _table(actor: str, only_active: bool) -> None:
    rows = attempt(jobs_uc.list_jobs, actor=actor, status=ACTIVE if only_active else None)
    if rows is None:
        return
    if not rows:
        st.info("No jobs yet." if not only_active else "No queued or running job.")
        return
    st.dataframe(
        pd.DataFrame([_row(j) for j in rows]),
        hide_index=True,
        column_config={
            "progress": st.column_config.ProgressColumn(
                min_value=0.0, max_value=1.0, format="percent"
            )
        },
    )


def _row(j: dict[str, Any]) -> dict[str, Any]:
    p = j["progress"]
    done, total = p["done"], p["total"]
    fraction = (done / total) if done is not None and total else None
    return {
        "id": j["id"],
        "kind": j["kind"],
        "status": j["status"] + (" (cancel requested)" if j["cancel_requested"] else ""),
        "progress": fraction,
        "step": p["message"] or "",
        "attempts": f"{j['attempts']}/{j['max_attempts']}",
        "worker": j["worker"] or "",
        "by": j["created_by"] or "",
        "created": j["created_at"].strftime("%Y-%m-%d %H:%M:%S") if j["created_at"] else "",
        "error": j["error"] or "",
    }


def _act(actor: str) -> None:
    st.subheader("Cancel or retry")
    cols = st.columns([2, 1, 1], vertical_alignment="bottom")
    job_id = cols[0].number_input("job id", min_value=1, step=1, key="job_act_id")
    cancel = cols[1].button("Cancel job", key="job_cancel")
    retry = cols[2].button("Retry job", key="job_retry")
    view = None
    if cancel:
        view = attempt(jobs_uc.cancel_job, actor=actor, job_id=int(job_id))
    elif retry:
        view = attempt(jobs_uc.retry_job, actor=actor, job_id=int(job_id))
    if view is not None:
        st.success(
            escape_markdown(
                f"job {view['id']} is {view['status']}"
                + (" (cancel requested)" if view["cancel_requested"] else "")
            )
        )

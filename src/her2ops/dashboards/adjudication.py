"""Adjudication (pathologists outside a core's panel): cores the panel disagrees on, with every
vote, and an adjudication vote. The lab policy (adjudicator outside the panel, only cores that
need it) is enforced by the vote use case, not by this page."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from her2ops.dashboards.review import ROLES, may_review
from her2ops.dashboards.session import current_user
from her2ops.errors import Her2opsError
from her2ops.pipelines import curation
from her2ops.pipelines import review as uc

SCORES = ("0", "1+", "2+", "3+", "ND")


def render() -> None:
    user = current_user()
    if not may_review(user):
        st.error(f"This page is not available to you: it needs role {' or '.join(ROLES)}.")
        st.stop()
    assert user is not None
    actor = user["username"]
    st.title("Adjudication")
    try:
        cores = uc.adjudication_list(actor=actor)
    except Her2opsError as exc:
        st.error(str(exc))
        return
    if not cores:
        st.info("No core needs your adjudication.")
        return
    code = st.selectbox("core", [c["core"] for c in cores], key="adjudicate_core")
    chosen = next(c for c in cores if c["core"] == code)
    st.dataframe(pd.DataFrame(chosen["votes"]), hide_index=True)  # text cells, never HTML
    cols = st.columns(len(SCORES))
    for col, score in zip(cols, SCORES, strict=True):
        if col.button(score, key=f"adjudicate_{score}", width="stretch"):
            try:
                curation.cast_vote(actor=actor, core=code, score=score, round="adjudication")
            except Her2opsError as exc:
                st.error(f"Not recorded: {exc}")
            else:
                st.success(f"adjudicated {code}: {score}")

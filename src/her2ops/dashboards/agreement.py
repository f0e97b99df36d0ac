"""Agreement page (lab managers): Fleiss' kappa, pairwise weighted kappa and each pathologist's
agreement with the consensus. A page of its own because it reads every initial vote."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from her2ops.dashboards.session import require_area
from her2ops.dashboards.ui import load
from her2ops.pipelines import dashboard_queries as q


def render() -> None:
    user = require_area("curation")
    actor = user["username"]
    st.title("Agreement")
    st.caption("between pathologists, over each one's latest initial vote per core")
    stats = load(q.agreement, actor=actor)
    fleiss = stats["fleiss"]["kappa"]
    st.metric(
        "Fleiss' kappa",
        "-" if fleiss is None else f"{fleiss:.3f}",
        help=f"{stats['fleiss']['n_subjects']:,} cores, {stats['fleiss']['n_raters']} raters",
    )
    left, right = st.columns(2)
    with left:
        st.caption("pairwise quadratic-weighted Cohen's kappa (ND excluded)")
        pairs = stats["pairwise_cohen"]["pairs"]
        if pairs:
            st.dataframe(pd.DataFrame(pairs), hide_index=True, height=260)
    with right:
        st.caption("each pathologist's agreement with the consensus")
        rows = [
            {"pathologist": who, **vals} for who, vals in stats["agreement_with_consensus"].items()
        ]
        if rows:
            st.dataframe(pd.DataFrame(rows), hide_index=True, height=260)

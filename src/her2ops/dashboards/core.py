"""Core page (lab managers, engineers): one core with its image, votes, labels and predictions."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from her2ops.dashboards.session import require_area
from her2ops.dashboards.ui import load
from her2ops.pipelines import dashboard_queries as q


def render() -> None:
    user = require_area("cores")
    st.title("Core")
    code = st.text_input("core code", value=st.query_params.get("core", ""), key="core_code")
    if not code:
        st.info("Enter a core code, or open one from a table on another page.")
        return
    st.query_params["core"] = code
    detail = load(q.core_detail, actor=user["username"], core=code)
    st.text(
        f"core {detail['core']} · patient {detail['patient']} · {detail['status']} · "
        f"{detail['width']} x {detail['height']} px"
    )
    if detail["failure_reason"]:
        st.text(f"ingest failure: {detail['failure_reason']}")
    left, right = st.columns([2, 3])
    with left:
        if detail["image"] is not None:
            st.image(detail["image"], caption="whole core (top pyramid level)")
        else:
            st.info("image not in the store")
    with right:
        for caption, rows in (
            ("votes", detail["votes"]),
            ("label versions", detail["labels"]),
            ("predictions", detail["predictions"]),
        ):
            st.caption(caption)
            if rows:
                st.dataframe(pd.DataFrame(rows), hide_index=True)
            else:
                st.text("none")

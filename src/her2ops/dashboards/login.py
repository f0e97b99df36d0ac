"""Login page: user name and password, checked on the server (rate-limited and audited)."""

from __future__ import annotations

import streamlit as st

from her2ops.dashboards.session import log_in
from her2ops.dashboards.ui import escape_markdown


def render() -> None:
    st.title("her2ops")
    st.caption("HER2 IHC scoring platform: sign in")
    with st.form("login"):
        username = st.text_input("user name", key="login_username")
        password = st.text_input("password", type="password", key="login_password")
        submitted = st.form_submit_button("Log in")
    if submitted:
        error = log_in(username, password)
        if error is None:
            st.rerun()
        st.error(escape_markdown(error))

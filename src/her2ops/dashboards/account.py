"""Account page (everyone): who is signed in, with which role and pages; change the password."""

from __future__ import annotations

import streamlit as st

from her2ops.dashboards.session import current_user
from her2ops.dashboards.ui import attempt
from her2ops.pipelines import auth
from her2ops.pipelines.dashboard_queries import readable_areas


def render() -> None:
    user = current_user()
    if user is None:
        st.stop()
    st.title("Account")
    info = attempt(readable_areas, actor=user["username"])
    if info is None:
        return
    st.text(f"signed in as {info['username']} (role {info['role']})")
    st.text("pages: " + (", ".join(["account", *info["areas"]])))
    with st.form("passwd", clear_on_submit=True):
        st.caption(f"change your password (at least {auth.MIN_PASSWORD} characters)")
        new = st.text_input("new password", type="password")
        again = st.text_input("repeat it", type="password")
        submitted = st.form_submit_button("Change password")
    if submitted:
        if new != again:
            st.error("The two passwords differ.")
        elif (
            attempt(
                auth.set_password, actor=user["username"], username=user["username"], password=new
            )
            is not None
        ):
            st.success("Password changed.")

"""Who is using the dashboard: the one place that knows how a user is identified.

:func:`current_user` is the only lookup of the signed-in user; every page and the navigation go
through it. Today it reads the user that :func:`log_in` stored in this browser session after a
password check (``pipelines.auth.login``); an OIDC login (``st.login`` / ``st.user``) can replace
its body later without touching a page. The user dict holds the name and role as of login; every
use case re-reads the user from the database and checks the role itself, so a role change or a
deactivation takes effect on the next action, not at the next login.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from her2ops.errors import Her2opsError
from her2ops.pipelines import auth
from her2ops.pipelines.dashboard_queries import READ_ROLES

USER_KEY = "her2ops_user"
#: This session's navigation pages by url path (set by the entry script), for page links.
PAGES_KEY = "her2ops_pages"


def current_user() -> dict[str, Any] | None:
    """The signed-in user (``{"username", "role"}``) of this browser session, or None."""
    user = st.session_state.get(USER_KEY)
    return dict(user) if user else None


def log_in(username: str, password: str) -> str | None:
    """Check the password and sign this session in; an error message for the user, or None."""
    try:
        user = auth.login(username, password)
    except Her2opsError as exc:
        return str(exc)
    st.session_state[USER_KEY] = user
    return None


def log_out() -> None:
    """Forget this session's user and everything cached in it."""
    for key in list(st.session_state.keys()):
        del st.session_state[key]


def may_read(user: dict[str, Any] | None, area: str) -> bool:
    """Whether ``user``'s role opens ``area`` (the same table the use cases check)."""
    if not user:
        return False
    return user["role"] == "admin" or user["role"] in READ_ROLES[area]


def require_area(area: str) -> dict[str, Any]:
    """The current user if they may see ``area``'s page; otherwise say so and stop the page."""
    user = current_user()
    if not may_read(user, area):
        st.error(
            f"This page is not available to you: it needs role {' or '.join(READ_ROLES[area])}."
        )
        st.stop()
    assert user is not None
    return user


def page_link(path: str, label: str, **query: str) -> None:
    """A link to another page of this user's navigation (nothing if the role lacks it)."""
    page = st.session_state.get(PAGES_KEY, {}).get(path)
    if page is not None:
        st.page_link(page, label=label, query_params=query or None)

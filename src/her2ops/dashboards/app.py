"""The dashboards' entry script (``her2ops dashboard`` runs ``streamlit run`` on this file).

Signed out, the only page is the login. Signed in, ``st.navigation`` offers the user's role only
its pages; each page checks the role again and every use case it calls checks it a third time.
The review page is for pathologists (and admins): it is offered by the review page's own role
list, since the review use cases check ``votes.cast`` rather than a read area.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from her2ops.dashboards import (
    account,
    adjudication,
    agreement,
    core,
    curation,
    jobs,
    login,
    models,
    review,
)
from her2ops.dashboards.session import PAGES_KEY, current_user, log_out, may_read
from her2ops.dashboards.ui import escape_markdown

#: the review page's "area": offered to :data:`review.ROLES` (and admins)
REVIEW = "review"
#: url path -> (title, icon, read area or None for every signed-in user, render function)
PAGES: dict[str, tuple[str, str, str | None, Callable[[], None]]] = {
    "curation": ("Curation", ":material/bar_chart:", "curation", curation.render),
    "agreement": ("Agreement", ":material/handshake:", "curation", agreement.render),
    "models": ("Models", ":material/model_training:", "models", models.render),
    "jobs": ("Jobs", ":material/work_history:", "jobs", jobs.render),
    "core": ("Core", ":material/biotech:", "cores", core.render),
    "review": ("Review", ":material/rate_review:", REVIEW, review.render),
    "adjudication": ("Adjudication", ":material/gavel:", REVIEW, adjudication.render),
    "account": ("Account", ":material/person:", None, account.render),
}


def page_paths(user: dict[str, Any]) -> list[str]:
    """The url paths of the pages ``user``'s role is offered, in navigation order."""
    return [path for path, (_, _, area, _) in PAGES.items() if _offered(user, area)]


def _offered(user: dict[str, Any], area: str | None) -> bool:
    if area is None:
        return True
    if area == REVIEW:
        return review.may_review(user)
    return may_read(user, area)


def main() -> None:
    st.set_page_config(page_title="her2ops", layout="wide")
    user = current_user()
    if user is None:
        page = st.navigation(
            [st.Page(login.render, title="Log in", url_path="login", default=True)],
            position="hidden",
        )
        page.run()
        return
    pages = []
    for path in page_paths(user):
        title, icon, _, render = PAGES[path]
        pages.append(st.Page(render, title=title, icon=icon, url_path=path))
    st.session_state[PAGES_KEY] = {p.url_path: p for p in pages}
    with st.sidebar:
        st.caption(f"{escape_markdown(user['username'])} · {user['role']}")
        st.button("Log out", on_click=log_out, key="logout")
    st.navigation(pages).run()


if __name__ == "__main__":  # streamlit run (and AppTest) execute this file as __main__
    main()

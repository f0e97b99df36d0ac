"""The Adjudication page: a pathologist outside a disputed core's panel sees every vote and casts
one adjudication vote; a panel member is not offered the core; other roles get no page."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from her2ops.dashboards.app import page_paths
from her2ops.errors import PermissionDenied
from her2ops.pipelines import curation
from her2ops.pipelines import review as uc
from her2ops.pipelines.runtime import get_runtime
from her2ops.platform.schema import Core, User, Vote
from tests.dashboard_world import (  # noqa: F401  (fixtures)
    ROLES,
    World,
    world_fixture,
    world_template_fixture,
)


def page(user: str, role: str) -> AppTest:
    at = AppTest.from_string(
        "from her2ops.dashboards.adjudication import render\nrender()", default_timeout=120
    )
    at.session_state["her2ops_user"] = {"username": user, "role": role}
    return at.run()


def test_outside_pathologist_adjudicates_one_core(world: World) -> None:
    panel_view = uc.adjudication_list(actor="p1")
    curation.add_user(actor="admin", username="p9", role="pathologist")
    outside = uc.adjudication_list(actor="p9")
    assert outside, "the world has cores that need adjudication"
    assert len(panel_view) < len(outside)  # p1 sat on some of these panels
    assert all(v["round"] != "adjudication" for c in outside for v in c["votes"])

    at = page("p9", "pathologist")
    assert at.title[0].value == "Adjudication"
    code = at.selectbox[0].value
    assert code == outside[0]["core"]
    assert len(at.dataframe[0].value) == len(outside[0]["votes"])  # every vote shown
    at.button(key="adjudicate_2+").click().run()
    assert any("adjudicated" in s.value for s in at.success), [e.value for e in at.error]
    with get_runtime().session() as s:
        rows = s.execute(
            select(Core.code, Vote.score)
            .join(Core, Core.id == Vote.core_id)
            .join(User, User.id == Vote.user_id)
            .where(User.username == "p9", Vote.round == "adjudication")
        ).all()
    assert [(r[0], r[1]) for r in rows] == [(code, "2+")]


def test_other_roles_get_no_adjudication_page(world: World) -> None:
    assert "adjudication" not in page_paths({"username": "lm", "role": ROLES["lm"]})
    assert "adjudication" in page_paths({"username": "p1", "role": "pathologist"})
    with pytest.raises(PermissionDenied):
        uc.adjudication_list(actor="lm")
    at = page("lm", ROLES["lm"])
    assert at.error and "not available to you" in at.error[0].value

"""The Review page through ``streamlit.testing.v1.AppTest``: claim, score (one vote written),
blinded items show nothing of other votes or the model, refused actions are one line, and the
page and its use cases are closed to a lab manager."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from her2ops.dashboards.app import page_paths
from her2ops.dashboards.ui import escape_markdown
from her2ops.errors import PermissionDenied
from her2ops.pipelines import review as uc
from her2ops.pipelines.runtime import get_runtime
from her2ops.platform.schema import Core, ReviewItem, User, Vote
from tests.dashboard_world import (  # noqa: F401  (fixtures)
    EVIL_COMMENT,
    EVIL_CORE,
    PASSWORDS,
    ROLES,
    World,
    world_fixture,
    world_template_fixture,
)

APP = str(Path(__file__).resolve().parents[2] / "src" / "her2ops" / "dashboards" / "app.py")
TIMEOUT = 120


def page(user: str) -> AppTest:
    at = AppTest.from_string(
        "from her2ops.dashboards.review import render\nrender()", default_timeout=TIMEOUT
    )
    at.session_state["her2ops_user"] = {"username": user, "role": ROLES[user]}
    return at.run()


def shown(at: AppTest) -> str:
    """Every piece of text the page rendered, tables included."""
    parts: list[str] = []
    for kind in ("title", "text", "caption", "markdown", "error", "success", "info", "warning"):
        parts += [str(e.value) for e in getattr(at, kind)]
    parts += [e.value.to_csv() for e in at.dataframe]
    return "\n".join(parts)


def review_votes(user: str) -> list[tuple[str, str, str | None]]:
    with get_runtime().session() as s:
        rows = s.execute(
            select(Core.code, Vote.score, Vote.comment)
            .join(Core, Core.id == Vote.core_id)
            .join(User, User.id == Vote.user_id)
            .where(User.username == user, Vote.round == "review")
        ).all()
    return [(r[0], r[1], r[2]) for r in rows]


def claimed_by(item: int) -> Any:
    with get_runtime().session() as s:
        it = s.get(ReviewItem, item)
        assert it is not None
        return it.status, it.claimed_by_id, it.lease_expires_at


def test_pathologist_claims_and_scores_one_core(world: World) -> None:
    uc.add_items(actor="lm", cores=[EVIL_CORE], reason="second look")
    at = page("p1")
    assert not at.exception, at.exception
    assert not at.text  # nothing claimed before "Next core"
    at = at.button(key="review_next").click().run()
    assert not at.exception, at.exception
    held = at.session_state["review_item"]
    assert held["core"] == EVIL_CORE
    assert any(t.value.startswith(f"core {EVIL_CORE} ·") for t in at.text)  # text, not markdown
    assert any("your claim expires at" in t.value for t in at.text)
    assert len(at.get("image")) == 2  # the whole-core view and a full-resolution zoom region
    status, _, lease1 = claimed_by(held["item"])
    assert status == "claimed"
    # any interaction renews the lease
    at = at.text_area(key="review_comment").input(EVIL_COMMENT).run()
    assert claimed_by(held["item"])[2] > lease1
    assert review_votes("p1") == []
    at = at.button(key="review_score_2+").click().run()
    assert not at.exception, at.exception
    assert review_votes("p1") == [(EVIL_CORE, "2+", EVIL_COMMENT)]
    assert claimed_by(held["item"])[0] == "done"
    assert [e.value for e in at.success] == [
        escape_markdown(
            f"Vote 2+ recorded on core {EVIL_CORE}. The review queue has no more cores for you now."
        )
    ]
    assert "review_item" not in at.session_state
    assert at.button(key="review_next")  # back to an empty page with the claim button
    # a second click on nothing writes nothing
    at = at.button(key="review_next").click().run()
    assert review_votes("p1") == [(EVIL_CORE, "2+", EVIL_COMMENT)]


def test_after_submit_the_next_item_loads(world: World) -> None:
    uc.add_items(actor="lm", cores=[EVIL_CORE, world.test_cores[0]], reason="second look")
    at = page("p1").button(key="review_next").click().run()
    first = at.session_state["review_item"]["core"]
    at = at.button(key="review_score_ND").click().run()
    assert not at.exception, at.exception
    second = at.session_state["review_item"]["core"]
    assert {first, second} == {EVIL_CORE, world.test_cores[0]}
    assert [v[:2] for v in review_votes("p1")] == [(first, "ND")]
    assert at.text_area(key="review_comment").value == ""


def test_blinded_item_shows_no_votes_and_no_model_output(world: World) -> None:
    report = uc.build_queue(actor="lm", model_ref="champion", mode="blinded")
    assert report["added"] >= 2
    at = page("p1").button(key="review_next").click().run()
    assert not at.exception, at.exception
    item = at.session_state["review_item"]
    assert item["blinded"] is True
    text = shown(at)
    assert item["core"] in text
    for other in ("p2", "p3", "consensus", "final score", "flagged"):
        assert other not in text, other
    assert not at.dataframe and not at.caption
    assert "hidden from you" in text  # and the page says so
    # the control: an admin (not blinded) on the same kind of item sees votes and the model
    at = page("admin").button(key="review_next").click().run()
    assert not at.exception, at.exception
    assert at.session_state["review_item"]["blinded"] is False
    text = shown(at)
    assert "p2" in text and "final score" in text and "hidden from you" not in text
    assert len(at.dataframe) == 2  # votes, KCS sets with their classes


def test_refused_actions_are_one_line_and_write_nothing(world: World) -> None:
    uc.add_items(actor="lm", cores=[EVIL_CORE], reason="second look")
    at = page("p1").button(key="review_next").click().run()
    item = at.session_state["review_item"]["item"]
    # the claim is lost behind the page's back, and p2 takes the item
    uc.release(actor="p1", item=item)
    assert uc.next_item(actor="p2")["item"] == item  # type: ignore[index]
    at = at.button(key="review_score_1+").click().run()
    assert not at.exception, at.exception
    [error] = [e.value for e in at.error]
    assert "\n" not in error and error.startswith("Not recorded")
    assert "p2" in error
    assert review_votes("p1") == [] and review_votes("p2") == []
    assert "review_item" not in at.session_state


def test_lease_lost_on_renewal(world: World) -> None:
    uc.add_items(actor="lm", cores=[EVIL_CORE], reason="second look")
    at = page("p1").button(key="review_next").click().run()
    uc.release(actor="p1", item=at.session_state["review_item"]["item"])
    at = at.text_area(key="review_comment").input("still looking").run()
    [error] = [e.value for e in at.error]
    assert error.startswith("Lease lost") and "\n" not in error
    assert "review_item" not in at.session_state


@pytest.mark.parametrize("user", ["lm", "eng"])
def test_other_roles_do_not_get_the_page(world: World, user: str) -> None:
    assert "review" not in page_paths({"username": user, "role": ROLES[user]})
    assert "review" in page_paths({"username": "p1", "role": "pathologist"})
    uc.add_items(actor="lm", cores=[EVIL_CORE], reason="second look")
    at = page(user)
    assert [e.value for e in at.error] == [
        "This page is not available to you: it needs role pathologist."
    ]
    assert not at.button
    with pytest.raises(PermissionDenied):
        uc.next_item(actor=user)


def test_navigation_opens_review_for_a_pathologist(world: World) -> None:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.text_input(key="login_username").input("p1")
    at.text_input(key="login_password").input(PASSWORDS["p1"])
    at = at.button[0].click().run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Review"

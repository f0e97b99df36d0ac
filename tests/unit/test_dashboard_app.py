"""The dashboards through ``streamlit.testing.v1.AppTest``: login, navigation by role, each page
for each role (what it shows, what it refuses), promotion, and text that stays text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from her2ops.dashboards.app import page_paths
from her2ops.errors import PermissionDenied
from her2ops.pipelines import dashboard_queries as q
from her2ops.pipelines.promotion import promote_with_reason
from her2ops.pipelines.runtime import get_runtime
from her2ops.platform.db import session_scope
from her2ops.platform.schema import AuditEvent, ModelVersion
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


def app() -> AppTest:
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def page(module: str, user: str | None) -> AppTest:
    """One page's render() in a session signed in as ``user`` (as the login would leave it)."""
    at = AppTest.from_string(
        f"from her2ops.dashboards.{module} import render\nrender()", default_timeout=TIMEOUT
    )
    if user is not None:
        at.session_state["her2ops_user"] = {"username": user, "role": ROLES[user]}
    return at.run()


def log_in(at: AppTest, user: str, password: str) -> AppTest:
    at.text_input(key="login_username").input(user)
    at.text_input(key="login_password").input(password)
    return at.button[0].click().run()


def texts(at: AppTest) -> list[str]:
    return [e.value for e in at.title] + [e.value for e in at.text]


def pick(at: AppTest, label: str, *, form: bool = False) -> Any:
    """The selectbox labelled ``label`` (in the promotion form, or outside any form)."""
    return next(s for s in at.selectbox if s.label == label and bool(s.form_id) == form)


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


# --- login and navigation -----------------------------------------------------------------------


def test_signed_out_sees_only_the_login(world: World) -> None:
    at = app().run()
    assert not at.exception
    assert [t.value for t in at.title] == ["her2ops"]
    assert not at.metric and not at.dataframe
    at = log_in(at, "lm", "wrong password 1")
    assert errors(at) == ["wrong user name or password"]
    assert "her2ops_user" not in at.session_state
    assert [t.value for t in at.title] == ["her2ops"]


@pytest.mark.parametrize(
    ("user", "first_page", "paths"),
    [
        ("lm", "Curation", ["curation", "agreement", "jobs", "core", "account"]),
        ("eng", "Models", ["models", "jobs", "core", "account"]),
        ("p1", "Review", ["review", "adjudication", "account"]),
        (
            "admin",
            "Curation",
            [
                "curation",
                "agreement",
                "models",
                "jobs",
                "core",
                "review",
                "adjudication",
                "account",
            ],
        ),
    ],
)
def test_login_opens_the_roles_pages(
    world: World, user: str, first_page: str, paths: list[str]
) -> None:
    at = log_in(app().run(), user, PASSWORDS[user])
    assert not at.exception
    assert at.session_state["her2ops_user"] == {"username": user, "role": ROLES[user]}
    assert at.title[0].value == first_page
    assert page_paths({"username": user, "role": ROLES[user]}) == paths
    at.sidebar.button(key="logout").click().run()
    assert "her2ops_user" not in at.session_state
    assert [t.value for t in at.title] == ["her2ops"]


def test_two_tabs_of_one_user_are_two_sessions(world: World) -> None:
    tab1 = log_in(app().run(), "eng", PASSWORDS["eng"])
    tab2 = app().run()
    assert tab1.title[0].value == "Models"
    assert [t.value for t in tab2.title] == ["her2ops"]  # the second tab must log in itself


# --- curation -----------------------------------------------------------------------------------


def test_curation_page_for_a_lab_manager(world: World) -> None:
    at = page("curation", "lm")
    assert not at.exception, at.exception
    overview = q.curation_overview(actor="lm")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["cores"] == f"{overview['n_cores']:,}"
    assert metrics["votes"] == f"{overview['n_votes']:,}"
    assert metrics["needs adjudication"] == str(overview["needs_adjudication"]["total"])
    assert metrics["ingest failures"] == "1"
    frames = [df.value for df in at.dataframe]
    failures = next(f for f in frames if "reason" in f.columns)
    # the failure reason is shown as data in a table, exactly as stored (never as HTML)
    assert failures["reason"].tolist() == ["<script>alert('x')</script> not an image"]
    at.button[0].click().run()  # Prepare export
    assert not at.exception
    assert EVIL_CORE in at.session_state["label_export"]


def test_agreement_page_for_a_lab_manager(world: World) -> None:
    at = page("agreement", "lm")
    assert not at.exception, at.exception
    stats = q.agreement(actor="lm")
    assert {m.label: m.value for m in at.metric} == {
        "Fleiss' kappa": f"{stats['fleiss']['kappa']:.3f}"
    }
    pairs, per_rater = (df.value for df in at.dataframe)
    assert len(pairs) == len(stats["pairwise_cohen"]["pairs"]) == 3
    assert per_rater["pathologist"].tolist() == ["p1", "p2", "p3"]


@pytest.mark.parametrize("module", ["curation", "agreement"])
@pytest.mark.parametrize("user", ["p1", "eng", None])
def test_curation_pages_refuse_other_roles(world: World, module: str, user: str | None) -> None:
    at = page(module, user)
    assert not at.metric and not at.dataframe
    assert errors(at) and "not available" in errors(at)[0]


def test_cached_reads_are_per_user(world: World) -> None:
    from her2ops.dashboards.ui import cached_read

    assert cached_read(q.curation_overview, actor="lm")["n_cores"] > 0
    with pytest.raises(PermissionDenied):  # the lab manager's cached result is not served
        cached_read(q.curation_overview, actor="p1")


# --- models -------------------------------------------------------------------------------------


def _aliases() -> dict[int, list[str]]:
    with session_scope() as s:
        return {mv.version: list(mv.aliases or []) for mv in s.scalars(select(ModelVersion))}


def _reasons() -> list[dict[str, Any]]:
    with session_scope() as s:
        return [
            dict(e.details or {})
            for e in s.scalars(
                select(AuditEvent).where(AuditEvent.action == "models.promote_reason")
            )
        ]


def test_models_page_lists_versions_and_compares_champion_with_challenger(world: World) -> None:
    at = page("models", "eng")
    assert not at.exception, at.exception
    versions = at.dataframe[0].value
    assert sorted(versions["version"].tolist()) == [1, 2, 3]
    assert pick(at, "version A").value == 1  # the champion
    assert pick(at, "version B").value == 2  # the challenger
    at.button(key="cmp_go").click().run()
    assert not at.exception and not errors(at)
    expected = q.compare_models(actor="eng", a="1", b="2")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["v1 accuracy"] == f"{expected['versions'][0]['accuracy']:.3f}"
    assert metrics["McNemar p"] == f"{expected['mcnemar']['p_value']:.4f}"
    differ = at.dataframe[-1].value
    assert sorted(differ["core"]) == sorted(d["core"] for d in expected["differ"])


def test_promotion_needs_a_reason_then_moves_the_alias_everywhere(world: World) -> None:
    at = page("models", "eng")
    pick(at, "version", form=True).select(2)
    at.button(key="FormSubmitter:promote-Promote").click().run()
    assert errors(at) == ["a promotion needs a reason"]
    assert "champion" in _aliases()[1]
    at.text_area(key="promote_reason").input("better on the frozen test partition")
    at.button(key="FormSubmitter:promote-Promote").click().run()
    assert not errors(at), errors(at)
    assert [s.value for s in at.success] == ["v2 is now champion (was v1)"]
    assert "champion" in _aliases()[2] and "champion" not in _aliases()[1]
    assert get_runtime().tracking.alias_version("champion") == 2
    assert _reasons() == [
        {
            "alias": "champion",
            "reason": "better on the frozen test partition",
            "forced": False,
            "previous": 1,
        }
    ]


def test_promotion_from_another_split_is_refused_unless_forced(world: World) -> None:
    at = page("models", "eng")
    pick(at, "version", form=True).select(3)
    at.text_area(key="promote_reason").input("try it")
    at.button(key="FormSubmitter:promote-Promote").click().run()
    assert errors(at) and "test partitions differ" in errors(at)[0].replace("\\", "")
    assert "champion" in _aliases()[1]
    at.checkbox(key="promote_force").check()
    at.button(key="FormSubmitter:promote-Promote").click().run()
    assert not errors(at)
    assert "champion" in _aliases()[3]
    assert _reasons()[-1]["forced"] is True


@pytest.mark.parametrize("user", ["lm", "p1"])
def test_models_page_and_promotion_refused_to_non_engineers(world: World, user: str) -> None:
    at = page("models", user)
    assert not at.dataframe and not at.button
    assert "not available" in errors(at)[0]
    with pytest.raises(PermissionDenied):
        promote_with_reason(actor=user, ref="2", reason="I'd like to")
    assert "champion" in _aliases()[1]
    assert get_runtime().tracking.alias_version("champion") == 1


# --- core and account ---------------------------------------------------------------------------


def test_core_page_shows_code_and_comments_as_text(world: World) -> None:
    at = AppTest.from_string(
        "from her2ops.dashboards.core import render\nrender()", default_timeout=TIMEOUT
    )
    at.session_state["her2ops_user"] = {"username": "eng", "role": "engineer"}
    at.query_params["core"] = EVIL_CORE
    at.run()
    assert not at.exception and not errors(at)
    assert any(EVIL_CORE in t for t in texts(at))  # st.text: never markdown or HTML
    assert len(at.get("image")) == 1  # the whole-core view from the store
    votes = at.dataframe[0].value
    assert EVIL_COMMENT in votes["comment"].tolist()
    assert not any("<img" in m.value or "<b>" in m.value for m in at.markdown)
    # a pathologist (blinded review) does not get other pathologists' votes this way
    at2 = AppTest.from_string(
        "from her2ops.dashboards.core import render\nrender()", default_timeout=TIMEOUT
    )
    at2.session_state["her2ops_user"] = {"username": "p1", "role": "pathologist"}
    at2.query_params["core"] = EVIL_CORE
    at2.run()
    assert not at2.dataframe and "not available" in errors(at2)[0]


def test_account_page_changes_the_password(world: World) -> None:
    from her2ops.pipelines import auth

    at = page("account", "p1")
    assert any("signed in as p1 (role pathologist)" in t for t in texts(at))
    at.text_input[0].input("a brand new password")
    at.text_input[1].input("a brand new password")
    at.button[0].click().run()
    assert [s.value for s in at.success] == ["Password changed."]
    assert auth.login("p1", "a brand new password")["username"] == "p1"
    with pytest.raises(PermissionDenied):
        auth.login("p1", PASSWORDS["p1"])


# --- jobs ---------------------------------------------------------------------------------------


def _jobs() -> list[tuple[int, str, str]]:
    from her2ops.platform.schema import Job

    with session_scope() as s:
        return [(j.id, j.kind, j.status) for j in s.scalars(select(Job).order_by(Job.id))]


@pytest.mark.parametrize(
    ("user", "kinds"),
    [
        (
            "eng",
            ["train", "score", "evaluate", "ensemble", "retrain", "study", "flags", "selftest"],
        ),
        ("lm", ["score", "evaluate", "study", "flags", "selftest"]),
    ],
)
def test_jobs_page_offers_the_roles_kinds(
    world: World, monkeypatch: pytest.MonkeyPatch, user: str, kinds: list[str]
) -> None:
    from her2ops.config import get_settings

    monkeypatch.setenv("HER2OPS_JOBS_SELFTEST", "true")
    get_settings.cache_clear()
    at = page("jobs", user)
    assert not at.exception, at.exception
    assert pick(at, "kind").options == kinds
    assert [i.value for i in at.info] == ["No jobs yet."]


def test_jobs_page_submits_lists_and_cancels(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from her2ops.config import get_settings

    monkeypatch.setenv("HER2OPS_JOBS_SELFTEST", "true")
    get_settings.cache_clear()
    at = page("jobs", "eng")
    pick(at, "kind").select("evaluate").run()
    at.button[0].click().run()  # no split: refused, nothing written
    assert errors(at) and "split" in errors(at)[0]
    assert _jobs() == []
    pick(at, "kind").select("selftest").run()
    at.text_input(key="job_selftest_mode").input("sleep")
    at.button[0].click().run()
    assert not errors(at), errors(at)
    ((job_id, kind, status),) = _jobs()
    assert (kind, status) == ("selftest", "queued")
    assert [s.value for s in at.success] == [f"job {job_id} (selftest) submitted: queued"]
    at.run()  # the table shows it
    table = at.dataframe[0].value
    assert table["id"].tolist() == [job_id] and table["status"].tolist() == ["queued"]
    at.number_input(key="job_act_id").set_value(job_id)
    at.button(key="job_retry").click().run()
    assert errors(at)  # a queued job is not retried
    at.button(key="job_cancel").click().run()
    assert not errors(at), errors(at)
    assert _jobs() == [(job_id, "selftest", "cancelled")]


@pytest.mark.parametrize("user", ["p1", None])
def test_jobs_page_refused_to_pathologists(world: World, user: str | None) -> None:
    at = page("jobs", user)
    assert not at.dataframe and not at.selectbox
    assert "not available" in errors(at)[0]

"""The dashboards in a real browser: ``her2ops dashboard`` started as a process on a free port,
Debian's chromium driven by Playwright. A pathologist, a lab manager and an engineer log in; the
engineer compares two versions, opens a core where they differ and promotes the challenger.
Screenshots of every page go to ``test-artefacts/dashboards/`` (look at them).

Needs ``/usr/bin/chromium`` (``apt-get install -y chromium``; ``playwright install`` cannot
download browsers here); without it the test skips, and fails under ``CI=true``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from her2ops.config import get_settings
from her2ops.platform.db import reset_engines, session_scope
from her2ops.platform.schema import AuditEvent, Core, Job, ModelVersion, User, Vote
from tests.dashboard_world import EVIL_COMMENT, EVIL_CORE, PASSWORDS, build_world
from tests.factories import free_port

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artefacts" / "dashboards"
TIMEOUT_MS = 60_000
# Streamlit scrolls inside its main container, so a tall window is what shows a whole page.
VIEWPORT = {"width": 1400, "height": 2600}

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """A seeded data dir and ``her2ops dashboard`` serving it; yields the base URL."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {CHROMIUM} is missing (apt-get install -y chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    build_world()
    from her2ops.pipelines.review import add_items

    with session_scope() as s:  # one core in the review queue for the pathologist to score
        code = s.scalar(select(Core.code).where(Core.status == "ingested").order_by(Core.code))
    assert code is not None
    add_items(actor="lm", cores=[code], reason="browser test")
    reset_engines()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    log = (tmp_path / "dashboard.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "her2ops", "dashboard", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as r:
                    if r.read().decode().strip() == "ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    "dashboard did not come up:\n" + (tmp_path / "dashboard.log").read_text()
                )
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def wait_for_app_run(page: object) -> None:
    """Wait until the app is connected, its script has finished running and nothing on the page
    is stale or still loading (lazy elements show a skeleton), twice in a row (a login reruns
    the script once more after the first run ends)."""
    done = (
        "() => { const app = document.querySelector(\"[data-testid='stApp']\");"
        " return !!app && app.getAttribute('data-test-connection-state') === 'CONNECTED'"
        " && app.getAttribute('data-test-script-state') === 'notRunning'"
        " && document.querySelectorAll(\"[data-stale='true'], [data-testid='stSkeleton']\")"
        ".length === 0; }"
    )
    for _ in range(2):
        time.sleep(0.4)  # let a rerun that was just triggered start
        page.wait_for_function(done, timeout=TIMEOUT_MS)  # type: ignore[attr-defined]


def shot(page: object, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def log_in(page: object, base: str, user: str, password: str) -> None:
    page.goto(base)  # type: ignore[attr-defined]
    wait_for_app_run(page)
    log_in_here(page, user, password)


def log_in_here(page: object, user: str, password: str) -> None:
    page.get_by_role("textbox", name="user name").fill(user)  # type: ignore[attr-defined]
    page.get_by_role("textbox", name="password", exact=True).fill(password)  # type: ignore[attr-defined]
    page.get_by_role("button", name="Log in").click()  # type: ignore[attr-defined]
    wait_for_app_run(page)


def test_dashboards_in_a_browser(server: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            ctx = browser.new_context(viewport=VIEWPORT)
            ctx.set_default_timeout(TIMEOUT_MS)

            # wrong password: one message, still on the login page
            page = ctx.new_page()
            log_in(page, server, "p1", "not the password")
            expect(page.get_by_text("wrong user name or password")).to_be_visible()
            shot(page, "01-login-refused")

            # pathologist: Review and Account pages; an engineer's page by URL shows nothing
            log_in(page, server, "p1", PASSWORDS["p1"])
            expect(page.get_by_text("p1 · pathologist")).to_be_visible()
            shot(page, "02-pathologist-review")
            # a URL opens a new session: the login, and no page of the engineer's
            page.goto(f"{server}/models")
            wait_for_app_run(page)
            expect(page.get_by_role("button", name="Log in")).to_be_visible()
            expect(page.get_by_text("Registered versions")).to_have_count(0)
            expect(page.get_by_role("dialog", name="Page not found")).to_be_visible()
            shot(page, "03-pathologist-opens-models-by-url")
            page.get_by_role("dialog").get_by_role("button", name="Close").click()
            log_in_here(page, "p1", PASSWORDS["p1"])
            expect(page.get_by_text("p1 · pathologist")).to_be_visible()
            expect(page.get_by_text("Registered versions")).to_have_count(0)

            # pathologist: the Review page claims the queued core; one click is one vote
            page.get_by_role("button", name="Next core").click()
            wait_for_app_run(page)
            expect(page.get_by_role("button", name=re.compile(r"^2\+ Shortcut"))).to_be_visible()
            shot(page, "02b-pathologist-review-claimed")
            page.get_by_role("button", name=re.compile(r"^2\+ Shortcut")).click()
            wait_for_app_run(page)
            shot(page, "02c-pathologist-review-scored")
            ctx.close()

            # lab manager: curation
            ctx = browser.new_context(viewport=VIEWPORT)
            ctx.set_default_timeout(TIMEOUT_MS)
            page = ctx.new_page()
            log_in(page, server, "lm", PASSWORDS["lm"])
            expect(page.get_by_role("heading", name="Curation")).to_be_visible()
            expect(page.get_by_text("Progress per week")).to_be_visible()
            shot(page, "04-curation")
            page.get_by_test_id("stSidebarNav").get_by_role("link", name="Agreement").click()
            wait_for_app_run(page)
            expect(page.get_by_text("Fleiss' kappa")).to_be_visible()
            shot(page, "05-agreement")
            ctx.close()

            # engineer: models, compare, open a core, promote
            ctx = browser.new_context(viewport=VIEWPORT)
            ctx.set_default_timeout(TIMEOUT_MS)
            page = ctx.new_page()
            log_in(page, server, "eng", PASSWORDS["eng"])
            expect(page.get_by_role("heading", name="Models")).to_be_visible()
            page.get_by_role("button", name="Compare").click()
            wait_for_app_run(page)
            expect(page.get_by_text("McNemar p")).to_be_visible()
            shot(page, "06-models-compare")

            page.get_by_role("link", name="Open core").click()
            wait_for_app_run(page)
            expect(page.get_by_role("heading", name="Core")).to_be_visible()
            shot(page, "07-core")

            box = page.get_by_role("textbox", name="core code")
            box.fill(EVIL_CORE)
            box.press("Enter")
            wait_for_app_run(page)
            expect(page.get_by_text("core <b>C-evil</b>**x** · patient P000")).to_be_visible()
            assert page.locator("img[src='x']").count() == 0  # the comment's <img> stays text
            assert EVIL_COMMENT.startswith("**bold**")
            shot(page, "08-core-with-html-in-code-and-comment")

            page.get_by_test_id("stSidebarNav").get_by_role("link", name="Jobs").click()
            wait_for_app_run(page)
            expect(page.get_by_role("heading", name="Submit")).to_be_visible()
            form = page.get_by_test_id("stForm")
            form.get_by_role("textbox", name="split *").fill("main")
            form.get_by_role("textbox", name="profile").fill("test")
            form.get_by_role("button", name="Submit").click()
            wait_for_app_run(page)
            expect(page.get_by_text("(train) submitted: queued")).to_be_visible()
            page.get_by_text("only queued and running").click()
            wait_for_app_run(page)
            shot(page, "09-jobs")

            page.get_by_test_id("stSidebarNav").get_by_role("link", name="Models").click()
            wait_for_app_run(page)
            form = page.get_by_test_id("stForm")
            form.get_by_test_id("stSelectbox").click()
            page.keyboard.type("v2 (challenger)")
            page.keyboard.press("Enter")
            expect(form.get_by_role("combobox", name="version")).to_have_value("v2 (challenger)")
            form.get_by_label("reason (required, audited)").fill("more accurate on frozen test")
            form.get_by_role("button", name="Promote").click()
            wait_for_app_run(page)
            expect(page.get_by_text("v2 is now champion (was v1)")).to_be_visible()
            shot(page, "10-models-promoted")
            ctx.close()
        finally:
            browser.close()

    get_settings.cache_clear()
    with session_scope() as s:
        aliases = {mv.version: mv.aliases for mv in s.scalars(select(ModelVersion))}
        jobs = list(s.scalars(select(Job)))
        review_votes = [
            (v.score, v.round)
            for v in s.scalars(
                select(Vote)
                .join(User, User.id == Vote.user_id)
                .where(User.username == "p1", Vote.round == "review")
            )
        ]
        reasons = [
            e.details
            for e in s.scalars(
                select(AuditEvent).where(AuditEvent.action == "models.promote_reason")
            )
        ]
        logins = [
            (e.action, e.entity_key)
            for e in s.scalars(
                select(AuditEvent)
                .where(AuditEvent.action.in_(("auth.login", "auth.login_failed")))
                .order_by(AuditEvent.id)
            )
        ]
    assert review_votes == [("2+", "review")]  # the browser click wrote exactly one vote
    assert "champion" in aliases[2] and "champion" not in aliases[1]
    assert [(j.kind, j.status, j.params["split"]) for j in jobs] == [("train", "queued", "main")]
    assert reasons and reasons[0]["reason"] == "more accurate on frozen test"
    assert logins == [
        ("auth.login_failed", "p1"),
        ("auth.login", "p1"),
        ("auth.login", "p1"),  # again, in the new session the URL opened
        ("auth.login", "lm"),
        ("auth.login", "eng"),
    ]

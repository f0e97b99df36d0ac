"""'her2ops review' end to end through Typer's CliRunner (both dialects)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from her2ops.cli import app
from her2ops.config import get_settings
from tests.factories import store
from tests.integration.review_world import build_world

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The review flow, not credentials (those: test_cli_curation, test_hardening)."""
    monkeypatch.setenv("HER2OPS_REQUIRE_CREDENTIALS", "false")
    get_settings.cache_clear()


def run(*args: str, ok: bool = True) -> str:
    result = runner.invoke(app, list(args))
    if ok:
        assert result.exit_code == 0, result.output + str(result.exception)
    else:
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return result.output


def test_review_flow_through_the_cli(db_url: str, tmp_path: Path) -> None:
    w = build_world()
    out = json.loads(
        run("--as", "eng", "review", "build", "--model", "champion", "--label-method", "rule",
            "--json")
    )  # fmt: skip
    assert out["added"] >= 3 and out["top"][0]["core"] == "K2-0"
    assert "K2-0" in run("--as", "eng", "review", "build", "--model", "champion")  # listed top
    view = json.loads(run("--as", "p1", "review", "next", "--json"))
    assert view["core"] == "K2-0" and view["blinded"] and "model" not in view
    item, token = str(view["item"]), str(view["claim"]["token"])
    assert "lease until" in run("--as", "p1", "review", "renew", item, "--token", token)
    run("--as", "p2", "review", "submit", item, "2+", ok=False)  # not p2's claim
    run("--as", "p1", "review", "submit", item, "5+", ok=False)  # bad score
    run("--as", "lm", "review", "submit", item, "2+", ok=False)  # a lab manager
    run("--as", "p1", "review", "submit", "9999", "2+", ok=False)  # unknown item
    text = run("--as", "p1", "review", "submit", item, "3+", "--token", token, "--comment", "c")
    assert "voted 3+ on K2-0" in text
    listed = json.loads(run("--as", "lm", "review", "list", "--status", "done", "--json"))
    assert [it["core"] for it in listed["items"]] == ["K2-0"] and listed["counts"]["done"] == 1
    run("--as", "lm", "review", "list", "--status", "nope", ok=False)
    run("--as", "lm", "review", "add", "K3-1", "--reason", "look", ok=False)  # excluded core
    run("--as", "lm", "review", "add", "K2-0", "--reason", "again", "--mode", "adjudication")
    nxt = json.loads(run("--as", "p2", "review", "next", "--json"))
    assert nxt["core"] == "K2-0" and not nxt["blinded"] and nxt["votes"]
    run("--as", "p2", "review", "skip", str(nxt["item"]))
    assert json.loads(run("--as", "p2", "review", "next", "--json")) is not None  # another item
    run("--as", "p2", "review", "release", str(nxt["item"]), ok=False)  # no longer p2's

    # the KCS sets drawn from the stored core, for an engineer
    rgb = (np.random.default_rng(0).random((160, 160, 3)) * 255).astype(np.uint8)
    store().put_array(rgb, sha256=f"{list(w.core_ids).index('K2-0'):064d}")
    png = tmp_path / "kcs.png"
    shown = json.loads(run("--as", "eng", "review", "show", item, "--png", str(png), "--json"))
    assert shown["png"] == str(png) and len(shown["model"]["kcs_sets"]) == 3
    with Image.open(png) as im:
        assert im.width > 300 and im.height > 3 * 100
    run("--as", "p1", "review", "show", item, "--png", str(tmp_path / "no.png"), ok=False)
    assert not (tmp_path / "no.png").exists()

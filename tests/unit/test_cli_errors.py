"""The CLI maps user errors (Her2opsError) to one line and exit 1; anything else is a bug."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from her2ops.cli import app
from her2ops.errors import InvalidRequest
from her2ops.pipelines import curation


def test_unexpected_value_error_is_reported_as_a_bug_not_a_user_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def deep_bug(**_kw: object) -> dict[str, object]:
        raise ValueError("operands could not be broadcast together with shapes (3,) (4,)")

    monkeypatch.setattr(curation, "agreement_stats", deep_bug)
    result = CliRunner().invoke(app, ["stats"])
    assert result.exit_code == 3
    assert "internal error (a bug in her2ops, not in your input): ValueError" in result.output
    assert "error: operands" not in result.output
    logs = list((tmp_path / "data" / "logs").glob("crash-*.log"))
    assert len(logs) == 1 and "Traceback" in logs[0].read_text()
    assert "Traceback" not in result.output


def test_user_error_is_one_line_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(**_kw: object) -> dict[str, object]:
        raise InvalidRequest("split name must not be empty")

    monkeypatch.setattr(curation, "agreement_stats", refuse)
    result = CliRunner().invoke(app, ["stats"])
    assert result.exit_code == 1
    assert result.output == "error: split name must not be empty\n"

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


def test_protocol_arguments_are_checked_not_defaulted() -> None:
    from her2ops.pipelines.score import check_protocol

    for n, k, conf, message in [
        (0, 0, "margin", "--sets must be between 1 and"),
        (20, 0, "margin", "--top-k must be between 1 and --sets (20)"),
        (5, 6, "margin", "--top-k must be between 1 and --sets (5)"),
        (10**9, 5, "margin", "--sets must be between 1 and"),
        (20, 5, "vibes", "unknown confidence 'vibes'"),
    ]:
        with pytest.raises(InvalidRequest) as err:
            check_protocol(n, k, conf)
        assert message in str(err.value)
    check_protocol(20, 5, "margin")

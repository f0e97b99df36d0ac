"""``her2ops dashboard``: the launch command line, and the checks made before Streamlit starts."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from her2ops.cli import app
from her2ops.cli.dashboard import APP_SCRIPT, streamlit_argv


def test_streamlit_command_line_keeps_xsrf_on() -> None:
    argv = streamlit_argv(8600, "0.0.0.0")
    assert argv[1:5] == ["-m", "streamlit", "run", str(APP_SCRIPT)]
    assert APP_SCRIPT.is_file()
    opts = dict(zip(argv[5::2], argv[6::2], strict=True))
    assert opts["--server.port"] == "8600"
    assert opts["--server.address"] == "0.0.0.0"
    assert opts["--server.enableXsrfProtection"] == "true"
    assert opts["--server.headless"] == "true"
    assert opts["--browser.gatherUsageStats"] == "false"


def test_bad_port_is_one_line() -> None:
    res = CliRunner().invoke(app, ["dashboard", "--port", "70000"])
    assert res.exit_code == 1
    assert "--port must be in 1..65535" in res.output


def test_unreachable_database_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HER2OPS_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    from her2ops.config import get_settings

    get_settings.cache_clear()
    res = CliRunner().invoke(app, ["dashboard", "--port", "8599"])
    assert res.exit_code == 1
    assert res.output.startswith("error: ") and "HER2OPS_DATABASE_URL" in res.output
    assert "Traceback" not in res.output

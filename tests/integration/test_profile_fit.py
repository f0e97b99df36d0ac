"""Cores that do not fit a profile: ingest says which profiles each core fits, ``sample``
refuses a too-small core with the hint, ``--pad-small`` samples it and warns."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from her2ops.cli import app
from her2ops.config import get_settings
from her2ops.pipelines import curation
from her2ops.pipelines.imaging import sample_core


def test_ingest_reports_fits_and_pad_small_is_reachable(
    db_url: str, synthetic: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    curation.add_user(actor=None, username="admin", role="admin", password="admin-pass-1")
    curation.add_user(actor="admin", username="lab", role="lab_manager", password="lab-pass-12")
    report = curation.ingest(actor="lab", manifest=synthetic / "manifest.csv")
    fits = report.profile_fits
    assert len(fits) == len(report.added) > 0
    # 128 px synthetic cores: the test profile (32 px patches) fits; paper (512 px) does not
    assert all("test" in names and "paper" not in names for names in fits.values())
    core = next(iter(fits))

    monkeypatch.setenv("HER2OPS_REQUIRE_CREDENTIALS", "false")
    get_settings.cache_clear()
    runner = CliRunner()
    refused = runner.invoke(
        app, ["--as", "lab", "sample", core, "--profile", "paper", "--sets", "1"]
    )
    assert refused.exit_code == 1
    assert "--pad-small" in refused.output and "Traceback" not in refused.output

    res = sample_core(actor="lab", core=core, profile="paper", sets=2, pad_small=True)
    assert res["sets"] == 2
    assert res["fit_warning"] and "does not fit profile paper" in res["fit_warning"]
    ok = sample_core(actor="lab", core=core, profile="test", sets=2)
    assert ok["fit_warning"] is None

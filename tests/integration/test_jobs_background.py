"""``train/score/evaluate --background`` and ``train --ensemble K`` submit jobs (no worker here:
the jobs stay queued; test_workers.py runs them).
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from her2ops.cli import app
from her2ops.config import get_settings
from her2ops.pipelines import jobs as use
from her2ops.platform.db import session_scope
from her2ops.platform.splits import create_split
from tests.factories import insert_labelled_cores, seed_users


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["--as", "eng", *args])
    return result.exit_code, result.stdout, result.stderr


def test_background_flags_submit_jobs(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HER2OPS_REQUIRE_CREDENTIALS", "false")  # login is tested elsewhere
    get_settings.cache_clear()
    seed_users()
    insert_labelled_cores(8)
    with session_scope() as s:
        create_split(s, actor="lm", name="main", seed=1, ratios={"train": 0.5, "val": 0.25,
                                                                   "test": 0.25})  # fmt: skip
    code, out, err = run("train", "--split", "main", "--profile", "test", "--epochs", "1",
                         "--background", "--json")  # fmt: skip
    assert code == 0, err
    view = json.loads(out)
    assert view["kind"] == "train" and view["status"] == "queued" and view["created"]
    assert view["params"] == {"split": "main", "profile": "test", "epochs": 1, "seed": 0}
    code, out, _ = run("train", "--split", "main", "--profile", "test", "--epochs", "1",
                       "--background")  # fmt: skip
    assert code == 0 and f"job {view['id']} (train) already submitted" in out
    # the same work asked for through `jobs submit`, defaults left out, is the same job
    code, out, err = run("jobs", "submit", "train", "-p", "split=main", "-p", "profile=test",
                         "-p", "epochs=1", "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["id"] == view["id"] and not json.loads(out)["created"]
    code, out, err = run("train", "--split", "main", "--profile", "test", "--epochs", "1",
                         "--resample", "none", "--background")  # fmt: skip
    assert code == 0 and f"job {view['id']} (train) already submitted" in out, err

    code, out, err = run("train", "--split", "main", "--profile", "test", "--ensemble", "3")
    assert code == 0, err
    ens = use.list_jobs(actor="eng", kind="ensemble")
    assert len(ens) == 1 and ens[0]["params"]["members"] == 3
    assert ens[0]["params"]["resample"] == "bootstrap"  # members resample the train patients
    code, _, err = run("train", "--split", "main", "--ensemble", "2", "--resample", "jackknife")
    assert code == 1 and "unknown resample 'jackknife'; use one of none, bootstrap, kfold" in err

    code, _, err = run("score", "--model", "champion", "--core", "Q0000-0", "--background")
    assert code == 1 and "unknown model reference 'champion'" in err
    code, _, err = run("evaluate", "7", "--split", "main", "--background")
    assert code == 1 and "unknown model reference '7'" in err
    code, _, err = run("train", "--split", "nosuch", "--background")
    assert code == 1 and err.strip() == "error: unknown split 'nosuch'"
    assert len(use.list_jobs(actor="eng")) == 2

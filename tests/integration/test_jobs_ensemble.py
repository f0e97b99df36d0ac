"""Ensemble jobs: a parent fans out one training job per member and waits for them by
deferring itself (it never holds a worker while its members train), then names its members.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from her2ops.config import get_settings
from her2ops.pipelines import jobs as use
from her2ops.platform import jobs
from her2ops.platform.db import session_scope
from tests.factories import curate_synthetic


@pytest.fixture(autouse=True)
def _fast_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HER2OPS_DISPATCHER_INTERVAL_SECONDS", "0.25")  # re-look after 1 s
    get_settings.cache_clear()


def _ensemble(**extra: Any) -> dict[str, Any]:
    params = {"split": "main", "members": "2", "profile": "test", "epochs": "1", **extra}
    return use.submit_job(actor="eng", kind="ensemble", params=params)


def _when_due(job_id: int) -> None:
    with session_scope() as s:
        run_after = jobs.as_utc(jobs.get_job(s, job_id).run_after)
    assert run_after is not None
    delay = (run_after - jobs.utcnow()).total_seconds()
    time.sleep(max(0.0, delay) + 0.05)


def _members(parent: int) -> list[dict[str, Any]]:
    with session_scope() as s:
        return [jobs.job_to_dict(j) for j in jobs.children(s, parent)]


def test_member_failure_fails_the_ensemble_and_cancel_cascades(
    db_url: str, synthetic: Path
) -> None:
    curate_synthetic(synthetic)
    with pytest.raises(Exception, match="members=1: an ensemble has 2 to 50 members"):
        _ensemble(members="1")
    parent = _ensemble()["id"]
    assert use.run_job(parent, worker="cpu-1") == "deferred"
    view = use.show_job(actor="eng", job_id=parent)
    assert (view["status"], view["attempts"]) == ("queued", 0)  # waiting uses no attempt
    assert view["progress"]["message"] == "0/2 members trained"
    members = _members(parent)
    assert [m["params"]["seed"] for m in members] == [0, 1]
    # each member is one of the ensemble's bootstrap resamples of the training patients
    assert [(m["params"]["resample"], m["params"]["member"], m["params"]["members"],
             m["params"]["resample_seed"]) for m in members] == [
        ("bootstrap", 0, 2, 0), ("bootstrap", 1, 2, 0)]  # fmt: skip
    assert [m["key"] for m in members] == [
        f"ensemble:{parent}:member:{i}:resample:bootstrap" for i in (0, 1)
    ]
    assert _ensemble(resample="bootstrap")["id"] == parent  # the default, spelled out
    assert {m["kind"] for m in members} == {"train"} and {m["queue"] for m in members} == {"gpu"}
    assert use.run_job(parent, worker="cpu-1") == "skipped"  # not due yet
    with session_scope() as s:
        assert parent not in [d[0] for d in jobs.take_for_dispatch(s, redispatch_after=0)]

    with pytest.raises(Exception, match=f"ensemble {parent} is queued"):
        use.submit_job(actor="eng", kind="score", params={"ensemble": parent, "cores": "C00000"})
    use.cancel_job(actor="eng", job_id=members[0]["id"])
    _when_due(parent)
    assert use.run_job(parent, worker="cpu-1") == "failed"
    error = use.show_job(actor="eng", job_id=parent)["error"]
    assert f"member job {members[0]['id']} cancelled" in error

    with pytest.raises(Exception, match="unknown resample 'jackknife'; use one of none,"):
        _ensemble(resample="jackknife")
    # a train job's resample: checked, and written out in full (the same work, the same key)
    train = {"split": "main", "profile": "test", "epochs": "1"}
    with pytest.raises(Exception, match="member=5 is out of range for 2 member"):
        use.submit_job(actor="eng", kind="train", params={**train, "member": "5", "members": "2"})
    one = use.submit_job(actor="eng", kind="train", params={**train, "resample": "bootstrap"})
    same = {**train, "resample": "bootstrap", "member": "0", "members": "1", "resample_seed": "0"}
    assert use.submit_job(actor="eng", kind="train", params=same)["id"] == one["id"]
    assert one["params"]["members"] == 1 and one["params"]["resample_seed"] == 0
    use.cancel_job(actor="eng", job_id=one["id"])
    with pytest.raises(Exception, match="kfold resample into 40 folds needs at least 40"):
        _ensemble(members="40", resample="kfold")
    other = _ensemble(seed="10", resample="kfold")["id"]
    assert use.run_job(other, worker="cpu-1") == "deferred"
    assert [(m["params"]["resample"], m["params"]["member"], m["params"]["resample_seed"])
            for m in _members(other)] == [("kfold", 0, 10), ("kfold", 1, 10)]  # fmt: skip
    assert use.cancel_job(actor="eng", job_id=other)["status"] == "cancelled"
    assert {m["status"] for m in _members(other)} == {"cancelled"}


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_ensemble_trains_its_members_and_names_their_versions(
    db_url: str, synthetic: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    torch.set_num_threads(1)
    curate_synthetic(synthetic)
    parent = _ensemble()["id"]
    assert use.run_job(parent, worker="cpu-1") == "deferred"
    first, second = (m["id"] for m in _members(parent))
    assert use.run_job(first, worker="gpu-1") == "succeeded"
    _when_due(parent)
    assert use.run_job(parent, worker="cpu-1") == "deferred"
    assert use.show_job(actor="eng", job_id=parent)["progress"]["message"] == "1/2 members trained"
    assert use.run_job(second, worker="gpu-2") == "succeeded"
    _when_due(parent)
    assert use.run_job(parent, worker="cpu-1") == "succeeded"
    view = use.show_job(actor="eng", job_id=parent)
    assert view["attempts"] == 1
    members = view["result"]["members"]
    assert sorted(m["version"] for m in members) == [1, 2]
    assert [m["seed"] for m in members] == [0, 1] and len({m["run_id"] for m in members}) == 2

    # the members trained on different bootstrap resamples of the training patients: what each
    # recorded (job result, MLflow params) is the draw the resampler makes for it
    from her2ops.pipelines.resample import check_resample, resample_training
    from her2ops.pipelines.runtime import get_runtime
    from her2ops.platform.labels import label_snapshot

    assert view["result"]["resample"] == "bootstrap"
    recorded = [m["resample"] for m in members]
    assert [(r["mode"], r["member"], r["members"]) for r in recorded] == [
        ("bootstrap", 0, 2),
        ("bootstrap", 1, 2),
    ]
    assert recorded[0]["patients_hash"] != recorded[1]["patients_hash"]
    with session_scope() as s:
        snapshot, _ = label_snapshot(s, "main")
    train = [i for i in snapshot if i.partition == "train"]
    n_patients = len({i.patient for i in train})
    for m, r in zip(members, recorded, strict=True):
        draw = resample_training(train, check_resample("bootstrap", r["member"], 2, seed=0))
        assert r["patients_hash"] == draw.patients_hash and r["patients"] == n_patients
        assert r["distinct_patients"] == len(set(draw.patients)) < n_patients
        params = get_runtime().tracking.run_params(m["run_id"])
        assert params["resample"] == "bootstrap" and params["resample_member"] == str(r["member"])
        assert params["train_patients_hash"] == r["patients_hash"]
        assert params["n_train"] == str(r["cores"]) == str(len(draw.cores))

    # scoring with the ensemble: each member's predictions, then the ensemble's, per rule
    import numpy as np
    from sqlalchemy import func, select

    from her2ops.models.ensemble import combine_members
    from her2ops.pipelines.ensemble import score_ensemble
    from her2ops.platform.schema import EnsemblePrediction, Prediction

    with pytest.raises(Exception, match="unknown combine rule 'vote'"):
        use.submit_job(
            actor="eng",
            kind="score",
            params={"ensemble": parent, "rule": "vote", "split": "main", "partition": "test"},
        )
    job = use.submit_job(
        actor="eng",
        kind="score",
        params={"ensemble": str(parent), "split": "main", "partition": "test", "rule": "majority"},
    )
    assert use.run_job(job["id"], worker="gpu-1") == "succeeded"
    result = use.show_job(actor="eng", job_id=job["id"])["result"]
    n_cores = result["scored"]
    assert n_cores > 0 and result["members"] == [1, 2] and result["rule"] == "majority"
    rep = score_ensemble(actor="eng", ensemble=parent, split="main", partition="test")
    assert rep.rule == "pooled_kcs" and rep.scored == n_cores  # another rule, same members
    again = score_ensemble(actor="eng", ensemble=parent, split="main", partition="test")
    assert again.scored == 0 and again.already_scored == n_cores
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Prediction)) == 2 * n_cores
        rows = s.scalars(select(EnsemblePrediction)).all()
        assert len(rows) == 2 * n_cores
        for row in rows:
            members = [
                np.asarray(
                    s.scalar(
                        select(Prediction.set_probs).where(
                            Prediction.core_id == row.core_id, Prediction.model_version_id == m
                        )
                    )
                )
                for m in (1, 2)
            ]
            ref = combine_members(members, top_k=row.top_k, rule=row.rule)
            assert row.final_score == ref.final and row.member_finals == list(ref.member_finals)

    # evaluating the ensemble beside its members, on the same labelled test cores
    from her2ops.platform.labels import label_snapshot
    from her2ops.platform.schema import Core

    with pytest.raises(Exception, match="N/k study runs on a single model"):
        use.submit_job(
            actor="eng",
            kind="evaluate",
            params={"ensemble": parent, "split": "main", "study": "true"},
        )
    ev = use.submit_job(actor="eng", kind="evaluate", params={"ensemble": parent, "split": "main"})
    assert use.run_job(ev["id"], worker="cpu-1") == "succeeded"
    res = use.show_job(actor="eng", job_id=ev["id"])["result"]
    assert res["rule"] == "pooled_kcs" and [m["version"] for m in res["members"]] == [1, 2]
    with session_scope() as s:
        snapshot, _ = label_snapshot(s, "main")
        labels = {i.core: i.label for i in snapshot if i.partition == "test"}
        finals = dict(
            s.execute(
                select(Core.code, EnsemblePrediction.final_score)
                .join(Core, Core.id == EnsemblePrediction.core_id)
                .where(EnsemblePrediction.rule == "pooled_kcs")
            ).all()
        )
    assert res["cores"] == len(labels)
    expected = np.mean([finals[c] == y for c, y in labels.items()])
    assert np.isclose(res["metrics"]["accuracy"], expected)
    assert all(0.0 <= m["metrics"]["accuracy"] <= 1.0 for m in res["members"])

    # the same from the foreground commands: `score --ensemble` and `evaluate --ensemble`
    import json

    from typer.testing import CliRunner

    from her2ops.cli import app

    monkeypatch.setenv("HER2OPS_REQUIRE_CREDENTIALS", "false")  # login is tested elsewhere
    get_settings.cache_clear()

    def cli(*args: str) -> Any:
        return CliRunner().invoke(app, ["--as", "eng", *args])

    out = cli("score", "--ensemble", str(parent), "--split", "main", "--partition", "test",
              "--rule", "mean_prob", "--json")  # fmt: skip
    assert out.exit_code == 0, out.output
    scored = json.loads(out.stdout)
    assert scored["rule"] == "mean_prob" and scored["members"] == [1, 2]
    assert scored["scored"] == n_cores and scored["already_scored"] == 0  # members reused
    out = cli("evaluate", "--ensemble", str(parent), "--split", "main")
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"ensemble {parent} (rule pooled_kcs) on main/test: ")
    assert lines[1].split() == ["ensemble", "v1", "v2"]
    accuracy = next(line.split() for line in lines if line.strip().startswith("accuracy"))
    assert float(accuracy[1]) == pytest.approx(res["metrics"]["accuracy"], abs=1e-4)
    assert [float(v) for v in accuracy[2:]] == pytest.approx(
        [m["metrics"]["accuracy"] for m in res["members"]], abs=1e-4
    )
    out = cli("evaluate", "--split", "main")
    assert out.exit_code == 2 and "give a MODEL or --ensemble" in out.output
    out = cli("evaluate", "--ensemble", str(parent), "--split", "main", "--background", "--json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["params"]["ensemble"] == parent

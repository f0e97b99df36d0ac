"""Train -> register -> score -> evaluate -> promote, on both dialects, with the 'test' profile.

Real MLflow (a SQLite store per test), real torch, real image store; tiny synthetic cores.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from sqlalchemy import func, select

from her2ops.config import get_settings
from her2ops.pipelines import train as train_mod
from her2ops.pipelines.evaluate import evaluate_model
from her2ops.pipelines.models import list_models, promote_model
from her2ops.pipelines.runtime import get_runtime
from her2ops.pipelines.score import score_cores, weights_path
from her2ops.platform.db import session_scope
from her2ops.platform.errors import NotFound
from her2ops.platform.schema import ModelVersion, Prediction, Split
from her2ops.platform.splits import create_split
from tests.factories import curate_synthetic


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _holds(path: Path, weights: dict[str, torch.Tensor]) -> bool:
    """Whether the file holds these tensors (a her2ops weights file or any pickled module)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        return False
    state = obj.get("model", obj) if isinstance(obj, dict) else obj
    if isinstance(state, torch.nn.Module):
        state = {k.removeprefix("backbone."): v for k, v in state.state_dict().items()}
    return (
        isinstance(state, dict)
        and set(state) == set(weights)
        and all(torch.equal(state[k], weights[k]) for k in weights)
    )


def test_train_register_score_evaluate(db_url: str, synthetic: Path) -> None:
    curate_synthetic(synthetic)
    out = train_mod.train_model(actor="eng", split="main", profile_name="test", epochs=2)
    assert out.version == 1 and out.epochs_run == 2 and out.n_train > out.n_val > 0

    get_runtime().tracking.experiment_id()
    client = mlflow.MlflowClient()
    run = client.get_run(out.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["profile"] == "test"
    assert run.data.params["label_snapshot_hash"] == out.label_snapshot_hash
    assert "val_loss" in run.data.metrics and "val_protocol_accuracy" in run.data.metrics
    assert len(client.get_metric_history(out.run_id, "train_loss")) == 2
    arts = {a.path for a in client.list_artifacts(out.run_id, "training")}
    assert {"training/curves.png", "training/val_confusion.png"} <= arts
    mv = client.get_model_version_by_alias("her2-pss", "challenger")
    assert str(mv.version) == "1" and mv.run_id == out.run_id
    assert mv.source == f"runs:/{out.run_id}/weights"  # registered from the run's own file

    # issue 8 item 13: the store holds the weights once. Every file of the artefact store
    # larger than half the weights file, and every file whose tensors equal the weights, is
    # that one file, which scoring reads and the registry version points at.
    with session_scope() as s:
        row = s.scalar(select(ModelVersion))
        assert row is not None
        one_copy = weights_path(get_runtime(), row)
    weights = torch.load(one_copy, map_location="cpu", weights_only=True)["model"]
    root = get_settings().mlflow_artifact_root
    files = [f for f in root.rglob("*") if f.is_file()]
    big = [f for f in files if f.stat().st_size > one_copy.stat().st_size / 2]
    assert big == [one_copy]
    holding = [f for f in files if f.suffix in (".pt", ".pth", ".pkl") and _holds(f, weights)]
    assert holding == [one_copy]
    registered = Path(
        mlflow.artifacts.download_artifacts("models:/her2-pss/1", dst_path=str(root.parent / "dl"))
    )
    assert {"MLmodel", "best.pt"} <= {p.name for p in registered.iterdir()}
    assert _holds(registered / "best.pt", weights)
    assert [(m["version"], m["run_id"]) for m in list_models(actor="eng")] == [(1, out.run_id)]

    with session_scope() as s:
        row = s.scalar(select(ModelVersion))
        assert row is not None and row.aliases == ["challenger"] and row.profile == "test"
        assert row.label_snapshot_hash == out.label_snapshot_hash
        split = s.scalar(select(Split).where(Split.name == "main"))
        assert split is not None and split.frozen_at is not None  # used by a model: frozen

    rep = score_cores(actor="eng", model_ref="challenger", split="main", partition="test")
    assert rep.scored > 0 and rep.already_scored == 0
    again = score_cores(actor="eng", model_ref="1", split="main", partition="test")
    assert again.scored == 0 and again.already_scored == rep.scored  # idempotent
    other = score_cores(
        actor="eng", model_ref="1", split="main", partition="test", confidence="max"
    )
    assert other.scored == rep.scored  # another protocol is another prediction
    with pytest.raises(ValueError, match="unknown confidence"):
        score_cores(actor="eng", model_ref="1", cores=["C00001"], confidence="median")
    with session_scope() as s:
        pred = s.scalar(select(Prediction))
        assert pred is not None and len(pred.set_probs) == 6 and len(pred.kcs_indices) == 2
        assert abs(sum(pred.kcs_probs) - 1) < 1e-4
        assert pred.final_score == max(
            max(range(4), key=lambda c: pred.set_probs[i][c]) for i in pred.kcs_indices
        )

    res = evaluate_model(
        actor="eng",
        model_ref="challenger",
        split="main",
        study=True,
        study_sets=12,
        study_draws=200,
    )
    assert 0 < res["cores"] <= rep.scored  # labelled test cores only
    assert 0.0 <= res["metrics"]["accuracy"] <= 1.0
    assert set(res["metrics"]["roc"]) == {"0 vs 1+/2+/3+", "0/1+ vs 2+/3+", "0/1+/2+ vs 3+"}
    assert res["study"]["outputs_per_core"] == 12
    # issue 13: the headline is the study's median at the evaluated (N, k) = (6, 2)
    head = res["headline"]
    assert (head["n"], head["k"]) == (6, 2) and head["sampling"] == "without replacement"
    assert head["accuracy"]["min"] <= head["accuracy"]["median"] <= head["accuracy"]["max"]
    assert head["single_draw"]["accuracy"] == res["metrics"]["accuracy"]
    assert 0.0 <= head["single_draw"]["percentile"] <= 100.0
    assert set(head["at_median_draw"]) == {"sensitivity", "specificity", "adjacent"}
    assert [r["confidence"] for r in res["study"]["confidence_table"]] == [
        "margin",
        "max",
        "range",
        "std",
        "entropy",
    ]
    assert "test_study_median_accuracy" in client.get_run(out.run_id).data.metrics
    assert run.data.params["val_sets_per_core"] == "1"  # the test profile's own value
    assert "test_accuracy" in client.get_run(out.run_id).data.metrics
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Prediction)) == 2 * rep.scored

    promote_model(actor="eng", ref="challenger")
    assert str(client.get_model_version_by_alias("her2-pss", "champion").version) == "1"
    with session_scope() as s, pytest.raises(NotFound, match="known: v1"):
        from her2ops.platform.registry import resolve_ref

        resolve_ref(s, "9", name="her2-pss")


def test_class_missing_from_train_is_refused(db_url: str, synthetic: Path) -> None:
    curate_synthetic(synthetic)
    with session_scope() as s:  # a split whose train partition gets nobody
        create_split(
            s, actor="lab", name="notrain", seed=1, ratios={"train": 0.0, "val": 0.5, "test": 0.5}
        )
    with pytest.raises(ValueError, match="train"):
        train_mod.train_model(actor="eng", split="notrain", profile_name="test", epochs=1)
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(ModelVersion)) == 0


def test_failed_registration_leaves_no_half_registered_model(
    db_url: str, synthetic: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    curate_synthetic(synthetic)

    def broken_alias(*_a: object, **_k: object) -> None:
        raise RuntimeError("database went away")  # fault injection after MLflow registered

    monkeypatch.setattr(train_mod, "set_alias", broken_alias)
    with pytest.raises(RuntimeError, match="went away"):
        train_mod.train_model(actor="eng", split="main", profile_name="test", epochs=1)
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(ModelVersion)) == 0
    get_runtime().tracking.experiment_id()
    versions = mlflow.MlflowClient().search_model_versions("name='her2-pss'")
    assert versions == []


def test_profile_geometry_that_does_not_fit_is_refused(db_url: str, synthetic: Path) -> None:
    curate_synthetic(synthetic)  # 128 px cores; the paper profile needs 1024 px
    with pytest.raises(ValueError, match="at least 1024x1024 px"):
        train_mod.train_model(actor="eng", split="main", profile_name="paper", epochs=1)
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(ModelVersion)) == 0


def test_device_setting_is_used(
    db_url: str, synthetic: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    curate_synthetic(synthetic)
    monkeypatch.setenv("HER2OPS_DEVICE", "cuda:7")  # no such device here: must be refused
    get_settings.cache_clear()
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises((ValueError, RuntimeError), match=r"(?i)cuda"):
        train_mod.train_model(actor="eng", split="main", profile_name="test", epochs=1)

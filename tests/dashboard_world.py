"""A small, complete world for the dashboard tests (AppTest and the browser): users with
passwords, patients, cores, votes, consensus, a frozen split and three registered model versions
with predictions on the test partition. No training: the versions are registered in MLflow
without weights, which is all that listing, comparing and promoting need.

Also runnable as a script (``python -m tests.dashboard_world``) to seed the database named by
the HER2OPS_* settings, which is how the browser test prepares the real dashboard process.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from her2ops.pipelines import auth
from her2ops.pipelines.runtime import get_runtime
from her2ops.platform.consensus import apply_consensus
from her2ops.platform.curation import add_user
from her2ops.platform.labels import label_snapshot
from her2ops.platform.schema import Core, ModelVersion, Patient, Prediction, Split, User, Vote
from her2ops.platform.splits import create_split, freeze_split

PASSWORDS = {
    "admin": "admin-password-1",
    "lm": "lab-manager-pw-1",
    "eng": "engineer-pw-123",
    "p1": "pathologist-pw-1",
    "p2": "pathologist-pw-2",
    "p3": "pathologist-pw-3",
}
ROLES = {
    "admin": "admin",
    "lm": "lab_manager",
    "eng": "engineer",
    "p1": "pathologist",
    "p2": "pathologist",
    "p3": "pathologist",
}
EVIL_CORE = "<b>C-evil</b>**x**"
EVIL_COMMENT = "**bold** <img src=x onerror=alert(1)> [link](http://example.com)"


@dataclass
class World:
    versions: dict[int, int] = field(default_factory=dict)  # MLflow version -> model_versions.id
    test_cores: list[str] = field(default_factory=list)
    truth: dict[str, int] = field(default_factory=dict)
    preds: dict[int, dict[str, int]] = field(default_factory=dict)


def build_world(n_patients: int = 30, seed: int = 0, *, mlflow: bool = True) -> World:
    """Seed the configured database (and MLflow store, unless ``mlflow`` is False: then the
    versions exist only in the table, enough for every read); see the module docstring."""
    rng = np.random.default_rng(seed)
    rt = get_runtime()
    world = World()
    with rt.session() as s:
        add_user(s, actor=None, username="admin", role="admin")
        for name, role in ROLES.items():
            if name != "admin":
                add_user(s, actor="admin", username=name, role=role)
    for name, pw in PASSWORDS.items():
        auth.set_password(actor="admin", username=name, password=pw)
    with rt.session() as s:
        users = {u.username: u.id for u in s.scalars(select(User))}
        for p in range(n_patients):
            patient = Patient(code=f"P{p:03d}", site="site-A")
            s.add(patient)
            s.flush()
            for c in range(2):
                code = EVIL_CORE if (p, c) == (0, 0) else f"C{p:03d}-{c}"
                core = Core(
                    code=code,
                    patient_id=patient.id,
                    source_path="-",
                    sha256=f"{p:032d}{c:032d}",
                    width=64,
                    height=64,
                    needs_consensus=True,
                )
                s.add(core)
                s.flush()
                true = int(rng.integers(0, 4))
                for i, who in enumerate(("p1", "p2", "p3")):
                    # p1 always right, p2 mostly, p3 often off by one; a few 3-way ties
                    score = true
                    if who == "p2" and rng.random() < 0.2:
                        score = min(3, true + 1)
                    if who == "p3" and rng.random() < 0.4:
                        score = max(0, true - 1)
                    if (p + c) % 11 == 5:
                        score = (true + i) % 4
                    s.add(
                        Vote(
                            core_id=core.id,
                            user_id=users[who],
                            score=("0", "1+", "2+", "3+")[score],
                            round="initial",
                            seq=0,
                            comment=EVIL_COMMENT if (p, c, who) == (0, 0, "p1") else None,
                        )
                    )
        failed = Core(
            code="C-failed",
            patient_id=patient.id,
            source_path="broken.png",
            sha256="f" * 64,
            width=0,
            height=0,
            status="failed",
            failure_reason="<script>alert('x')</script> not an image",
        )
        s.add(failed)
    # one core with a real (synthetic) image in the store, for the whole-core view
    from her2ops.synthetic.render import synth_core

    rgb, _ = synth_core(2, size=256, rng=np.random.default_rng(seed))
    rt.store.put_array(rgb, sha256=f"{0:032d}{0:032d}")
    with rt.session() as s:
        apply_consensus(s, actor="lm", all_cores=True)
        create_split(
            s, actor="lm", name="main", seed=1, ratios={"train": 0.5, "val": 0.2, "test": 0.3}
        )
        create_split(
            s, actor="lm", name="other", seed=2, ratios={"train": 0.5, "val": 0.2, "test": 0.3}
        )
        freeze_split(s, name="main", reason="dashboard test models")
        freeze_split(s, name="other", reason="dashboard test models")
    with rt.session() as s:
        items, snapshot_hash = label_snapshot(s, "main")
        world.test_cores = [i.core for i in items if i.partition == "test"]
        world.truth = {i.core: i.label for i in items if i.partition == "test"}
        splits = {sp.name: sp.id for sp in s.scalars(select(Split))}
        core_ids = dict(s.execute(select(Core.code, Core.id)).all())
    _register(world, splits, core_ids, snapshot_hash, rng, mlflow=mlflow)
    return world


def _register(
    world: World,
    splits: dict[str, int],
    core_ids: dict[str, int],
    snapshot_hash: str,
    rng: np.random.Generator,
    *,
    mlflow: bool,
) -> None:
    rt = get_runtime()
    tracking = rt.tracking
    name = rt.settings.registered_model_name
    if mlflow:
        tracking.experiment_id()
        tracking.client.create_registered_model(name)
    for i, split in enumerate(("main", "main", "other")):
        if mlflow:
            run_id = tracking.create_run(f"dashboard-test-{i}")
            mv = tracking.client.create_model_version(
                name, source=f"runs:/{run_id}/model", run_id=run_id
            )
            version = int(mv.version)
        else:
            run_id, version = f"run-{i}", i + 1
        # v1 is right on ~60 % of the test cores, v2 on ~85 %
        right = 0.6 if i == 0 else 0.85
        preds = {c: (t if rng.random() < right else (t + 1) % 4) for c, t in world.truth.items()}
        with rt.session() as s:
            row = ModelVersion(
                name=name,
                version=version,
                run_id=run_id,
                profile="test",
                split_id=splits[split],
                label_snapshot_hash=snapshot_hash,
                code_version="test",
                aliases=["challenger"] if i == 1 else [],
                metrics={
                    "test_accuracy": float(np.mean([preds[c] == t for c, t in world.truth.items()]))
                },
            )
            s.add(row)
            s.flush()
            world.versions[version] = row.id
            if split == "main":
                world.preds[version] = preds
                for code, final in preds.items():
                    probs = [0.05] * 4
                    probs[final] = 0.85
                    s.add(
                        Prediction(
                            core_id=core_ids[code],
                            model_version_id=row.id,
                            n_sets=4,
                            top_k=2,
                            seed=0,
                            confidence="margin",
                            final_score=final,
                            kcs_probs=probs,
                            set_probs=[probs] * 4,
                            kcs_indices=[0, 1],
                        )
                    )
        if i == 1 and mlflow:
            tracking.set_alias("challenger", version)
    # v1 is the champion to begin with (so promotion has a previous champion to compare with)
    first = min(world.versions)
    if mlflow:
        tracking.set_alias("champion", first)
    with rt.session() as s:
        row = s.get(ModelVersion, world.versions[first])
        assert row is not None
        row.aliases = ["champion"]
    _write_evaluation(world, first, name)


def _write_evaluation(world: World, version: int, name: str) -> None:
    """The evaluation file ``her2ops evaluate`` leaves for a version (metrics + confusion)."""
    from her2ops.models.evaluation import compute_metrics, metrics_table

    y = np.array([world.truth[c] for c in world.truth])
    p = np.array([world.preds[version][c] for c in world.truth])
    probs = np.full((len(y), 4), 0.05)
    probs[np.arange(len(y)), p] = 0.85
    metrics = compute_metrics(y, p, probs)
    folder = get_runtime().settings.data_dir / "evaluations" / f"{name}-v{version}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test_metrics.json").write_text(
        json.dumps(
            {
                "partition": "test",
                "cores": len(y),
                "n_sets": 4,
                "top_k": 2,
                "metrics": metrics,
                "table": metrics_table(metrics),
            },
            default=float,
        )
    )


if __name__ == "__main__":
    w = build_world()
    print(json.dumps({"versions": sorted(w.versions), "test_cores": len(w.test_cores)}))


# --- pytest fixtures: one world per module (SQLite + MLflow), copied for each test -------------


@pytest.fixture(scope="module", name="world_template")
def world_template_fixture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, World]:
    """A data dir (SQLite database, MLflow store, evaluations) holding the world."""
    from her2ops.config import get_settings
    from her2ops.platform.db import reset_engines

    data = tmp_path_factory.mktemp("world") / "data"
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith("HER2OPS_") and not key.startswith("HER2OPS_TEST_"):
                mp.delenv(key)
        mp.setenv("HER2OPS_DATA_DIR", str(data))
        get_settings.cache_clear()
        world = build_world()
        reset_engines()
    get_settings.cache_clear()
    return data, world


@pytest.fixture(name="world")
def world_fixture(
    world_template: tuple[Path, World], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    """This test's own copy of the world, set as the HER2OPS_DATA_DIR of the test."""
    from her2ops.config import get_settings
    from her2ops.dashboards.ui import clear_cache
    from her2ops.platform.db import reset_engines

    src, built = world_template
    data = tmp_path / "world"
    shutil.copytree(src, data)
    # MLflow's artefact root is recorded as an absolute path in its store; nothing reads it here
    monkeypatch.setenv("HER2OPS_DATA_DIR", str(data))
    get_settings.cache_clear()
    clear_cache()
    yield built
    clear_cache()
    reset_engines()

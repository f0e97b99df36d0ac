"""Small factories for tests: images, manifests, vote files, users."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from her2ops.config import get_settings
from her2ops.imaging.store import CoreStore
from her2ops.platform.curation import add_user
from her2ops.platform.db import session_scope


def fail_or_skip(reason: str) -> None:
    """A missing service or tool: a failure where CI promises it (CI=true), else a skip."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def make_png(path: Path, seed: int, size: tuple[int, int] = (96, 80), mode: str = "RGB") -> Path:
    """A distinct random image (distinct seeds give distinct bytes, hence distinct sha256)."""
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).convert(mode).save(path)
    return path


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def make_manifest(
    folder: Path, n_cores: int, *, cores_per_patient: int = 2, seed0: int = 0, site: str = "site-A"
) -> Path:
    """A manifest of ``n_cores`` PNG cores in ``folder/img`` with relative image paths."""
    rows = []
    for i in range(n_cores):
        make_png(folder / "img" / f"c{i + seed0}.png", seed=i + seed0)
        rows.append(
            (
                f"P{(i + seed0) // cores_per_patient:04d}",
                f"C{i + seed0:05d}",
                f"img/c{i + seed0}.png",
                site,
            )
        )
    return write_csv(folder / "manifest.csv", ("patient", "core", "image", "site"), rows)


def seed_users(pathologists: int = 3) -> list[str]:
    """admin, lab manager 'lm', engineer 'eng' and pathologists p1..pN; returns pathologists."""
    names = [f"p{i + 1}" for i in range(pathologists)]
    with session_scope() as s:
        add_user(s, actor=None, username="admin", role="admin")
        add_user(s, actor="admin", username="lm", role="lab_manager")
        add_user(s, actor="admin", username="eng", role="engineer")
        for n in names:
            add_user(s, actor="admin", username=n, role="pathologist")
    return names


def store() -> CoreStore:
    return CoreStore(get_settings().resolved_store_dir)


def insert_labelled_cores(
    n_patients: int, *, seed: int = 0, cores_per_patient: int = 2, first: int = 0
) -> None:
    """Patients, cores (no images) and current 'agreed' labels, straight into the tables;
    ``first`` numbers the patients from there (a second call adds new patients)."""
    from her2ops.platform.schema import ConsensusLabel, Core, Patient

    rng = np.random.default_rng(seed)
    with session_scope() as s:
        for p in range(first, first + n_patients):
            patient = Patient(code=f"Q{p:04d}", site="site-A")
            s.add(patient)
            s.flush()
            for c in range(cores_per_patient):
                core = Core(
                    code=f"Q{p:04d}-{c}",
                    patient_id=patient.id,
                    source_path="-",
                    sha256=f"{p:032d}{c:032d}",
                    width=10,
                    height=10,
                )
                s.add(core)
                s.flush()
                score = int(rng.choice(4, p=[0.17, 0.36, 0.21, 0.26]))
                s.add(
                    ConsensusLabel(
                        core_id=core.id,
                        version=1,
                        status="agreed",
                        score=score,
                        n_votes=3,
                        agreement=1.0,
                        is_current=True,
                    )
                )


def curate_synthetic(folder: Path, *, split: str = "main") -> None:
    """Users, ingest, votes, consensus and a 0.6/0.2/0.2 split for a ``her2ops synth`` folder."""
    from her2ops.platform.consensus import apply_consensus
    from her2ops.platform.curation import ingest_manifest
    from her2ops.platform.splits import create_split
    from her2ops.platform.votes import import_votes

    with session_scope() as s:
        add_user(s, actor=None, username="admin", role="admin")
        users = [("lab", "lab_manager"), ("eng", "engineer"), ("adjudicator", "pathologist")]
        users += [(f"path{i}", "pathologist") for i in range(1, 6)]
        for name, role in users:
            add_user(s, actor="admin", username=name, role=role)
    with session_scope() as s:
        ingest_manifest(
            s, actor="lab", manifest=folder / "manifest.csv", store=store(), max_pixels=10**8
        )
        import_votes(s, actor="lab", path=folder / "votes.csv")
    with session_scope() as s:
        apply_consensus(s, actor="lab")
        create_split(
            s, actor="lab", name=split, seed=1, ratios={"train": 0.6, "val": 0.2, "test": 0.2}
        )


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_mlflow(backend: str, folder: Path) -> Iterator[str]:
    """A real ``mlflow server`` on loopback with ``backend`` as its backend store and artefacts
    proxied to ``folder/artifacts``; yields its URL once ``/health`` answers, stops it afterwards.
    """
    port = free_port()
    log_path = folder / "mlflow-server.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mlflow server did not start:\n" + log_path.read_text()[-3000:])
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()

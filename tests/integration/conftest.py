"""Fixtures shared by the integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from her2ops.synthetic.dataset import generate_dataset


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic data set (24 patients, 48 cores of 128 px), made once per module."""
    out = tmp_path_factory.mktemp("syn")
    generate_dataset(out, patients=24, cores=48, size=128, seed=3)
    return out

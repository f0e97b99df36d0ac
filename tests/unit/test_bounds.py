"""Every size or count argument has a bound and a clear one-line error, checked before work."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from her2ops.cli import app
from her2ops.models.study import parse_int_list

runner = CliRunner()


def _fails_fast(*args: str) -> str:
    started = time.monotonic()
    result = runner.invoke(app, list(args))
    assert result.exit_code in (1, 2), result.output
    assert time.monotonic() - started < 10
    assert "Traceback" not in result.output
    return result.output


def _png_declaring(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width`` x ``height`` (no real pixel data behind it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )
    return path


def test_study_ranges_are_bounded_before_expansion() -> None:
    with pytest.raises(ValueError, match="above 10,000 are refused"):
        parse_int_list("1..1000000000")
    with pytest.raises(ValueError, match="above 50 are refused"):
        parse_int_list("51", max_value=50)
    assert parse_int_list("1..3,10") == [1, 2, 3, 10]


def _npz(path: Path, probs: np.ndarray, labels: np.ndarray) -> Path:
    np.savez(path, probs=probs, labels=labels)
    return path


@pytest.mark.parametrize(
    ("mutate", "says"),
    [
        (lambda p, y: (np.where(p > 0.5, np.nan, p), y), "NaN"),
        (lambda p, y: (-p, y), "negative"),
        (lambda p, y: (p * 2, y), "not normalised"),
        (lambda p, y: (p, y + 0.5), "integers 0..3"),
        (lambda p, y: (p, y + 4), "integers 0..3"),
    ],
)
def test_study_refuses_bad_outputs(tmp_path: Path, mutate: object, says: str) -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=(5, 30))
    labels = rng.integers(0, 4, size=5)
    bad_p, bad_l = mutate(probs, labels.astype(float))  # type: ignore[operator]
    out = _fails_fast("study", str(_npz(tmp_path / "o.npz", bad_p, bad_l)), "--n", "1..20")
    assert says in out and len(out.strip().splitlines()) == 1


def test_study_huge_n_and_draws(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    npz = _npz(tmp_path / "o.npz", rng.dirichlet(np.ones(4), size=(5, 30)), np.zeros(5, int))
    assert "refused" in _fails_fast("study", str(npz), "--n", "1..1000000000")
    assert "--draws" in _fails_fast("study", str(npz), "--draws", "1000000000")


def test_synth_size_is_bounded(tmp_path: Path) -> None:
    out = _fails_fast(
        "synth", str(tmp_path / "s"), "--size", "100000", "--patients", "1", "--cores", "1"
    )
    assert "--size 100000: must be 64..8192 px" in out
    assert not (tmp_path / "s").exists()


def test_dearray_refuses_a_declared_giant_before_decoding(tmp_path: Path) -> None:
    slide = _png_declaring(tmp_path / "giant.png", 100_000, 100_000)
    out = _fails_fast("dearray", str(slide), "--out", str(tmp_path / "o"))
    assert "100,000 x 100,000 px is more than HER2OPS_MAX_SLIDE_PIXELS" in out

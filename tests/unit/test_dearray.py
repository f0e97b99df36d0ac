"""TMA dearraying on synthetic slides of synthetic cores."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from her2ops.imaging.dearray import (
    FoundCore,
    SlideImage,
    assign_grid,
    dearray,
    write_cores,
)
from her2ops.synthetic.dataset import synth_core
from her2ops.synthetic.tma import make_tma_slide

ROWS, COLS, SPACING, CORE = 4, 5, 230, 180
MISSING = {(1, 3), (3, 1), (4, 5)}


@pytest.fixture(scope="module")
def cores() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        synth_core(i % 4, size=CORE, rng=rng, minor_artefacts=False)[0]
        for i in range(ROWS * COLS - len(MISSING))
    ]


@pytest.fixture(scope="module")
def tma(cores: list[np.ndarray]) -> tuple[np.ndarray, list[dict]]:
    return make_tma_slide(
        cores,
        rows=ROWS,
        cols=COLS,
        spacing=SPACING,
        jitter=20,
        missing=MISSING,
        rng=np.random.default_rng(1),
    )


def _check(found: list[FoundCore], truth: list[dict]) -> None:
    """Every core found, none invented, every grid position right, centres close."""
    expected = {(t["row"], t["col"]): t for t in truth}
    got = {(f.row, f.col): f for f in found}
    assert len(found) == len(got), "two cores claim one spot"
    assert set(got) == set(expected)
    for spot, f in got.items():
        t = expected[spot]
        assert np.hypot(f.cx - t["cx"], f.cy - t["cy"]) < 0.12 * CORE, (spot, f, t)
        assert 0.3 * CORE < f.radius < 0.6 * CORE


def test_slide_truth_matches_layout(tma: tuple[np.ndarray, list[dict]]) -> None:
    slide, truth = tma
    assert len(truth) == ROWS * COLS - len(MISSING)
    assert not {(t["row"], t["col"]) for t in truth} & MISSING
    assert slide.dtype == np.uint8 and slide.ndim == 3


def test_dearray_finds_every_core_and_its_spot(tma: tuple[np.ndarray, list[dict]]) -> None:
    slide, truth = tma
    _check(dearray(slide), truth)


def test_dearray_with_given_grid_and_diameter(tma: tuple[np.ndarray, list[dict]]) -> None:
    slide, truth = tma
    _check(dearray(slide, rows=ROWS, cols=COLS, expected_diameter=0.88 * CORE), truth)


def test_dearray_downsamples_large_slides(tma: tuple[np.ndarray, list[dict]]) -> None:
    slide, truth = tma
    # detection at ~1/2 resolution, coordinates still in full-resolution pixels
    _check(dearray(slide, max_side=slide.shape[1] // 2), truth)


def test_whole_missing_row_and_column_keep_their_numbers(cores: list[np.ndarray]) -> None:
    missing = {(2, c) for c in range(1, 6)} | {(r, 4) for r in range(1, 5)}
    slide, truth = make_tma_slide(
        cores,
        rows=4,
        cols=5,
        spacing=SPACING,
        jitter=15,
        missing=missing,
        rng=np.random.default_rng(2),
    )
    _check(dearray(slide), truth)
    _check(dearray(slide, rows=4, cols=5), truth)


def test_blank_slide_has_no_cores() -> None:
    rng = np.random.default_rng(3)
    blank = np.clip(rng.normal(248, 2, (400, 500, 3)), 0, 255).astype(np.uint8)
    assert dearray(blank) == []


def test_assign_grid_on_jittered_points() -> None:
    rng = np.random.default_rng(4)
    spots = [(r, c) for r in range(1, 7) for c in range(1, 9) if (r * 7 + c) % 5]
    pts = np.array(
        [[c * 100 + rng.uniform(-20, 20), r * 140 + rng.uniform(-20, 20)] for r, c in spots]
    )
    row, col = assign_grid(pts)
    assert list(zip(row.tolist(), col.tolist(), strict=True)) == spots
    with pytest.raises(ValueError):
        assign_grid(pts, rows=5)  # six rows present


def test_write_cores_and_manifest(tmp_path: Path, tma: tuple[np.ndarray, list[dict]]) -> None:
    slide, truth = tma
    path = tmp_path / "TMA07.png"
    Image.fromarray(slide).save(path)
    found = dearray(path)
    manifest = write_cores(path, found, tmp_path / "out")
    with manifest.open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["patient", "core", "image", "slide", "row", "col", "site"]
    assert len(rows) == len(truth)
    for row, f in zip(rows, found, strict=True):
        assert row["image"] == f"TMA07_r{f.row}_c{f.col}.png"
        assert row["core"] == row["patient"] == f"TMA07_r{f.row}_c{f.col}"
        assert row["slide"] == "TMA07" and (int(row["row"]), int(row["col"])) == (f.row, f.col)
        img = np.asarray(Image.open(manifest.parent / row["image"]))
        assert abs(img.shape[0] - 2 * 1.15 * f.radius) <= 3
        assert img[0, 0].min() == 255  # outside the circle: white
        assert img.min() < 150  # the core itself


def test_pyramidal_tiff_uses_a_low_level(
    tmp_path: Path, tma: tuple[np.ndarray, list[dict]]
) -> None:
    import tifffile

    slide, truth = tma
    half = np.asarray(Image.fromarray(slide).reduce(2))
    path = tmp_path / "slide.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(slide, tile=(256, 256), subifds=1, photometric="rgb")
        tif.write(half, tile=(256, 256), subfiletype=1, photometric="rgb")
    img = SlideImage(path)
    assert img.shape == slide.shape[:2]
    _, factor = img.thumbnail(max_side=half.shape[1])
    assert factor == pytest.approx(2.0, rel=0.01)
    assert img._full is None  # the overview came from level 1, level 0 not read
    _check(dearray(img), truth)


def test_missing_slide_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SlideImage(tmp_path / "nope.png")

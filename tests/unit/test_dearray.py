"""TMA dearraying on synthetic slides of synthetic cores."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from her2ops.errors import InvalidRequest
from her2ops.imaging.dearray import (
    FoundCore,
    SlideImage,
    assign_grid,
    dearray,
    write_cores,
)
from her2ops.imaging.readers import ImageError
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


# --- bounded memory and several images in one file -------------------------------------------


def _png_declaring(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width`` x ``height`` (no real pixel data behind it)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def _jpeg_declaring(path: Path, width: int, height: int) -> Path:
    """A small JPEG whose frame header is edited to declare ``width`` x ``height``."""
    import io

    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("kind", ["png", "jpg", "tif"])
def test_a_slide_over_the_limit_is_refused_from_its_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """60,000 x 50,000 declared (3e9 px, far beyond Pillow's own 2x-limit error): refused with
    the file, its size and the limit, before anything is decoded; Pillow's limit unchanged."""
    from her2ops.config import get_settings

    monkeypatch.setenv("HER2OPS_MAX_SLIDE_PIXELS", "1000000000")
    get_settings.cache_clear()
    path = tmp_path / f"giant.{kind}"
    if kind == "png":
        _png_declaring(path, 60_000, 50_000)
    elif kind == "jpg":
        _jpeg_declaring(path, 60_000, 50_000)
    else:
        tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint8), tile=(32, 32), photometric="rgb")
        with tifffile.TiffFile(path, mode="r+b") as tf:
            tf.pages[0].tags["ImageWidth"].overwrite(60_000)
            tf.pages[0].tags["ImageLength"].overwrite(50_000)
    saved = Image.MAX_IMAGE_PIXELS
    message = (
        rf"giant\.{kind}: 60,000 x 50,000 px is more than HER2OPS_MAX_SLIDE_PIXELS "
        r"\(1,000,000,000\); refused before decoding"
    )
    with pytest.raises(ImageError, match=message):
        SlideImage(path)
    assert saved == Image.MAX_IMAGE_PIXELS


def test_the_slide_limit_is_the_settings_one_and_bounds_agrees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tma: tuple[np.ndarray, list[dict]]
) -> None:
    from her2ops.config import get_settings
    from her2ops.pipelines.bounds import check_slide

    slide, _ = tma
    path = tmp_path / "slide.png"
    Image.fromarray(slide).save(path)
    h, w = slide.shape[:2]
    assert SlideImage(path).shape == check_slide(path) == (h, w)
    monkeypatch.setenv("HER2OPS_MAX_SLIDE_PIXELS", str(h * w - 1))
    get_settings.cache_clear()
    for read in (SlideImage, check_slide):
        with pytest.raises(InvalidRequest, match=rf"slide\.png: {w:,} x {h:,} px is more than"):
            read(path)
    assert SlideImage(path, max_pixels=h * w).shape == (h, w)  # a caller's own bound


def test_a_multi_page_tiff_slide_needs_a_page(tmp_path: Path) -> None:
    path = tmp_path / "two.tif"
    first, second = np.full((40, 50, 3), 10, np.uint8), np.full((30, 20, 3), 200, np.uint8)
    with tifffile.TiffWriter(path) as tif:
        tif.write(first, photometric="rgb")
        tif.write(second, photometric="rgb")
    with pytest.raises(ImageError, match=r"two\.tif: holds 2 pages \(images\); choose one"):
        SlideImage(path)
    chosen = SlideImage(path, page=1)
    assert chosen.shape == (30, 20)
    np.testing.assert_array_equal(chosen.full(), second)
    with pytest.raises(ImageError, match="page 2 asked, the file holds 2"):
        SlideImage(path, page=2)


def test_an_animated_png_slide_needs_a_frame(tmp_path: Path) -> None:
    path = tmp_path / "anim.png"
    frames = [Image.new("RGB", (30, 20), colour) for colour in ("red", "blue")]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.raises(ImageError, match=r"anim\.png: holds 2 frames \(an animated PNG\)"):
        SlideImage(path)
    chosen = SlideImage(path, page=1)
    assert (chosen.full() == [0, 0, 255]).all()
    assert (SlideImage(path, page=0).full() == [255, 0, 0]).all()

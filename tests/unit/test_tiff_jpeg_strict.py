"""JPEG-compressed TIFFs (compression 7, as scanners write them) whose tiles or strips are not
whole: each tile or strip is checked and probed like a JPEG file, at ingest (``read_rgb``) and
wherever a slide is read for dearraying (``SlideImage``); the error names the file, the page and
the tile or strip (:mod:`her2ops.imaging.tiff_reader`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image

from her2ops.imaging.dearray import SlideImage
from her2ops.imaging.jpeg_reader import check_jpeg
from her2ops.imaging.readers import ImageError, read_rgb

MAX = 10_000_000
EOI = b"\xff\xd9"
TILE = 64


def _textured(height: int, width: int, seed: int = 7) -> np.ndarray:
    """A smooth-ish RGB image (JPEG keeps it close; random noise would not be a slide)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 20 + 2, width // 20 + 2, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR))


def _write(
    path: Path,
    image: np.ndarray,
    *,
    quality: int,
    args: dict[str, Any] | None = None,
    **options: Any,
) -> Path:
    """A JPEG-compressed TIFF as tifffile writes it (each tile or strip a whole JPEG)."""
    compressionargs = {"level": quality, **(args or {})}
    tifffile.imwrite(path, image, compression="jpeg", compressionargs=compressionargs, **options)
    return path


def _segments(data: bytes) -> list[tuple[int, int, int]]:
    """``(marker, start, end)`` of each segment of a JPEG up to its first scan header."""
    pos, found = 2, []
    while data[pos + 1] != 0xDA:
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        found.append((data[pos + 1], pos, end))
        pos = end
    return [*found, (0xDA, pos, len(data))]


def _write_with_jpegtables(path: Path, image: np.ndarray, quality: int, photometric: str) -> Path:
    """Tiles without tables, the tables once in JPEGTables (as Aperio writes SVS); the JPEG
    colour space is ``photometric`` (``rgb``: no conversion, 4:4:4, Aperio's usual)."""
    rgb = photometric == "rgb"
    encode = {"outcolorspace": "rgb", "subsampling": (1, 1)} if rgb else {}
    height, width = image.shape[:2]
    tiles = []
    for y in range(0, height, TILE):
        for x in range(0, width, TILE):
            tile = np.zeros((TILE, TILE, 3), np.uint8)
            part = image[y : y + TILE, x : x + TILE]
            tile[: part.shape[0], : part.shape[1]] = part
            tiles.append(imagecodecs.jpeg8_encode(tile, level=quality, **encode))
    first = tiles[0]
    tables = b"".join(first[a:b] for m, a, b in _segments(first) if m in (0xDB, 0xC4))
    abbreviated = []
    for data in tiles:
        segments = _segments(data)
        # libjpeg's default tables: the same in every tile, so they can be shared
        assert b"".join(data[a:b] for m, a, b in segments if m in (0xDB, 0xC4)) == tables
        frame = b"".join(data[a:b] for m, a, b in segments if m == 0xC0)
        abbreviated.append(b"\xff\xd8" + frame + data[segments[-1][1] :])
    tifffile.imwrite(
        path,
        iter(abbreviated),
        shape=image.shape,
        dtype=np.uint8,
        tile=(TILE, TILE),
        compression="jpeg",
        photometric=photometric,
        subsampling=(1, 1) if rgb else (2, 2),
        compressionargs={"outcolorspace": photometric},
        jpegtables=b"\xff\xd8" + tables + EOI,
    )
    return path


VARIANTS: dict[str, dict[str, Any]] = {
    "tiles-ycbcr420-q90": {"tile": (TILE, TILE), "photometric": "rgb", "quality": 90},
    "tiles-ycbcr422-q75": {
        "tile": (TILE, TILE),
        "photometric": "rgb",
        "subsampling": (2, 1),
        "quality": 75,
    },
    "tiles-ycbcr444-q97": {
        "tile": (TILE, TILE),
        "photometric": "rgb",
        "subsampling": (1, 1),
        "quality": 97,
    },
    "tiles-rgb-q85": {
        "tile": (TILE, TILE),
        "photometric": "rgb",
        "subsampling": (1, 1),
        "args": {"outcolorspace": "rgb"},
        "quality": 85,
    },
    "tiles-gray-q80": {"tile": (TILE, TILE), "gray": True, "quality": 80},
    "strips-ycbcr420-q90": {"rowsperstrip": 48, "photometric": "rgb", "quality": 90},
    "strips-gray-q60": {"rowsperstrip": 48, "gray": True, "quality": 60},
    "tiles-jpegtables-q80": {"jpegtables": "ycbcr", "quality": 80},
    "tiles-jpegtables-rgb-q90": {"jpegtables": "rgb", "quality": 90},
}


def _variant(tmp_path: Path, name: str, image: np.ndarray) -> Path:
    options = dict(VARIANTS[name])
    path = tmp_path / f"{name}.tif"
    if "jpegtables" in options:
        return _write_with_jpegtables(path, image, options["quality"], options["jpegtables"])
    if options.pop("gray", False):
        image = image[..., 1]
    return _write(path, image, **options)


def _as_rgb(samples: np.ndarray) -> np.ndarray:
    return np.repeat(samples[..., None], 3, axis=2) if samples.ndim == 2 else samples


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_whole_jpeg_tiffs_read_with_tifffiles_pixels(tmp_path: Path, variant: str) -> None:
    """Every tile or strip passes the check, and the pixels are tifffile's (what was read
    before the check: the same decoder, the same JPEGTables and colour spaces)."""
    source = _textured(260, 300)
    path = _variant(tmp_path, variant, source)
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        assert int(page.compression) == 7
        assert len(page.dataoffsets) > 1
        expected = _as_rgb(page.asarray())
    if "gray" in variant:
        source = _as_rgb(source[..., 1])
    assert np.abs(expected.astype(int) - source).mean() < 4  # a faithful JPEG of the source
    _, rgb = read_rgb(path, max_pixels=MAX)
    np.testing.assert_array_equal(rgb, expected)
    np.testing.assert_array_equal(SlideImage(path).full(), expected)


def _first_ifd(tf: tifffile.TiffFile) -> Any:
    return tf.pages[0]


def _cut(
    path: Path, segment: int, how: str, page: Callable[[Any], Any] = _first_ifd
) -> tuple[int, int]:
    """Cut tile or strip ``segment`` of ``page(tiff)`` in the middle of its entropy-coded data:
    ``shortened`` (an EOI put there, its byte count made to end there), ``overwritten`` (its
    tail overwritten with EOI and zeros, byte count unchanged) or ``no-eoi`` (byte count made
    to end there, no EOI). Returns where the segment lies in the image, ``(x, y)``."""
    with tifffile.TiffFile(path) as tf:
        ifd = page(tf)
        offset, count = int(ifd.dataoffsets[segment]), int(ifd.databytecounts[segment])
        tiled = ifd.is_tiled
        across = -(-int(ifd.imagewidth) // int(ifd.tilewidth)) if tiled else 1
        rows = int(ifd.tilelength) if tiled else int(ifd.rowsperstrip)
        x = (segment % across) * int(ifd.tilewidth) if tiled else 0
        y = (segment // across) * rows
    data = bytearray(path.read_bytes())
    start, end = check_jpeg(path, data, offset).scans[0].data
    cut = (start + end) // 2
    if how == "overwritten":
        data[cut : offset + count] = EOI + bytes(offset + count - cut - 2)
        path.write_bytes(bytes(data))
        return x, y
    if how == "shortened":
        data[cut : cut + 2] = EOI
    path.write_bytes(bytes(data))
    with tifffile.TiffFile(path, mode="r+b") as tf:
        ifd = page(tf)
        counts = list(ifd.databytecounts)
        counts[segment] = cut - offset + (2 if how == "shortened" else 0)
        ifd.tags["TileByteCounts" if tiled else "StripByteCounts"].overwrite(counts)
    return x, y


@pytest.mark.parametrize("how", ["shortened", "overwritten", "no-eoi"])
@pytest.mark.parametrize(
    "variant",
    [
        "tiles-ycbcr420-q90",
        "tiles-gray-q80",
        "strips-ycbcr420-q90",
        "tiles-jpegtables-q80",
        "tiles-jpegtables-rgb-q90",
    ],
)
def test_cut_tile_or_strip_is_refused_naming_it(tmp_path: Path, variant: str, how: str) -> None:
    image = _textured(260, 300)
    path = _variant(tmp_path, variant, image)
    segment = 5
    x, y = _cut(path, segment, how)
    kind = "strip" if variant.startswith("strips") else "tile"
    # the gap this closes: libjpeg only warns, tifffile decodes the cut segment, partly grey
    lenient = tifffile.imread(path)
    rows = TILE if kind == "tile" else 48
    assert (lenient[y + rows - 8 : y + rows, x : x + TILE] == 128).all()
    message = (
        rf"{re.escape(str(path))}: page 0, {kind} {segment} \(x {x}, y {y}\): truncated "
        r"(JPEG|or corrupt)"
    )
    with pytest.raises(ImageError, match=message):
        read_rgb(path, max_pixels=MAX)
    with pytest.raises(ImageError, match=message):
        SlideImage(path).full()


def test_chosen_page_of_a_multi_page_tiff_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "two.tif"
    first, second = _textured(200, 192, seed=1), _textured(200, 192, seed=2)
    with tifffile.TiffWriter(path) as tif:
        for image in (first, second):
            tif.write(image, tile=(TILE, TILE), photometric="rgb", compression="jpeg")
    x, y = _cut(path, 4, "shortened", lambda tf: tf.pages[1])
    _, rgb = read_rgb(path, max_pixels=MAX, page=0)  # the first page is whole
    np.testing.assert_array_equal(rgb, tifffile.imread(path, key=0))
    message = rf"two\.tif: page 1, tile 4 \(x {x}, y {y}\): truncated JPEG"
    with pytest.raises(ImageError, match=message):
        read_rgb(path, max_pixels=MAX, page=1)
    with pytest.raises(ImageError, match=message):
        SlideImage(path, page=1).full()


def test_dearray_overview_level_is_checked(tmp_path: Path) -> None:
    """The overview dearraying finds cores on comes from a lower pyramid level: its tiles are
    checked as well, and the error names the level."""
    image = _textured(512, 640)
    half = np.asarray(Image.fromarray(image).reduce(2))
    path = tmp_path / "pyramid.tif"
    with tifffile.TiffWriter(path) as tif:
        options = {"tile": (TILE, TILE), "photometric": "rgb", "compression": "jpeg"}
        tif.write(image, subifds=1, **options)
        tif.write(half, subfiletype=1, **options)
    slide = SlideImage(path)
    overview, _ = slide.thumbnail(max_side=half.shape[1])
    with tifffile.TiffFile(path) as tf:
        np.testing.assert_array_equal(overview, tf.series[0].levels[1].asarray())
    x, y = _cut(path, 7, "overwritten", lambda tf: tf.series[0].levels[1].keyframe)
    message = rf"pyramid\.tif: page 0, pyramid level 1, tile 7 \(x {x}, y {y}\): truncated JPEG"
    with pytest.raises(ImageError, match=message):
        SlideImage(path).thumbnail(max_side=half.shape[1])
    np.testing.assert_array_equal(SlideImage(path).full(), tifffile.imread(path))  # level 0 whole

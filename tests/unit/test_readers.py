"""Image validation and decoding: formats, conversions and bad input."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from her2ops.imaging.readers import ImageError, inspect_image, load_rgb, read_rgb

MAX = 10_000_000


@pytest.fixture()
def rgb() -> np.ndarray:
    """A 60 x 70 textured RGB image (smooth, so lossy codecs stay close)."""
    rng = np.random.default_rng(7)
    small = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((70, 60), Image.Resampling.BILINEAR))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height RGB pixels but holds almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )
    return path


# --- accepted inputs ------------------------------------------------------------------------------


def test_png_rgb_is_exact_and_described(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "core.png"
    Image.fromarray(rgb).save(path)
    info = inspect_image(path, max_pixels=MAX)
    assert (info.format, info.width, info.height, info.mode) == ("PNG", 70, 60, "RGB")
    assert info.conversion is None
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.path == path
    np.testing.assert_array_equal(load_rgb(path, max_pixels=MAX), rgb)


def test_jpeg_decodes_close_to_source(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "core.jpg"
    Image.fromarray(rgb).save(path, quality=95)
    info, out = read_rgb(path, max_pixels=MAX)
    assert info.format == "JPEG" and out.shape == (60, 70, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).mean() < 6


def test_tiled_pyramidal_bigtiff_reads_full_resolution(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "core.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(rgb, tile=(32, 32), compression="zlib", subifds=1, photometric="rgb")
        tw.write(rgb[::2, ::2], tile=(32, 32), compression="zlib", subfiletype=1)
    info, out = read_rgb(path, max_pixels=MAX)
    assert info.format.startswith("BigTIFF") and (info.width, info.height) == (70, 60)
    np.testing.assert_array_equal(out, rgb)


def test_plain_stripped_tiff(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "core.tiff"
    tifffile.imwrite(path, rgb, photometric="rgb")
    info, out = read_rgb(path, max_pixels=MAX)
    assert info.format == "TIFF" and info.conversion is None
    np.testing.assert_array_equal(out, rgb)


def test_openslide_reads_a_slide_format_tifffile_cannot_parse(tmp_path: Path) -> None:
    """A .svs whose TIFF structure tifffile refuses still goes to OpenSlide (and fails clearly
    when OpenSlide cannot read it either)."""
    path = tmp_path / "slide.svs"
    path.write_bytes(b"II*\x00" + b"\xff" * 64)
    with pytest.raises(ImageError, match="OpenSlide"):
        read_rgb(path, max_pixels=MAX)


def test_openslide_decoder_matches_tifffile(tmp_path: Path, rgb: np.ndarray) -> None:
    from her2ops.imaging.readers import _decode_openslide

    path = tmp_path / "generic.tif"
    tifffile.imwrite(path, rgb, tile=(32, 32), compression="zlib", photometric="rgb")
    fmt, _mode, conversion, out = _decode_openslide(path, MAX, first_error=ValueError("x"))
    assert fmt.startswith("OpenSlide") and conversion == "RGBA->RGB over white"
    np.testing.assert_array_equal(out, rgb)


# --- conversions ----------------------------------------------------------------------------------


def test_rgba_is_composited_over_white(tmp_path: Path, rgb: np.ndarray) -> None:
    alpha = np.zeros(rgb.shape[:2], dtype=np.uint8)
    alpha[:, 20:40] = 255
    alpha[:, 40:] = 128
    path = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([rgb, alpha])).save(path)
    info, out = read_rgb(path, max_pixels=MAX)
    assert info.mode == "RGBA" and info.conversion == "RGBA->RGB over white"
    assert (out[:, :20] == 255).all()
    np.testing.assert_array_equal(out[:, 20:40], rgb[:, 20:40])
    expected = (rgb[:, 40:].astype(int) * 128 + 255 * 127 + 127) // 255
    np.testing.assert_array_equal(out[:, 40:], expected)


def test_grayscale_is_replicated(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "gray.png"
    Image.fromarray(rgb[..., 1]).save(path)
    info, out = read_rgb(path, max_pixels=MAX)
    assert (info.mode, info.conversion) == ("L", "L->RGB")
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], rgb[..., 1])


def test_palette_is_expanded(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "palette.png"
    pal = Image.fromarray(rgb).quantize(colors=16)
    pal.save(path)
    info, out = read_rgb(path, max_pixels=MAX)
    assert (info.mode, info.conversion) == ("P", "P->RGB")
    np.testing.assert_array_equal(out, np.asarray(pal.convert("RGB")))
    assert len(np.unique(out.reshape(-1, 3), axis=0)) <= 16


def test_16bit_grayscale_keeps_the_high_byte(tmp_path: Path, rgb: np.ndarray) -> None:
    deep = rgb[..., 0].astype(np.uint16) * 257 + 3
    path = tmp_path / "deep.png"
    Image.fromarray(deep).save(path)
    info, out = read_rgb(path, max_pixels=MAX)
    assert info.mode.startswith("I") and info.conversion is not None
    assert "RGB (scaled >>8)" in info.conversion
    np.testing.assert_array_equal(out[..., 2], (deep >> 8).astype(np.uint8))


def test_16bit_rgb_tiff_is_scaled(tmp_path: Path, rgb: np.ndarray) -> None:
    deep = rgb.astype(np.uint16) * 257
    path = tmp_path / "deep.tif"
    tifffile.imwrite(path, deep, photometric="rgb")
    info, out = read_rgb(path, max_pixels=MAX)
    assert info.mode == "RGB;16" and info.conversion == "RGB;16->RGB (scaled >>8)"
    np.testing.assert_array_equal(out, rgb)


def test_16bit_rgb_png_is_reported(tmp_path: Path, rgb: np.ndarray) -> None:
    import imagecodecs

    path = tmp_path / "deep.png"
    path.write_bytes(imagecodecs.png_encode(rgb.astype(np.uint16) * 257))
    info, out = read_rgb(path, max_pixels=MAX)
    assert info.mode == "RGB;16" and info.conversion == "RGB;16->RGB (scaled >>8)"
    np.testing.assert_array_equal(out, rgb)


def test_float_tiff_is_refused(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, rgb.astype(np.float32) / 255, photometric="rgb")
    with pytest.raises(ImageError, match=r"float\.tif.*float32 not supported"):
        read_rgb(path, max_pixels=MAX)


# --- refused inputs -------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such file"):
        inspect_image(tmp_path / "nope.png", max_pixels=MAX)


def test_empty_and_garbage_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        inspect_image(empty, max_pixels=MAX)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageError, match="not a supported image"):
        inspect_image(garbage, max_pixels=MAX)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_truncated_files_are_refused(tmp_path: Path, rgb: np.ndarray, suffix: str) -> None:
    path = tmp_path / f"whole{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, rgb, tile=(32, 32), compression="zlib", photometric="rgb")
    else:
        Image.fromarray(rgb).save(path)
    inspect_image(path, max_pixels=MAX)  # the intact file passes
    data = path.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageError, match=r"cut\..*(truncated|corrupt)"):
        inspect_image(cut, max_pixels=MAX)


def test_corrupt_png_data_is_refused(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "flip.png"
    Image.fromarray(rgb).save(path)
    data = bytearray(path.read_bytes())
    at = data.index(b"IDAT") + 40
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="corrupt"):
        inspect_image(path, max_pixels=MAX)


def test_decompression_bomb_refused_from_the_header(tmp_path: Path) -> None:
    """A header claiming 50,000 x 50,000 px is refused by our own check, before decoding."""
    bomb = _png_header_only(tmp_path / "bomb.png", 50_000, 50_000)
    saved = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError, match=r"too large.*2,500,000,000 pixels"):
        inspect_image(bomb, max_pixels=400_000_000)
    assert saved == Image.MAX_IMAGE_PIXELS  # Pillow's own limit is restored


def test_pillow_limit_does_not_decide(tmp_path: Path) -> None:
    """Above Pillow's own bomb limit but within ours, the file is judged on its data (here:
    truncated), not refused by Pillow's DecompressionBombError."""
    assert Image.MAX_IMAGE_PIXELS is not None
    side = int((2 * Image.MAX_IMAGE_PIXELS) ** 0.5) + 10
    big = _png_header_only(tmp_path / "big.png", side, side)
    with pytest.raises(ImageError, match="truncated or corrupt") as caught:
        inspect_image(big, max_pixels=side * side)
    assert not isinstance(caught.value.__context__, Image.DecompressionBombError)


def test_bomb_tiff_refused_before_decoding(tmp_path: Path) -> None:
    """A small TIFF whose header is edited to claim 40,000 x 40,000 px."""
    path = tmp_path / "bomb.tif"
    tifffile.imwrite(
        path, np.zeros((64, 64, 3), np.uint8), tile=(32, 32), photometric="rgb", metadata=None
    )
    with tifffile.TiffFile(path, mode="r+b") as tf:
        tf.pages[0].tags["ImageWidth"].overwrite(40_000)
        tf.pages[0].tags["ImageLength"].overwrite(40_000)
    with pytest.raises(ImageError, match="too large"):
        inspect_image(path, max_pixels=100_000_000)

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
    fmt, _mode, conversion, out = _decode_openslide(path, MAX, None, ValueError("x"))
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


# --- images that are not whole, several images in one file, memory ---------------------------


def _png_with_rows(path: Path, width: int, height: int, rows: int) -> Path:
    """An RGB PNG whose header says ``height`` rows but whose (valid, complete) zlib stream holds
    only ``rows`` of them; every chunk's CRC is right and IEND is present."""
    line = b"\x00" + bytes(range(256)) * (3 * width // 256) + b"\x7f" * (3 * width % 256)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(line * rows))
        + _png_chunk(b"IEND", b"")
    )
    return path


def test_png_whose_pixel_data_stops_early_is_refused(tmp_path: Path) -> None:
    whole = _png_with_rows(tmp_path / "whole.png", 120, 1500, 1500)
    assert load_rgb(whole, max_pixels=MAX).shape == (1500, 120, 3)  # the crafting is right
    short = _png_with_rows(tmp_path / "short.png", 120, 1500, 10)
    with Image.open(short) as im:  # what a lenient decoder does: rows 10.. come out black
        im.load()
        assert not np.asarray(im)[10:].any()
    with pytest.raises(ImageError, match=r"short\.png: truncated or corrupt image data"):
        read_rgb(short, max_pixels=MAX)


def test_jpeg_without_end_of_image_is_refused(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "core.jpg"
    Image.fromarray(rgb).save(path, quality=95)
    data = path.read_bytes()
    assert data.endswith(b"\xff\xd9")
    cut = tmp_path / "noeoi.jpg"
    cut.write_bytes(data[:-2])  # only the end-of-image marker is missing
    with pytest.raises(ImageError, match=r"noeoi\.jpg: truncated JPEG"):
        read_rgb(cut, max_pixels=MAX)


def test_grayscale_jpeg_matches_pillow(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "gray.jpg"
    Image.fromarray(rgb[..., 0]).save(path, quality=90)
    info, out = read_rgb(path, max_pixels=MAX)
    with Image.open(path) as im:
        expected = np.asarray(im.convert("RGB"))
    assert info.conversion == "L->RGB"
    np.testing.assert_array_equal(out, expected)


def test_animated_png_is_refused_unless_a_frame_is_chosen(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "anim.png"
    frames = [Image.fromarray(np.roll(rgb, 10 * i, axis=1)) for i in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(ImageError, match=r"anim\.png: holds 3 frames .*page 0 to 2"):
        read_rgb(path, max_pixels=MAX)
    _, second = read_rgb(path, max_pixels=MAX, page=1)
    np.testing.assert_array_equal(second, np.roll(rgb, 10, axis=1))
    with pytest.raises(ImageError, match="page 3 asked"):
        read_rgb(path, max_pixels=MAX, page=3)


def test_multi_picture_jpeg_is_refused_unless_one_is_chosen(
    tmp_path: Path, rgb: np.ndarray
) -> None:
    path = tmp_path / "stereo.mpo"
    Image.fromarray(rgb).save(
        path, "MPO", save_all=True, append_images=[Image.fromarray(rgb[::-1].copy())]
    )
    with pytest.raises(ImageError, match=r"stereo\.mpo: holds 2 pictures"):
        read_rgb(path, max_pixels=MAX)
    _, first = read_rgb(path, max_pixels=MAX, page=0)
    assert np.abs(first.astype(int) - rgb).mean() < 6


def test_multi_page_tiff_is_refused_unless_a_page_is_chosen(
    tmp_path: Path, rgb: np.ndarray
) -> None:
    path = tmp_path / "stack.tif"
    pages = [np.roll(rgb, 7 * i, axis=0) for i in range(3)]
    with tifffile.TiffWriter(path) as tw:
        for page in pages:
            tw.write(page, photometric="rgb", metadata=None)
    with pytest.raises(ImageError, match=r"stack\.tif: TIFF holds 3 pages.*page 0 to 2"):
        read_rgb(path, max_pixels=MAX)
    _, third = read_rgb(path, max_pixels=MAX, page=2)
    np.testing.assert_array_equal(third, pages[2])
    # a pyramid (reduced-resolution pages) is one image, not several
    pyramid = tmp_path / "pyramid.tif"
    with tifffile.TiffWriter(pyramid) as tw:
        tw.write(rgb, tile=(32, 32), photometric="rgb")
        tw.write(rgb[::2, ::2], tile=(32, 32), photometric="rgb", subfiletype=1)
    np.testing.assert_array_equal(load_rgb(pyramid, max_pixels=MAX), rgb)


def test_tiff_tile_without_data_is_refused(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "hole.tif"
    tifffile.imwrite(path, rgb, tile=(32, 32), compression="zlib", photometric="rgb")
    with tifffile.TiffFile(path, mode="r+b") as tf:
        counts = list(tf.pages[0].databytecounts)
        counts[1] = 0
        tf.pages[0].tags["TileByteCounts"].overwrite(counts)
    with pytest.raises(ImageError, match=r"hole\.tif: truncated TIFF"):
        read_rgb(path, max_pixels=MAX)


def test_tiff_tile_that_does_not_decode_is_refused(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "garbled.tif"
    tifffile.imwrite(path, rgb, tile=(32, 32), compression="zlib", photometric="rgb")
    with tifffile.TiffFile(path) as tf:
        offset = int(tf.pages[0].dataoffsets[2])
    data = bytearray(path.read_bytes())
    data[offset : offset + 8] = b"\x00" * 8  # not a zlib stream any more
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"garbled\.tif: .*(corrupt|warning)"):
        read_rgb(path, max_pixels=MAX)


def test_planar_and_min_is_white_tiffs_convert_as_documented(
    tmp_path: Path, rgb: np.ndarray
) -> None:
    planar = tmp_path / "planar.tif"
    tifffile.imwrite(planar, rgb.transpose(2, 0, 1), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(load_rgb(planar, max_pixels=MAX), rgb)
    white = tmp_path / "miniswhite.tif"
    tifffile.imwrite(white, rgb[..., 0], photometric="miniswhite")
    info, out = read_rgb(white, max_pixels=MAX)
    assert info.conversion == "L->RGB (inverted (min-is-white))"
    np.testing.assert_array_equal(out[..., 1], 255 - rgb[..., 0])


_PEAK_SCRIPT = """
import sys
from pathlib import Path
import imagecodecs, numpy, PIL.Image, tifffile
from her2ops.imaging import readers, tiff_reader

def kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak (VmHWM) to the current RSS
except OSError:
    print("-1 -1")
    raise SystemExit
base = kb("VmRSS")
_, rgb = readers.read_rgb(Path(sys.argv[1]), max_pixels=10**9)
print((kb("VmHWM") - base) * 1024, rgb.nbytes)
"""


@pytest.mark.parametrize("kind", ["png", "jpg", "tif16"])
def test_validation_needs_about_the_rgb_size_in_memory(tmp_path: Path, kind: str) -> None:
    """Peak memory of validating a 4000 x 3000 image, in a fresh process: the RGB output (plus
    the compressed file for PNG/JPEG, which are decoded from memory) plus a little, not several
    full-size copies (Pillow's way: ~3.3x the RGB size; a whole-array TIFF decode: ~6x)."""
    import os
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(small).resize((4000, 3000), Image.Resampling.BILINEAR))
    path = tmp_path / f"big.{kind[:3]}"
    if kind == "tif16":
        tifffile.imwrite(path, image.astype(np.uint16) * 257, photometric="rgb", tile=(256, 256))
    else:
        Image.fromarray(image).save(path, compress_level=1) if kind == "png" else Image.fromarray(
            image
        ).save(path, quality=90)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    peak, nbytes = (int(v) for v in done.stdout.split())
    if peak < 0:
        pytest.skip("this kernel does not let a process reset its peak RSS")
    in_memory = path.stat().st_size if kind != "tif16" else 0
    assert peak <= 1.25 * nbytes + in_memory + (32 << 20), (peak, nbytes)


@pytest.mark.parametrize(
    "options",
    [{"progressive": True}, {"restart_marker_rows": 1}, {"subsampling": 0, "quality": 97}],
    ids=["progressive", "restart-markers", "444"],
)
def test_jpeg_variants_decode_as_pillow_does(
    tmp_path: Path, rgb: np.ndarray, options: dict[str, object]
) -> None:
    """Several scans, restart markers, no chroma subsampling: the structure check accepts them
    and the pixels are Pillow's (the same libjpeg-turbo)."""
    path = tmp_path / "variant.jpg"
    Image.fromarray(rgb).save(path, **options)
    _, out = read_rgb(path, max_pixels=MAX)
    with Image.open(path) as im:
        np.testing.assert_array_equal(out, np.asarray(im.convert("RGB")))

"""JPEGs that are not whole: cut short and given an end-of-image marker again, scans or restart
intervals missing, corrupt entropy-coded data (:mod:`her2ops.imaging.jpeg_reader`)."""

from __future__ import annotations

import io
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from PIL import Image

from her2ops.imaging.jpeg_reader import check_jpeg
from her2ops.imaging.readers import ImageError, read_rgb

MAX = 10_000_000
EOI = b"\xff\xd9"


@pytest.fixture()
def rgb() -> np.ndarray:
    """A 70 x 60 textured RGB image."""
    rng = np.random.default_rng(7)
    small = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((70, 60), Image.Resampling.BILINEAR))


def _jpeg(image: np.ndarray | Image.Image, **options: object) -> bytes:
    buf = io.BytesIO()
    pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
    pil.save(buf, "JPEG", **options)
    return buf.getvalue()


def _scan_data(data: bytes, scan: int = 0) -> tuple[int, int]:
    return check_jpeg(Path("x.jpg"), data).scans[scan].data


def test_cut_and_given_an_end_marker_again_is_refused(tmp_path: Path, rgb: np.ndarray) -> None:
    data = _jpeg(rgb, quality=90)
    start, end = _scan_data(data)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: (start + end) // 2] + EOI)
    # the gap this closes: libjpeg only warns, Pillow and imagecodecs decode it, half grey
    with Image.open(cut) as im:
        im.load()
    lenient = imagecodecs.jpeg8_decode(cut.read_bytes())
    assert (lenient[-8:] == 128).all()
    with pytest.raises(ImageError, match=r"cut\.jpg: truncated JPEG \(the entropy-coded data"):
        read_rgb(cut, max_pixels=MAX)
    whole = tmp_path / "whole.jpg"
    whole.write_bytes(data)
    _, out = read_rgb(whole, max_pixels=MAX)  # the whole file still passes, with Pillow's pixels
    with Image.open(whole) as im:
        np.testing.assert_array_equal(out, np.asarray(im.convert("RGB")))


@pytest.mark.parametrize(
    ("mode", "options"),
    [
        ("RGB", {"quality": 90}),
        ("RGB", {"progressive": True}),
        ("RGB", {"restart_marker_rows": 1}),
        ("RGB", {"quality": 97, "subsampling": 0}),
        ("L", {"quality": 90}),
        ("CMYK", {"quality": 90}),
    ],
    ids=["baseline", "progressive", "restart-markers", "444", "grayscale", "cmyk"],
)
def test_every_cut_that_loses_pixels_is_refused(
    tmp_path: Path, rgb: np.ndarray, mode: str, options: dict[str, object]
) -> None:
    """Cut at (every third byte of) the image data and end the file with EOI: refused, unless
    what is lost does not change a pixel (a last byte holding nothing but filler)."""
    data = _jpeg(Image.fromarray(rgb).convert(mode), **options)
    layout = check_jpeg(Path("x.jpg"), data)
    first, last = layout.scans[0].data[0], layout.scans[-1].data[1]
    expected = imagecodecs.jpeg8_decode(data)
    path = tmp_path / "cut.jpg"
    cuts = sorted({*range(first + 1, last, 3), *range(last - 8, last)})
    refused = 0
    for cut in cuts:
        damaged = data[:cut] + EOI
        path.write_bytes(damaged)
        try:
            read_rgb(path, max_pixels=MAX)
        except ImageError as exc:
            assert str(exc).startswith(f"{path}: truncated"), exc
            refused += 1
            continue
        assert np.array_equal(imagecodecs.jpeg8_decode(damaged), expected), f"cut at {cut}"
    assert refused >= len(cuts) - 8, (refused, len(cuts))


def test_progressive_jpeg_missing_its_last_scans_is_refused(
    tmp_path: Path, rgb: np.ndarray
) -> None:
    """A cut between two scans: no scan runs short, only the scan headers tell."""
    data = _jpeg(rgb, progressive=True)
    layout = check_jpeg(Path("x.jpg"), data)
    assert len(layout.scans) > 3
    path = tmp_path / "fewer_scans.jpg"
    path.write_bytes(data[: layout.scans[3].data[1]] + EOI)
    with pytest.raises(ImageError, match=r"fewer_scans\.jpg: truncated JPEG.*scans missing"):
        read_rgb(path, max_pixels=MAX)


def test_cut_between_restart_intervals_is_refused(tmp_path: Path, rgb: np.ndarray) -> None:
    """A cut just before a restart marker: every interval left is complete, the count of restart
    markers tells."""
    data = _jpeg(rgb, restart_marker_rows=1)
    start, end = _scan_data(data)
    marker = data.index(b"\xff\xd2", start, end)  # the third (and last) restart marker
    path = tmp_path / "fewer_intervals.jpg"
    path.write_bytes(data[:marker] + EOI)
    with pytest.raises(
        ImageError, match=r"fewer_intervals\.jpg: .*holds 2 restart markers, its 20 MCUs need 3"
    ):
        read_rgb(path, max_pixels=MAX)


def test_chosen_picture_of_a_multi_picture_jpeg_is_checked(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "two.mpo"
    Image.fromarray(rgb).save(
        path, "MPO", save_all=True, append_images=[Image.fromarray(255 - rgb)]
    )
    data = path.read_bytes()
    with Image.open(path) as im:
        im.seek(1)
        second = im.tile[0].offset
    layout = check_jpeg(path, data, second)
    start, end = layout.scans[0].data
    cut = tmp_path / "cut.mpo"
    cut.write_bytes(data[: (start + end) // 2] + EOI)
    read_rgb(cut, max_pixels=MAX, page=0)  # the first picture is whole
    with pytest.raises(ImageError, match=r"cut\.mpo: truncated JPEG"):
        read_rgb(cut, max_pixels=MAX, page=1)


def test_arithmetic_coded_jpeg_is_refused(tmp_path: Path, rgb: np.ndarray) -> None:
    data = bytearray(_jpeg(rgb))
    sof = data.index(b"\xff\xc0")
    data[sof + 1] = 0xC9  # the frame header of an arithmetic-coded sequential JPEG
    path = tmp_path / "arith.jpg"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"arith\.jpg: arithmetic-coded JPEG is not supported"):
        read_rgb(path, max_pixels=MAX)


def test_corrupt_data_that_runs_short_is_refused(tmp_path: Path, rgb: np.ndarray) -> None:
    """64 bytes of the image data overwritten: they decode to longer codes, so the data runs
    out before the last block."""
    data = bytearray(_jpeg(rgb, quality=90))
    start, end = _scan_data(bytes(data))
    middle = (start + end) // 2
    data[middle : middle + 64] = b"\xfe" * 64
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"corrupt\.jpg: truncated JPEG"):
        read_rgb(path, max_pixels=MAX)


@pytest.mark.xfail(
    strict=True,
    reason="known limit: corrupt entropy-coded data that still decodes to the right number of "
    "blocks is not detected (libjpeg's 'extraneous bytes' warning is not visible from Python)",
)
def test_corrupt_data_that_still_fills_the_image_is_refused(
    tmp_path: Path, rgb: np.ndarray
) -> None:
    data = bytearray(_jpeg(rgb, quality=90))
    start, end = _scan_data(bytes(data))
    middle = (start + end) // 2
    data[middle : middle + 8] = b"\xfe" * 8
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError):
        read_rgb(path, max_pixels=MAX)


def test_lossless_jpeg_passes_and_its_cut_is_refused(tmp_path: Path, rgb: np.ndarray) -> None:
    data = imagecodecs.jpeg8_encode(rgb, lossless=True, predictor=1)
    path = tmp_path / "lossless.jpg"
    path.write_bytes(data)
    _, out = read_rgb(path, max_pixels=MAX)
    np.testing.assert_array_equal(out, rgb)
    start, end = _scan_data(data)
    path.write_bytes(data[: (start + end) // 2] + EOI)
    with pytest.raises(ImageError, match=r"lossless\.jpg: truncated JPEG"):
        read_rgb(path, max_pixels=MAX)


def test_a_jpeg_slide_cut_short_is_refused_by_dearray(tmp_path: Path, rgb: np.ndarray) -> None:
    """A slide is read as ingest reads a core: a JPEG slide cut short is refused, not dearrayed
    half grey; the whole one gives Pillow's pixels."""
    from her2ops.imaging.dearray import SlideImage

    data = _jpeg(rgb, quality=90)
    start, end = _scan_data(data)
    cut = tmp_path / "slide-cut.jpg"
    cut.write_bytes(data[: (start + end) // 2] + EOI)
    slide = SlideImage(cut, max_pixels=MAX)  # the header is whole
    with pytest.raises(ImageError, match=r"slide-cut\.jpg: truncated JPEG"):
        slide.full()
    whole = tmp_path / "slide.jpg"
    whole.write_bytes(data)
    with Image.open(whole) as im:
        np.testing.assert_array_equal(
            SlideImage(whole, max_pixels=MAX).full(), np.asarray(im.convert("RGB"))
        )

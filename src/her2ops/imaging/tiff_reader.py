"""TIFF and BigTIFF (strips or tiles, pyramidal or not, OME, SVS, NDPI ...) through tifffile.

Part of :mod:`her2ops.imaging.readers` (which documents the conversions). What is special here:

- **pages**: a file may hold several images (a multi-page TIFF, an OME file with several series,
  a stack). Pyramid levels of one image are not pages, nor are the associated images of a slide
  format (label, macro, thumbnail of an SVS, NDPI, SCN or BIF file: the slide is the baseline).
  A file with more than one page is refused unless the caller chooses one (``page=``);
- **bounded memory**: the chosen page is decoded segment by segment (tile or strip) and each
  segment converted straight into the preallocated ``(H, W, 3)`` output, so validation needs the
  output plus a few segments, not a full-size copy per conversion step;
- **strict**: a tile or strip with no data, one that does not decode, or any warning tifffile
  logs while decoding is an error, not a black patch. A JPEG-compressed tile or strip
  (compression 7, as scanners write; its tables may be in the page's JPEGTables) is checked
  and probed like a JPEG file (:func:`her2ops.imaging.jpeg_reader.decode_jpeg_segment`), since
  libjpeg fills a cut tile in grey with a mere warning that never reaches Python; the error
  names the file, the page and the tile or strip (its index in TileOffsets or StripOffsets).
  NDPI's JPEG (one stream cut into tiles by restart markers, which tifffile reads through a
  header of its own) is not checked this way.

Every read of a TIFF's pixels for ingest (:func:`~her2ops.imaging.readers.read_rgb`) and
dearray (:class:`~her2ops.imaging.dearray.SlideImage`, its overview level included) goes
through :func:`decode_tiff`.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from her2ops.imaging.readers import ImageError, PixelConversion, check_size

SLIDE_FLAGS = ("svs", "ndpi", "scn", "bif")
_ROWS = 1024  # rows converted at once for planar (separate-sample) pages
_READ_BYTES = 8 << 20  # compressed bytes read from the file at once
# tiles or strips that each hold a JPEG stream: JPEG ("new-style"), DNG's lossy JPEG
_JPEG = frozenset({7, 34892})


class TiffUnreadable(ImageError):
    """tifffile cannot parse the file's structure (OpenSlide may still read a slide format)."""


def decode_tiff(
    path: Path, max_pixels: int, page: int | None, *, level: int = 0
) -> tuple[str, str, str | None, np.ndarray]:
    """``(format, mode, conversion, rgb)`` of one page of a TIFF file; ``level``: a lower
    pyramid level of a file holding one image (0: full resolution)."""
    import tifffile

    try:
        tf = tifffile.TiffFile(path)
    except Exception as exc:
        raise TiffUnreadable(f"{path}: unreadable or corrupt TIFF: {exc}") from None
    with tf:
        try:
            pages = image_pages(tf)
        except ImageError:
            raise
        except Exception as exc:
            raise TiffUnreadable(f"{path}: unreadable or corrupt TIFF structure: {exc}") from None
        if not pages:
            raise TiffUnreadable(f"{path}: TIFF holds no image")
        if page is None and len(pages) > 1:
            raise ImageError(
                f"{path}: TIFF holds {len(pages)} pages (images); choose one (page 0 to "
                f"{len(pages) - 1}) instead of taking the first"
            )
        index = page or 0
        if not 0 <= index < len(pages):
            raise ImageError(f"{path}: page {index} asked, the TIFF holds {len(pages)} page(s)")
        tpage, where = pages[index], f"{path}: page {index}"
        if level:
            tpage = _level_page(path, tf, len(pages), level)
            where += f", pyramid level {level}"
        height, width = int(tpage.imagelength), int(tpage.imagewidth)
        check_size(path, width, height, max_pixels)
        if int(tpage.imagedepth) != 1:
            raise ImageError(f"{path}: volumetric TIFF (depth {tpage.imagedepth}) not supported")
        fmt = "BigTIFF" if tf.is_bigtiff else "TIFF"
        for flag in ("svs", "ndpi", "scn", "ome", "bif"):
            if getattr(tf, f"is_{flag}", False):
                fmt += f" ({flag.upper()})"
                break
        _check_extent(path, tf.filehandle.size, tpage)
        conv = _conversion(path, tpage)
        rgb = np.empty((height, width, 3), dtype=np.uint8)
        with _strict(path):
            try:
                _decode_into(path, where, tpage, conv, rgb)
            except ImageError:
                raise
            except Exception as exc:
                raise ImageError(f"{path}: truncated or corrupt TIFF data: {exc}") from None
        return fmt, conv.mode, conv.description, rgb


def image_pages(tf: Any) -> list[Any]:
    """The full-resolution page of every image in the file, in order."""
    slide = any(getattr(tf, f"is_{flag}", False) for flag in SLIDE_FLAGS)
    series_list = tf.series[:1] if slide else tf.series
    pages: list[Any] = []
    for series in series_list:
        level = series.levels[0] if series.levels else series
        # axes other than Y, X and samples (S, or C as OME writes RGB) index separate images
        count = 1
        for axis, size in zip(level.axes, level.shape, strict=True):
            if axis not in "YXSC":
                count *= int(size)
        level_pages = [p for p in level.pages if p is not None]
        if count == 1:
            pages.append(level.keyframe)
        elif len(level_pages) == count:
            pages.extend(level_pages)
        else:
            raise ImageError(
                f"{tf.filehandle.path}: TIFF series of shape {level.shape} ({level.axes}) "
                "is not a set of 2-D images"
            )
    return pages


def _level_page(path: Path, tf: Any, pages: int, level: int) -> Any:
    levels = tf.series[0].levels
    if pages != 1 or not 0 <= level < len(levels):
        raise ImageError(
            f"{path}: pyramid level {level} asked, the TIFF holds {pages} image(s) and "
            f"{len(levels)} level(s)"
        )
    return levels[level].keyframe


def _check_extent(path: Path, size: int, page: Any) -> None:
    # A truncated TIFF can keep a valid header: tiles past the end of file would decode as zeros.
    for offset, count in zip(page.dataoffsets, page.databytecounts, strict=False):
        if count and offset + count > size:
            raise ImageError(
                f"{path}: truncated TIFF (image data ends at byte {offset + count:,}, "
                f"file has {size:,})"
            )


def _conversion(path: Path, page: Any) -> PixelConversion:
    import tifffile

    dtype = np.dtype(page.dtype) if page.dtype is not None else None
    if dtype == np.bool_:
        depth, scale = "", "bool"
    elif dtype == np.uint8:
        depth, scale = "", None
    elif dtype == np.uint16:
        depth, scale = ";16", "shift"
    else:
        raise ImageError(f"{path}: TIFF sample type {dtype} not supported (uint8, uint16 only)")
    samples = int(page.samplesperpixel)
    photometric = page.photometric
    if photometric == tifffile.PHOTOMETRIC.PALETTE and samples == 1:
        cmap = page.colormap
        if cmap is None:
            raise ImageError(f"{path}: palette TIFF without a colour map")
        lut = (np.asarray(cmap, dtype=np.uint32) >> 8).astype(np.uint8).T  # (entries, 3)
        return PixelConversion(samples=1, scale=None, lut=lut, mode="P", description="P->RGB")
    if photometric in (tifffile.PHOTOMETRIC.SEPARATED, tifffile.PHOTOMETRIC.CIELAB):
        raise ImageError(f"{path}: TIFF colour space {photometric.name} not supported")
    if samples not in (1, 2, 3, 4):
        raise ImageError(f"{path}: TIFF with {samples} samples per pixel not supported")
    parts = ["scaled >>8"] if depth else []
    invert = photometric == tifffile.PHOTOMETRIC.MINISWHITE
    if invert:
        parts.append("inverted (min-is-white)")
    suffix = f" ({', '.join(parts)})" if parts else ""
    premultiplied = False
    if samples in (1, 2):
        mode = ("L" if samples == 1 else "LA") + depth
        description: str | None = f"{mode}->RGB" + (" over white" if samples == 2 else "") + suffix
    elif samples == 3:
        mode = "RGB" + depth
        description = f"{mode}->RGB{suffix}" if parts else None
    else:
        mode = "RGBA" + depth
        extrasamples = tuple(page.extrasamples or ())
        premultiplied = bool(extrasamples) and extrasamples[0] == tifffile.EXTRASAMPLE.ASSOCALPHA
        description = (
            f"{mode}->RGB over white (premultiplied)"
            if premultiplied
            else f"{mode}->RGB over white{suffix}"
        )
    return PixelConversion(
        samples=samples,
        scale=scale,
        invert=invert,
        premultiplied=premultiplied,
        mode=mode,
        description=description,
    )


def _decode_into(path: Path, where: str, page: Any, conv: PixelConversion, rgb: np.ndarray) -> None:
    height, width = rgb.shape[:2]
    separate = int(page.planarconfig) == 2 and conv.samples > 1
    staging = np.empty((height, width, conv.samples), dtype=np.uint8) if separate else None
    for segment, index, shape in _segments(where, page):
        s, _, y, x, _ = index
        if segment is None:
            raise ImageError(f"{path}: truncated TIFF (a tile or strip at row {y} has no data)")
        h, w = min(shape[1], height - y), min(shape[2], width - x)
        if h <= 0 or w <= 0:
            continue
        chunk = segment.reshape(shape)[0, :h, :w]
        if staging is not None:
            staging[y : y + h, x : x + w, s] = conv.depth(chunk[..., 0])
        else:
            conv.apply(chunk, rgb[y : y + h, x : x + w])
    if staging is not None:
        for y in range(0, height, _ROWS):
            conv.apply(staging[y : y + _ROWS], rgb[y : y + _ROWS], scaled=True)


def _segments(where: str, page: Any) -> Iterator[tuple[Any, Any, Any]]:
    """``page.segments()``, in order: ``(samples or None, index, shape)`` of each tile or strip;
    a JPEG one is checked and probed first, with tifffile's own decoder (same samples)."""
    keyframe = page.keyframe
    if int(keyframe.compression) not in _JPEG or keyframe.jpegheader is not None:
        yield from page.segments(maxworkers=1, buffersize=_READ_BYTES)
        return
    from her2ops.imaging.jpeg_reader import decode_jpeg_segment

    # as page.segments() decodes: tifffile's decoder for the page, the page's JPEGTables
    args = {"jpegtables": page.jpegtables, "jpegheader": None, "_fullsize": keyframe.is_tiled}
    kind = "tile" if keyframe.is_tiled else "strip"
    fh = page.parent.filehandle
    for data, number in fh.read_segments(
        page.dataoffsets,
        page.databytecounts,
        length=math.prod(keyframe.chunked),
        sort=False,
        lock=fh.lock,
        buffersize=_READ_BYTES,
        flat=True,
    ):
        _, index, shape = keyframe.decode(None, number, **args)  # no data: where it goes
        if data is None:
            yield None, index, shape
            continue
        name = f"{where}, {kind} {number} (x {index[3]}, y {index[2]})"
        decode = partial(_decode_segment, keyframe.decode, number, args)
        yield decode_jpeg_segment(name, data, decode), index, shape


def _decode_segment(decode: Any, number: int, args: dict[str, Any], data: bytearray) -> np.ndarray:
    samples: np.ndarray = decode(data, number, **args)[0]
    return samples


@contextmanager
def _strict(path: Path) -> Iterator[None]:
    """Turn Python warnings and tifffile's logged warnings during a decode into an error."""
    logged: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append(record.getMessage())

    handler = _Collect(level=logging.WARNING)
    logger = logging.getLogger("tifffile")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                yield
            except Warning as warning:
                raise ImageError(f"{path}: TIFF decoder warning: {warning}") from None
    finally:
        logger.removeHandler(handler)
    if logged:
        raise ImageError(f"{path}: TIFF decoder warning: {logged[0]}")

"""Validate and decode core images into RGB uint8 arrays.

Accepted inputs:

- PNG and JPEG through Pillow;
- TIFF and BigTIFF (strips or tiles, pyramidal or not, OME, SVS, NDPI ...) through tifffile, which
  reads the full-resolution level;
- the whole-slide formats OpenSlide reads (``.svs``, ``.ndpi``, ``.mrxs``, ``.scn``, ``.vms`` ...)
  through openslide when neither of the above can.

Every image becomes an ``(H, W, 3)`` uint8 RGB array. Conversions, reported in
:attr:`ImageInfo.conversion`:

- ``RGBA``/``LA``/palette with transparency: composited over white (glass is white);
- ``L`` and ``1`` (grayscale, bilevel): replicated to three channels;
- ``P`` (palette): expanded through the palette;
- 16-bit (``I;16``, ``RGB;16``, uint16 TIFF): the high byte is kept (``>> 8``);
- ``CMYK``/``YCbCr`` JPEG: converted by Pillow.

Refused with :class:`ImageError`: missing, unreadable, truncated or corrupt files, images with more
than ``max_pixels`` pixels (checked from the header, before anything is decoded), and modes with
no faithful RGB meaning (float, signed or 32-bit integer, CMYK TIFF, multi-channel stacks).
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# Whole-slide formats OpenSlide reads; TIFF-based ones are tried with tifffile first.
SLIDE_SUFFIXES = frozenset(
    {".svs", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm"}
)
PILLOW_FORMATS = frozenset({"PNG", "JPEG", "MPO"})
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_HASH_CHUNK = 1 << 20
# Pillow's bomb limit is a module global; we swap it out around ``Image.open`` only.
_PIL_LIMIT_LOCK = threading.Lock()


class ImageError(ValueError):
    """An input image is missing, unreadable, corrupt, too large or of an unsupported kind."""


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`inspect_image` learnt about one image file."""

    path: Path
    format: str
    width: int
    height: int
    mode: str
    conversion: str | None
    sha256: str


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def inspect_image(path: Path | str, *, max_pixels: int) -> ImageInfo:
    """Validate an image fully (header, size limit, complete decode) and describe it."""
    info, _ = read_rgb(path, max_pixels=max_pixels)
    return info


def load_rgb(path: Path | str, *, max_pixels: int) -> np.ndarray:
    """Decode an image to an ``(H, W, 3)`` uint8 RGB array with the documented conversions."""
    _, rgb = read_rgb(path, max_pixels=max_pixels)
    return rgb


def read_rgb(
    path: Path | str, *, max_pixels: int, sha256: str | None = None
) -> tuple[ImageInfo, np.ndarray]:
    """Validate and decode in one pass: ``(info, rgb)``; what ingest uses to decode once.

    ``sha256``, when the caller already hashed the file, is trusted instead of hashing again.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read: {exc}") from None
    if len(magic) < 4:
        raise ImageError(f"{path}: empty or truncated file ({len(magic)} bytes)")
    suffix = path.suffix.lower()

    if magic in _TIFF_MAGIC:
        try:
            fmt, mode, conversion, rgb = _decode_tiff(path, max_pixels)
        except _TiffUnreadable as exc:
            if suffix not in SLIDE_SUFFIXES:
                raise
            fmt, mode, conversion, rgb = _decode_openslide(path, max_pixels, first_error=exc)
    else:
        try:
            fmt, mode, conversion, rgb = _decode_pillow(path, max_pixels)
        except _NotPillow as exc:
            if suffix not in SLIDE_SUFFIXES:
                raise ImageError(
                    f"{path}: not a supported image (PNG, JPEG, TIFF or a slide format): {exc}"
                ) from None
            fmt, mode, conversion, rgb = _decode_openslide(path, max_pixels, first_error=exc)

    height, width = rgb.shape[:2]
    info = ImageInfo(
        path=path,
        format=fmt,
        width=int(width),
        height=int(height),
        mode=mode,
        conversion=conversion,
        sha256=sha256 or file_sha256(path),
    )
    return info, rgb


def _check_size(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"{path}: invalid image size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError(
            f"{path}: image too large ({width}x{height} = {width * height:,} pixels > "
            f"max_pixels {max_pixels:,}); refused before decoding (possible decompression bomb)"
        )


# --- Pillow (PNG, JPEG) -------------------------------------------------------------------------


class _NotPillow(Exception):
    """Pillow does not recognise the file (as opposed to recognising a broken one)."""


@contextmanager
def _pillow_limit_off() -> Iterator[None]:
    # Our own width*height check is the bomb guard; Pillow's would fire (as an error) only above
    # 2x its limit and after it has already parsed the header, so it is switched off while we
    # open, then restored for everyone else in the process.
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _decode_pillow(path: Path, max_pixels: int) -> tuple[str, str, str | None, np.ndarray]:
    try:
        with _pillow_limit_off():
            im = Image.open(path)
    except Image.UnidentifiedImageError as exc:
        raise _NotPillow(str(exc)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: unreadable or corrupt header: {exc}") from None
    with im:
        fmt = im.format or "unknown"
        if fmt not in PILLOW_FORMATS:
            raise ImageError(f"{path}: {fmt} images are not supported (PNG, JPEG, TIFF, slides)")
        width, height = im.size
        _check_size(path, width, height, max_pixels)
        rawmode = str(im.tile[0].args) if im.tile and isinstance(im.tile[0].args, str) else ""
        mode = im.mode
        if fmt == "PNG":
            _verify_png(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im.load()
        except Exception as exc:  # Pillow raises OSError, SyntaxError, zlib.error ...
            raise ImageError(f"{path}: truncated or corrupt image data: {exc}") from None
        conversion, rgb = _pillow_to_rgb(path, im, rawmode)
    if rgb.shape[:2] != (height, width):
        raise ImageError(f"{path}: decoded size {rgb.shape[:2]} does not match header")
    if rawmode.endswith(";16B") and mode in ("RGB", "RGBA"):
        # Pillow keeps the high byte of 16-bit colour PNGs; say so.
        mode = f"{mode};16"
        conversion = f"{mode}->RGB (scaled >>8)" + (" over white" if "A" in mode else "")
    return fmt, mode, conversion, rgb


def _verify_png(path: Path) -> None:
    # verify() checks every chunk's CRC, which catches corruption a successful inflate would miss.
    try:
        with _pillow_limit_off():
            probe = Image.open(path)
        with probe:
            probe.verify()
    except Exception as exc:
        raise ImageError(f"{path}: corrupt PNG (chunk check failed: {exc})") from None


def _pillow_to_rgb(path: Path, im: Image.Image, rawmode: str) -> tuple[str | None, np.ndarray]:
    mode = im.mode
    if mode == "RGB":
        return None, np.asarray(im, dtype=np.uint8)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint8)
        return f"{mode}->RGB over white", _over_white(rgba[..., :3], rgba[..., 3])
    if mode in ("L", "1", "P", "CMYK", "YCbCr"):
        return f"{mode}->RGB", np.asarray(im.convert("RGB"), dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(im)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageError(f"{path}: {mode} image with values outside 0..65535 is not supported")
        gray = (values.astype(np.uint32) >> 8).astype(np.uint8)
        return f"{mode}->RGB (scaled >>8)", np.repeat(gray[..., None], 3, axis=2)
    raise ImageError(f"{path}: image mode {mode} ({rawmode or 'unknown raw mode'}) not supported")


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite straight (unassociated) alpha over white, in integer arithmetic."""
    a = alpha.astype(np.uint16)[..., None]
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


# --- tifffile (TIFF, BigTIFF, pyramidal, SVS ...) -----------------------------------------------


class _TiffUnreadable(ImageError):
    """tifffile cannot parse the file's structure (OpenSlide may still read a slide format)."""


def _decode_tiff(path: Path, max_pixels: int) -> tuple[str, str, str | None, np.ndarray]:
    import tifffile

    try:
        tf = tifffile.TiffFile(path)
    except Exception as exc:
        raise _TiffUnreadable(f"{path}: unreadable or corrupt TIFF: {exc}") from None
    with tf:
        try:
            series = tf.series[0]
            level = series.levels[0] if series.levels else series
            page = level.keyframe
            axes, shape = level.axes, level.shape
        except Exception as exc:
            raise _TiffUnreadable(f"{path}: unreadable or corrupt TIFF structure: {exc}") from None
        if "Y" not in axes or "X" not in axes:
            raise ImageError(f"{path}: TIFF series has no Y/X axes ({axes})")
        height, width = shape[axes.index("Y")], shape[axes.index("X")]
        _check_size(path, width, height, max_pixels)
        fmt = "BigTIFF" if tf.is_bigtiff else "TIFF"
        for flag in ("svs", "ndpi", "scn", "ome", "bif"):
            if getattr(tf, f"is_{flag}", False):
                fmt += f" ({flag.upper()})"
                break
        _check_extent(path, tf, level.pages)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data = level.asarray()
        except Exception as exc:
            raise ImageError(f"{path}: truncated or corrupt TIFF data: {exc}") from None
        return (fmt, *_tiff_to_rgb(path, data, axes, page))


def _check_extent(path: Path, tf: Any, pages: Any) -> None:
    # A truncated TIFF can keep a valid header: tiles past the end of file would decode as zeros.
    size = tf.filehandle.size
    for page in pages:
        if page is None:
            continue
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=False):
            if count and offset + count > size:
                raise ImageError(
                    f"{path}: truncated TIFF (image data ends at byte {offset + count:,}, "
                    f"file has {size:,})"
                )


def _tiff_to_rgb(
    path: Path, data: np.ndarray, axes: str, page: Any
) -> tuple[str, str | None, np.ndarray]:
    import tifffile

    # Bring the array to (Y, X, S); any other leading axes (pages, Z, T) must have length 1.
    sample_axis = next((a for a in "SC" if a in axes), None)
    order = [axes.index("Y"), axes.index("X")]
    if sample_axis is not None:
        order.append(axes.index(sample_axis))
    others = [i for i in range(data.ndim) if i not in order]
    if any(data.shape[i] != 1 for i in others):
        raise ImageError(f"{path}: TIFF with extra dimensions {axes} {data.shape} not supported")
    data = data.transpose(*others, *order).reshape([data.shape[i] for i in order])
    if data.ndim == 2:
        data = data[..., None]
    samples = data.shape[2]
    photometric = page.photometric
    kind = data.dtype

    if kind == np.bool_:
        data, depth = data.astype(np.uint8) * 255, ""
    elif kind == np.uint8:
        depth = ""
    elif kind == np.uint16:
        depth = ";16"
    else:
        raise ImageError(f"{path}: TIFF sample type {kind} not supported (uint8, uint16 only)")

    conversion: list[str] = []
    if photometric == tifffile.PHOTOMETRIC.PALETTE and samples == 1:
        cmap = page.colormap
        if cmap is None:
            raise ImageError(f"{path}: palette TIFF without a colour map")
        lut = (np.asarray(cmap, dtype=np.uint32) >> 8).astype(np.uint8).T  # (entries, 3)
        index = data[..., 0].astype(np.intp)
        if index.max(initial=0) >= lut.shape[0]:
            raise ImageError(f"{path}: palette index out of range of its colour map")
        return "P", "P->RGB", lut[index]
    if photometric in (tifffile.PHOTOMETRIC.SEPARATED, tifffile.PHOTOMETRIC.CIELAB):
        raise ImageError(f"{path}: TIFF colour space {photometric.name} not supported")
    if depth:
        data = (data >> 8).astype(np.uint8)
        conversion.append("scaled >>8")
    if photometric == tifffile.PHOTOMETRIC.MINISWHITE:
        data = 255 - data
        conversion.append("inverted (min-is-white)")

    if samples in (1, 2):
        mode = ("L" if samples == 1 else "LA") + depth
        gray = np.repeat(data[..., :1], 3, axis=2)
        rgb = _over_white(gray, data[..., 1]) if samples == 2 else gray
        extra = " over white" if samples == 2 else ""
        return mode, f"{mode}->RGB{extra}" + _suffix(conversion), rgb
    if samples == 3:
        mode = "RGB" + depth
        return mode, (f"{mode}->RGB" + _suffix(conversion)) if conversion else None, data
    if samples == 4:
        mode = "RGBA" + depth
        rgb, alpha = data[..., :3], data[..., 3]
        extrasamples = tuple(page.extrasamples or ())
        if extrasamples and extrasamples[0] == tifffile.EXTRASAMPLE.ASSOCALPHA:
            # premultiplied: colour already scaled by alpha, so add white * (1 - alpha)
            out = rgb.astype(np.uint16) + (255 - alpha.astype(np.uint16))[..., None]
            return (
                mode,
                f"{mode}->RGB over white (premultiplied)",
                out.clip(0, 255).astype(np.uint8),
            )
        return mode, f"{mode}->RGB over white" + _suffix(conversion), _over_white(rgb, alpha)
    raise ImageError(f"{path}: TIFF with {samples} samples per pixel not supported")


def _suffix(parts: list[str]) -> str:
    return f" ({', '.join(parts)})" if parts else ""


# --- OpenSlide (vendor whole-slide formats) -----------------------------------------------------

_STRIP_ROWS = 1024


def _decode_openslide(
    path: Path, max_pixels: int, *, first_error: Exception
) -> tuple[str, str, str | None, np.ndarray]:
    try:
        import openslide
    except ImportError:  # pragma: no cover - openslide-bin is a dependency
        raise ImageError(f"{path}: unreadable ({first_error}); openslide not installed") from None
    try:
        slide = openslide.OpenSlide(str(path))
    except Exception as exc:
        raise ImageError(f"{path}: unreadable image ({first_error}); OpenSlide: {exc}") from None
    with slide:
        width, height = slide.dimensions
        _check_size(path, width, height, max_pixels)
        vendor = slide.properties.get("openslide.vendor", "unknown")
        rgb = np.empty((height, width, 3), dtype=np.uint8)
        try:
            # Strips keep the RGBA intermediate small; OpenSlide returns straight alpha, with
            # alpha 0 where nothing was scanned: white, like glass.
            for y in range(0, height, _STRIP_ROWS):
                rows = min(_STRIP_ROWS, height - y)
                rgba = np.asarray(slide.read_region((0, y), 0, (width, rows)), dtype=np.uint8)
                rgb[y : y + rows] = _over_white(rgba[..., :3], rgba[..., 3])
        except Exception as exc:
            raise ImageError(f"{path}: truncated or corrupt slide data: {exc}") from None
    return f"OpenSlide ({vendor})", "RGBA", "RGBA->RGB over white", rgb

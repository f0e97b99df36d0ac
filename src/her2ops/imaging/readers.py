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

Decoding is strict: a PNG is decoded by libpng (through imagecodecs), which refuses pixel data
that stops early even when every chunk is valid and IEND is present (Pillow fills such rows with
black); a JPEG must be whole: complete segments, every scan and restart interval present, an
end-of-image marker after the last scan, and entropy-coded data that does not stop before the
last block (libjpeg only warns about that and fills in grey; :mod:`her2ops.imaging.jpeg_reader`
says how it is detected, and what it cannot promise); in TIFF, any decoder warning is an error
and each tile or strip of a JPEG-compressed page must be a whole JPEG in the same sense
(:mod:`her2ops.imaging.tiff_reader`). Files with several
images (multi-page TIFF, animated PNG, multi-picture JPEG) are refused, naming how many they
hold, unless the caller chooses one with ``page=``.

Memory: the output ``(H, W, 3)`` array is allocated once and 8-bit RGB PNG and JPEG data, and TIFF
segment by segment, are decoded straight into it, so validating an image takes about its RGB
size plus the compressed file (other PNG modes add one decoded copy in their own sample format;
a chosen frame of an animation goes through Pillow). A JPEG is decoded twice into that same
array (the truncation probe), which costs time, not memory.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from her2ops.errors import InvalidRequest

# Whole-slide formats OpenSlide reads; TIFF-based ones are tried with tifffile first.
SLIDE_SUFFIXES = frozenset(
    {".svs", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm"}
)
PILLOW_FORMATS = frozenset({"PNG", "JPEG", "MPO"})
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_HASH_CHUNK = 1 << 20
# Pillow's bomb limit is a module global; we swap it out around ``Image.open`` only.
_PIL_LIMIT_LOCK = threading.Lock()


class ImageError(InvalidRequest, ValueError):
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


def inspect_image(path: Path | str, *, max_pixels: int, page: int | None = None) -> ImageInfo:
    """Validate an image fully (header, size limit, complete decode) and describe it."""
    info, _ = read_rgb(path, max_pixels=max_pixels, page=page)
    return info


def load_rgb(path: Path | str, *, max_pixels: int, page: int | None = None) -> np.ndarray:
    """Decode an image to an ``(H, W, 3)`` uint8 RGB array with the documented conversions."""
    _, rgb = read_rgb(path, max_pixels=max_pixels, page=page)
    return rgb


def read_rgb(
    path: Path | str, *, max_pixels: int, sha256: str | None = None, page: int | None = None
) -> tuple[ImageInfo, np.ndarray]:
    """Validate and decode in one pass: ``(info, rgb)``; what ingest uses to decode once.

    ``sha256``, when the caller already hashed the file, is trusted instead of hashing again.
    ``page`` chooses one image of a file that holds several (0-based); without it such a file
    is refused. A single image is page 0.
    """
    if page is not None and page < 0:
        raise ImageError(f"{path}: page must be >= 0, got {page}")
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

    if magic in TIFF_MAGIC:
        from her2ops.imaging.tiff_reader import TiffUnreadable, decode_tiff

        try:
            fmt, mode, conversion, rgb = decode_tiff(path, max_pixels, page)
        except TiffUnreadable as exc:
            if suffix not in SLIDE_SUFFIXES:
                raise
            fmt, mode, conversion, rgb = _decode_openslide(path, max_pixels, page, exc)
    else:
        try:
            fmt, mode, conversion, rgb = decode_pillow(path, max_pixels, page)
        except _NotPillow as exc:
            if suffix not in SLIDE_SUFFIXES:
                raise ImageError(
                    f"{path}: not a supported image (PNG, JPEG, TIFF or a slide format): {exc}"
                ) from None
            fmt, mode, conversion, rgb = _decode_openslide(path, max_pixels, page, exc)

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


def check_size(path: Path, width: int, height: int, max_pixels: int) -> None:
    """Refuse an invalid or too large size (from a header, before decoding)."""
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
def pillow_pixel_limit(limit: int | None) -> Iterator[None]:
    """Pillow's bomb limit (a module global) set to ``limit`` while the block runs, then
    restored for everyone else in the process; one thread at a time."""
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = limit
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _pillow_limit_off() -> AbstractContextManager[None]:
    # Our own width*height check is the bomb guard; Pillow's would fire (as an error) only above
    # 2x its limit and after it has already parsed the header, so it is switched off while we
    # open.
    return pillow_pixel_limit(None)


def decode_pillow(
    path: Path, max_pixels: int, page: int | None
) -> tuple[str, str, str | None, np.ndarray]:
    """A PNG or JPEG decoded as ingest decodes it: strictly (a JPEG cut short is refused, a
    PNG's chunks are checked) and converted to RGB the same way; ``(format, mode, conversion,
    rgb)``. Raises ``_NotPillow`` for a file Pillow does not recognise."""
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
        check_size(path, width, height, max_pixels)
        frames = int(getattr(im, "n_frames", 1))
        what = "frames (an animated PNG)" if fmt == "PNG" else "pictures (a multi-picture JPEG)"
        if frames > 1 and page is None:
            raise ImageError(
                f"{path}: holds {frames} {what}; choose one (page 0 to {frames - 1}) "
                "instead of taking the first"
            )
        if page is not None and page >= frames:
            raise ImageError(f"{path}: page {page} asked, the file holds {frames} image(s)")
        rawmode = str(im.tile[0].args) if im.tile and isinstance(im.tile[0].args, str) else ""
        mode, conversion = _pillow_mode(path, im.mode, rawmode, "transparency" in im.info)
        if fmt == "PNG":
            _verify_png(path)
        data = _read_all(path)
        if fmt == "PNG" and frames == 1:
            rgb = _decode_png(path, data, (height, width))
        elif fmt != "PNG" and frames == 1 and im.mode in ("RGB", "L"):
            from her2ops.imaging.jpeg_reader import decode_jpeg

            rgb = decode_jpeg(path, data, (height, width), gray=im.mode == "L")
        else:  # a chosen frame, or a CMYK / YCbCr JPEG: Pillow, strictly
            if page:
                im.seek(page)
            if fmt != "PNG":  # the picture Pillow decodes, checked and probed first
                from her2ops.imaging.jpeg_reader import verify_jpeg

                verify_jpeg(path, data, im.tile[0].offset if im.tile else 0)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    im.load()
            except Exception as exc:  # Pillow raises OSError, SyntaxError, zlib.error ...
                raise ImageError(f"{path}: truncated or corrupt image data: {exc}") from None
            if page:  # a later frame may differ in mode
                rawmode = ""
                mode, conversion = _pillow_mode(path, im.mode, rawmode, "transparency" in im.info)
            _, rgb = _pillow_to_rgb(path, im, rawmode)
    if rgb.shape[:2] != (height, width):
        raise ImageError(f"{path}: decoded size {rgb.shape[:2]} does not match header")
    return fmt, mode, conversion, rgb


def _read_all(path: Path) -> bytearray:
    """The whole file, in a buffer the JPEG probe may extend in place (no second copy)."""
    with open(path, "rb") as fh:
        data = bytearray(fh.seek(0, 2))
        fh.seek(0)
        got = fh.readinto(data)
    if got != len(data):
        raise ImageError(f"{path}: changed while being read")
    return data


def _pillow_mode(path: Path, mode: str, rawmode: str, transparency: bool) -> tuple[str, str | None]:
    """The mode we report and the conversion to RGB, from Pillow's view of the header."""
    if mode in ("RGB", "RGBA") and rawmode.endswith(";16B"):
        # Pillow keeps the high byte of 16-bit colour PNGs; libpng's >> 8 is the same: say so.
        return f"{mode};16", f"{mode};16->RGB (scaled >>8)" + (" over white" if "A" in mode else "")
    if mode == "RGB":
        return mode, None
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and transparency):
        return mode, f"{mode}->RGB over white"
    if mode in ("L", "1", "P", "CMYK", "YCbCr"):
        return mode, f"{mode}->RGB"
    if mode.startswith("I;16") or mode == "I":
        return mode, f"{mode}->RGB (scaled >>8)"
    raise ImageError(f"{path}: image mode {mode} ({rawmode or 'unknown raw mode'}) not supported")


def _decode_png(path: Path, data: bytearray, shape: tuple[int, int]) -> np.ndarray:
    """libpng: strict (pixel data that stops early is an error), 8-bit RGB straight into the
    output; other layouts converted in strips."""
    import imagecodecs

    rgb = np.empty((*shape, 3), dtype=np.uint8)
    try:
        ihdr = data[16:26]  # width, height, bit depth, colour type (after the signature + IHDR)
        if len(ihdr) == 10 and ihdr[8] == 8 and ihdr[9] == 2:
            decoded = imagecodecs.png_decode(data, out=rgb)
            if decoded is rgb:
                return rgb
        else:
            decoded = imagecodecs.png_decode(data)
    except Exception as exc:  # imagecodecs.PngError: "Not enough image data", CRC errors ...
        raise ImageError(f"{path}: truncated or corrupt image data: {exc}") from None
    if decoded.shape[:2] != shape:
        raise ImageError(f"{path}: decoded size {decoded.shape[:2]} does not match header")
    samples = 1 if decoded.ndim == 2 else int(decoded.shape[2])
    if samples not in (1, 2, 3, 4) or decoded.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{path}: PNG layout {decoded.shape} {decoded.dtype} not supported")
    scale = "shift" if decoded.dtype == np.uint16 else None
    conv = PixelConversion(samples=samples, scale=scale, mode="", description=None)
    for y in range(0, shape[0], _STRIP_ROWS):
        conv.apply(decoded[y : y + _STRIP_ROWS], rgb[y : y + _STRIP_ROWS])
    return rgb


@dataclass(frozen=True)
class PixelConversion:
    """How decoded samples become RGB (the documented conversions), applied chunk by chunk so
    that no full-size temporary is needed."""

    samples: int
    scale: str | None  # None (uint8), "shift" (uint16 >> 8) or "bool" (0/1 -> 0/255)
    mode: str
    description: str | None
    lut: np.ndarray | None = None  # palette (entries, 3), indexed by the raw sample
    invert: bool = False  # min-is-white: 255 - x on every sample, after scaling
    premultiplied: bool = False  # associated alpha

    def depth(self, chunk: np.ndarray) -> np.ndarray:
        """Samples as uint8 (the high byte of 16-bit samples)."""
        if self.scale == "shift":
            return (chunk >> 8).astype(np.uint8)
        if self.scale == "bool":
            return chunk.astype(np.uint8) * 255
        return chunk

    def apply(self, chunk: np.ndarray, out: np.ndarray, *, scaled: bool = False) -> None:
        """Convert ``chunk`` ((h, w) or (h, w, samples)) into ``out`` ((h, w, 3) uint8);
        ``scaled``: the chunk is uint8 already."""
        if chunk.ndim == 2:
            chunk = chunk[..., None]
        if self.lut is not None:
            index = chunk[..., 0].astype(np.intp)
            if index.max(initial=0) >= self.lut.shape[0]:
                raise ImageError("palette index out of range of its colour map")
            out[...] = self.lut[index]
            return
        data = chunk if scaled else self.depth(chunk)
        if self.invert:
            data = 255 - data
        if self.samples == 1:
            out[...] = data[..., :1]
        elif self.samples == 2:
            out[...] = _over_white(data[..., :1], data[..., 1])
        elif self.samples == 3:
            out[...] = data[..., :3]
        elif self.premultiplied:
            alpha = 255 - data[..., 3].astype(np.uint16)
            out[...] = (data[..., :3].astype(np.uint16) + alpha[..., None]).clip(0, 255)
        else:
            out[...] = _over_white(data[..., :3], data[..., 3])


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


# --- OpenSlide (vendor whole-slide formats) -----------------------------------------------------

_STRIP_ROWS = 1024


def _decode_openslide(
    path: Path, max_pixels: int, page: int | None, first_error: Exception
) -> tuple[str, str, str | None, np.ndarray]:
    if page:
        raise ImageError(f"{path}: page {page} asked; slides are read at their baseline (page 0)")
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
        check_size(path, width, height, max_pixels)
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

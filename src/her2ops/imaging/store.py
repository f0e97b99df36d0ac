"""Content-addressed store of cores as tiled, compressed, pyramidal BigTIFF files.

Each ingested image is written once, under ``<root>/<sha[:2]>/<sha>.tiff`` where ``sha`` is the
sha256 of the source file's bytes; an image other than the first of a file that holds several
(page ``n`` >= 1 of a multi-page TIFF) goes to ``<sha>-p<n>.tiff`` beside it. That naming rule
lives in :meth:`CoreStore.location_for` and nowhere else.

A stored file holds level 0 (full resolution) and levels at 1/2, 1/4 ... (2x2 box averages)
until the largest side is at most 512 px; every level is cut into 256 x 256 tiles, JPEG
(quality 90 by default; tifffile writes YCbCr 4:2:0, as Aperio does) or, with
``lossless=True``, Deflate with a horizontal predictor. The levels are successive
top-level pages (reduced-resolution ``NewSubfileType``), not SubIFDs, because that is the
pyramid OpenSlide's generic-TIFF reader understands; tifffile reads it as one series with levels.

Integrity: the ImageDescription of level 0 holds a small JSON record with the level shapes and a
CRC-32 of every tile's compressed bytes. A write goes to a temporary file in the same folder, is
read back (every tile decoded and compared with what was meant to be written, its CRC recorded),
fsynced and then renamed into place, so a crash never leaves a half-written core under its final
name. Every tile read later checks its CRC, so corruption on disk surfaces as a
:class:`StoreError` that names the core and the file, never as silently wrong pixels.

Reading (region reads that decode only the tiles they touch, the tile cache) lives in
:mod:`her2ops.imaging.stored_image`; its names are re-exported here.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from her2ops.imaging.readers import ImageError, read_rgb
from her2ops.imaging.stored_image import (
    FORMAT_TAG,
    FORMAT_VERSION,
    StoredImage,
    StoreError,
    downsample2,
)

__all__ = [
    "CoreStore",
    "StoreError",
    "StoredCore",
    "StoredImage",
    "downsample2",
    "pyramid_shapes",
]

TILE = 256
MAX_TOP_LEVEL = 512
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
# Decoded lossy tiles must keep the source's per-channel mean within this many grey levels:
# JPEG keeps DC terms well even at low quality, while a garbled or zeroed tile does not.
_MAX_MEAN_DRIFT = 16.0


@dataclass(frozen=True)
class StoredCore:
    """Where a core lives in the store and its geometry; ``page``: which image of the source
    file (0: its only or first one)."""

    sha256: str
    location: str
    width: int
    height: int
    levels: int
    page: int = 0


def pyramid_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """(h, w) of each level: halved (rounding up) until the largest side is <= 512 px."""
    shapes = [(height, width)]
    while max(shapes[-1]) > MAX_TOP_LEVEL:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


class CoreStore:
    """The content-addressed pyramidal TIFF store under ``root``."""

    def __init__(self, root: Path, *, jpeg_quality: int = 90, lossless: bool = False) -> None:
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
        self.root = Path(root)
        self.jpeg_quality = jpeg_quality
        self.lossless = lossless

    # -- names --------------------------------------------------------------------------------

    @staticmethod
    def location_for(sha256: str, page: int = 0) -> str:
        """The path of image ``page`` of the file ``sha256`` relative to the store root.

        Page 0 (a file's only or first image) keeps the name stores have always used, so
        existing stores stay valid; other pages get ``-p<page>`` so they never collide."""
        _check_sha(sha256)
        _check_page(page)
        suffix = f"-p{page}" if page else ""
        return f"{sha256[:2]}/{sha256}{suffix}.tiff"

    def path_for(self, sha256: str, page: int = 0) -> Path:
        """Absolute (root-joined) path where image ``page`` of the file ``sha256`` is stored."""
        return self.root / self.location_for(sha256, page)

    def has(self, sha256: str, page: int = 0) -> bool:
        """Whether a file for this image exists (see :meth:`verify` for its integrity)."""
        return self.path_for(sha256, page).is_file()

    # -- write --------------------------------------------------------------------------------

    def put(
        self, src: Path, *, max_pixels: int, sha256: str | None = None, page: int | None = None
    ) -> StoredCore:
        """Store ``src`` (validated and decoded with the readers) unless an intact copy exists.

        ``sha256`` may pass the digest the caller already computed (``ImageInfo.sha256``); it is
        trusted. ``page`` chooses the image of a file that holds several (the readers refuse
        such a file without it). A present but corrupt file is rewritten from ``src``.
        """
        src = Path(src)
        if sha256 is None:
            if not src.is_file():
                raise ImageError(f"{src}: no such file")
            from her2ops.imaging.readers import file_sha256

            sha256 = file_sha256(src)
        _check_sha(sha256)
        index = page or 0
        if self.has(sha256, index):
            try:
                return self.describe(sha256, index)
            except StoreError:
                pass  # corrupt copy: fall through and rewrite it
        _, rgb = read_rgb(src, max_pixels=max_pixels, sha256=sha256, page=page)
        return self.put_array(rgb, sha256=sha256, page=index)

    def put_array(self, rgb: np.ndarray, *, sha256: str, page: int = 0) -> StoredCore:
        """Write an (H, W, 3) uint8 image as image ``page`` of the file ``sha256`` (atomically,
        checked on read-back)."""
        _check_sha(sha256)
        _check_page(page)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
        levels = [np.ascontiguousarray(rgb)]
        for _ in pyramid_shapes(*rgb.shape[:2])[1:]:
            levels.append(downsample2(levels[-1]))
        final = self.path_for(sha256, page)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{sha256[:16]}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            self._write(tmp, levels, sha256)
            _seal(tmp, levels, lossless=self.lossless)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(final.parent)
        h, w = rgb.shape[:2]
        return StoredCore(sha256, self.location_for(sha256, page), w, h, len(levels), page)

    def _write(self, path: Path, levels: list[np.ndarray], sha256: str) -> None:
        import tifffile

        kwargs: dict[str, Any] = {"tile": (TILE, TILE), "photometric": "rgb", "metadata": None}
        if self.lossless:
            kwargs.update(compression="zlib", predictor=True)
            codec = "deflate"
        else:
            kwargs.update(compression="jpeg", compressionargs={"level": self.jpeg_quality})
            codec = f"jpeg-{self.jpeg_quality}"
        record = {
            "format": FORMAT_TAG,
            "version": FORMAT_VERSION,
            "sha256": sha256,
            "codec": codec,
            "tile": TILE,
            "shapes": [list(level.shape[:2]) for level in levels],
            # placeholder of the final length, so sealing rewrites the tag in place
            "crc32": ["0" * 8 * _tile_count(level.shape[:2]) for level in levels],
        }
        with tifffile.TiffWriter(path, bigtiff=True) as tw:
            tw.write(levels[0], description=json.dumps(record), software="her2ops", **kwargs)
            for level in levels[1:]:
                tw.write(level, subfiletype=1, **kwargs)

    # -- read ---------------------------------------------------------------------------------

    def open(
        self,
        sha256: str,
        page: int = 0,
        *,
        core: str | None = None,
        cache_bytes: int = 256 << 20,
    ) -> StoredImage:
        """Open a stored core (image ``page`` of the file ``sha256``) for region reads; ``core``
        (its code) names it in errors."""
        path = self.path_for(sha256, page)
        name = core or sha256
        if not path.is_file():
            raise StoreError(f"core {name}: not in the image store (expected {path})")
        return StoredImage(path, name=name, cache_bytes=cache_bytes)

    def verify(self, sha256: str, page: int = 0, *, core: str | None = None) -> None:
        """Check a stored file's structure and every tile's CRC; raise :class:`StoreError`."""
        with self.open(sha256, page, core=core) as img:
            img.check_all_tiles()

    def describe(self, sha256: str, page: int = 0) -> StoredCore:
        """Verify a stored core and return its :class:`StoredCore` record."""
        with self.open(sha256, page) as img:
            img.check_all_tiles()
            h, w = img.level_shapes[0]
            location = self.location_for(sha256, page)
            return StoredCore(sha256, location, w, h, len(img.level_shapes), page)


def _tile_count(shape: Sequence[int]) -> int:
    return -(-int(shape[0]) // TILE) * -(-int(shape[1]) // TILE)


def _check_sha(sha256: str) -> None:
    if not isinstance(sha256, str) or not _SHA_RE.match(sha256):
        raise ValueError(f"not a lowercase sha256 hex digest: {sha256!r}")


def _check_page(page: int) -> None:
    if not isinstance(page, int) or isinstance(page, bool) or page < 0:
        raise ValueError(f"not an image index (an integer >= 0): {page!r}")


def _seal(path: Path, levels: list[np.ndarray], *, lossless: bool) -> None:
    """Read a freshly written file back: decode and compare every tile, record the CRCs."""
    import tifffile

    try:
        with tifffile.TiffFile(path, mode="r+") as tf:
            page0 = tf.pages.first
            record = json.loads(page0.description)
            series_levels = tf.series[0].levels
            if len(series_levels) != len(levels):
                raise ValueError(f"wrote {len(levels)} levels, read back {len(series_levels)}")
            crcs: list[str] = []
            with open(path, "rb") as fh:
                for source, level in zip(levels, series_levels, strict=True):
                    crcs.append(_check_level(fh, level.keyframe, source, lossless=lossless))
            record["crc32"] = crcs
            text = json.dumps(record)
            tag = page0.tags["ImageDescription"]
            if len(text) != len(str(tag.value)):
                raise ValueError("checksum record changed length")
            tag.overwrite(text)
        with open(path, "rb+") as fh:
            os.fsync(fh.fileno())
    except Exception as exc:  # tifffile, imagecodecs and OS errors alike
        raise StoreError(f"writing {path} failed its read-back check: {exc}") from None


def _check_level(fh: Any, page: Any, source: np.ndarray, *, lossless: bool) -> str:
    h, w = source.shape[:2]
    th, tw = int(page.tilelength), int(page.tilewidth)
    if (int(page.imagelength), int(page.imagewidth)) != (h, w):
        raise ValueError("level shape differs on read-back")
    across = -(-w // tw)
    parts: list[str] = []
    for index, (offset, count) in enumerate(
        zip(page.dataoffsets, page.databytecounts, strict=True)
    ):
        fh.seek(offset)
        data = fh.read(count)
        if len(data) != count:
            raise ValueError(f"tile {index} short on read-back")
        tile = page.decode(data, index, jpegtables=page.jpegtables)[0]
        if tile is None:
            raise ValueError(f"tile {index} missing on read-back")
        tile = tile.reshape(th, tw, -1)[..., :3]
        y0, x0 = (index // across) * th, (index % across) * tw
        want = source[y0 : y0 + th, x0 : x0 + tw]
        got = tile[: want.shape[0], : want.shape[1]]
        if lossless:
            if not np.array_equal(got, want):
                raise ValueError(f"tile {index} differs from the source after a lossless write")
        else:
            drift = np.abs(got.reshape(-1, 3).mean(axis=0) - want.reshape(-1, 3).mean(axis=0)).max()
            if drift > _MAX_MEAN_DRIFT:
                raise ValueError(f"tile {index} decodes far from the source (drift {drift:.1f})")
        parts.append(f"{zlib.crc32(data):08x}")
    return "".join(parts)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - not all platforms can open folders
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

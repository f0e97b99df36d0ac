"""Reading stored cores: region reads that decode only the tiles they touch, with a cache.

A :class:`StoredImage` is one file of the image store (see :mod:`her2ops.imaging.store` for the
format) opened for reading. Every tile read checks the CRC-32 recorded for it at write time, so
corruption on disk surfaces as a :class:`StoreError` naming the core and the file, never as
silently wrong pixels.

Region reads go through a small LRU of decoded tiles, which serves repeated unplanned reads. A
caller that knows all its reads up front (the PSS sampler) uses
:class:`~her2ops.imaging.gather.TileGather`, which decodes each tile once across all of them
through :meth:`StoredImage.decode_tile`.
"""

from __future__ import annotations

import json
import os
import zlib
from collections import OrderedDict
from pathlib import Path
from types import TracebackType
from typing import Any

import imagecodecs
import numpy as np

FORMAT_TAG = "her2ops-core"
FORMAT_VERSION = 1

Region = tuple[int, int, int, int, int]  # level, y, x, h, w
TileKey = tuple[int, int, int]  # level, tile row, tile column


class StoreError(RuntimeError):
    """A stored core is missing, corrupt, or cannot be written."""


def downsample2(image: np.ndarray) -> np.ndarray:
    """Halve an (H, W, C) uint8 image by 2x2 box averaging; odd edges repeat their last pixel."""
    h, w = image.shape[:2]
    if h % 2 or w % 2:
        image = np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    total = image[0::2, 0::2].astype(np.uint16)
    total += image[1::2, 0::2]
    total += image[0::2, 1::2]
    total += image[1::2, 1::2]
    total += 2  # round half up
    total >>= 2
    return total.astype(np.uint8)


class _Level:
    """One stored level: its TIFF page and tile index."""

    def __init__(self, page: Any, crc_hex: str) -> None:
        self.page = page
        self.height, self.width = int(page.imagelength), int(page.imagewidth)
        self.tile_h, self.tile_w = int(page.tilelength), int(page.tilewidth)
        self.across = -(-self.width // self.tile_w)
        self.down = -(-self.height // self.tile_h)
        self.offsets = [int(v) for v in page.dataoffsets]
        self.counts = [int(v) for v in page.databytecounts]
        self.crcs = np.frombuffer(bytes.fromhex(crc_hex), dtype=">u4").astype(np.int64).tolist()
        self.jpegtables = page.jpegtables
        # JPEG tiles are decoded straight through imagecodecs (with the colour spaces tifffile
        # would use), so that a tile used once can be decoded into a reused scratch buffer.
        self.jpeg: tuple[Any, Any] | None = None
        if int(page.compression) == 7 and int(page.bitspersample) == 8:
            try:
                from tifffile.tifffile import jpeg_decode_colorspace

                self.jpeg = jpeg_decode_colorspace(
                    page.photometric, page.planarconfig, page.extrasamples, page.is_jfif
                )
            except (ImportError, ValueError):  # pragma: no cover - other tifffile versions
                self.jpeg = None
        if not (len(self.offsets) == len(self.counts) == len(self.crcs) == self.across * self.down):
            raise ValueError("tile tables do not match the level size")


class StoredImage:
    """A stored core opened for reading; use as a context manager. Not thread-safe: open one
    per thread or worker process (opening costs about a millisecond)."""

    def __init__(self, path: Path, *, name: str, cache_bytes: int = 256 << 20) -> None:
        import tifffile

        self.path = Path(path)
        self.name = name
        self.cache_bytes = cache_bytes
        self.lru_bytes = min(cache_bytes, 32 << 20)
        #: derived data that callers (the sampler) keep per image, e.g. the whole-core patch
        self.memo: dict[Any, Any] = {}
        self.tiles_decoded = 0
        self.peak_cache_bytes = 0
        self._held = 0  # bytes of decoded tiles that gathers over this image hold
        self._virtual: dict[int, np.ndarray] = {}
        self._lru: OrderedDict[TileKey, np.ndarray] = OrderedDict()  # HWC tiles
        self._lru_used = 0
        self._fd = -1
        self._scratch: np.ndarray | None = None
        self._tf: Any = None
        try:
            self._tf = tifffile.TiffFile(self.path)
            record = json.loads(self._tf.pages[0].description)
            if record.get("format") != FORMAT_TAG:
                raise ValueError("not a her2ops core file")
            levels = self._tf.series[0].levels
            if len(levels) != len(record["shapes"]):
                raise ValueError(f"{len(levels)} levels, record says {len(record['shapes'])}")
            self._levels = [
                _Level(level.keyframe, crc)
                for level, crc in zip(levels, record["crc32"], strict=True)
            ]
            for level, shape in zip(self._levels, record["shapes"], strict=True):
                if [level.height, level.width] != list(shape):
                    raise ValueError("level shape does not match the record")
            self._fd = os.open(self.path, os.O_RDONLY)
        except Exception as exc:
            self.close()
            raise StoreError(
                f"core {name}: store file {self.path} is unreadable or corrupt ({exc}); "
                "re-ingest the core"
            ) from None
        self.level_shapes: list[tuple[int, int]] = [(lv.height, lv.width) for lv in self._levels]

    # -- context manager ----------------------------------------------------------------------

    def __enter__(self) -> StoredImage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the file and the decoded-tile cache."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._tf is not None:
            self._tf.close()
            self._tf = None
        self._lru.clear()
        self._virtual.clear()
        self._lru_used = 0

    @property
    def cached_bytes(self) -> int:
        """Bytes of decoded tiles held now (the LRU plus what gathers hold)."""
        return self._held + self._lru_used

    def note_held(self, nbytes: int) -> None:
        """Account ``nbytes`` more (or fewer) of decoded tiles held by a gather."""
        self._held += nbytes
        self.peak_cache_bytes = max(self.peak_cache_bytes, self.cached_bytes)

    # -- geometry -----------------------------------------------------------------------------

    def level_shape(self, level: int) -> tuple[int, int]:
        """(h, w) of any level; past the stored ones, levels keep halving (rounding up)."""
        if level < 0:
            raise ValueError(f"level must be >= 0, got {level}")
        if level < len(self._levels):
            return self.level_shapes[level]
        h, w = self.level_shapes[-1]
        for _ in range(level - len(self._levels) + 1):
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w

    def tile_shape(self, level: int) -> tuple[int, int]:
        """(tile height, tile width) of a stored level."""
        lv = self._levels[level]
        return lv.tile_h, lv.tile_w

    # -- reads --------------------------------------------------------------------------------

    def decode_tile(
        self, level: int, ty: int, tx: int, *, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Tile (ty, tx) of a stored level as (tile_h, tile_w, 3) uint8, CRC checked; a tile the
        LRU of region reads holds is not decoded again. With ``out`` ((tile_h, tile_w, 3) uint8,
        C-contiguous) the tile is written there and ``out`` returned; without, the array may be
        a scratch buffer that the next call overwrites: copy what you keep."""
        tile = self._lru.get((level, ty, tx))
        if tile is None:
            tile = self._decode(level, ty, tx, scratch=True, into=out)
        if out is not None and tile is not out:
            out[...] = tile
            return out
        return tile

    def read_level(self, level: int) -> np.ndarray:
        """A whole level as (h, w, 3) uint8."""
        h, w = self.level_shape(level)
        return self.read_region(level, 0, 0, h, w)

    def read_region(
        self,
        level: int,
        y: int,
        x: int,
        h: int,
        w: int,
        *,
        out: np.ndarray | None = None,
        channels_first: bool = False,
    ) -> np.ndarray:
        """Pixels [y, y+h) x [x, x+w) of ``level`` as (h, w, 3) uint8 (or (3, h, w) with
        ``channels_first``), decoding only the tiles touched. Parts outside the level are white.
        """
        shape = (3, h, w) if channels_first else (h, w, 3)
        if h <= 0 or w <= 0:
            raise ValueError(f"region size must be positive, got {h}x{w}")
        if out is None:
            out = np.empty(shape, dtype=np.uint8)
        elif out.shape != shape or out.dtype != np.uint8:
            raise ValueError(f"out must be uint8 {shape}, got {out.dtype} {out.shape}")
        lh, lw = self.level_shape(level)
        y0, y1, x0, x1 = max(y, 0), min(y + h, lh), max(x, 0), min(x + w, lw)
        if y0 > y or x0 > x or y1 < y + h or x1 < x + w:
            out.fill(255)
        if y0 >= y1 or x0 >= x1:
            return out
        if level >= len(self._levels):
            src = self._virtual_level(level)[y0:y1, x0:x1]
            _put(out, src, y0 - y, x0 - x, channels_first)
            return out
        lv = self._levels[level]
        for ty, tx in _tile_span(lv.tile_h, lv.tile_w, y0, y1, x0, x1):
            tile = self._tile(level, ty, tx)
            ty0, tx0 = ty * lv.tile_h, tx * lv.tile_w
            iy0, iy1 = max(y0, ty0) - ty0, min(y1, ty0 + lv.tile_h) - ty0
            ix0, ix1 = max(x0, tx0) - tx0, min(x1, tx0 + lv.tile_w) - tx0
            _put(out, tile[iy0:iy1, ix0:ix1], iy0 + ty0 - y, ix0 + tx0 - x, channels_first)
        return out

    def check_all_tiles(self) -> None:
        """Read every tile's bytes and check its CRC (no decoding); raise :class:`StoreError`."""
        for index_level, lv in enumerate(self._levels):
            for index in range(len(lv.offsets)):
                self._tile_bytes(index_level, lv, index)

    # -- internals ----------------------------------------------------------------------------

    def _corrupt(self, what: str) -> StoreError:
        return StoreError(
            f"core {self.name}: store file {self.path} is corrupt ({what}); re-ingest the core"
        )

    def _tile_bytes(self, level: int, lv: _Level, index: int) -> bytes:
        if self._fd < 0:
            raise ValueError(f"core {self.name}: read from a closed StoredImage")
        count = lv.counts[index]
        try:
            data = os.pread(self._fd, count, lv.offsets[index])
        except OSError as exc:
            raise self._corrupt(f"level {level} tile {index} unreadable: {exc}") from None
        if len(data) != count:
            raise self._corrupt(f"level {level} tile {index} truncated")
        if zlib.crc32(data) != lv.crcs[index]:
            raise self._corrupt(f"level {level} tile {index} checksum mismatch")
        return data

    def _tile(self, level: int, ty: int, tx: int) -> np.ndarray:
        """A decoded (th, tw, 3) tile, through the LRU."""
        key = (level, ty, tx)
        tile = self._lru.pop(key, None)
        if tile is None:
            tile = self._decode(level, ty, tx)
        else:
            self._lru_used -= tile.nbytes
        self._lru[key] = tile
        self._lru_used += tile.nbytes
        while self._lru_used > self.lru_bytes:
            self._lru_used -= self._lru.popitem(last=False)[1].nbytes
        self.peak_cache_bytes = max(self.peak_cache_bytes, self.cached_bytes)
        return tile

    def _decode(
        self,
        level: int,
        ty: int,
        tx: int,
        *,
        scratch: bool = False,
        into: np.ndarray | None = None,
    ) -> np.ndarray:
        lv = self._levels[level]
        index = ty * lv.across + tx
        data = self._tile_bytes(level, lv, index)
        try:
            if lv.jpeg is not None:
                shape = (lv.tile_h, lv.tile_w, 3)
                if into is not None and into.shape == shape and into.flags.c_contiguous:
                    out = into
                elif scratch:
                    if self._scratch is None or self._scratch.shape != shape:
                        self._scratch = np.empty(shape, dtype=np.uint8)
                    out = self._scratch
                else:
                    out = np.empty(shape, dtype=np.uint8)
                decoded = imagecodecs.jpeg8_decode(
                    data,
                    tables=lv.jpegtables,
                    colorspace=lv.jpeg[0],
                    outcolorspace=lv.jpeg[1],
                    out=out,
                )
            else:
                decoded = lv.page.decode(data, index, jpegtables=lv.jpegtables)[0]
        except Exception as exc:
            raise self._corrupt(f"level {level} tile {index} does not decode: {exc}") from None
        if decoded is None:
            raise self._corrupt(f"level {level} tile {index} is empty")
        self.tiles_decoded += 1
        return decoded.reshape(lv.tile_h, lv.tile_w, -1)[..., :3]

    def _virtual_level(self, level: int) -> np.ndarray:
        if level not in self._virtual:
            below = (
                self.read_level(level - 1)
                if level - 1 < len(self._levels)
                else self._virtual_level(level - 1)
            )
            self._virtual[level] = downsample2(below)
        return self._virtual[level]


def _put(out: np.ndarray, src: np.ndarray, oy: int, ox: int, channels_first: bool) -> None:
    h, w = src.shape[:2]
    if channels_first:
        out[:, oy : oy + h, ox : ox + w] = src.transpose(2, 0, 1)
    else:
        out[oy : oy + h, ox : ox + w] = src


def _tile_span(th: int, tw: int, y0: int, y1: int, x0: int, x1: int) -> list[tuple[int, int]]:
    return [
        (ty, tx)
        for ty in range(y0 // th, (y1 - 1) // th + 1)
        for tx in range(x0 // tw, (x1 - 1) // tw + 1)
    ]

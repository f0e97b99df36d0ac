"""Copy a known sequence of region batches out of a stored core, decoding each tile once.

The PSS sampler knows every read of a call up front: N sets, each a batch of patch regions.
:class:`TileGather` is told all batches at once and then fills them, in order, into buffers
the caller owns (views of a preallocated set), so that

- each tile is decoded at most once for the whole call, however many patches of however many
  batches touch it, as long as the tiles still needed by later batches fit in ``cache_bytes``;
  when they do not, the tile whose next use is furthest away is not kept (Belady), and is
  decoded again when that batch comes;
- within a batch the work is tile-major: a decoded tile is copied into every patch of the batch
  that overlaps it. A tile that a later batch needs again is transposed once to channels-first
  into a cache slot, so that all its uses are plain row copies into the (C, H, W) output; a tile
  used by this batch only is copied (transposing) straight from the decoder's buffer;
- nothing is allocated per patch or per tile: decoding goes into the image's scratch buffer and
  cache slots are allocated in chunks, recycled, and kept between gathers (up to
  :data:`RETAIN_BYTES`), since fresh memory costs a page fault per 4 kB, which for a 256 MB
  cache costs about as much as the copies themselves.

:func:`~her2ops.imaging.pss.sample_sets` fills all its sets as one batch: every tile is decoded
once and nothing is cached. :func:`~her2ops.imaging.pss.iter_sets` makes each set a batch.

A region that reaches outside its level is white there; a region of a level past the stored
pyramid is read through :meth:`StoredImage.read_region` (small cores only).
"""

from __future__ import annotations

import heapq
import threading
from collections import deque
from collections.abc import Sequence
from types import TracebackType

import numpy as np

from her2ops.imaging.stored_image import Region, StoredImage, TileKey

# A piece of a tile copied into one region: region index in its batch, tile rows [iy0, iy1) and
# columns [ix0, ix1), and where they land in the region (oy, ox).
_Piece = tuple[int, int, int, int, int, int, int]
_CHUNK_SLOTS = 32  # cache slots allocated at once (6 MB of 256 px RGB tiles)

#: slot memory kept between gathers (free again with :func:`release_retained_memory`)
RETAIN_BYTES = 256 << 20
_pool: list[np.ndarray] = []
_pool_lock = threading.Lock()


def release_retained_memory() -> None:
    """Free the slot memory kept between gathers."""
    with _pool_lock:
        _pool.clear()


def _take_chunk(shape: tuple[int, ...], max_count: int) -> np.ndarray:
    """(count, *shape) uint8 slots, from the kept chunks when one of the right size is there."""
    size = int(np.prod(shape))
    with _pool_lock:
        for i, chunk in enumerate(_pool):
            if chunk[0].size == size and len(chunk) <= max_count:
                return _pool.pop(i).reshape(-1, *shape)
    return np.empty((max(1, min(_CHUNK_SLOTS, max_count)), *shape), dtype=np.uint8)


def _give_back(chunks: list[np.ndarray]) -> None:
    with _pool_lock:
        kept = sum(chunk.nbytes for chunk in _pool)
        for chunk in chunks:
            if kept + chunk.nbytes <= RETAIN_BYTES:
                _pool.append(chunk)
                kept += chunk.nbytes


class TileGather:
    """Fill ``batches`` of regions of ``img`` one batch at a time, each tile decoded once."""

    def __init__(
        self,
        img: StoredImage,
        batches: Sequence[Sequence[Region]],
        *,
        cache_bytes: int | None = None,
        channels_last: bool = False,
    ) -> None:
        self.img = img
        self.channels_last = channels_last
        self.batches = [list(batch) for batch in batches]
        self.cache_bytes = img.cache_bytes if cache_bytes is None else cache_bytes
        self._next = 0
        # per batch: tile -> its pieces; regions that need white margins or a virtual level
        self._pieces: list[dict[TileKey, list[_Piece]]] = []
        self._white: list[list[int]] = []
        self._virtual: list[list[int]] = []
        # per tile: the batches that still use it, ascending (a batch listed once)
        self._uses: dict[TileKey, deque[int]] = {}
        stored = len(img.level_shapes)
        for b, batch in enumerate(self.batches):
            pieces: dict[TileKey, list[_Piece]] = {}
            white: list[int] = []
            virtual: list[int] = []
            for r, (level, y, x, h, w) in enumerate(batch):
                if h <= 0 or w <= 0:
                    raise ValueError(f"region size must be positive, got {h}x{w}")
                if level >= stored:
                    virtual.append(r)
                    continue
                lh, lw = img.level_shapes[level]
                y0, y1, x0, x1 = max(y, 0), min(y + h, lh), max(x, 0), min(x + w, lw)
                if y0 > y or x0 > x or y1 < y + h or x1 < x + w:
                    white.append(r)
                if y0 >= y1 or x0 >= x1:
                    continue
                th, tw = img.tile_shape(level)
                for ty in range(y0 // th, (y1 - 1) // th + 1):
                    top = ty * th
                    iy0, iy1 = max(y0, top) - top, min(y1, top + th) - top
                    for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                        left = tx * tw
                        ix0, ix1 = max(x0, left) - left, min(x1, left + tw) - left
                        key = (level, ty, tx)
                        piece = (r, iy0, iy1, ix0, ix1, iy0 + top - y, ix0 + left - x)
                        listed = pieces.get(key)
                        if listed is None:
                            pieces[key] = [piece]
                            uses = self._uses.get(key)
                            if uses is None:
                                self._uses[key] = deque((b,))
                            else:
                                uses.append(b)
                        else:
                            listed.append(piece)
            self._pieces.append(pieces)
            self._white.append(white)
            self._virtual.append(virtual)
        # the cache: channels-first tiles kept for later batches, in recycled slots
        self._cache: dict[TileKey, np.ndarray] = {}
        self._heap: list[tuple[int, TileKey]] = []  # (-next batch, tile): furthest first
        self._free: dict[tuple[int, ...], list[np.ndarray]] = {}
        self._chunks: list[np.ndarray] = []
        self._scratch: np.ndarray | None = None
        self._allocated = 0
        self._held = 0

    # -- context manager ----------------------------------------------------------------------

    def __enter__(self) -> TileGather:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Drop the cache and its slots (also when a consumer stopped early)."""
        self._cache.clear()
        self._heap.clear()
        self._free.clear()
        self._uses.clear()
        _give_back(self._chunks)
        self._chunks.clear()
        self.img.note_held(-self._allocated)
        self._allocated = self._held = 0

    @property
    def remaining(self) -> int:
        """Batches not filled yet."""
        return len(self.batches) - self._next

    @property
    def cached_bytes(self) -> int:
        """Bytes of cache slots allocated now (kept tiles and recycled free slots)."""
        return self._allocated

    # -- filling ------------------------------------------------------------------------------

    def fill(self, outs: Sequence[np.ndarray]) -> None:
        """Write the next batch: ``outs[i]`` (uint8 (3, h, w), or (h, w, 3) with
        ``channels_last``) receives its region ``i``."""
        b = self._next
        if b >= len(self.batches):
            raise IndexError("every batch has been filled")
        batch = self.batches[b]
        if len(outs) != len(batch):
            raise ValueError(f"batch {b} has {len(batch)} regions, got {len(outs)} buffers")
        last = self.channels_last
        for out, (_, _, _, h, w) in zip(outs, batch, strict=True):
            shape = (h, w, 3) if last else (3, h, w)
            if out.shape != shape or out.dtype != np.uint8:
                raise ValueError(f"out must be uint8 {shape}, got {out.dtype} {out.shape}")
        self._next += 1
        for r in self._white[b]:
            outs[r].fill(255)
        for r in self._virtual[b]:
            level, y, x, h, w = batch[r]
            self.img.read_region(level, y, x, h, w, out=outs[r], channels_first=not last)
        if last:
            self._fill_channels_last(b, outs)
        else:
            self._fill_channels_first(b, outs)
        if self._next == len(self.batches):
            self.close()

    def _fill_channels_last(self, b: int, outs: Sequence[np.ndarray]) -> None:
        # Tiles and regions share the decoder's layout: a kept tile is decoded straight into
        # its slot and every use is a plain copy of rows of 3 x tile-width bytes.
        for key, pieces in self._pieces[b].items():
            uses = self._uses[key]
            uses.popleft()  # this batch
            later = uses[0] if uses else None
            tile = self._cache.get(key)
            if tile is None:
                slot = None if later is None else self._slot(key, later)
                tile = self.img.decode_tile(*key, out=slot)
                if slot is not None:
                    self._cache[key] = slot
            for r, iy0, iy1, ix0, ix1, oy, ox in pieces:
                outs[r][oy : oy + iy1 - iy0, ox : ox + ix1 - ix0] = tile[iy0:iy1, ix0:ix1]
            if key in self._cache:
                if later is None:
                    self._release(key)
                else:
                    heapq.heappush(self._heap, (-later, key))

    def _fill_channels_first(self, b: int, outs: Sequence[np.ndarray]) -> None:
        for key, pieces in self._pieces[b].items():
            uses = self._uses[key]
            uses.popleft()  # this batch
            later = uses[0] if uses else None
            tile = self._cache.get(key)
            chw = True
            if tile is None:
                # decoded into the image's scratch buffer (hot in cache); a tile a later batch
                # needs is transposed once into a slot, so its every use is a plain copy
                tile = self.img.decode_tile(*key)
                slot = None if later is None else self._slot(key, later)
                if slot is not None:
                    np.copyto(slot, tile.transpose(2, 0, 1))
                    self._cache[key] = tile = slot
                elif len(pieces) > 1:  # used by several patches now: transpose once
                    tile = self._transposed(tile)
                else:  # one piece: copy it transposing, straight from the decoder's buffer
                    chw = False
            for r, iy0, iy1, ix0, ix1, oy, ox in pieces:
                dst = outs[r][:, oy : oy + iy1 - iy0, ox : ox + ix1 - ix0]
                if chw:
                    dst[...] = tile[:, iy0:iy1, ix0:ix1]
                else:
                    dst[...] = tile[iy0:iy1, ix0:ix1].transpose(2, 0, 1)
            if key in self._cache:
                if later is None:
                    self._release(key)
                else:
                    heapq.heappush(self._heap, (-later, key))

    # -- internals ----------------------------------------------------------------------------

    def _transposed(self, hwc: np.ndarray) -> np.ndarray:
        """``hwc`` channels-first, in a reused scratch tile."""
        shape = (3, hwc.shape[0], hwc.shape[1])
        if self._scratch is None or self._scratch.shape != shape:
            self._scratch = np.empty(shape, dtype=np.uint8)
        np.copyto(self._scratch, hwc.transpose(2, 0, 1))
        return self._scratch

    def _slot(self, key: TileKey, later: int) -> np.ndarray | None:
        """A free slot ((3, th, tw), or (th, tw, 3) with ``channels_last``) for a tile that a
        later batch needs, unless the cache is full of tiles needed sooner."""
        th, tw = self.img.tile_shape(key[0])
        shape = (th, tw, 3) if self.channels_last else (3, th, tw)
        free = self._free.setdefault(shape, [])
        nbytes = 3 * th * tw
        if not free and self._held + nbytes > self.cache_bytes:
            # Full: evict the kept tile whose next use is furthest, if further than ours.
            while self._heap:
                neg_next, victim = self._heap[0]
                uses = self._uses.get(victim)
                if victim not in self._cache or not uses or uses[0] != -neg_next:
                    heapq.heappop(self._heap)  # stale entry
                    continue
                if -neg_next <= later:
                    return None  # every kept tile is needed sooner than this one
                heapq.heappop(self._heap)
                self._release(victim)
                break
        if not free:
            if self._held + nbytes > self.cache_bytes:
                return None
            count = (self.cache_bytes - self._held) // nbytes
            chunk = _take_chunk(shape, count)
            self._chunks.append(chunk)
            free.extend(chunk)
            self._allocated += chunk.nbytes
            self.img.note_held(chunk.nbytes)
        self._held += nbytes
        return free.pop()

    def _release(self, key: TileKey) -> None:
        slot = self._cache.pop(key)
        self._held -= slot.nbytes
        self._free.setdefault(slot.shape, []).append(slot)

"""Pyramid sampling set (PSS) geometry and the sampler that turns a stored core into arrays.

A PSS (Selcuk et al. 2024) is ``patches_per_level[L]`` random ``patch_size`` patches read at
pyramid level ``L`` (level 0 = full resolution, level 1 = 2x downsampled, ...) plus, optionally,
the whole core resized to one ``patch_size`` patch, stacked along the channel axis.

The sampler reads a core from the image store (:class:`~her2ops.imaging.store.StoredImage`):

- a set is ``(cfg.channels, size, size)`` uint8: the level-0 patches, then level 1 ..., then the
  whole-core patch, each patch three channels of RGB;
- patch positions come from a generator seeded by a hash of (core key, seed, set index), so a
  set is reproducible anywhere, independently of which other sets were drawn;
- ``placement="uniform"`` draws top-left corners uniformly over the level (the paper);
  ``"tissue"`` centres each patch on a random point of the tissue mask of the smallest stored
  level (a core with no tissue at all falls back to uniform: :func:`core_tissue_fraction` is how
  a mostly-background core is flagged, against ``cfg.min_tissue_fraction``);
- the whole-core patch is resized from the smallest stored level that still covers the patch
  size, never by shrinking level 0 of a large core;
- a level smaller than the patch raises :class:`SamplingError`, or with ``cfg.pad_small`` is
  centred on white.

All patch reads of a call are planned up front and handed to a
:class:`~her2ops.imaging.gather.TileGather`, so each tile is decoded once per call however
many patches or sets touch it, and patches are written straight into the output (a buffer the
caller may pass and reuse: ``out=``). The whole-core patch is computed once per open image (and
transposed once, for channels-last sets) and copied into every set.

Every function takes ``channels_last``: the same pixels as (cfg.num_patches, size, size, 3) per
set, the decoder's layout, written without transposes; the model data path uses it (the network
rearranges the set on its device). :func:`iter_set_batches` draws a core's N sets a batch at a
time under one plan (the scorer's way).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, cast

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from her2ops.imaging.gather import TileGather
    from her2ops.imaging.store import StoredImage

Placement = Literal["uniform", "tissue"]


@dataclass(frozen=True)
class PSSConfig:
    """Geometry of one pyramid sampling set."""

    patch_size: int = 512
    patches_per_level: dict[int, int] = field(default_factory=lambda: {0: 40, 1: 10})
    whole_core: bool = True
    placement: Placement = "uniform"
    pad_small: bool = False
    min_tissue_fraction: float = 0.05

    @property
    def num_patches(self) -> int:
        return sum(self.patches_per_level.values()) + (1 if self.whole_core else 0)

    @property
    def channels(self) -> int:
        return 3 * self.num_patches

    def to_dict(self) -> dict[str, object]:
        return {
            "patch_size": self.patch_size,
            "patches_per_level": {str(k): v for k, v in sorted(self.patches_per_level.items())},
            "whole_core": self.whole_core,
            "placement": self.placement,
            "pad_small": self.pad_small,
            "min_tissue_fraction": self.min_tissue_fraction,
        }


# --- the sampler ---------------------------------------------------------------------------------


class SamplingError(ValueError):
    """A PSS cannot be drawn from a core (e.g. a level smaller than the patch)."""


@dataclass(frozen=True)
class SetPlan:
    """Where one set's patches come from: ``(level, y, x)`` of each patch's top-left corner at
    its level, in channel order (the whole-core patch, if any, is not listed)."""

    index: int
    patches: tuple[tuple[int, int, int], ...]


def set_rng(*, key: str, seed: int, index: int) -> np.random.Generator:
    """The generator of set ``index`` of core ``key`` under ``seed`` (independent streams)."""
    if index < 0:
        raise ValueError(f"set index must be >= 0, got {index}")
    words = np.frombuffer(hashlib.sha256(key.encode("utf-8")).digest()[:16], dtype="<u4")
    entropy = [seed % (1 << 64), index, *(int(v) for v in words)]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def plan_set(img: StoredImage, cfg: PSSConfig, *, key: str, seed: int, index: int) -> SetPlan:
    """Draw the patch positions of one set (deterministic for ``key``, ``seed``, ``index``)."""
    _check_config(cfg)
    rng = set_rng(key=key, seed=seed, index=index)
    patches: list[tuple[int, int, int]] = []
    for level in sorted(cfg.patches_per_level):
        count = cfg.patches_per_level[level]
        if count <= 0:
            continue
        ys, xs = _positions(img, cfg, level, count, rng)
        patches.extend((level, int(y), int(x)) for y, x in zip(ys, xs, strict=True))
    return SetPlan(index=index, patches=tuple(patches))


def sample_set(
    img: StoredImage,
    cfg: PSSConfig,
    *,
    key: str,
    seed: int,
    index: int,
    out: np.ndarray | None = None,
    channels_last: bool = False,
) -> np.ndarray:
    """One PSS as a (cfg.channels, size, size) uint8 array: level-0 patches, then level-1 ...,
    then the whole-core patch; each patch is 3 channels of RGB (CHW). Written into ``out`` when
    given (and returned). With ``channels_last`` the same pixels come as
    (cfg.num_patches, size, size, 3), the decoder's layout: no transposes, for a consumer that
    permutes on its device (``x.permute(0, 3, 1, 2).reshape(channels, size, size)``)."""
    plan = plan_set(img, cfg, key=key, seed=seed, index=index)
    out = _output(cfg, out, (), channels_last)
    with _gather(img, cfg, [[plan]], channels_last) as gather:
        _fill(gather, cfg, [plan], [out])
    return out


def iter_sets(
    img: StoredImage,
    cfg: PSSConfig,
    *,
    key: str,
    seed: int,
    indices: Iterable[int],
    out: np.ndarray | None = None,
    channels_last: bool = False,
) -> Iterator[np.ndarray]:
    """Yield the sets ``indices`` one at a time, planning all their reads up front so a tile
    shared by several sets is decoded once; memory stays at one set plus the tiles kept for
    later sets (within the image's ``cache_bytes``), which is what inference over N sets wants.

    Each set is a fresh array, unless ``out`` ((cfg.channels, size, size) uint8) is given: then
    every set is written into it and ``out`` itself is yielded, so the consumer must be done with
    a set before asking for the next (no new memory per set: the fast way to stream).
    ``channels_last``: see :func:`sample_set`.
    """
    plans = [plan_set(img, cfg, key=key, seed=seed, index=i) for i in indices]
    if out is not None:
        out = _output(cfg, out, (), channels_last)
    with _gather(img, cfg, [[plan] for plan in plans], channels_last) as gather:
        for plan in plans:
            target = out if out is not None else _output(cfg, None, (), channels_last)
            _fill(gather, cfg, [plan], [target])
            yield target


def sample_sets(
    img: StoredImage,
    cfg: PSSConfig,
    *,
    key: str,
    seed: int,
    indices: Sequence[int],
    out: np.ndarray | None = None,
    channels_last: bool = False,
) -> np.ndarray:
    """Sets ``indices`` stacked as (n, cfg.channels, size, size) uint8 (into ``out`` when given);
    same values as :func:`sample_set` for each index. This holds all n sets at once (20 paper
    sets are 800 MB) and so needs no tile cache: each tile is decoded once and copied into every
    patch of every set that overlaps it. :func:`iter_sets` streams them instead.
    ``channels_last``: see :func:`sample_set`."""
    plans = [plan_set(img, cfg, key=key, seed=seed, index=i) for i in indices]
    out = _output(cfg, out, (len(plans),), channels_last)
    with _gather(img, cfg, [plans], channels_last) as gather:
        _fill(gather, cfg, plans, list(out))
    return out


def iter_set_batches(
    img: StoredImage,
    cfg: PSSConfig,
    *,
    key: str,
    seed: int,
    batches: Sequence[Sequence[int]],
    out: np.ndarray | Callable[[], np.ndarray] | None = None,
    channels_last: bool = False,
) -> Iterator[np.ndarray]:
    """Yield, for each list of set indices in ``batches``, those sets stacked as
    :func:`sample_sets` stacks them, with every read of every batch planned up front: a tile is
    decoded once per call, however many batches use it, while the tiles kept for later batches
    fit in the image's ``cache_bytes``. This is how a scorer draws a core's N sets a GPU batch
    at a time.

    Each batch is a fresh array (the consumer may keep it), unless ``out`` is given, a buffer
    of at least the largest batch ((m, *set shape) uint8): then batch ``b`` is written into
    ``out[:len(b)]`` and that view yielded, so the consumer must be done with a batch before
    asking for the next. Fresh memory costs a page fault per 4 kB (a 12-set paper batch is
    480 MB), about as much as sampling it: reuse the buffer where the consumer allows it.
    ``out`` may also be a callable giving such a buffer for each batch in turn, called just
    before the batch is filled (a ring of buffers shared with a consumer in another process,
    which may block until the consumer frees one: :class:`her2ops.pipelines.sampling.BatchRing`).
    """
    plans = [[plan_set(img, cfg, key=key, seed=seed, index=i) for i in batch] for batch in batches]
    if isinstance(out, np.ndarray):
        _batch_view(cfg, out, max((len(b) for b in plans), default=0), channels_last)
    with _gather(img, cfg, plans, channels_last) as gather:
        for batch_plans in plans:
            n = len(batch_plans)
            if out is None:
                target = _output(cfg, None, (n,), channels_last)
            else:
                target = _batch_view(
                    cfg, out if isinstance(out, np.ndarray) else out(), n, channels_last
                )
            _fill(gather, cfg, batch_plans, list(target))
            yield target


def _batch_view(cfg: PSSConfig, out: np.ndarray, n: int, channels_last: bool) -> np.ndarray:
    """The first ``n`` sets of the buffer ``out``, checked (size, shape and layout)."""
    if out.ndim == 0 or len(out) < n:
        raise ValueError(f"out must hold at least {n} sets, got shape {out.shape}")
    return _output(cfg, out[:n], (n,), channels_last)


def whole_core_patch(
    img: StoredImage, cfg: PSSConfig, *, channels_last: bool = False
) -> np.ndarray:
    """The whole core as one (3, size, size) patch ((size, size, 3) with ``channels_last``),
    resized (bilinear, antialiased) from the smallest stored level whose sides both reach the
    patch size, not from level 0 unless it must. Memoised on the image in both layouts."""
    size = cfg.patch_size
    memo_key = ("whole_core", size, cfg.pad_small, channels_last)
    cached = img.memo.get(memo_key)
    if cached is not None:
        return cast(np.ndarray, cached)
    if channels_last:  # one transposing copy per open image, not per set
        hwc = np.ascontiguousarray(whole_core_patch(img, cfg).transpose(1, 2, 0))
        img.memo[memo_key] = hwc
        return hwc
    fitting = [lv for lv, (h, w) in enumerate(img.level_shapes) if h >= size and w >= size]
    if fitting:
        source = img.read_level(fitting[-1])
    else:
        h, w = img.level_shapes[0]
        if not cfg.pad_small:
            raise SamplingError(
                f"core {img.name}: level 0 is {w}x{h} px, smaller than the {size}x{size} "
                "whole-core patch (set pad_small to pad with white)"
            )
        ph, pw = max(h, size), max(w, size)
        source = img.read_region(0, -((ph - h) // 2), -((pw - w) // 2), ph, pw)
    resized = Image.fromarray(source).resize((size, size), Image.Resampling.BILINEAR)
    patch = np.ascontiguousarray(np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1))
    img.memo[memo_key] = patch
    return patch


def core_tissue_fraction(img: StoredImage) -> float:
    """Fraction of the core that is tissue, from its smallest stored level."""
    mask = _tissue_mask(img)
    return float(mask.mean()) if mask.size else 0.0


# --- internals -----------------------------------------------------------------------------------


def _check_config(cfg: PSSConfig) -> None:
    if cfg.patch_size <= 0:
        raise ValueError(f"patch_size must be positive, got {cfg.patch_size}")
    for level, count in cfg.patches_per_level.items():
        if level < 0 or count < 0:
            raise ValueError(f"bad patches_per_level entry {level}: {count}")
    if cfg.num_patches == 0:
        raise ValueError("a PSS needs at least one patch")
    if cfg.placement not in ("uniform", "tissue"):
        raise ValueError(f"unknown placement {cfg.placement!r} (uniform, tissue)")


def _output(
    cfg: PSSConfig, out: np.ndarray | None, lead: tuple[int, ...], channels_last: bool = False
) -> np.ndarray:
    size = cfg.patch_size
    per_set = (cfg.num_patches, size, size, 3) if channels_last else (cfg.channels, size, size)
    shape = (*lead, *per_set)
    if out is None:
        return np.empty(shape, dtype=np.uint8)
    if out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous uint8 {shape}, got {out.dtype} {out.shape}")
    return out


def _gather(
    img: StoredImage,
    cfg: PSSConfig,
    batches: Sequence[Sequence[SetPlan]],
    channels_last: bool = False,
) -> TileGather:
    """A gather over ``batches`` (each a list of sets filled together), after the whole-core
    patch is made (memoised on the image; its level's tiles pass through the image's LRU)."""
    from her2ops.imaging.gather import TileGather

    if cfg.whole_core:
        whole_core_patch(img, cfg, channels_last=channels_last)
    size = cfg.patch_size
    regions = [
        [(level, y, x, size, size) for plan in plans for level, y, x in plan.patches]
        for plans in batches
    ]
    return TileGather(img, regions, channels_last=channels_last)


def _fill(
    gather: TileGather, cfg: PSSConfig, plans: Sequence[SetPlan], outs: Sequence[np.ndarray]
) -> None:
    """Fill the gather's next batch (``plans``) into the sets ``outs``."""
    last = gather.channels_last
    views = [
        out[i] if last else out[3 * i : 3 * i + 3]
        for plan, out in zip(plans, outs, strict=True)
        for i in range(len(plan.patches))
    ]
    gather.fill(views)
    if cfg.whole_core:
        whole = whole_core_patch(gather.img, cfg, channels_last=last)
        for out in outs:
            if last:
                out[-1] = whole
            else:
                out[-3:] = whole


def _positions(
    img: StoredImage, cfg: PSSConfig, level: int, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    size = cfg.patch_size
    h, w = img.level_shape(level)
    if (h < size or w < size) and not cfg.pad_small:
        raise SamplingError(
            f"core {img.name}: level {level} is {w}x{h} px, smaller than the {size}x{size} "
            "patch the profile samples there (set pad_small to pad with white)"
        )
    # Top-left corners range over [lo, hi]; a side shorter than the patch is centred in it.
    lo_y, hi_y = (0, h - size) if h >= size else (-((size - h) // 2),) * 2
    lo_x, hi_x = (0, w - size) if w >= size else (-((size - w) // 2),) * 2
    if cfg.placement == "tissue":
        mask = _tissue_mask(img)
        cells = np.flatnonzero(mask)
        if cells.size:  # an empty core falls back to uniform: flagged by its fraction instead
            mh, mw = mask.shape
            pick = cells[rng.integers(0, cells.size, size=count)]
            my, mx = np.divmod(pick, mw)
            # centre of the patch: a random point inside the chosen tissue cell, at this level
            cy = (my + rng.random(count)) * (h / mh)
            cx = (mx + rng.random(count)) * (w / mw)
            ys = np.clip(np.round(cy - size / 2), lo_y, hi_y).astype(np.int64)
            xs = np.clip(np.round(cx - size / 2), lo_x, hi_x).astype(np.int64)
            return ys, xs
    ys = rng.integers(lo_y, hi_y + 1, size=count)
    xs = rng.integers(lo_x, hi_x + 1, size=count)
    return ys, xs


def _tissue_mask(img: StoredImage) -> np.ndarray:
    cached = img.memo.get("tissue_mask")
    if cached is None:
        from her2ops.imaging.tissue import tissue_mask  # scipy: imported only when needed

        cached = tissue_mask(img.read_level(len(img.level_shapes) - 1))
        img.memo["tissue_mask"] = cached
    return cast(np.ndarray, cached)

"""Training and validation data: a torch ``Dataset`` of pyramid sampling sets over a label snapshot.

The dataset does not read images itself: a ``sample_fn(item, seed, index)`` returning one uint8
set is injected (the store sampler in production, a synthetic one in tests). A set is either
channels-first (3P, H, W) or channels-last (P, H, W, 3) (the store sampler's: no transposes on
the CPU; the network rearranges it on its device); augmentation handles both alike.

Every random choice is a function of ``(seed, epoch, core, set index)``, never of a global RNG
or of which DataLoader worker runs it, so an epoch can be replayed exactly after a crash.

- training: a fresh set per access (the sampler seed changes every epoch), then a random flip /
  90-degree rotation applied to the whole set (all patches together);
- validation: fixed seeds, no augmentation, ``sets_per_core`` sets per core.

A core whose image cannot be read (``OSError``, ``EOFError`` or the store's ``StoreError`` from
the sampler) yields a :class:`Skipped` sentinel that :func:`collate_sets` drops and counts, so one
bad file does not crash a run; any other sampler error (e.g. a geometry that does not fit the
core) is a :class:`SampleError` naming the core.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from her2ops.imaging.store import StoreError
from her2ops.scores import NUM_CLASSES, SCORE_LABELS


@dataclass(frozen=True)
class LabelledCore:
    """One row of a label snapshot: the core, where its image lives, its consensus label.

    ``copy`` numbers the repeats of a core in a bootstrap resample (its patient drawn more than
    once): each copy gets its own training set stream. The image is ``page`` of the file
    ``sha256`` (0: its only or first image)."""

    core: str
    sha256: str
    label: int
    copy: int = 0
    page: int = 0


SampleFn = Callable[[LabelledCore, int, int], np.ndarray]

#: Sampler errors that mean "this image cannot be read": skipped and counted, not fatal.
#: (The image store's ``StoreError`` covers missing, truncated and corrupt stored files.)
SKIPPABLE_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, StoreError)

_TRAIN, _VAL, _AUG = 1, 2, 3


class SampleError(ValueError):
    """The sampler refused a core for a reason that skipping would hide (e.g. bad geometry)."""


@dataclass(frozen=True)
class Skipped:
    """Sentinel for a core whose image failed to read."""

    core: str
    reason: str


class SetBatch(NamedTuple):
    """A collated batch; ``x``/``y`` are ``None`` when every item in it was skipped."""

    x: torch.Tensor | None
    y: torch.Tensor | None
    skipped: list[str]


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from non-negative integers (SeedSequence mixing: no nearby-seed overlap)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def core_key(core: str) -> int:
    """A stable integer for a core id, so sets do not depend on the order of the snapshot."""
    return zlib.crc32(core.encode("utf-8"))


class PSSDataset(Dataset[tuple[torch.Tensor, int] | Skipped]):
    """``len(items) * sets_per_core`` sets; item ``i`` is set ``i % sets_per_core`` of core
    ``i // sets_per_core``. Call :meth:`set_epoch` before each training epoch."""

    def __init__(
        self,
        items: Sequence[LabelledCore],
        sample_fn: SampleFn,
        *,
        train: bool,
        seed: int,
        sets_per_core: int = 1,
    ) -> None:
        if sets_per_core < 1:
            raise ValueError("sets_per_core must be at least 1")
        if seed < 0:
            raise ValueError("seed must be non-negative")
        self.items = list(items)
        self.sample_fn = sample_fn
        self.train = train
        self.seed = seed
        self.sets_per_core = sets_per_core
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.items) * self.sets_per_core

    @property
    def labels(self) -> list[int]:
        """Per-set labels, in index order."""
        return [it.label for it in self.items for _ in range(self.sets_per_core)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | Skipped:
        item = self.items[index // self.sets_per_core]
        set_index = index % self.sets_per_core
        key = core_key(item.core)
        if self.train:
            # copy 0 keeps the seeds of a run without repeats; a repeat mixes its number in
            extra = (item.copy,) if item.copy else ()
            seed = derive_seed(self.seed, _TRAIN, self.epoch, key, *extra)
        else:
            seed = derive_seed(self.seed, _VAL, key)
        try:
            arr = self.sample_fn(item, seed, set_index)
        except SKIPPABLE_ERRORS as exc:
            return Skipped(item.core, f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            raise SampleError(f"core {item.core} ({item.sha256}): sampling failed: {exc}") from exc
        arr = np.asarray(arr)
        if not is_set(arr):
            raise SampleError(
                f"core {item.core}: sampler returned {arr.dtype} {arr.shape}, expected a uint8 "
                "set, (channels, size, size) or (patches, size, size, 3)"
            )
        if self.train:
            arr = augment(arr, np.random.default_rng(derive_seed(seed, _AUG, set_index)))
        return torch.from_numpy(np.ascontiguousarray(arr)), int(item.label)


def is_set(arr: np.ndarray) -> bool:
    """Whether ``arr`` is one uint8 set: (C, size, size) or channels-last (P, size, size, 3)."""
    if arr.dtype != np.uint8:
        return False
    if arr.ndim == 3:
        return arr.shape[1] == arr.shape[2]
    return arr.ndim == 4 and arr.shape[1] == arr.shape[2] and arr.shape[3] == 3


def augment(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random 90-degree rotation and flips of one set, the same for every patch: (C, H, W) or
    channels-last (P, H, W, 3), whose rows and columns are axes 1 and 2 in both; the same
    ``rng`` gives the same transform in both layouts."""
    if arr.ndim not in (3, 4):
        raise ValueError(f"expected one set, (C, H, W) or (P, H, W, 3), got shape {arr.shape}")
    rows, cols = 1, 2  # H and W in both layouts
    arr = np.rot90(arr, k=int(rng.integers(4)), axes=(rows, cols))
    if rng.random() < 0.5:
        arr = np.flip(arr, axis=cols)
    if rng.random() < 0.5:
        arr = np.flip(arr, axis=rows)
    return arr


def collate_sets(batch: Sequence[tuple[torch.Tensor, int] | Skipped]) -> SetBatch:
    """Stack the sets of a batch, dropping (and naming) the skipped ones."""
    good = [b for b in batch if not isinstance(b, Skipped)]
    skipped = [b.core for b in batch if isinstance(b, Skipped)]
    if not good:
        return SetBatch(None, None, skipped)
    x = torch.stack([b[0] for b in good])
    y = torch.tensor([b[1] for b in good], dtype=torch.long)
    return SetBatch(x, y, skipped)


class ShardedStream(IterableDataset[Any]):
    """An iterable data set over ``items``, each expanded by ``expand(item)`` into the values it
    yields. Under a DataLoader with workers, item ``i`` goes to worker ``i % num_workers``, so
    an item's values come from one process, in order (e.g. a core's set batches, drawn under
    one plan). ``expand`` must be picklable where workers are spawned, not forked."""

    def __init__(self, items: Sequence[Any], expand: Callable[[Any], Iterator[Any]]) -> None:
        self.items = list(items)
        self.expand = expand

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        mine = self.items if info is None else self.items[info.id :: info.num_workers]
        for item in mine:
            yield from self.expand(item)


def check_label_coverage(labels: Sequence[int], num_classes: int = NUM_CLASSES) -> None:
    """Raise ``ValueError`` naming every class with no example (before any training starts)."""
    present = set(int(v) for v in labels)
    bad = sorted(v for v in present if not 0 <= v < num_classes)
    if bad:
        raise ValueError(f"labels out of range 0..{num_classes - 1}: {bad}")
    missing = [
        SCORE_LABELS[c] if num_classes == NUM_CLASSES else str(c)
        for c in range(num_classes)
        if c not in present
    ]
    if missing:
        raise ValueError(
            f"class {', '.join(missing)} has no training cores; every class needs at least one"
        )


def class_weights(labels: Sequence[int], num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """Cross-entropy weights inversely proportional to class frequency, ``n / (K * n_c)``
    (so a balanced set gets all ones)."""
    check_label_coverage(labels, num_classes)
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    return torch.tensor(len(labels) / (num_classes * counts), dtype=torch.float32)


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of one epoch for one rank, resumable at any step.

    The order is a permutation seeded by ``(seed, epoch)`` (or the identity without shuffle),
    padded by wrapping round to a multiple of ``world_size`` like ``DistributedSampler``, and
    dealt round-robin to ranks. With ``drop_last`` the final short batch is dropped (training:
    every rank must run the same number of steps, and BatchNorm needs more than one sample).
    ``start_step`` skips batches already trained on before a resume, without loading them.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        pad: bool = True,
        start_step: int = 0,
    ) -> None:
        self.n, self.batch_size = n, batch_size
        self.shuffle, self.seed, self.epoch = shuffle, seed, epoch
        self.rank, self.world_size = rank, world_size
        self.drop_last, self.pad, self.start_step = drop_last, pad, start_step

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.pad and self.world_size > 1 and order:
            total = math.ceil(self.n / self.world_size) * self.world_size
            order = (order * math.ceil(total / self.n))[:total]
        return order[self.rank :: self.world_size]

    def _batches(self) -> list[list[int]]:
        idx = self._indices()
        batches = [idx[i : i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        if self.drop_last and len(batches) > 1 and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._batches()[self.start_step :]

    def __len__(self) -> int:
        return max(0, len(self._batches()) - self.start_step)

    @property
    def steps_per_epoch(self) -> int:
        return len(self._batches())


def make_loader(
    dataset: PSSDataset,
    batch_sampler: EpochBatchSampler,
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader[Any]:
    """A DataLoader with the skipping collate; workers fork per epoch (the dataset's epoch is
    read when they start)."""
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        collate_fn=collate_sets,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )

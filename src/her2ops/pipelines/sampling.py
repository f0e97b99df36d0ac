"""The bridge from stored cores to the model layer: sample functions over the image store.

Sets come channels-last, (patches, size, size, 3) uint8 each: the decoder's layout, written
without a transposing copy; the network rearranges them on its device
(:meth:`her2ops.models.network.PSSNet.prepare`).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from her2ops.imaging.pss import PSSConfig, iter_set_batches, sample_set, sample_sets
from her2ops.imaging.store import CoreStore, StoredImage, StoreError
from her2ops.models.data import LabelledCore


def set_chunks(n_sets: int, chunk: int) -> list[list[int]]:
    """Set indices ``0..n_sets-1`` cut into consecutive chunks of at most ``chunk``."""
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    return [list(range(i, min(i + chunk, n_sets))) for i in range(0, n_sets, chunk)]


class StoreSampler:
    """Draws PSS sets from the store, keeping a few cores open (an LRU of open images).

    Picklable for DataLoader workers: open images are dropped when pickled. A store file that
    fails to read (corrupt, missing) becomes an ``OSError``, which the training data set skips
    and counts instead of crashing the run. ``channels_last`` (the default) gives
    (patches, size, size, 3) sets, otherwise (3 * patches, size, size).
    """

    def __init__(
        self, store_root: Path, cfg: PSSConfig, *, keep_open: int = 16, channels_last: bool = True
    ) -> None:
        self.store = CoreStore(store_root)
        self.cfg = cfg
        self.keep_open = keep_open
        self.channels_last = channels_last
        self._open: OrderedDict[tuple[str, int], StoredImage] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state

    def _image(self, sha256: str, core: str, page: int = 0) -> StoredImage:
        img = self._open.pop((sha256, page), None)
        if img is None:
            try:
                img = self.store.open(sha256, page, core=core)
            except StoreError as exc:
                raise OSError(str(exc)) from exc
        self._open[sha256, page] = img
        while len(self._open) > self.keep_open:
            _, old = self._open.popitem(last=False)
            old.close()
        return img

    def __call__(self, item: LabelledCore, seed: int, index: int) -> np.ndarray:
        """One set of a labelled core (the PSSDataset's sample function)."""
        img = self._image(item.sha256, item.core, item.page)
        try:
            return sample_set(
                img,
                self.cfg,
                key=item.core,
                seed=seed,
                index=index,
                channels_last=self.channels_last,
            )
        except StoreError as exc:
            raise OSError(str(exc)) from exc

    def for_core(
        self, sha256: str, core: str, *, page: int = 0
    ) -> Callable[[int, Sequence[int]], np.ndarray]:
        """``(seed, indices) -> sets`` for one core (image ``page`` of the file ``sha256``; the
        inference protocol's sample function); each call decodes its own tiles:
        :meth:`core_batches` shares them across batches."""

        def draw(seed: int, indices: Sequence[int]) -> np.ndarray:
            img = self._image(sha256, core, page)
            try:
                return sample_sets(
                    img,
                    self.cfg,
                    key=core,
                    seed=seed,
                    indices=indices,
                    channels_last=self.channels_last,
                )
            except StoreError as exc:
                raise OSError(str(exc)) from exc

        return draw

    def core_batches(
        self,
        sha256: str,
        core: str,
        seed: int,
        batches: Sequence[Sequence[int]],
        *,
        page: int = 0,
        out: np.ndarray | Callable[[], np.ndarray] | None = None,
    ) -> Iterator[np.ndarray]:
        """The sets ``batches`` of one core (image ``page`` of the file ``sha256``), one stacked
        array per batch, under one plan: each tile is decoded once for all the batches (the
        scorer draws a core's N sets this way). With ``out`` (from :meth:`batch_buffer`) every
        batch is written into it, no fresh memory: the consumer must be done with a batch
        before asking for the next. ``out`` may also be a callable giving the buffer for each
        batch in turn (:meth:`BatchRing.next_buffer`)."""
        img = self._image(sha256, core, page)
        try:
            yield from iter_set_batches(
                img,
                self.cfg,
                key=core,
                seed=seed,
                batches=batches,
                out=out,
                channels_last=self.channels_last,
            )
        except StoreError as exc:
            raise OSError(str(exc)) from exc

    def batch_shape(self, n_sets: int) -> tuple[int, ...]:
        """The shape of ``n_sets`` sets (uint8) in this sampler's layout."""
        size, cfg = self.cfg.patch_size, self.cfg
        per_set = (
            (cfg.num_patches, size, size, 3) if self.channels_last else (cfg.channels, size, size)
        )
        return (n_sets, *per_set)

    def batch_buffer(self, n_sets: int) -> np.ndarray:
        """An uninitialised buffer of ``n_sets`` sets in this sampler's layout."""
        return np.empty(self.batch_shape(n_sets), dtype=np.uint8)

    def close(self) -> None:
        for img in self._open.values():
            img.close()
        self._open.clear()


class BatchRing:
    """Batch buffers in shared memory, ``slots`` per sampling process, reused in turn: a
    DataLoader worker writes a batch into one of its slots and hands the consumer only where
    it is (:meth:`handed`), so no batch is copied and no fresh memory is touched per batch
    (fresh memory costs a page fault per 4 kB: about as much as sampling a 480 MB paper batch).
    Memory: ``processes x slots`` batches, allocated once by the consumer before the workers
    start, faulted in once.

    Why a slot is never overwritten while the consumer reads it: each process has a semaphore
    counting its free slots (``slots`` at the start). A process takes one before it writes its
    m-th batch into slot ``m % slots`` (:meth:`next_buffer`); the consumer gives it back when it
    is done with that batch (:meth:`release`: when it asks for the next item). A process's
    batches reach the consumer in the order written and are released in that order, so when
    batch m gets its slot, batches ``0..m - slots`` have all been released, and the slot last
    held batch ``m - slots``. This does not rest on how far the DataLoader runs ahead: it keeps
    ``prefetch_factor`` tasks per worker in flight only while every worker is busy (once some
    have finished, one worker may hold ``prefetch_factor x workers`` of them); a process more
    than ``slots`` batches ahead of the consumer waits. No deadlock: the item the consumer waits
    for comes from a process whose earlier batches it has all released (it asked for the next
    item), so that process has a free slot. ``slots = prefetch_factor + 1`` is enough for a
    process never to wait while every worker is busy.

    Picklable for DataLoader workers (the tensors are shared, the semaphores inherited), under
    the multiprocessing context given (the DataLoader's must be the same).
    """

    def __init__(
        self, processes: int, slots: int, batch_shape: tuple[int, ...], context: Any
    ) -> None:
        import torch

        if processes < 1 or slots < 1:
            raise ValueError(f"need at least one process and one slot, got {processes}, {slots}")
        self.slots = slots
        self.buffers = [
            torch.empty((slots, *batch_shape), dtype=torch.uint8).share_memory_()
            for _ in range(processes)
        ]
        self._free = [context.Semaphore(slots) for _ in range(processes)]
        self._consumer = os.getpid()
        self._written = 0  # batches written by this process (in a worker)
        self._pending: int | None = None  # the slot handed out, not yet announced

    @property
    def nbytes(self) -> int:
        return sum(b.numel() for b in self.buffers)

    @staticmethod
    def _process() -> int:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        if info is None:
            raise RuntimeError("BatchRing.next_buffer runs in a DataLoader worker")
        return int(info.id)

    def next_buffer(self) -> np.ndarray:
        """(In a worker) the buffer for this process's next batch, once the consumer is done
        with the batch that held it last."""
        worker = self._process()
        while not self._free[worker].acquire(timeout=1.0):
            if os.getppid() != self._consumer:
                raise RuntimeError("the consuming process has ended")
        slot = self._written % self.slots
        self._written += 1
        self._pending = slot
        return self.buffers[worker][slot].numpy()

    def handed(self) -> tuple[int, int] | None:
        """(In a worker) ``(process, slot)`` of the last buffer from :meth:`next_buffer`, to
        hand to the consumer with the batch (or with the error that stopped filling it, so
        that its slot is released all the same); ``None`` if none is outstanding."""
        slot, self._pending = self._pending, None
        return None if slot is None else (self._process(), slot)

    def batch(self, where: tuple[int, int], n_sets: int) -> np.ndarray:
        """(In the consumer) the batch of ``n_sets`` sets at ``where``, in place."""
        worker, slot = where
        return cast(np.ndarray, self.buffers[worker][slot, :n_sets].numpy())

    def release(self, where: tuple[int, int]) -> None:
        """(In the consumer) done with the batch at ``where``: its slot may be written again."""
        self._free[where[0]].release()

    def close(self) -> None:
        """(In the consumer) stop reading: no worker waits for a slot any more."""
        for free in self._free:
            for _ in range(self.slots):
                free.release()

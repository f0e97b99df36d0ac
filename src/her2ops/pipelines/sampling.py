"""The bridge from stored cores to the model layer: sample functions over the image store.

Sets come channels-last, (patches, size, size, 3) uint8 each: the decoder's layout, written
without a transposing copy; the network rearranges them on its device
(:meth:`her2ops.models.network.PSSNet.prepare`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

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
        self._open: OrderedDict[str, StoredImage] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state

    def _image(self, sha256: str, core: str) -> StoredImage:
        img = self._open.pop(sha256, None)
        if img is None:
            try:
                img = self.store.open(sha256, core=core)
            except StoreError as exc:
                raise OSError(str(exc)) from exc
        self._open[sha256] = img
        while len(self._open) > self.keep_open:
            _, old = self._open.popitem(last=False)
            old.close()
        return img

    def __call__(self, item: LabelledCore, seed: int, index: int) -> np.ndarray:
        """One set of a labelled core (the PSSDataset's sample function)."""
        img = self._image(item.sha256, item.core)
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

    def for_core(self, sha256: str, core: str) -> Callable[[int, Sequence[int]], np.ndarray]:
        """``(seed, indices) -> sets`` for one core (the inference protocol's sample function);
        each call decodes its own tiles: :meth:`core_batches` shares them across batches."""

        def draw(seed: int, indices: Sequence[int]) -> np.ndarray:
            img = self._image(sha256, core)
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
        out: np.ndarray | None = None,
    ) -> Iterator[np.ndarray]:
        """The sets ``batches`` of one core, one stacked array per batch, under one plan: each
        tile is decoded once for all the batches (the scorer draws a core's N sets this way).
        With ``out`` (from :meth:`batch_buffer`) every batch is written into it, no fresh
        memory: the consumer must be done with a batch before asking for the next."""
        img = self._image(sha256, core)
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

    def batch_buffer(self, n_sets: int) -> np.ndarray:
        """An uninitialised buffer of ``n_sets`` sets in this sampler's layout."""
        size, cfg = self.cfg.patch_size, self.cfg
        per_set = (
            (cfg.num_patches, size, size, 3) if self.channels_last else (cfg.channels, size, size)
        )
        return np.empty((n_sets, *per_set), dtype=np.uint8)

    def close(self) -> None:
        for img in self._open.values():
            img.close()
        self._open.clear()

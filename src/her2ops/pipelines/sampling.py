"""The bridge from stored cores to the model layer: sample functions over the image store."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from her2ops.imaging.pss import PSSConfig, sample_set, sample_sets
from her2ops.imaging.store import CoreStore, StoredImage, StoreError
from her2ops.models.data import LabelledCore


class StoreSampler:
    """Draws PSS sets from the store, keeping a few cores open (an LRU of open images).

    Picklable for DataLoader workers: open images are dropped when pickled. A store file that
    fails to read (corrupt, missing) becomes an ``OSError``, which the training data set skips
    and counts instead of crashing the run.
    """

    def __init__(self, store_root: Path, cfg: PSSConfig, *, keep_open: int = 16) -> None:
        self.store = CoreStore(store_root)
        self.cfg = cfg
        self.keep_open = keep_open
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
            return sample_set(img, self.cfg, key=item.core, seed=seed, index=index)
        except StoreError as exc:
            raise OSError(str(exc)) from exc

    def for_core(self, sha256: str, core: str) -> Callable[[int, Sequence[int]], np.ndarray]:
        """``(seed, indices) -> sets`` for one core (the inference protocol's sample function)."""

        def draw(seed: int, indices: Sequence[int]) -> np.ndarray:
            return sample_sets(
                self._image(sha256, core), self.cfg, key=core, seed=seed, indices=indices
            )

        return draw

    def close(self) -> None:
        for img in self._open.values():
            img.close()
        self._open.clear()

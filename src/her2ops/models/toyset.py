"""Synthetic pyramid sampling sets for tests and benchmarks (no image store needed).

The brown (DAB-like) tint of every patch grows with the label, buried in pixel noise, so a small
network can learn it in a few steps. It is a picklable callable, so DataLoader workers, spawned
processes and ``torchrun`` children can use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from her2ops.models.data import LabelledCore, core_key, derive_seed
from her2ops.profiles import Profile


@dataclass(frozen=True)
class ToySampler:
    """``sample_fn(item, seed, index) -> (channels, size, size) uint8``."""

    channels: int
    size: int
    strength: float = 18.0
    delay: float = 0.0
    fail_cores: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def for_profile(cls, profile: Profile, **kw: object) -> ToySampler:
        return cls(channels=profile.pss.channels, size=profile.pss.patch_size, **kw)  # type: ignore[arg-type]

    def __call__(self, item: LabelledCore, seed: int, index: int) -> np.ndarray:
        if self.delay:
            time.sleep(self.delay)  # stands in for slow image reads (kill/resume tests)
        if item.core in self.fail_cores:
            raise OSError(f"cannot read {item.sha256}")
        return self.make(item.label, derive_seed(seed, index))

    def make(self, label: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        x = rng.normal(150.0, 30.0, size=(self.channels, self.size, self.size))
        tint = self.strength * (label - 1.5)
        x[0::3] += tint  # red up, blue down: browner with a higher score
        x[2::3] -= tint
        return np.clip(x, 0, 255).astype(np.uint8)

    def core_fn(self, item: LabelledCore) -> Callable[[int, Sequence[int]], np.ndarray]:
        """The ``sample_fn(seed, indices)`` that :func:`her2ops.models.inference.score_core`
        takes, for one core."""

        def sample(seed: int, indices: Sequence[int]) -> np.ndarray:
            key = core_key(item.core)
            return np.stack([self.make(item.label, derive_seed(seed, key, i)) for i in indices])

        return sample


def toy_items(n: int, *, prefix: str = "core") -> list[LabelledCore]:
    """``n`` cores with labels cycling 0, 1, 2, 3."""
    return [LabelledCore(f"{prefix}{i:03d}", f"toy://{prefix}{i:03d}", i % 4) for i in range(n)]

"""Bounds on the size and count arguments of commands: every one has a limit and a clear error,
checked before any work starts (an unbounded argument grows until the kernel kills the process).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from her2ops.errors import InvalidRequest

MAX_SYNTH_SIZE = 8192  # px per side: 8192^2 x 3 bytes = 200 MB per core in memory
MAX_SYNTH_PATIENTS = 100_000
MAX_STUDY_DRAWS = 1_000_000
MAX_STUDY_CORES = 1_000_000


def check_synth(*, patients: int, cores: int, size: int) -> None:
    """``her2ops synth``'s counts and image size."""
    if not 64 <= size <= MAX_SYNTH_SIZE:
        raise InvalidRequest(f"--size {size}: must be 64..{MAX_SYNTH_SIZE} px")
    if not 1 <= patients <= MAX_SYNTH_PATIENTS:
        raise InvalidRequest(f"--patients {patients}: must be 1..{MAX_SYNTH_PATIENTS:,}")
    if not patients <= cores <= 3 * patients:
        raise InvalidRequest(
            f"--cores must be between --patients and 3 x --patients ({patients}-{3 * patients})"
        )


def check_slide(
    path: Path, *, max_pixels: int | None = None, page: int | None = None
) -> tuple[int, int]:
    """(height, width) a slide declares, read from its header only; InvalidRequest if it has
    more than ``HER2OPS_MAX_SLIDE_PIXELS`` (the dearray reader decodes it whole) or holds
    several images and no ``page`` is chosen. The bound is
    :class:`~her2ops.imaging.dearray.SlideImage`'s own, so every reader of slides applies the
    same one."""
    from her2ops.imaging.dearray import SlideImage

    if not path.is_file():
        raise InvalidRequest(f"{path}: no such file")
    return SlideImage(path, max_pixels=max_pixels, page=page).shape


def check_grid(rows: int | None, cols: int | None) -> None:
    """``dearray``'s grid: at most 1,000 rows and columns."""
    for name, value in (("--rows", rows), ("--cols", cols)):
        if value is not None and not 1 <= value <= 1000:
            raise InvalidRequest(f"{name} {value}: must be 1..1,000")


def check_study_inputs(probs: np.ndarray, labels: np.ndarray, *, draws: int) -> None:
    """The N/k study's inputs: finite, non-negative probabilities that sum to 1 per output,
    integer labels 0..3, one per core, and a bounded number of draws."""
    if not 1 <= draws <= MAX_STUDY_DRAWS:
        raise InvalidRequest(f"--draws {draws}: must be 1..{MAX_STUDY_DRAWS:,}")
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[2] != 4 or probs.shape[0] < 1 or probs.shape[1] < 1:
        raise InvalidRequest(f"probs must be (cores, outputs, 4), not {probs.shape}")
    if probs.shape[0] > MAX_STUDY_CORES:
        raise InvalidRequest(f"probs has {probs.shape[0]:,} cores (at most {MAX_STUDY_CORES:,})")
    if not np.issubdtype(probs.dtype, np.floating):
        raise InvalidRequest(f"probs must be floating point, not {probs.dtype}")
    if not np.isfinite(probs).all():
        raise InvalidRequest("probs holds NaN or infinite values")
    if (probs < 0).any():
        raise InvalidRequest("probs holds negative values")
    sums = probs.sum(axis=2)
    if not np.allclose(sums, 1.0, atol=1e-3):
        worst = float(np.abs(sums - 1).max())
        raise InvalidRequest(f"probs are not normalised (an output sums to 1 {worst:+.3g})")
    labels = np.asarray(labels)
    if labels.shape != (probs.shape[0],):
        raise InvalidRequest(f"labels must be {probs.shape[0]} values, not shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) and (
        not np.issubdtype(labels.dtype, np.floating)
        or not np.isfinite(labels).all()
        or (labels != np.round(labels)).any()
    ):
        raise InvalidRequest("labels must be integers 0..3")
    if labels.min() < 0 or labels.max() > 3:
        raise InvalidRequest("labels must be integers 0..3")

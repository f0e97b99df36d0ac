"""Synthetic TMA slides: synthetic cores placed on a jittered grid of glass, for tests and the
demo of :func:`her2ops.imaging.dearray.dearray`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

U8 = NDArray[np.uint8]


def _white_balanced(core: U8) -> NDArray[np.float32]:
    """Transmittance of a core image relative to its own glass (the median of its border)."""
    arr = core[..., :3].astype(np.float32)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    glass = np.maximum(np.median(border, axis=0), 1.0)
    return np.minimum(arr / glass, 1.0)


def make_tma_slide(
    cores: Sequence[U8],
    *,
    rows: int,
    cols: int,
    spacing: int,
    jitter: float,
    missing: Iterable[tuple[int, int]] = (),
    rng: np.random.Generator,
    margin: int | None = None,
    dust: int = 20,
) -> tuple[U8, list[dict[str, Any]]]:
    """Place square core images on a ``rows`` x ``cols`` grid of glass, spots ``spacing`` px
    apart, each shifted by up to ``jitter`` px; spots in ``missing`` (1-based (row, col)) stay
    empty. Cores are used in row-major order of the filled spots (cycled if too few).

    Images combine by Beer-Lambert (transmittances multiply), so the white glass around a core
    does not hide its neighbour. ``dust`` small specks are scattered over the glass. Returns the
    slide and one truth dict per placed core: row, col, cx, cy, size, index (into ``cores``).
    """
    if not cores:
        raise ValueError("need at least one core image")
    gone = {(int(r), int(c)) for r, c in missing}
    size = max(max(c.shape[0], c.shape[1]) for c in cores)
    if size > spacing:
        raise ValueError(f"cores of {size} px do not fit a spacing of {spacing} px")
    margin = spacing // 2 if margin is None else margin
    pad = int(np.ceil(jitter))
    height = 2 * (margin + pad) + (rows - 1) * spacing + size
    width = 2 * (margin + pad) + (cols - 1) * spacing + size
    trans = np.full((height, width, 3), 0.975, dtype=np.float32)  # glass and mountant
    trans *= 1.0 - rng.uniform(0, 0.01, (1, 1, 3)).astype(np.float32)
    truth: list[dict[str, Any]] = []
    k = 0
    for r in range(1, rows + 1):
        for c in range(1, cols + 1):
            if (r, c) in gone:
                continue
            idx = k % len(cores)
            core = cores[idx]
            k += 1
            ch, cw = core.shape[:2]
            cy = margin + pad + size / 2 + (r - 1) * spacing + rng.uniform(-jitter, jitter)
            cx = margin + pad + size / 2 + (c - 1) * spacing + rng.uniform(-jitter, jitter)
            y0, x0 = round(cy - ch / 2), round(cx - cw / 2)
            trans[y0 : y0 + ch, x0 : x0 + cw] *= _white_balanced(core)
            truth.append(
                {
                    "row": r,
                    "col": c,
                    "cx": x0 + cw / 2 - 0.5,
                    "cy": y0 + ch / 2 - 0.5,
                    "size": max(ch, cw),
                    "index": idx,
                }
            )
    yy, xx = np.ogrid[:height, :width]
    for _ in range(dust):
        y, x = int(rng.integers(0, height)), int(rng.integers(0, width))
        rad = rng.uniform(1, max(2.0, size / 60))
        ys = slice(max(0, int(y - rad - 1)), int(y + rad + 2))
        xs = slice(max(0, int(x - rad - 1)), int(x + rad + 2))
        speck = (yy[ys] - y) ** 2 + (xx[:, xs] - x) ** 2 <= rad * rad
        trans[ys, xs][speck] *= 0.35
    noise = rng.standard_normal(trans.shape, dtype=np.float32) * np.float32(1.5)
    return np.clip(trans * 255.0 + noise, 0, 255).astype(np.uint8), truth

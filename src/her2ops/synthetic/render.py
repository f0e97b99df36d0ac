"""Rendering of synthetic HER2 IHC tissue-microarray cores, one ASCO/CAP class each.

A core is round tissue on white glass. Tumour nests of cells (Voronoi cells of a jittered grid,
hematoxylin nuclei, DAB membranes) lie in stroma (wavy fibres, sparse fibroblasts and
lymphocytes), with lumina, uneven section thickness and, now and then, a fold or debris. The
membrane pattern follows the class (ASCO/CAP 2018, see ``CLASS_PATTERNS``):

- 0: no staining, or faint incomplete staining in <= 10 % of tumour cells;
- 1+: faint, incomplete membrane staining in > 10 %;
- 2+: weak to moderate complete membrane staining in > 10 %;
- 3+: strong complete membrane staining in most cells.

Some cores are heterogeneous: a region of an adjacent class (a 3+ core may hold 2+ regions) that
stays a minority, so the core's class is its dominant pattern. Artefact cores (``ARTEFACTS``)
carry a large fold, heavy debris or pale, fragmented, nondiagnostic tissue.

Colours are not painted: every pixel gets hematoxylin, eosin and DAB concentrations and is
rendered by Beer-Lambert (:mod:`her2ops.imaging.stains`). Layout is vectorised numpy: the
nearest and second-nearest cell seeds of every pixel come from a 3x3 neighbourhood of a jittered
grid evaluated block-wise, so no Python loop runs per cell or per pixel. Cores larger than
``max_render`` pixels are rendered at that size and upsampled, with sensor grain added at full
size: a 10,000 px core takes a few seconds.

The data set writer (files, votes, contact sheet) is :mod:`her2ops.synthetic.dataset`; the
simulated pathologists are :mod:`her2ops.synthetic.votes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageChops, ImageFilter
from scipy import ndimage
from scipy.special import ndtri

from her2ops.imaging.stains import hed_to_rgb, membrane_dab_od

ARTEFACTS: tuple[str, ...] = ("fold", "debris", "pale")
#: cell size (px) at the render resolution; larger cores are rendered at ``max_render`` and
#: upsampled, so a 10,000 px core has ~60 px cells (about 13 um at 0.22 um/px, as at 20x).
RENDER_CELL_PX = 12
MAX_RENDER = 2048

F32 = NDArray[np.float32]


@dataclass(frozen=True)
class MembranePattern:
    """Membrane DAB staining of one class. Ranges are (low, high) drawn uniformly per core."""

    positive_fraction: tuple[float, float]  # fraction of tumour cells with membrane staining
    intensity: tuple[float, float]  # DAB concentration at the membrane centre (natural log OD)
    completeness: tuple[float, float]  # fraction of a positive cell's circumference stained
    width: float  # membrane half-width, as a fraction of the cell size
    cytoplasm: float  # cytoplasmic DAB blush, as a fraction of the membrane intensity


CLASS_PATTERNS: dict[int, MembranePattern] = {
    0: MembranePattern((0.0, 0.08), (0.10, 0.22), (0.15, 0.40), 0.075, 0.0),
    1: MembranePattern((0.35, 0.85), (0.28, 0.45), (0.30, 0.60), 0.08, 0.0),
    2: MembranePattern((0.60, 0.95), (0.60, 0.90), (0.85, 1.00), 0.09, 0.05),
    3: MembranePattern((0.85, 1.00), (1.50, 2.20), (0.95, 1.00), 0.11, 0.10),
}
#: adjacent classes a heterogeneous region may take (3+ cores hold 2+ regions, ...).
HETEROGENEOUS_NEIGHBOURS: dict[int, tuple[int, ...]] = {0: (1,), 1: (0, 2), 2: (1, 1, 3), 3: (2,)}

TUMOUR, FIBROBLAST, LYMPHOCYTE, EMPTY = 0, 1, 2, 3
#: optical density of a dark dust particle per R, G, B channel.
_DEBRIS_OD = np.array([0.85, 0.9, 0.95], dtype=np.float32)


def _smooth_noise(n: int, scale: float, rng: np.random.Generator) -> F32:
    """Zero-mean, unit-variance noise on ``(n, n)`` with features about ``scale`` px wide."""
    k = max(3, int(np.ceil(n / max(scale, 1.0))) + 2)
    coarse = rng.standard_normal((k, k), dtype=np.float32)
    field = np.array(Image.fromarray(coarse).resize((n, n), Image.Resampling.BICUBIC))
    field -= field.mean()
    field /= field.std() + 1e-6
    return field


@dataclass
class _Cells:
    """Worley-noise layout: per pixel, the nearest cell and the distance to its border."""

    ident: NDArray[np.int32]  # index into the per-cell arrays (row-major over the padded grid)
    border: F32  # ~distance (px) to the bisector with the second-nearest seed
    dy: F32  # offset of the pixel from its cell's seed
    dx: F32
    seed_y: F32  # per-cell seed positions (px), flattened padded grid
    seed_x: F32


def _cell_layout(n: int, s: int, rng: np.random.Generator) -> _Cells:
    """Voronoi cells of a jittered grid with spacing ``s`` px over an ``(n, n)`` image.

    The image is viewed as ``(g, s, g, s)`` blocks: every pixel of a block shares the same 3x3
    neighbouring seeds, so the search broadcasts per-block seed arrays against per-pixel
    offsets and never gathers.
    """
    g = -(-n // s)
    gp = g + 2  # one ring of padding so edge blocks have neighbours
    off_y = rng.uniform(0.15, 0.85, (gp, gp)).astype(np.float32) * s
    off_x = rng.uniform(0.15, 0.85, (gp, gp)).astype(np.float32) * s
    yy = (np.arange(s, dtype=np.float32) + 0.5).reshape(1, s, 1, 1)
    xx = (np.arange(s, dtype=np.float32) + 0.5).reshape(1, 1, 1, s)
    base = (
        (np.arange(g, dtype=np.int32)[:, None] + 1) * gp + np.arange(g, dtype=np.int32)[None, :] + 1
    )
    best1 = np.full((g, s, g, s), np.inf, dtype=np.float32)
    best2 = np.full((g, s, g, s), np.inf, dtype=np.float32)
    ident = np.zeros((g, s, g, s), dtype=np.int32)
    d = np.empty_like(best1)
    tmp = np.empty_like(best1)
    closer = np.empty(best1.shape, dtype=bool)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            sy = (off_y[1 + di : 1 + di + g, 1 + dj : 1 + dj + g] + di * s).reshape(g, 1, g, 1)
            sx = (off_x[1 + di : 1 + di + g, 1 + dj : 1 + dj + g] + dj * s).reshape(g, 1, g, 1)
            np.subtract(yy, sy, out=d)
            np.multiply(d, d, out=d)
            np.subtract(xx, sx, out=tmp)
            np.multiply(tmp, tmp, out=tmp)
            d += tmp
            np.less(d, best1, out=closer)
            np.minimum(best2, d, out=best2)
            np.copyto(best2, best1, where=closer)
            np.copyto(best1, d, where=closer)
            np.copyto(ident, (base + di * gp + dj).reshape(g, 1, g, 1), where=closer)
    m = g * s
    best1 = best1.reshape(m, m)[:n, :n]
    best2 = best2.reshape(m, m)[:n, :n]
    ident = ident.reshape(m, m)[:n, :n]
    # |seed2 - seed1| ~ s, so (d2^2 - d1^2) / 2s approximates the distance to the bisector
    border = (best2 - best1) / np.float32(2 * s)
    rows = np.arange(gp, dtype=np.float32)[:, None]
    cols = np.arange(gp, dtype=np.float32)[None, :]
    seed_y = ((rows - 1) * s + off_y).ravel()
    seed_x = ((cols - 1) * s + off_x).ravel()
    pix = np.arange(n, dtype=np.float32) + 0.5
    dy = pix[:, None] - seed_y[ident]
    dx = pix[None, :] - seed_x[ident]
    return _Cells(ident, border.astype(np.float32), dy, dx, seed_y, seed_x)


def _sample(field: F32, ys: F32, xs: F32) -> F32:
    """Values of ``field`` at (clipped) pixel positions."""
    n = field.shape[0]
    iy = np.clip(ys.astype(np.int64), 0, n - 1)
    ix = np.clip(xs.astype(np.int64), 0, n - 1)
    return field[iy, ix]


def _band(n: int, centre: float, radius: float, rng: np.random.Generator, width: float) -> F32:
    """A soft band (0..1) of ``width`` px along a wavy line crossing the core: a tissue fold."""
    phi = rng.uniform(0, np.pi)
    offset = rng.uniform(-0.5, 0.5) * radius
    pix = np.arange(n, dtype=np.float32) - centre
    dist = pix[None, :] * np.float32(np.cos(phi)) + pix[:, None] * np.float32(np.sin(phi)) - offset
    dist += _smooth_noise(n, n / 3, rng) * np.float32(0.08 * radius)
    return np.clip((width / 2 - np.abs(dist)) / 1.5 + 0.5, 0.0, 1.0).astype(np.float32)


def _particles(n: int, count: int, rng: np.random.Generator, size_px: float) -> F32:
    """Dark dust and debris particles (optical density, 0..~2.5)."""
    impulses = np.zeros((n, n), dtype=np.float32)
    iy = rng.integers(0, n, count)
    ix = rng.integers(0, n, count)
    np.add.at(impulses, (iy, ix), rng.uniform(0.5, 1.5, count).astype(np.float32))
    sigma = max(size_px, 0.8)
    blobs = ndimage.gaussian_filter(impulses, sigma) * np.float32(2 * np.pi * sigma * sigma)
    return np.clip(blobs * 3.0 - 0.4, 0.0, 2.5).astype(np.float32)


def synth_core(
    score: int,
    *,
    size: int,
    rng: np.random.Generator,
    artefact: str | None = None,
    stain_scale: tuple[float, float] = (1.0, 1.0),
    heterogeneity: float | None = None,
    minor_artefacts: bool = True,
    return_masks: bool = False,
    max_render: int = MAX_RENDER,
) -> tuple[NDArray[np.uint8], dict[str, Any]]:
    """Render one ``size`` x ``size`` HER2 IHC core of ASCO/CAP class ``score`` (0-3).

    ``artefact`` is None or one of ``ARTEFACTS``; ``stain_scale`` multiplies hematoxylin and
    DAB (a site's staining batch); ``heterogeneity`` is the tumour fraction of an adjacent-class
    region (None: random, 0 in ~65 % of cores). Returns the RGB image and a truth dict
    (``mean_membrane_od`` is measured on the image by colour deconvolution over the tumour
    membranes; ``tissue_fraction`` is the tissue share of the image). With ``return_masks`` the
    dict also holds ``membrane_mask`` and ``tissue_mask`` at the render resolution
    (``render_size``, equal to ``size`` up to ``max_render``).
    """
    if score not in CLASS_PATTERNS:
        raise ValueError(f"score must be 0-3, got {score!r}")
    if artefact is not None and artefact not in ARTEFACTS:
        raise ValueError(f"artefact must be one of {ARTEFACTS} or None, got {artefact!r}")
    if size < 32:
        raise ValueError(f"size must be at least 32 px, got {size}")
    n = min(size, max_render)
    s = RENDER_CELL_PX
    h_scale, dab_scale = stain_scale

    # --- core outline, tissue compartments -------------------------------------------------
    radius = n * rng.uniform(0.40, 0.46)
    cy, cx = n / 2 + rng.uniform(-0.02, 0.02, 2) * n
    py = (np.arange(n, dtype=np.float32) - np.float32(cy)) ** 2
    px = (np.arange(n, dtype=np.float32) - np.float32(cx)) ** 2
    r = np.sqrt(py[:, None] + px[None, :])
    r += _smooth_noise(n, n / 5, rng) * np.float32(0.025 * n)
    tissue = np.clip((radius - r) / 1.5 + 0.5, 0.0, 1.0)
    del r, py, px

    cells = _cell_layout(n, s, rng)
    ncell = cells.seed_y.size
    region = _smooth_noise(n, 7 * s, rng)
    tumour_share = rng.uniform(0.55, 0.8)
    cell_region = _sample(region, cells.seed_y, cells.seed_x)
    ctype = np.full(ncell, EMPTY, dtype=np.int8)
    is_tumour = cell_region > np.quantile(cell_region, 1 - tumour_share)
    ctype[is_tumour] = TUMOUR
    stroma = ~is_tumour
    u = rng.random(ncell)
    ctype[stroma & (u < 0.35)] = FIBROBLAST
    ctype[stroma & (u >= 0.35) & (u < 0.5)] = LYMPHOCYTE

    # --- per-cell class (heterogeneity) and membrane staining ------------------------------
    if heterogeneity is None:
        heterogeneity = rng.uniform(0.1, 0.35) if rng.random() < 0.35 else 0.0
    cell_class = np.full(ncell, score, dtype=np.int8)
    other = int(rng.choice(HETEROGENEOUS_NEIGHBOURS[score]))
    if heterogeneity > 0 and is_tumour.any():
        het = _sample(_smooth_noise(n, n / 4, rng), cells.seed_y, cells.seed_x)
        cut = np.quantile(het[is_tumour], 1 - heterogeneity)
        cell_class[is_tumour & (het > cut)] = other
    intensity = np.zeros(ncell, dtype=np.float32)
    completeness = np.ones(ncell, dtype=np.float32)
    width = np.full(ncell, CLASS_PATTERNS[score].width * s, dtype=np.float32)
    cyto = np.zeros(ncell, dtype=np.float32)
    for cls in np.unique(cell_class[is_tumour]):
        pat = CLASS_PATTERNS[int(cls)]
        sel = is_tumour & (cell_class == cls)
        k = int(sel.sum())
        positive = rng.random(k) < rng.uniform(*pat.positive_fraction)
        level = rng.uniform(*pat.intensity) * dab_scale
        intensity[sel] = positive * level * rng.lognormal(0.0, 0.18, k)
        comp = rng.uniform(*pat.completeness)
        completeness[sel] = np.clip(comp + rng.normal(0, 0.08, k), 0.05, 0.999)
        width[sel] = pat.width * s * rng.uniform(0.85, 1.15, k)
        cyto[sel] = pat.cytoplasm
    # the membrane of a positive cell is stained where a smooth field lies below its quantile
    gate_level = ndtri(np.clip(completeness, 1e-3, 0.999)).astype(np.float32)
    gate_level[completeness >= 0.99] = 9.0

    # --- nuclei ------------------------------------------------------------------------------
    fibre_angle = rng.uniform(0, np.pi)
    a = np.where(ctype == TUMOUR, rng.uniform(0.30, 0.42, ncell), 0.2) * s
    ratio = np.where(ctype == TUMOUR, rng.uniform(0.7, 1.0, ncell), 0.9)
    angle = rng.uniform(0, np.pi, ncell)
    hem = np.where(ctype == TUMOUR, rng.uniform(0.75, 1.25, ncell), 1.7)
    fib = ctype == FIBROBLAST
    a[fib] = 0.5 * s
    ratio[fib] = 0.25
    angle[fib] = fibre_angle + rng.normal(0, 0.2, int(fib.sum()))
    hem[fib] = 1.1
    hem[ctype == EMPTY] = 0.0
    hem[(ctype == TUMOUR) & (rng.random(ncell) < 0.08)] = 0.0  # nucleus out of the section
    hem *= h_scale
    ident = cells.ident
    ca = np.cos(angle).astype(np.float32)[ident]
    sa = np.sin(angle).astype(np.float32)[ident]
    ai = a.astype(np.float32)[ident]
    uu = (cells.dx * ca + cells.dy * sa) / ai
    vv = (cells.dy * ca - cells.dx * sa) / (ai * ratio.astype(np.float32)[ident])
    q = np.sqrt(uu * uu + vv * vv)
    del uu, vv, ca, sa
    nucleus = np.clip((1.0 - q) * ai / 1.2 + 0.5, 0.0, 1.0)
    chromatin = 0.8 + 0.25 * _smooth_noise(n, 2.0, rng)
    hem_px = hem.astype(np.float32)[ident] * nucleus * chromatin

    # --- membranes and cytoplasm -------------------------------------------------------------
    tum_px = (ctype == TUMOUR)[ident]
    mem = np.exp(-((cells.border / width[ident]) ** 2))
    gate_field = _smooth_noise(n, 0.6 * s, rng)
    gate = np.clip((gate_level[ident] - gate_field) / 0.3 + 0.5, 0.0, 1.0)
    cell_int = intensity[ident]
    dab = mem * gate * cell_int * (1.0 - 0.12 * gate_field)
    dab += (1.0 - nucleus) * (1.0 - mem) * cell_int * cyto[ident]
    dab += np.float32(0.015 * dab_scale)  # non-specific background
    hem_px += np.where(tum_px, 0.07 + 0.05 * mem, 0.0).astype(np.float32) * np.float32(h_scale)
    fibre_u = (np.arange(n, dtype=np.float32)[None, :] * np.float32(np.cos(fibre_angle))) + (
        np.arange(n, dtype=np.float32)[:, None] * np.float32(np.sin(fibre_angle))
    )
    # collagen: wavy strands along one direction, broken up by a smooth amplitude field
    phase = fibre_u * np.float32(2 * np.pi / (0.8 * s)) + 4.0 * _smooth_noise(n, 4 * s, rng)
    fibres = (0.5 + 0.5 * np.sin(phase)) ** 3
    fibres *= np.clip(0.6 + 0.5 * _smooth_noise(n, 1.5 * s, rng), 0.0, 1.0)
    fibres = np.where(tum_px, 0.0, fibres).astype(np.float32)
    hem_px += (fibres * np.float32(0.10) + np.float32(0.03)) * np.float32(h_scale)
    eos = np.float32(0.01) + fibres * np.float32(0.03)
    del phase

    # --- holes, thickness, artefacts --------------------------------------------------------
    lumen = _smooth_noise(n, 2.5 * s, rng)
    # glandular lumina open inside tumour nests only
    tissue *= np.where(tum_px, np.clip((1.6 - lumen) / 0.3 + 0.5, 0.0, 1.0), 1.0).astype(np.float32)
    density = 1.0 + 0.12 * _smooth_noise(n, n / 5, rng)
    fold = np.zeros((n, n), dtype=np.float32)
    debris = np.zeros((n, n), dtype=np.float32)
    od_scale = 1.0
    if artefact == "fold":
        for _ in range(2):
            fold = np.maximum(fold, _band(n, n / 2, radius, rng, rng.uniform(0.25, 0.4) * radius))
    elif artefact == "debris":
        count = int(rng.uniform(150, 300) * (n / 512) ** 2)
        debris = _particles(n, count, rng, s * 0.12)
        debris = np.maximum(debris, _particles(n, count // 8, rng, s * 0.3))
        tissue *= (_smooth_noise(n, n / 10, rng) > -0.4).astype(np.float32)
    elif artefact == "pale":
        od_scale = rng.uniform(0.12, 0.22)
        tissue *= (_smooth_noise(n, n / 8, rng) > 0.1).astype(np.float32)
    elif minor_artefacts:
        if rng.random() < 0.08:
            fold = _band(n, n / 2, radius, rng, rng.uniform(0.04, 0.08) * radius)
        if rng.random() < 0.08:
            debris = _particles(n, int(rng.integers(3, 15)), rng, s * 0.15)
    thick = tissue * density * np.float32(od_scale) * (1.0 + 0.9 * fold)
    hed = np.stack([hem_px * thick, eos * thick, dab * thick], axis=-1)
    del hem_px, eos, dab, chromatin, fibres, fibre_u
    extra = np.broadcast_to(np.float32(0.015), (n, n, 3)) + debris[..., None] * _DEBRIS_OD
    rgb = hed_to_rgb(hed, extra_od=extra)

    # --- optics: slight blur, sensor noise, upsampling --------------------------------------
    img = Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(0.6))
    noise = np.rint(rng.standard_normal((n, n, 3), dtype=np.float32) * np.float32(2.0))
    noisy = np.asarray(img, dtype=np.int16) + noise.astype(np.int16)
    rgb = np.clip(noisy, 0, 255).astype(np.uint8)

    membrane = tum_px & (mem > 0.5) & (tissue > 0.95) & (fold < 0.05) & (debris < 0.01)
    truth: dict[str, Any] = {
        "score": int(score),
        "artefact": artefact,
        "render_size": n,
        "tissue_fraction": float(tissue.mean()),
        "mean_membrane_od": membrane_dab_od(rgb, membrane),
        "positive_fraction": float((intensity[is_tumour] > 0).mean()) if is_tumour.any() else 0.0,
        "heterogeneous_class": int(other) if heterogeneity > 0 else None,
        "heterogeneous_fraction": float(heterogeneity),
        "cells": int(is_tumour.sum()),
    }
    if return_masks:
        truth["membrane_mask"] = membrane
        truth["tissue_mask"] = tissue > 0.5
    if n < size:
        rgb = _upsample(rgb, size, rng)
    return rgb, truth


def _upsample(rgb: NDArray[np.uint8], size: int, rng: np.random.Generator) -> NDArray[np.uint8]:
    """Bilinear upsampling plus tiled sensor grain, so a big core is not visibly smooth."""
    big = Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR)
    tile = 509  # prime, so the tiling does not align with the cell grid
    grain = np.clip(rng.normal(8, 2.5, (tile, tile, 3)), 0, 16).astype(np.uint8)
    reps = -(-size // tile)
    grain_img = Image.fromarray(np.tile(grain, (reps, reps, 1))[:size, :size])
    return np.asarray(ImageChops.add(big, grain_img, scale=1.0, offset=-8))

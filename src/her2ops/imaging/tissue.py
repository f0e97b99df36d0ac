"""Tissue versus glass in an RGB image (used at a low pyramid level).

Brightfield IHC tissue absorbs light: hematoxylin (blue) and DAB (brown) both raise the optical
density (OD = -log10(I / 255)) of at least one channel, while clean glass transmits nearly all of
it and scanners normalise it to near white. A pixel is tissue when its summed OD over the three
channels exceeds :data:`OD_THRESHOLD`, or when it is clearly coloured (saturation above
:data:`SATURATION_THRESHOLD`) and not white. A 3x3 opening then drops dust-sized specks. A fixed
threshold (rather than Otsu) keeps an empty, all-glass core empty instead of splitting noise.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

OD_THRESHOLD = 0.15
SATURATION_THRESHOLD = 0.10
# Pixels brighter than this in every channel are glass whatever their hue (white balance noise).
WHITE_LEVEL = 235

_OD_LUT = -np.log10((np.arange(256, dtype=np.float32) + 1.0) / 256.0)


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Boolean (H, W) mask, True where ``rgb`` (H, W, 3) uint8 shows tissue, not glass."""
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {rgb.shape}")
    rgb = rgb[..., :3]
    if rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {rgb.dtype}")
    od = _OD_LUT[rgb].sum(axis=2)
    hi = rgb.max(axis=2).astype(np.float32)
    lo = rgb.min(axis=2).astype(np.float32)
    saturation = np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 0)
    not_white = lo < WHITE_LEVEL
    mask = (od > OD_THRESHOLD) | ((saturation > SATURATION_THRESHOLD) & not_white)
    if min(mask.shape) >= 3:
        mask = ndimage.binary_opening(mask, structure=np.ones((3, 3), dtype=bool))
    return np.asarray(mask, dtype=bool)


def tissue_fraction(rgb: np.ndarray) -> float:
    """Fraction of pixels of ``rgb`` that :func:`tissue_mask` calls tissue (0.0 to 1.0)."""
    mask = tissue_mask(rgb)
    return float(mask.mean()) if mask.size else 0.0

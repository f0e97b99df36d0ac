"""Tissue versus glass in an RGB image (used at a low pyramid level).

Brightfield IHC tissue absorbs light: hematoxylin (blue) and DAB (brown) both raise the optical
density (OD = -log10(I / 255)) of at least one channel, while clean glass transmits nearly all of
it and scanners normalise it to near white. A pixel is tissue when its summed OD over the three
channels exceeds :data:`OD_THRESHOLD`, or when it is clearly coloured (saturation above
:data:`SATURATION_THRESHOLD`) and not white. A 3x3 opening then drops dust-sized specks. A fixed
threshold (rather than Otsu) keeps an empty, all-glass core empty instead of splitting noise.

Scanners do not all normalise glass to 255: real IHC tiles show glass at 215-235 with a colour
cast, and a white, fat-filled or empty tile then has an optical density of 0.15-0.25 everywhere,
which a fixed threshold calls tissue (fraction 1.00). So the image is white-balanced first: the
glass colour is estimated per channel as the :data:`WHITE_PERCENTILE` percentile (the brightest
pixels are glass or lumen in any core that has some), never below :data:`WHITE_MIN`, and each
channel is scaled so that it becomes 255. An image whose glass is already white is unchanged; a
tile with no glass at all is at worst scaled up slightly, keeping stained tissue tissue.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

OD_THRESHOLD = 0.15
SATURATION_THRESHOLD = 0.10
# Pixels brighter than this in every channel are glass whatever their hue (white balance noise).
WHITE_LEVEL = 235
# White balance: the glass colour is this percentile of each channel, but no darker than
# WHITE_MIN (a tile of dark tissue only must not be stretched into "glass").
WHITE_PERCENTILE = 99.0
WHITE_MIN = 200

_OD_LUT = -np.log10((np.arange(256, dtype=np.float32) + 1.0) / 256.0)


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Boolean (H, W) mask, True where ``rgb`` (H, W, 3) uint8 shows tissue, not glass."""
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {rgb.shape}")
    rgb = rgb[..., :3]
    if rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {rgb.dtype}")
    rgb = white_balance(rgb)
    od = _OD_LUT[rgb].sum(axis=2)
    hi = rgb.max(axis=2).astype(np.float32)
    lo = rgb.min(axis=2).astype(np.float32)
    saturation = np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 0)
    not_white = lo < WHITE_LEVEL
    mask = (od > OD_THRESHOLD) | ((saturation > SATURATION_THRESHOLD) & not_white)
    if min(mask.shape) >= 3:
        mask = ndimage.binary_opening(mask, structure=np.ones((3, 3), dtype=bool))
    return np.asarray(mask, dtype=bool)


def glass_colour(rgb: np.ndarray) -> np.ndarray:
    """The estimated colour of glass (the white point) of an (H, W, 3) uint8 image, per channel."""
    pixels = rgb.reshape(-1, 3)
    if pixels.shape[0] > 1 << 18:  # a regular subsample is plenty for a percentile
        pixels = pixels[:: pixels.shape[0] // (1 << 18)]
    white = np.percentile(pixels, WHITE_PERCENTILE, axis=0)
    return np.clip(np.round(white), WHITE_MIN, 255).astype(np.int64)


def white_balance(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` with each channel scaled so that :func:`glass_colour` becomes 255 (clipped)."""
    white = glass_colour(rgb)
    if (white == 255).all():
        return rgb
    levels = np.arange(256, dtype=np.float64)
    out = np.empty_like(rgb)
    for c in range(3):
        lut = np.clip(np.round(levels * 255.0 / white[c]), 0, 255).astype(np.uint8)
        out[..., c] = lut[rgb[..., c]]
    return out


def tissue_fraction(rgb: np.ndarray) -> float:
    """Fraction of pixels of ``rgb`` that :func:`tissue_mask` calls tissue (0.0 to 1.0)."""
    mask = tissue_mask(rgb)
    return float(mask.mean()) if mask.size else 0.0

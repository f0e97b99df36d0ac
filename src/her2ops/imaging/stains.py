"""Beer-Lambert stain arithmetic for hematoxylin / eosin / DAB (HED) images.

Optical densities here are in natural-log units: a pixel of stain concentrations ``c`` (one per
stain) transmits ``rgb = 255 * exp(-c @ RGB_FROM_HED)``. The stain vectors are skimage's
(``skimage.color.rgb_from_hed``, Ruifrok & Johnston); ``skimage.color.rgb2hed`` reports the same
concentrations divided by ``ln(1e6)``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from skimage.color import hed_from_rgb, rgb_from_hed

#: rows: hematoxylin, eosin, DAB; columns: optical density in R, G, B.
RGB_FROM_HED: NDArray[np.float32] = np.asarray(rgb_from_hed, dtype=np.float32)
#: the inverse: colour deconvolution of per-channel optical densities into stain concentrations.
HED_FROM_RGB: NDArray[np.float32] = np.asarray(hed_from_rgb, dtype=np.float32)

HEMATOXYLIN, EOSIN, DAB = 0, 1, 2


def _mix(arr: NDArray[np.float32], matrix: NDArray[np.float32]) -> NDArray[np.float32]:
    """``arr @ matrix`` over the last axis of size 3, without BLAS: a (N, 3) x (3, 3) product
    is memory-bound, and BLAS threads only contend with the other work on the machine."""
    out = np.empty(arr.shape, dtype=np.float32)
    for c in range(3):
        np.multiply(arr[..., 0], matrix[0, c], out=out[..., c])
        out[..., c] += arr[..., 1] * matrix[1, c]
        out[..., c] += arr[..., 2] * matrix[2, c]
    return out


def hed_to_rgb(
    hed: NDArray[np.floating], *, extra_od: NDArray[np.floating] | None = None
) -> NDArray[np.uint8]:
    """Stain concentrations ``(..., 3)`` -> transmitted RGB ``uint8`` (Beer-Lambert).

    ``extra_od`` (``(..., 3)`` per-channel optical density) is added before exponentiation, for
    absorbers that are not one of the three stains (glass, dirt).
    """
    od = _mix(np.asarray(hed, dtype=np.float32), RGB_FROM_HED)
    if extra_od is not None:
        od += extra_od
    np.negative(od, out=od)
    np.exp(od, out=od)
    od *= 255.0
    np.clip(od, 0.0, 255.0, out=od)
    return np.rint(od).astype(np.uint8)


def rgb_to_hed(rgb: NDArray[np.integer] | NDArray[np.floating]) -> NDArray[np.float32]:
    """Colour deconvolution: RGB ``uint8`` ``(..., 3)`` -> stain concentrations ``(..., 3)``."""
    arr = np.maximum(np.asarray(rgb, dtype=np.float32), 1.0) / np.float32(255.0)
    od = -np.log(arr)
    return _mix(od, HED_FROM_RGB)


def dab_od(rgb: NDArray[np.integer] | NDArray[np.floating]) -> NDArray[np.float32]:
    """Per-pixel DAB optical density (natural-log units) of an RGB image."""
    return rgb_to_hed(rgb)[..., DAB]


def membrane_dab_od(
    rgb: NDArray[np.integer] | NDArray[np.floating], mask: NDArray[np.bool_]
) -> float:
    """Mean DAB optical density of ``rgb`` over the pixels of ``mask`` (e.g. tumour membranes).

    Returns NaN for an empty mask.
    """
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image {rgb.shape[:2]}")
    if not mask.any():
        return float("nan")
    return float(dab_od(np.asarray(rgb)[mask]).mean())

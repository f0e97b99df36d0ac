"""The tissue measure on a real IHC image (scikit-image ships one) and on glass."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage.data import immunohistochemistry

from her2ops.imaging.tissue import glass_colour, tissue_fraction, white_balance

# Regions of skimage's 512 x 512 IHC image (rows, columns): empty glass/lumen on the left edge,
# a lumen on the right, a DAB-stained tumour nest, and pale stroma.
EMPTY = np.s_[290:400, 0:40]
LUMEN = np.s_[395:445, 425:465]
NEST = np.s_[320:420, 270:370]


@pytest.fixture(scope="module")
def ihc() -> np.ndarray:
    return np.asarray(immunohistochemistry(), dtype=np.uint8)


def _exposed(image: np.ndarray, gain: float) -> np.ndarray:
    """The same slide scanned darker: glass at ~220 instead of ~235, as many scanners give."""
    return np.clip(np.round(image * gain), 0, 255).astype(np.uint8)


def _tile(image: np.ndarray, region: tuple[slice, slice]) -> np.ndarray:
    """A 1,024 px tile cut from ``region`` (what a lab's 1,024 px IHC tiles look like)."""
    return np.asarray(Image.fromarray(image[region]).resize((1024, 1024), Image.Resampling.BICUBIC))


@pytest.mark.parametrize("gain", [1.0, 0.94, 0.9])
def test_an_empty_fat_like_tile_is_not_tissue(ihc: np.ndarray, gain: float) -> None:
    """Empty (white) regions of a real IHC core, at several scanner exposures: a fixed OD
    threshold called the whole tile tissue (1.00) once glass was ~6 % darker than white."""
    for region in (EMPTY, LUMEN):
        assert tissue_fraction(_tile(_exposed(ihc, gain), region)) < 0.3


def test_tissue_fraction_does_not_depend_on_the_scanners_white(ihc: np.ndarray) -> None:
    fractions = [tissue_fraction(_exposed(ihc, gain)) for gain in (1.0, 0.97, 0.94, 0.9)]
    assert 0.5 < fractions[0] < 0.95  # the image has empty glass, lumens and loose stroma
    assert max(fractions) - min(fractions) < 0.05, fractions


def test_stained_tumour_stays_tissue(ihc: np.ndarray) -> None:
    for gain in (1.0, 0.9):
        assert tissue_fraction(_exposed(ihc, gain)[NEST]) > 0.9


def test_white_balance_makes_glass_white_and_leaves_white_glass_alone(ihc: np.ndarray) -> None:
    dark = _exposed(ihc, 0.9)
    white = glass_colour(dark)
    assert (white < 235).all()  # this "scan" has grey glass
    balanced = white_balance(dark)
    assert (glass_colour(balanced) >= 253).all()
    glass = np.full((64, 64, 3), 255, dtype=np.uint8)
    assert white_balance(glass) is glass
    # a tile of dark tissue only is not stretched as if its brightest pixel were glass
    dark_tissue = np.full((64, 64, 3), (90, 60, 40), dtype=np.uint8)
    assert tissue_fraction(dark_tissue) == 1.0

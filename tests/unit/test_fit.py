"""Which profiles a core's size fits, which levels degenerate, and the warning text."""

from __future__ import annotations

from dataclasses import replace

import pytest

from her2ops.imaging.fit import fit_profiles, fitting_profiles, level_shape, profile_fit
from her2ops.imaging.store import pyramid_shapes
from her2ops.profiles import PROFILES, get_profile

PAPER = get_profile("paper").pss
ALL = {name: profile.pss for name, profile in PROFILES.items()}


def test_level_shapes_match_the_store() -> None:
    for h, w in [(10_000, 9_000), (1_024, 1_024), (1_025, 777)]:
        for level, shape in enumerate(pyramid_shapes(h, w)):
            assert level_shape(h, w, level) == shape
    with pytest.raises(ValueError):
        level_shape(0, 10, 0)


def test_a_10000_px_core_fits_every_profile() -> None:
    fits = fit_profiles(10_000, 10_000, ALL)
    assert set(fits) == {"paper", "demo", "test"}
    assert all(fit.fits and fit.warning() is None for fit in fits.values())
    assert fitting_profiles(10_000, 10_000, ALL) == ["paper", "demo", "test"]


def test_paper_on_a_1024_px_tile_degenerates_at_level_1() -> None:
    fit = profile_fit(PAPER, 1_024, 1_024, name="paper")
    level0, level1 = fit.levels
    assert (level0.status, level0.positions) == ("ok", 513 * 513)
    assert (level1.height, level1.width, level1.positions) == (512, 512, 1)
    assert level1.status == "degenerate" and level1.coverage == 1.0
    assert fit.samples and not fit.fits
    text = fit.warning("TMA1-A01")
    assert text is not None
    assert text.startswith("core TMA1-A01 (1024x1024 px) does not fit profile paper")
    assert "level 1 is 512x512 px, so its 10 patches of 512 px are all the same image" in text
    assert "paper" not in fitting_profiles(1_024, 1_024, ALL)
    assert "demo" in fitting_profiles(1_024, 1_024, ALL)


def test_near_copies_and_too_small_levels() -> None:
    fit = profile_fit(PAPER, 1_300, 1_200, name="paper")  # level 1: 650 x 600
    assert fit.levels[1].status == "degenerate" and fit.levels[1].positions > 1
    assert "near-copies (each covers 67% of the level)" in str(fit.warning())
    small = profile_fit(PAPER, 900, 800, name="paper")  # level 1 (450 x 400) < 512
    assert small.levels[1].status == "too_small" and not small.samples
    assert "pad_small" in str(small.warning())
    tiny = profile_fit(replace(PAPER, pad_small=True), 400, 300, name="paper")
    assert tiny.samples and tiny.whole_core == "too_small"
    assert "padded with white" in str(tiny.warning())
    # a 2,000 px core: level 1 (1,000 px) is ok for paper
    assert profile_fit(PAPER, 2_000, 2_000).fits

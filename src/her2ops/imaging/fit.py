"""Which PSS profiles a core of a given size fits, and which pyramid levels degenerate.

A profile samples ``count`` patches of ``patch_size`` px at each pyramid level ``L`` (level L is
level 0 halved L times, rounding up, as the store builds it). On a small core a level can be

- ``too_small``: smaller than the patch on a side. Sampling refuses it, or with ``pad_small``
  centres the whole level on white (every patch of that level is then the same padded image);
- ``degenerate``: the patch covers at least :data:`DEGENERATE_COVERAGE` of the level, so its
  ``count`` patches are near-copies of one another (all exactly the whole level when the level
  is the patch size: the ``paper`` profile's 10 half-resolution patches on a 1,024 px tile);
- ``ok`` otherwise.

The whole-core patch needs level 0 to reach the patch size on both sides (else it is padded or
refused the same way). Everything here is pure arithmetic on the size: ingest can report it for
every core and ``sample``/``train`` can warn before any pixel is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from her2ops.imaging.pss import PSSConfig

#: a level where one patch covers at least this share of the level is degenerate
DEGENERATE_COVERAGE = 0.5

LevelStatus = Literal["ok", "degenerate", "too_small"]


def level_shape(height: int, width: int, level: int) -> tuple[int, int]:
    """(h, w) of pyramid ``level`` of a core (halved ``level`` times, rounding up)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"core size must be positive, got {width}x{height}")
    if level < 0:
        raise ValueError(f"level must be >= 0, got {level}")
    for _ in range(level):
        height, width = (height + 1) // 2, (width + 1) // 2
    return height, width


@dataclass(frozen=True)
class LevelFit:
    """How one sampled level of a profile fits a core."""

    level: int
    count: int  # patches the profile draws there
    height: int
    width: int
    positions: int  # distinct top-left corners a patch can take (0 if the level is too small)
    coverage: float  # share of the level one patch covers (1.0 at most)
    status: LevelStatus


@dataclass(frozen=True)
class ProfileFit:
    """How a profile's PSS geometry fits a core of ``width`` x ``height`` px."""

    profile: str
    width: int
    height: int
    patch_size: int
    pad_small: bool
    levels: tuple[LevelFit, ...]
    whole_core: LevelStatus | None  # None when the profile has no whole-core patch

    @property
    def fits(self) -> bool:
        """Every sampled level is ``ok`` and the whole core reaches the patch size."""
        return all(lv.status == "ok" for lv in self.levels) and self.whole_core in (None, "ok")

    @property
    def samples(self) -> bool:
        """Sampling runs (maybe degenerate): nothing is too small, or padding is on."""
        if self.pad_small:
            return True
        return (
            all(lv.status != "too_small" for lv in self.levels) and self.whole_core != "too_small"
        )

    def warning(self, core: str | None = None) -> str | None:
        """One line for ``sample``/``train`` to show, or None when the core fits."""
        if self.fits:
            return None
        size = self.patch_size
        parts: list[str] = []
        for lv in self.levels:
            where = f"level {lv.level} is {lv.width}x{lv.height} px"
            if lv.status == "too_small":
                parts.append(
                    f"{where}, smaller than the {size} px patch: "
                    + (
                        f"its {lv.count} patches are all the same padded image"
                        if self.pad_small
                        else "sampling refuses it (padding with white, pad_small, would allow it)"
                    )
                )
            elif lv.status == "degenerate":
                same = (
                    "all the same image (the whole level)"
                    if lv.positions == 1
                    else f"near-copies (each covers {lv.coverage:.0%} of the level)"
                )
                parts.append(f"{where}, so its {lv.count} patches of {size} px are {same}")
        if self.whole_core == "too_small":
            parts.append(
                f"the core is smaller than the {size} px whole-core patch"
                + (" (padded with white)" if self.pad_small else " (refused without pad_small)")
            )
        name = f"core {core} " if core else "a core "
        return (
            f"{name}({self.width}x{self.height} px) does not fit profile {self.profile}: "
            + "; ".join(parts)
        )


def profile_fit(cfg: PSSConfig, width: int, height: int, *, name: str = "") -> ProfileFit:
    """How the PSS geometry ``cfg`` fits a core of ``width`` x ``height`` px (level 0)."""
    size = cfg.patch_size
    levels: list[LevelFit] = []
    for level in sorted(cfg.patches_per_level):
        count = cfg.patches_per_level[level]
        if count <= 0:
            continue
        h, w = level_shape(height, width, level)
        if h < size or w < size:
            levels.append(LevelFit(level, count, h, w, 0, 1.0, "too_small"))
            continue
        positions = (h - size + 1) * (w - size + 1)
        coverage = size * size / (h * w)
        degenerate = coverage >= DEGENERATE_COVERAGE or positions < count
        status: LevelStatus = "degenerate" if degenerate else "ok"
        levels.append(LevelFit(level, count, h, w, positions, coverage, status))
    whole: LevelStatus | None = None
    if cfg.whole_core:
        whole = "ok" if height >= size and width >= size else "too_small"
    return ProfileFit(name, width, height, size, cfg.pad_small, tuple(levels), whole)


def fit_profiles(
    width: int, height: int, geometries: Mapping[str, PSSConfig]
) -> dict[str, ProfileFit]:
    """:func:`profile_fit` of every named PSS geometry, e.g.
    ``{name: p.pss for name, p in her2ops.profiles.PROFILES.items()}`` (profiles sit above
    imaging in the layers, so the caller passes them)."""
    return {name: profile_fit(cfg, width, height, name=name) for name, cfg in geometries.items()}


def fitting_profiles(width: int, height: int, geometries: Mapping[str, PSSConfig]) -> list[str]:
    """Names of the geometries a core of this size fits (what ingest reports per core)."""
    return [name for name, fit in fit_profiles(width, height, geometries).items() if fit.fits]

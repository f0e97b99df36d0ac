"""Profiles: a PSS geometry, a network and a training recipe under one name.

``paper`` is the seed paper's configuration. The smaller profiles exist so that the same code
path runs on a CPU in a demo or a test: they change sizes and the DenseNet depth, nothing else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from her2ops.errors import InvalidRequest
from her2ops.imaging.pss import PSSConfig


@dataclass(frozen=True)
class TrainRecipe:
    """Optimisation settings (AdamW, LR reduced on validation-loss plateau, early stopping)."""

    lr: float = 1e-5
    weight_decay: float = 1e-2
    batch_size: int = 12
    epochs: int = 100
    plateau_patience: int = 3
    plateau_factor: float = 0.1
    early_stopping_patience: int = 10
    #: sets drawn per training core and epoch (each a fresh random draw): more steps per epoch
    #: from few cores, which a small data set (the demo's) needs
    train_sets_per_core: int = 1
    val_sets_per_core: int = 1
    num_workers: int = 4


@dataclass(frozen=True)
class Profile:
    """Everything that fixes a model's geometry, architecture and recipe."""

    name: str
    pss: PSSConfig
    arch: str = "densenet201"
    recipe: TrainRecipe = field(default_factory=TrainRecipe)
    n_sets: int = 20
    top_k: int = 5

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["pss"] = self.pss.to_dict()
        return out


PROFILES: dict[str, Profile] = {
    "paper": Profile(
        name="paper",
        pss=PSSConfig(patch_size=512, patches_per_level={0: 40, 1: 10}, whole_core=True),
        arch="densenet201",
        # 5 validation sets per core: the validation loss picks the checkpoint (issue 13)
        recipe=TrainRecipe(lr=1e-5, batch_size=12, epochs=100, val_sets_per_core=5),
        n_sets=20,
        top_k=5,
    ),
    "demo": Profile(
        name="demo",
        pss=PSSConfig(patch_size=64, patches_per_level={0: 8, 1: 4}, whole_core=True),
        arch="densenet121",
        # ~3 min on 2 CPU cores for the demo's ~170 training cores (4 sets each per epoch)
        recipe=TrainRecipe(
            lr=1e-3,
            batch_size=16,
            epochs=16,
            plateau_patience=2,
            early_stopping_patience=6,
            train_sets_per_core=4,
            val_sets_per_core=4,
            num_workers=0,
        ),
        n_sets=20,
        top_k=5,
    ),
    "test": Profile(
        name="test",
        pss=PSSConfig(patch_size=32, patches_per_level={0: 4, 1: 2}, whole_core=True),
        arch="densenet-tiny",
        recipe=TrainRecipe(lr=1e-3, batch_size=4, epochs=2, num_workers=0),
        n_sets=6,
        top_k=2,
    ),
}


def get_profile(name: str) -> Profile:
    """Look a profile up by name; ``ValueError`` lists the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise InvalidRequest(f"unknown profile {name!r}; known: {', '.join(PROFILES)}") from None


def with_padding(profile: Profile, pad_small: bool) -> Profile:
    """``profile`` whose PSS pads levels smaller than a patch with white (``--pad-small``)."""
    from dataclasses import replace

    if not pad_small or profile.pss.pad_small:
        return profile
    return replace(profile, pss=replace(profile.pss, pad_small=True))


def geometries() -> dict[str, PSSConfig]:
    """Every profile's PSS geometry by name (what ingest checks each core against)."""
    return {name: p.pss for name, p in PROFILES.items()}

"""The PSS sampler over stored cores: layout, determinism, placement, small and empty cores."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from her2ops.imaging.pss import (
    PSSConfig,
    SamplingError,
    core_tissue_fraction,
    iter_sets,
    plan_set,
    sample_set,
    sample_sets,
    set_rng,
    whole_core_patch,
)
from her2ops.imaging.store import CoreStore, StoredImage
from her2ops.imaging.tissue import tissue_fraction, tissue_mask

CFG = PSSConfig(patch_size=64, patches_per_level={0: 4, 1: 2}, whole_core=True)


def _put(store: CoreStore, image: np.ndarray) -> str:
    sha = hashlib.sha256(image.tobytes()).hexdigest()
    store.put_array(image, sha256=sha)
    return sha


def _tissue_core(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Brownish-blue texture everywhere: a core full of tissue."""
    rng = np.random.default_rng(seed)
    small = rng.integers(60, 200, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))


@pytest.fixture()
def store(tmp_path: Path) -> CoreStore:
    return CoreStore(tmp_path / "store", lossless=True)


@pytest.fixture()
def stored(store: CoreStore) -> tuple[str, np.ndarray]:
    image = _tissue_core(600, 700)
    return _put(store, image), image


def _level(image: np.ndarray, level: int) -> np.ndarray:
    from her2ops.imaging.store import downsample2

    for _ in range(level):
        image = downsample2(image)
    return image


def test_set_layout_is_level0_then_level1_then_whole_core(
    store: CoreStore, stored: tuple[str, np.ndarray]
) -> None:
    sha, image = stored
    with store.open(sha) as img:
        pss = sample_set(img, CFG, key="C1", seed=3, index=0)
        plan = plan_set(img, CFG, key="C1", seed=3, index=0)
    assert pss.shape == (CFG.channels, 64, 64) == (21, 64, 64) and pss.dtype == np.uint8
    assert [level for level, _, _ in plan.patches] == [0, 0, 0, 0, 1, 1]
    for i, (level, y, x) in enumerate(plan.patches):
        source = _level(image, level)
        assert 0 <= y <= source.shape[0] - 64 and 0 <= x <= source.shape[1] - 64
        np.testing.assert_array_equal(
            pss[3 * i : 3 * i + 3], source[y : y + 64, x : x + 64].transpose(2, 0, 1)
        )
    # the whole core comes from level 1 (the smallest level >= 64 px), resized to 64 x 64
    expected = Image.fromarray(_level(image, 1)).resize((64, 64), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(pss[-3:], np.asarray(expected).transpose(2, 0, 1))


def test_whole_core_comes_from_a_pyramid_level_not_level0(tmp_path: Path) -> None:
    store = CoreStore(tmp_path / "s", lossless=True)
    image = _tissue_core(1100, 1100)
    sha = _put(store, image)
    cfg = replace(CFG, patch_size=256)
    with store.open(sha) as img:
        assert img.level_shapes == [(1100, 1100), (550, 550), (275, 275)]
        patch = whole_core_patch(img, cfg)
        assert img.tiles_decoded == 4  # the 2 x 2 tiles of level 2 (275 px), nothing of level 0
    expected = Image.fromarray(_level(image, 2)).resize((256, 256), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(patch, np.asarray(expected).transpose(2, 0, 1))


def test_deterministic_for_key_seed_and_index(
    store: CoreStore, stored: tuple[str, np.ndarray]
) -> None:
    sha, _ = stored
    with store.open(sha) as img:
        a = sample_set(img, CFG, key="C1", seed=5, index=2)
    with store.open(sha) as img:  # a fresh image: no state carried over
        b = sample_set(img, CFG, key="C1", seed=5, index=2)
        others = [
            sample_set(img, CFG, key="C1", seed=5, index=3),
            sample_set(img, CFG, key="C1", seed=6, index=2),
            sample_set(img, CFG, key="C2", seed=5, index=2),
        ]
    np.testing.assert_array_equal(a, b)
    for other in others:
        assert not np.array_equal(a[:-3], other[:-3])


def test_set_rng_streams() -> None:
    first = set_rng(key="C1", seed=-1, index=0).integers(0, 2**62, 4)
    again = set_rng(key="C1", seed=-1, index=0).integers(0, 2**62, 4)
    np.testing.assert_array_equal(first, again)
    with pytest.raises(ValueError):
        set_rng(key="C1", seed=0, index=-1)


def test_batched_and_streamed_sets_equal_single_sets(
    store: CoreStore, stored: tuple[str, np.ndarray]
) -> None:
    sha, _ = stored
    indices = [4, 0, 7]
    with store.open(sha) as img:
        singles = [sample_set(img, CFG, key="K", seed=1, index=i) for i in indices]
    with store.open(sha) as img:
        batch = sample_sets(img, CFG, key="K", seed=1, indices=indices)
        tiles_for_batch = img.tiles_decoded
    with store.open(sha, cache_bytes=100_000) as img:  # eviction under a tight budget
        streamed = list(iter_sets(img, CFG, key="K", seed=1, indices=indices))
    assert batch.shape == (3, CFG.channels, 64, 64)
    for single, row, item in zip(singles, batch, streamed, strict=True):
        np.testing.assert_array_equal(single, row)
        np.testing.assert_array_equal(single, item)
    # level 0 has 3 x 3 tiles, level 1 (300 x 350 px) 2 x 2; each decoded at most once
    assert tiles_for_batch <= 9 + 4


def test_stopping_a_stream_early_frees_its_tiles(
    store: CoreStore, stored: tuple[str, np.ndarray]
) -> None:
    sha, _ = stored
    with store.open(sha) as img:
        whole_core_patch(img, CFG)
        before = img.cached_bytes
        stream = iter_sets(img, CFG, key="K", seed=1, indices=range(10))
        next(stream)
        assert img.cached_bytes > before  # tiles kept for the nine sets still to come
        stream.close()
        assert img.cached_bytes <= before


def test_tissue_placement_stays_on_tissue(store: CoreStore) -> None:
    image = np.full((600, 700, 3), 245, dtype=np.uint8)
    image[:, :300] = _tissue_core(600, 300)  # tissue only on the left
    sha = _put(store, image)
    tissue = replace(CFG, patches_per_level={0: 30}, placement="tissue", whole_core=False)
    uniform = replace(tissue, placement="uniform")
    with store.open(sha) as img:
        assert 0.35 < core_tissue_fraction(img) < 0.5
        centres = [x + 32 for _, _, x in plan_set(img, tissue, key="T", seed=0, index=0).patches]
        spread = [x + 32 for _, _, x in plan_set(img, uniform, key="T", seed=0, index=0).patches]
    assert max(centres) <= 300 + 16
    assert max(spread) > 350


def test_level_smaller_than_patch_is_a_clear_error_or_padded(store: CoreStore) -> None:
    image = _tissue_core(100, 120)
    sha = _put(store, image)
    cfg = replace(CFG, patch_size=64)  # level 1 is 50 x 60 < 64
    with store.open(sha, core="TMA2-B07") as img:
        with pytest.raises(SamplingError, match=r"core TMA2-B07: level 1 is 60x50 px.*64x64"):
            sample_set(img, cfg, key="x", seed=0, index=0)
        padded = replace(cfg, pad_small=True)
        pss = sample_set(img, padded, key="x", seed=0, index=0)
        plan = plan_set(img, padded, key="x", seed=0, index=0)
    level1 = _level(image, 1)
    for i, (level, y, x) in enumerate(plan.patches):
        if level != 1:
            continue
        assert (y, x) == (-7, -2)  # centred in the patch
        patch = pss[3 * i : 3 * i + 3].transpose(1, 2, 0)
        np.testing.assert_array_equal(patch[7:57, 2:62], level1)
        assert (patch[:7] == 255).all() and (patch[:, :2] == 255).all()


def test_core_smaller_than_the_whole_core_patch(store: CoreStore) -> None:
    image = _tissue_core(40, 50)
    sha = _put(store, image)
    cfg = PSSConfig(patch_size=64, patches_per_level={}, whole_core=True)
    with store.open(sha, core="tiny") as img:
        with pytest.raises(SamplingError, match="core tiny: level 0 is 50x40 px"):
            sample_set(img, cfg, key="x", seed=0, index=0)
        pss = sample_set(img, replace(cfg, pad_small=True), key="x", seed=0, index=0)
    assert pss.shape == (3, 64, 64)


def test_empty_core_is_flagged_not_crashed(store: CoreStore) -> None:
    rng = np.random.default_rng(0)
    glass = (242 + rng.integers(-3, 4, (600, 700, 3))).astype(np.uint8)
    sha = _put(store, glass)
    cfg = replace(CFG, placement="tissue")
    with store.open(sha) as img:
        fraction = core_tissue_fraction(img)
        pss = sample_set(img, cfg, key="E", seed=0, index=0)
    assert fraction < cfg.min_tissue_fraction
    assert pss.shape == (CFG.channels, 64, 64)


def test_tissue_mask_separates_stain_from_glass() -> None:
    image = np.full((40, 40, 3), 240, dtype=np.uint8)
    image[10:30, 10:30] = (120, 90, 60)  # DAB brown
    image[0:5, 0:20] = (200, 200, 225)  # faint hematoxylin
    image[35, 35] = (90, 60, 40)  # a speck of dust
    mask = tissue_mask(image)
    assert mask[10:30, 10:30].all() and mask[1:4, 1:19].all()
    assert not mask[35, 35] and not mask[20:, 32:].any()
    assert 0.3 < tissue_fraction(image) < 0.35
    with pytest.raises(ValueError):
        tissue_mask(image[..., 0])


def test_config_errors(store: CoreStore, stored: tuple[str, np.ndarray]) -> None:
    sha, _ = stored
    with store.open(sha) as img:
        assert isinstance(img, StoredImage)
        for bad in (
            replace(CFG, patch_size=0),
            PSSConfig(patch_size=64, patches_per_level={}, whole_core=False),
            replace(CFG, patches_per_level={-1: 2}),
        ):
            with pytest.raises(ValueError):
                sample_set(img, bad, key="x", seed=0, index=0)

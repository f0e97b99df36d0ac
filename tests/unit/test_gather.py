"""TileGather: batches of regions filled into caller buffers, each tile decoded once."""

from __future__ import annotations

import hashlib
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from her2ops.imaging.gather import TileGather, release_retained_memory
from her2ops.imaging.pss import PSSConfig, iter_sets, sample_set, sample_sets
from her2ops.imaging.store import CoreStore, downsample2


def _core(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(40, 220, (h // 16, w // 16, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))


@pytest.fixture()
def stored(tmp_path: Path) -> tuple[CoreStore, str, np.ndarray]:
    store = CoreStore(tmp_path / "s", lossless=True)
    image = _core(1100, 1300)
    sha = hashlib.sha256(image.tobytes()).hexdigest()
    store.put_array(image, sha256=sha)
    return store, sha, image


def test_margins_are_white_and_virtual_levels_are_read(
    stored: tuple[CoreStore, str, np.ndarray],
) -> None:
    store, sha, image = stored
    # level 0 reaching past the top-left corner; level 5 is past the stored pyramid (3 levels)
    regions = [(0, -10, -20, 50, 60), (0, 1090, 1290, 20, 20), (5, 0, 0, 30, 30)]
    level5 = image
    for _ in range(5):
        level5 = downsample2(level5)
    with store.open(sha) as img, TileGather(img, [regions]) as gather:
        assert len(img.level_shapes) == 3
        outs = [np.zeros((3, h, w), np.uint8) for *_, h, w in regions]
        gather.fill(outs)
        assert gather.remaining == 0
        with pytest.raises(IndexError):
            gather.fill(outs)
    first = outs[0].transpose(1, 2, 0)
    assert (first[:10] == 255).all() and (first[:, :20] == 255).all()
    np.testing.assert_array_equal(first[10:, 20:], image[:40, :40])
    np.testing.assert_array_equal(outs[1].transpose(1, 2, 0)[:10, :10], image[1090:, 1290:])
    assert (outs[1][:, 10:] == 255).all()
    np.testing.assert_array_equal(outs[2].transpose(1, 2, 0)[:30, :30], level5[:30, :30])


def test_fill_checks_its_buffers(stored: tuple[CoreStore, str, np.ndarray]) -> None:
    store, sha, _ = stored
    with store.open(sha) as img, TileGather(img, [[(0, 0, 0, 8, 8)]]) as gather:
        with pytest.raises(ValueError, match="1 regions, got 2"):
            gather.fill([np.empty((3, 8, 8), np.uint8)] * 2)
        with pytest.raises(ValueError, match="out must be uint8"):
            gather.fill([np.empty((8, 8, 3), np.uint8)])


def test_streaming_into_one_buffer_allocates_nothing_per_set(
    stored: tuple[CoreStore, str, np.ndarray],
) -> None:
    """With ``out=``, N sets are written into the caller's buffer: after the first call (whose
    cache slots are then kept for reuse), a call allocates far less than one set's pixels; the
    old sampler allocated a fresh set and a fresh channels-first copy of every cached tile."""
    jpeg_store = CoreStore(stored[0].root / "jpeg")  # JPEG tiles decode into a scratch buffer
    store, sha = jpeg_store, jpeg_store.put_array(stored[2], sha256=stored[1]).sha256
    cfg = PSSConfig(patch_size=256, patches_per_level={0: 6, 1: 2}, whole_core=True)
    out = np.empty((cfg.channels, 256, 256), np.uint8)
    release_retained_memory()
    with store.open(sha) as img:
        reference = [
            hashlib.sha256(s).digest()
            for s in iter_sets(img, cfg, key="K", seed=0, indices=range(6))
        ]
        digests = []
        tracemalloc.start()
        try:
            for got in iter_sets(img, cfg, key="K", seed=0, indices=range(6), out=out):
                assert got is out
                digests.append(hashlib.sha256(got).digest())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert digests == reference
    assert peak < out.nbytes / 4, peak


def test_sample_sets_decodes_each_tile_once_without_a_cache(
    stored: tuple[CoreStore, str, np.ndarray],
) -> None:
    store, sha, _ = stored
    cfg = PSSConfig(patch_size=256, patches_per_level={0: 6, 1: 2}, whole_core=True)
    with store.open(sha) as img:
        singles = [sample_set(img, cfg, key="K", seed=1, index=i) for i in range(8)]
    with store.open(sha, cache_bytes=0) as img:  # no room to keep anything
        out = np.full((8, cfg.channels, 256, 256), 7, np.uint8)
        batch = sample_sets(img, cfg, key="K", seed=1, indices=range(8), out=out)
        # level 0 has 5 x 6 tiles, level 1 3 x 3, level 2 (the whole core) 2 x 2
        assert img.tiles_decoded <= 30 + 9 + 4
        assert img.peak_cache_bytes <= 4 * 256 * 256 * 3  # the LRU of the whole-core level only
    assert batch is out
    for single, row in zip(singles, batch, strict=True):
        np.testing.assert_array_equal(single, row)
    with pytest.raises(ValueError, match="out must be C-contiguous uint8"):
        sample_sets(img, cfg, key="K", seed=1, indices=range(2), out=out)
    with store.open(sha) as img, pytest.raises(ValueError, match="out must be"):
        sample_set(img, replace(cfg, patch_size=128), key="K", seed=1, index=0, out=singles[0])


@pytest.mark.parametrize("lossless", [True, False])
def test_channels_last_sets_hold_the_same_pixels(tmp_path: Path, lossless: bool) -> None:
    """(patches, size, size, 3) sets, streamed and batched, are the channels-first sets with
    the axes moved, including white padding and the whole-core patch."""
    store = CoreStore(tmp_path / "s", lossless=lossless)
    image = _core(700, 900)
    sha = hashlib.sha256(image.tobytes()).hexdigest()
    store.put_array(image, sha256=sha)
    cfg = PSSConfig(patch_size=256, patches_per_level={0: 5, 1: 3, 2: 1}, pad_small=True)
    with store.open(sha) as img:
        first = sample_sets(img, cfg, key="K", seed=4, indices=range(5))
    with store.open(sha, cache_bytes=3 * 256 * 256 * 3) as img:  # evictions too
        last = sample_sets(img, cfg, key="K", seed=4, indices=range(5), channels_last=True)
        streamed = [
            s.copy()
            for s in iter_sets(img, cfg, key="K", seed=4, indices=range(5), channels_last=True)
        ]
        one = sample_set(img, cfg, key="K", seed=4, index=3, channels_last=True)
    assert last.shape == (5, cfg.num_patches, 256, 256, 3)
    moved = last.transpose(0, 1, 4, 2, 3).reshape(first.shape)
    np.testing.assert_array_equal(moved, first)
    np.testing.assert_array_equal(np.stack(streamed), last)
    np.testing.assert_array_equal(one, last[3])
    assert (first[:, -6:-3] == 255).any()  # level 2 (175 x 225 px) is padded with white

"""The store sampler: channels-last sets for the model data path, and a core's N sets under
one plan for the scorer."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from her2ops.imaging.pss import sample_sets
from her2ops.imaging.store import CoreStore
from her2ops.models.data import LabelledCore
from her2ops.pipelines.sampling import StoreSampler, set_chunks
from her2ops.pipelines.score import _SetChunks
from her2ops.platform.predictions import CoreRef
from her2ops.profiles import get_profile

CFG = get_profile("test").pss  # 32 px patches: 4 at level 0, 2 at level 1, the whole core


@pytest.fixture()
def stored(tmp_path: Path) -> tuple[Path, str]:
    rng = np.random.default_rng(0)
    small = rng.integers(40, 220, (40, 45, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(small).resize((720, 640), Image.Resampling.BILINEAR))
    sha = hashlib.sha256(image.tobytes()).hexdigest()
    CoreStore(tmp_path / "s").put_array(image, sha256=sha)
    return tmp_path / "s", sha


def _first(last: np.ndarray) -> np.ndarray:
    """Channels-last sets (..., P, H, W, 3) as channels-first (..., 3P, H, W)."""
    moved = np.moveaxis(last, -1, -3)
    return moved.reshape(*moved.shape[:-4], -1, *moved.shape[-2:])


def test_sets_are_channels_last_and_hold_the_channels_first_pixels(
    stored: tuple[Path, str],
) -> None:
    root, sha = stored
    last, first = StoreSampler(root, CFG), StoreSampler(root, CFG, channels_last=False)
    item = LabelledCore("C1", sha, 2)
    one = last(item, 5, 3)
    assert one.shape == (CFG.num_patches, 32, 32, 3)
    np.testing.assert_array_equal(_first(one), first(item, 5, 3))
    many = last.for_core(sha, "C1")(7, [0, 1, 2, 3, 4])
    assert many.shape == (5, CFG.num_patches, 32, 32, 3)
    np.testing.assert_array_equal(_first(many), first.for_core(sha, "C1")(7, [0, 1, 2, 3, 4]))
    batches = list(last.core_batches(sha, "C1", 7, set_chunks(5, 2)))
    assert [len(b) for b in batches] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate(batches), many)
    out = last.batch_buffer(2)
    reused = [b.copy() for b in last.core_batches(sha, "C1", 7, set_chunks(5, 2), out=out)]
    assert all(
        np.shares_memory(b, out) for b in last.core_batches(sha, "C1", 7, [[0, 1], [2]], out=out)
    )
    np.testing.assert_array_equal(np.concatenate(reused), many)
    with pytest.raises(ValueError, match="at least 3 sets"):
        next(last.core_batches(sha, "C1", 7, [[0, 1, 2]], out=out))
    reused_first = first.core_batches(sha, "C1", 7, set_chunks(5, 2), out=first.batch_buffer(2))
    np.testing.assert_array_equal(
        _first(np.concatenate(reused)), np.concatenate([b.copy() for b in reused_first])
    )
    last.close()
    first.close()


def test_core_batches_decode_each_tile_once(stored: tuple[Path, str]) -> None:
    """Drawn a batch at a time under one plan, a core's sets decode no more tiles than all of
    them drawn at once, and fewer than separate draws per batch."""
    root, sha = stored
    with CoreStore(root).open(sha, core="C1") as img:
        sample_sets(img, CFG, key="C1", seed=0, indices=range(12))
        once = img.tiles_decoded
    sampler = StoreSampler(root, CFG)
    for _ in sampler.core_batches(sha, "C1", 0, set_chunks(12, 3)):
        pass
    assert sampler._image(sha, "C1").tiles_decoded == once
    separate = StoreSampler(root, CFG)
    draw = separate.for_core(sha, "C1")
    for chunk in set_chunks(12, 3):
        draw(0, chunk)
    assert separate._image(sha, "C1").tiles_decoded > once
    sampler.close()
    separate.close()


def test_scoring_chunks_stream_a_core_and_close_an_unreadable_one(
    stored: tuple[Path, str],
) -> None:
    root, sha = stored
    cores = [CoreRef(1, "C1", sha), CoreRef(2, "C2", sha)]
    chunks = _SetChunks(cores, StoreSampler(root, CFG), n=5, chunk=2, seed=0)
    got = list(chunks.stream(0))
    assert [(pos, idx) for pos, idx, _ in got] == [(0, [0, 1]), (0, [2, 3]), (0, [4])]
    assert all(sets.shape == (len(idx), CFG.num_patches, 32, 32, 3) for _, idx, sets in got)
    # every level-0 tile corrupt: the core's draw fails and its last chunk carries the error
    path = CoreStore(root).path_for(sha)
    with tifffile.TiffFile(path) as tf:
        page = tf.series[0].levels[0].keyframe
        offsets = [o + n // 2 for o, n in zip(page.dataoffsets, page.databytecounts, strict=True)]
    with open(path, "r+b") as fh:
        for offset in offsets:
            fh.seek(offset)
            byte = fh.read(1)
            fh.seek(offset)
            fh.write(bytes([byte[0] ^ 0x5A]))
    fresh = _SetChunks(cores, StoreSampler(root, CFG), n=5, chunk=2, seed=0)
    failed = list(fresh.stream(1))
    assert [(pos, idx) for pos, idx, _ in failed] == [(1, [4])]
    assert isinstance(failed[0][2], str) and failed[0][2].startswith("C2: ")
    assert "corrupt" in failed[0][2]

"""The store sampler: channels-last sets for the model data path, and a core's N sets under
one plan for the scorer."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from her2ops.imaging.pss import sample_sets
from her2ops.imaging.store import CoreStore
from her2ops.models.data import LabelledCore
from her2ops.pipelines.sampling import StoreSampler, set_chunks
from her2ops.pipelines.score import _iter_chunks, _SetChunks
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


def _corrupt_level0(path: Path) -> None:
    """Flip a byte in the middle of every level-0 tile of a stored core."""
    with tifffile.TiffFile(path) as tf:
        page = tf.series[0].levels[0].keyframe
        offsets = [o + n // 2 for o, n in zip(page.dataoffsets, page.databytecounts, strict=True)]
    with open(path, "r+b") as fh:
        for offset in offsets:
            fh.seek(offset)
            byte = fh.read(1)
            fh.seek(offset)
            fh.write(bytes([byte[0] ^ 0x5A]))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_worker_batches_stay_intact_while_the_consumer_holds_them(
    stored: tuple[Path, str], start_method: str
) -> None:
    """Two sampling processes write into rings of 2 slots each while a slow consumer holds
    every batch a while: each batch it reads, after its work, equals an in-process draw of
    the same core and sets. The DataLoader keeps 2 tasks per worker in flight (4 for worker 0
    once worker 1, with one core to worker 0's two, is done): with the batch the consumer
    holds, more than a ring of 2, so only the ring's own flow control keeps a worker from
    overwriting the slot the consumer reads. The same whether the processes are forked or
    spawned (the ring and the dataset pickled to a fresh interpreter, as on macOS)."""
    root, sha = stored
    cores = [CoreRef(i, f"C{i}", sha) for i in range(3)]  # the code keys the draw
    ds = _SetChunks(cores, StoreSampler(root, CFG), n=7, chunk=2, seed=3)
    expected = {(pos, tuple(idx)): sets for pos in range(3) for pos, idx, sets in ds.stream(pos)}
    seen = []
    for pos, idx, sets in _iter_chunks(ds, 2, prefetch=2, slots=2, start_method=start_method):
        assert not isinstance(sets, str)
        time.sleep(0.05)  # the network at work on the batch
        np.testing.assert_array_equal(sets, expected[pos, tuple(idx)])
        seen.append((pos, tuple(idx)))
    assert sorted(seen) == sorted(expected)
    # chunks of a core arrive in order
    for pos in range(3):
        assert [i for p, i in seen if p == pos] == [tuple(c) for c in ds.chunks]


@pytest.mark.timeout(120)
def test_worker_path_turns_an_unreadable_core_into_its_error_and_goes_on(
    stored: tuple[Path, str], tmp_path: Path
) -> None:
    """An unreadable core in a sampling process is its error text (its slot released: the
    cores after it still arrive, through a ring of one slot), and every other batch equals
    the in-process draw."""
    root, sha = stored
    rng = np.random.default_rng(1)
    small = rng.integers(40, 220, (40, 45, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(small).resize((720, 640), Image.Resampling.BILINEAR))
    bad = hashlib.sha256(image.tobytes()).hexdigest()
    CoreStore(root).put_array(image, sha256=bad)
    _corrupt_level0(CoreStore(root).path_for(bad))
    cores = [CoreRef(1, "C1", sha), CoreRef(2, "C2", bad), CoreRef(3, "C3", sha)]
    ds = _SetChunks(cores, StoreSampler(root, CFG), n=5, chunk=2, seed=0)
    expected = [item for pos in range(3) for item in ds.stream(pos)]
    got = [
        (pos, idx, sets if isinstance(sets, str) else sets.copy())
        for pos, idx, sets in _iter_chunks(ds, 1, prefetch=1, slots=1)
    ]
    assert [(p, i) for p, i, _ in got] == [(p, i) for p, i, _ in expected]
    for (_, _, a), (_, _, b) in zip(got, expected, strict=True):
        if isinstance(b, str):
            assert a == b and a.startswith("C2: ") and "corrupt" in a
        else:
            np.testing.assert_array_equal(a, b)

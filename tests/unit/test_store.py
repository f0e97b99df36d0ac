"""The content-addressed pyramidal TIFF store: layout, region reads, integrity."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from her2ops.imaging.gather import TileGather
from her2ops.imaging.readers import ImageError
from her2ops.imaging.store import (
    CoreStore,
    StoredCore,
    StoredImage,
    StoreError,
    downsample2,
    pyramid_shapes,
)

MAX = 10_000_000


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))


@pytest.fixture()
def core(tmp_path: Path) -> tuple[Path, np.ndarray]:
    image = _texture(600, 700)
    path = tmp_path / "core.png"
    Image.fromarray(image).save(path)
    return path, image


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pyramid_shapes_halve_down_to_512() -> None:
    assert pyramid_shapes(10_000, 10_000) == [
        (10_000, 10_000),
        (5000, 5000),
        (2500, 2500),
        (1250, 1250),
        (625, 625),
        (313, 313),
    ]
    assert pyramid_shapes(600, 700) == [(600, 700), (300, 350)]
    assert pyramid_shapes(512, 300) == [(512, 300)]
    assert pyramid_shapes(1025, 9) == [(1025, 9), (513, 5), (257, 3)]


def test_downsample2_is_a_rounded_box_mean() -> None:
    image = np.array([[[0], [1], [10]], [[2], [3], [20]]], dtype=np.uint8).repeat(3, axis=2)
    out = downsample2(image)
    assert out.shape == (1, 2, 3)
    assert out[0, 0, 0] == 2  # (0+1+2+3)/4 = 1.5 rounds up
    assert out[0, 1, 0] == 15  # odd column: edge repeated, (10+10+20+20)/4


def test_put_writes_a_tiled_pyramid_any_reader_opens(tmp_path: Path, core: tuple) -> None:
    src, _ = core
    store = CoreStore(tmp_path / "store")
    stored = store.put(src, max_pixels=MAX)
    assert stored.sha256 == _sha(src)
    assert (stored.width, stored.height, stored.levels) == (700, 600, 2)
    assert store.path_for(stored.sha256) == store.root / stored.location
    assert store.has(stored.sha256)
    with tifffile.TiffFile(store.path_for(stored.sha256)) as tf:
        levels = tf.series[0].levels
        assert [lv.shape for lv in levels] == [(600, 700, 3), (300, 350, 3)]
        page = levels[0].keyframe
        assert (page.tilelength, page.tilewidth) == (256, 256)
        assert page.compression == tifffile.COMPRESSION.JPEG
    # OpenSlide reads the store's files as generic tiled TIFFs
    import openslide

    with openslide.OpenSlide(str(store.path_for(stored.sha256))) as slide:
        assert slide.level_dimensions == ((700, 600), (350, 300))
    assert not list(store.path_for(stored.sha256).parent.glob("*.tmp"))


def test_each_page_of_a_file_is_stored_under_its_own_name(tmp_path: Path) -> None:
    """Page 0 keeps the name a file's only image always had (existing stores stay valid);
    another page of the same file gets a name of its own, so neither overwrites the other."""
    first, third = _texture(300, 280, seed=1), _texture(300, 280, seed=2)
    src = tmp_path / "stack.tif"
    with tifffile.TiffWriter(src) as tw:
        for image in (first, _texture(300, 280, seed=3), third):
            tw.write(image, photometric="rgb", metadata=None)
    sha = _sha(src)
    store = CoreStore(tmp_path / "s", lossless=True)
    assert store.location_for(sha) == store.location_for(sha, 0) == f"{sha[:2]}/{sha}.tiff"
    assert store.location_for(sha, 2) != store.location_for(sha)
    assert store.path_for(sha, 2).parent == store.path_for(sha).parent

    stored = store.put(src, max_pixels=MAX, page=2)
    assert (stored.page, stored.location) == (2, store.location_for(sha, 2))
    assert store.has(sha, 2) and not store.has(sha) and not store.has(sha, 1)
    assert store.put_array(first, sha256=sha).location == store.location_for(sha)
    for page, image in ((0, first), (2, third)):
        with store.open(sha, page) as img:
            np.testing.assert_array_equal(img.read_level(0), image)
        store.verify(sha, page)
        assert store.describe(sha, page) == StoredCore(
            sha, store.location_for(sha, page), 280, 300, 1, page
        )
    again = store.put(src, max_pixels=MAX, page=2)  # present and intact: not rewritten
    assert again == store.describe(sha, 2)
    with pytest.raises(ValueError, match="image index"):
        store.location_for(sha, -1)


def test_lossy_reads_stay_close_and_lossless_reads_are_exact(tmp_path: Path, core: tuple) -> None:
    src, image = core
    lossy = CoreStore(tmp_path / "lossy")
    exact = CoreStore(tmp_path / "exact", lossless=True)
    sha = lossy.put(src, max_pixels=MAX).sha256
    exact.put(src, max_pixels=MAX)
    with lossy.open(sha) as img:
        region = img.read_region(0, 200, 230, 120, 300)  # crosses tile borders
        assert region.shape == (120, 300, 3) and region.dtype == np.uint8
        assert np.abs(region.astype(int) - image[200:320, 230:530]).mean() < 4
    with exact.open(sha) as img:
        np.testing.assert_array_equal(
            img.read_region(0, 200, 230, 120, 300), image[200:320, 230:530]
        )
        np.testing.assert_array_equal(img.read_level(1), downsample2(image))
        chw = img.read_region(1, 10, 20, 30, 40, channels_first=True)
        np.testing.assert_array_equal(chw, downsample2(image)[10:40, 20:60].transpose(2, 0, 1))
        # beyond the stored pyramid, levels keep halving
        assert img.level_shape(3) == (75, 88)
        np.testing.assert_array_equal(img.read_level(2), downsample2(downsample2(image)))


def test_region_outside_the_level_is_white(tmp_path: Path, core: tuple) -> None:
    src, image = core
    store = CoreStore(tmp_path / "s", lossless=True)
    with store.open(store.put(src, max_pixels=MAX).sha256) as img:
        out = img.read_region(0, -5, 690, 20, 20)
        assert (out[:5] == 255).all() and (out[:, 10:] == 255).all()
        np.testing.assert_array_equal(out[5:, :10], image[:15, 690:700])


def test_reads_decode_only_the_tiles_they_touch(tmp_path: Path, core: tuple) -> None:
    src, _ = core
    store = CoreStore(tmp_path / "s")
    with store.open(store.put(src, max_pixels=MAX).sha256) as img:
        img.read_region(0, 10, 10, 100, 100)
        assert img.tiles_decoded == 1
        img.read_region(0, 250, 250, 20, 20)  # corner of four tiles, one already decoded
        assert img.tiles_decoded == 4
        img.read_region(0, 250, 250, 20, 20)  # all four in the cache now
        assert img.tiles_decoded == 4


def test_gathered_reads_decode_each_tile_once(tmp_path: Path, core: tuple) -> None:
    src, image = core
    store = CoreStore(tmp_path / "s", lossless=True)
    sha = store.put(src, max_pixels=MAX).sha256
    regions = [(0, y, x, 200, 200) for y in (0, 150, 300, 390) for x in (0, 240, 480, 500)]
    batches = [regions[i : i + 3] for i in range(0, len(regions), 3)]  # one batch per "set"

    def gather_all(img: StoredImage) -> None:
        with TileGather(img, batches) as gather:
            for batch in batches:
                outs = [np.empty((3, h, w), np.uint8) for _, _, _, h, w in batch]
                gather.fill(outs)
                for (_, y, x, h, w), out in zip(batch, outs, strict=True):
                    np.testing.assert_array_equal(
                        out, image[y : y + h, x : x + w].transpose(2, 0, 1)
                    )

    with store.open(sha) as img:
        gather_all(img)
        assert img.tiles_decoded == 9  # the 3 x 3 tiles of level 0, each once
    with store.open(sha, cache_bytes=200_000) as img:  # room for one tile: Belady evicts
        gather_all(img)
        assert img.peak_cache_bytes <= 200_000
        assert img.tiles_decoded > 9


def test_put_is_idempotent(tmp_path: Path, core: tuple) -> None:
    src, _ = core
    store = CoreStore(tmp_path / "s")
    first = store.put(src, max_pixels=MAX)
    path = store.path_for(first.sha256)
    before = (path.stat().st_ino, path.stat().st_mtime_ns)
    again = store.put(src, max_pixels=MAX, sha256=first.sha256)
    assert again == first
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == before


def test_quality_and_lossless_options_change_the_file(tmp_path: Path, core: tuple) -> None:
    src, _ = core
    sizes = {}
    for name, store in {
        "q50": CoreStore(tmp_path / "q50", jpeg_quality=50),
        "q95": CoreStore(tmp_path / "q95", jpeg_quality=95),
        "zlib": CoreStore(tmp_path / "zlib", lossless=True),
    }.items():
        sizes[name] = store.path_for(store.put(src, max_pixels=MAX).sha256).stat().st_size
    assert sizes["q50"] < sizes["q95"] < sizes["zlib"]
    with pytest.raises(ValueError):
        CoreStore(tmp_path / "bad", jpeg_quality=0)


def test_failed_write_leaves_nothing_behind(tmp_path: Path, core: tuple) -> None:
    """A crash between writing and renaming leaves no file under the final name."""
    src, _ = core

    class CrashingStore(CoreStore):
        def _write(self, path: Path, levels: list, sha256: str) -> None:
            super()._write(path, levels, sha256)
            raise KeyboardInterrupt  # the process dies after the bytes hit the temp file

    store = CrashingStore(tmp_path / "s")
    sha = _sha(src)
    with pytest.raises(KeyboardInterrupt):
        store.put(src, max_pixels=MAX)
    assert not store.has(sha)
    assert list(store.path_for(sha).parent.iterdir()) == []


def test_bad_input_is_refused_and_not_stored(tmp_path: Path, core: tuple) -> None:
    src, _ = core
    store = CoreStore(tmp_path / "s")
    cut = tmp_path / "cut.png"
    cut.write_bytes(src.read_bytes()[:5000])
    with pytest.raises(ImageError, match=r"truncated|corrupt"):
        store.put(cut, max_pixels=MAX)
    with pytest.raises(ImageError, match="too large"):
        store.put(src, max_pixels=1000)
    assert not store.root.exists() or not any(store.root.rglob("*.tiff"))
    with pytest.raises(ValueError, match="sha256"):
        store.path_for("not-a-sha")


def _flip_tile_bytes(path: Path, level: int = 0, tile: int = 1) -> None:
    with tifffile.TiffFile(path) as tf:
        page = tf.series[0].levels[level].keyframe
        offset = page.dataoffsets[tile] + page.databytecounts[tile] // 2
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x5A]))


def test_corruption_on_disk_is_caught_on_read_naming_core_and_file(
    tmp_path: Path, core: tuple
) -> None:
    src, _ = core
    store = CoreStore(tmp_path / "s")
    sha = store.put(src, max_pixels=MAX).sha256
    path = store.path_for(sha)
    _flip_tile_bytes(path, level=0, tile=1)
    with store.open(sha, core="TMA1-A03") as img:
        img.read_region(0, 0, 0, 100, 100)  # tile 0 is intact
        with pytest.raises(StoreError, match=r"core TMA1-A03: store file .* is corrupt") as err:
            img.read_region(0, 0, 300, 100, 100)  # tile 1
    assert str(path) in str(err.value)
    with pytest.raises(StoreError, match=sha):
        store.verify(sha)
    # ingesting the same image again repairs the copy
    store.put(src, max_pixels=MAX)
    store.verify(sha)


def test_truncated_or_missing_store_file(tmp_path: Path, core: tuple) -> None:
    src, _ = core
    store = CoreStore(tmp_path / "s")
    sha = store.put(src, max_pixels=MAX).sha256
    path = store.path_for(sha)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match="core C7: store file"), store.open(sha, core="C7") as img:
        img.check_all_tiles()
    os.unlink(path)
    with pytest.raises(StoreError, match="core C7: not in the image store"):
        store.open(sha, core="C7")


def test_region_reads_equal_tifffiles_own_decoding(tmp_path: Path, core: tuple) -> None:
    """Gathered (cached, scratch-decoded) and LRU reads all give tifffile's pixels exactly."""
    src, _ = core
    store = CoreStore(tmp_path / "s")
    sha = store.put(src, max_pixels=MAX).sha256
    with tifffile.TiffFile(store.path_for(sha)) as tf:
        reference = [level.asarray() for level in tf.series[0].levels]
    regions = [(0, 10, 20, 300, 400), (1, 5, 7, 200, 250), (0, 250, 250, 300, 300)]
    with store.open(sha) as img:
        unplanned = [img.read_region(*r) for r in regions]
    with store.open(sha) as img, TileGather(img, [regions[:2], regions[2:]]) as gather:
        planned = [np.empty((3, h, w), np.uint8) for *_, h, w in regions]
        gather.fill(planned[:2])
        gather.fill(planned[2:])
    for (level, y, x, h, w), a, b in zip(regions, unplanned, planned, strict=True):
        np.testing.assert_array_equal(a, reference[level][y : y + h, x : x + w])
        np.testing.assert_array_equal(b.transpose(1, 2, 0), reference[level][y : y + h, x : x + w])

"""``her2ops sample``: sets for one stored core, timing, JSON and the contact sheet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from her2ops.cli import app
from her2ops.config import get_settings
from her2ops.imaging.store import CoreStore
from her2ops.profiles import get_profile

runner = CliRunner()


@pytest.fixture()
def stored_sha(tmp_path: Path) -> str:
    rng = np.random.default_rng(0)
    small = rng.integers(40, 220, (40, 45, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((450, 400), Image.Resampling.BILINEAR)
    src = tmp_path / "core.png"
    image.save(src)
    store = CoreStore(get_settings().resolved_store_dir)
    return store.put(src, max_pixels=10_000_000).sha256


def test_sample_json_reports_sets_and_seconds(stored_sha: str) -> None:
    result = runner.invoke(
        app, ["sample", stored_sha, "--profile", "test", "--sets", "3", "--seed", "4", "--json"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    cfg = get_profile("test").pss
    assert payload["sha256"] == stored_sha and payload["sets"] == 3 and payload["seed"] == 4
    assert payload["shape"] == [3, cfg.channels, cfg.patch_size, cfg.patch_size]
    assert isinstance(payload["seconds"], float) and payload["seconds"] >= 0
    assert payload["levels"] == [[400, 450]]
    assert payload["tissue_fraction"] > 0.5 and payload["low_tissue"] is False
    assert payload["tiles_decoded"] >= 1


def test_sample_writes_a_contact_sheet(stored_sha: str, tmp_path: Path) -> None:
    out = tmp_path / "sheets" / "sheet.png"
    result = runner.invoke(
        app, ["sample", stored_sha, "--profile", "demo", "--sets", "2", "--png", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "2 sets" in result.stdout and str(out) in result.stdout
    with Image.open(out) as sheet:
        sheet.load()
        pixels = np.asarray(sheet)
    # demo: 8 level-0 patches, 4 level-1, one whole-core: three bands of 128 px thumbnails
    assert sheet.width >= 8 * 128 and sheet.height >= 3 * 128
    assert pixels.std() > 10  # not a blank image


def test_sample_sets_default_to_the_profile_n(stored_sha: str) -> None:
    result = runner.invoke(app, ["sample", stored_sha, "--profile", "test", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["sets"] == get_profile("test").n_sets


def test_unknown_core_profile_and_corrupt_file_fail_in_one_line(stored_sha: str) -> None:
    for args, expected in [
        (["sample", "NO-SUCH-CORE", "--profile", "test"], "core NO-SUCH-CORE"),
        (["sample", stored_sha, "--profile", "nope"], "unknown profile"),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == 1
        assert expected in result.output and "Traceback" not in result.output
    path = CoreStore(get_settings().resolved_store_dir).path_for(stored_sha)
    data = bytearray(path.read_bytes())
    data[-200] ^= 0xFF  # inside the last tile of the smallest level
    path.write_bytes(bytes(data))
    result = runner.invoke(app, ["sample", stored_sha, "--profile", "test"])
    assert result.exit_code == 1
    assert "is corrupt" in result.output and "Traceback" not in result.output

"""The ``synth`` and ``dearray`` commands, through Typer's CliRunner."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

import her2ops.cli.synth  # noqa: F401  (registers the commands)
from her2ops.cli._app import app
from her2ops.synthetic.dataset import synth_core
from her2ops.synthetic.tma import make_tma_slide

runner = CliRunner()


def _one_line_error(result) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")


def test_synth_json_writes_a_data_set(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    result = runner.invoke(
        app,
        [
            "synth",
            str(out),
            "--patients",
            "4",
            "--cores",
            "7",
            "--size",
            "96",
            "--seed",
            "3",
            "--contact-sheet",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["cores"] == 7 and summary["patients"] == 4
    assert sum(summary["class_counts"].values()) == 7
    assert sum(summary["consensus"].values()) == 7
    with (out / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 7 and all((out / r["image"]).is_file() for r in rows)
    assert (out / "votes.csv").is_file() and (out / "truth.csv").is_file()
    assert (out / "contact_sheet.png").is_file()


def test_synth_plain_output_and_tma_slide(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    result = runner.invoke(
        app, ["synth", str(out), "--patients", "3", "--cores", "6", "--size", "80", "--tma-slide"]
    )
    assert result.exit_code == 0, result.output
    assert "wrote 6 cores of 3 patients" in result.output
    assert (out / "tma" / "TMA-demo.png").is_file()


def test_synth_refuses_impossible_counts_and_reuse(tmp_path: Path) -> None:
    _one_line_error(
        runner.invoke(app, ["synth", str(tmp_path / "a"), "--patients", "2", "--cores", "7"])
    )
    out = tmp_path / "b"
    ok = runner.invoke(
        app, ["synth", str(out), "--patients", "1", "--cores", "1", "--size", "64", "--json"]
    )
    assert ok.exit_code == 0, ok.output
    _one_line_error(runner.invoke(app, ["synth", str(out), "--patients", "1", "--cores", "1"]))


def _slide(tmp_path: Path) -> tuple[Path, list[dict]]:
    rng = np.random.default_rng(0)
    cores = [synth_core(i % 4, size=150, rng=rng, minor_artefacts=False)[0] for i in range(10)]
    slide, truth = make_tma_slide(
        cores, rows=3, cols=4, spacing=190, jitter=12, missing={(2, 2), (3, 4)}, rng=rng
    )
    path = tmp_path / "TMA02.png"
    Image.fromarray(slide).save(path)
    return path, truth


def test_dearray_json(tmp_path: Path) -> None:
    path, truth = _slide(tmp_path)
    out = tmp_path / "cores"
    result = runner.invoke(
        app, ["dearray", str(path), "--out", str(out), "--rows", "3", "--cols", "4", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["cores"] == len(truth) and summary["grid"] == [3, 4]
    assert {(f["row"], f["col"]) for f in summary["found"]} == {(t["row"], t["col"]) for t in truth}
    with (out / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["image"] for r in rows} == {f"TMA02_r{t['row']}_c{t['col']}.png" for t in truth}
    assert all((out / r["image"]).is_file() for r in rows)


def test_dearray_errors(tmp_path: Path) -> None:
    _one_line_error(
        runner.invoke(app, ["dearray", str(tmp_path / "nope.png"), "--out", str(tmp_path / "o")])
    )
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((300, 400, 3), 247, dtype=np.uint8)).save(blank)
    result = runner.invoke(app, ["dearray", str(blank), "--out", str(tmp_path / "o")])
    _one_line_error(result)
    assert "no cores found" in result.output
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    _one_line_error(runner.invoke(app, ["dearray", str(junk), "--out", str(tmp_path / "o")]))


def test_dearray_of_a_multi_page_slide_needs_its_page(tmp_path: Path) -> None:
    import tifffile

    path, truth = _slide(tmp_path)
    slide = np.asarray(Image.open(path).convert("RGB"))
    stack = tmp_path / "stack.tif"
    with tifffile.TiffWriter(stack) as tif:
        tif.write(np.full((64, 64, 3), 240, np.uint8), photometric="rgb")  # e.g. a blank
        tif.write(slide, photometric="rgb")
    result = runner.invoke(app, ["dearray", str(stack), "--out", str(tmp_path / "o")])
    _one_line_error(result)
    assert "holds 2 pages" in result.output and "choose one" in result.output
    out = tmp_path / "cores"
    args = ["dearray", str(stack), "--out", str(out), "--rows", "3", "--cols", "4", "--json"]
    result = runner.invoke(app, [*args, "--page", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["cores"] == len(truth)

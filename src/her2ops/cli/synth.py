"""CLI commands ``synth`` (synthetic IHC cores and votes) and ``dearray`` (TMA slides -> cores)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from her2ops.cli._app import app, emit_json, fail


@app.command("synth")
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the data set into.")],
    patients: Annotated[int, typer.Option(help="Number of patients.", min=1)] = 60,
    cores: Annotated[
        int, typer.Option(help="Number of cores in all (1-3 per patient).", min=1)
    ] = 120,
    size: Annotated[int, typer.Option(help="Core image side in pixels.", min=64)] = 512,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data set).")] = 0,
    contact_sheet: Annotated[
        bool, typer.Option("--contact-sheet", help="Also write contact_sheet.png.")
    ] = False,
    tma_slide: Annotated[
        bool,
        typer.Option(
            "--tma-slide", help="Also write tma/TMA-demo.png, a TMA slide for 'her2ops dearray'."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Write synthetic HER2 IHC cores with simulated pathologist votes.

    OUT gets cores/*.png, manifest.csv (for 'her2ops ingest'), votes.csv (five pathologists,
    plus an adjudicator where the voting protocol needs one) and truth.csv (the class each core
    was drawn from).
    """
    from her2ops.synthetic.dataset import generate_dataset

    if not patients <= cores <= 3 * patients:
        fail(f"--cores must be between --patients and 3 x --patients ({patients}-{3 * patients})")
    if out.exists() and not out.is_dir():
        fail(f"{out} exists and is not a folder")
    if (out / "manifest.csv").exists():
        fail(f"{out} already holds a data set (manifest.csv); choose an empty folder")
    try:
        summary = generate_dataset(
            out,
            patients=patients,
            cores=cores,
            size=size,
            seed=seed,
            contact_sheet=contact_sheet,
            tma_slide=tma_slide,
            progress=not as_json,
        )
    except (ValueError, OSError) as exc:
        fail(str(exc))
    if as_json:
        emit_json(summary.to_dict())
        return
    c = summary.consensus
    typer.echo(
        f"wrote {summary.cores} cores of {summary.patients} patients to {summary.out} "
        f"in {summary.seconds:.1f} s ({summary.seconds_per_core * 1000:.0f} ms/core)"
    )
    typer.echo(
        "classes: "
        + ", ".join(f"{k}: {v}" for k, v in summary.class_counts.items())
        + "; artefacts: "
        + ", ".join(f"{k}: {v}" for k, v in summary.artefacts.items())
    )
    typer.echo(
        f"votes: pairwise agreement {summary.pairwise_agreement:.0%}; consensus agreed "
        f"{c['agreed']}, adjudicated {c['adjudicated']}, excluded {c['excluded']}"
    )
    typer.echo(f"manifest: {summary.manifest}")


@app.command("dearray")
def dearray_cmd(
    slide: Annotated[Path, typer.Argument(help="TMA slide image (PNG, JPEG or TIFF).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the core images and manifest.")],
    rows: Annotated[
        int | None, typer.Option(help="Grid rows on the slide (default: from the image).", min=1)
    ] = None,
    cols: Annotated[
        int | None, typer.Option(help="Grid columns on the slide (default: from the image).", min=1)
    ] = None,
    diameter: Annotated[
        float | None,
        typer.Option(help="Expected core diameter in slide pixels (default: estimated).", min=1),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Find the cores of a TMA slide (Hough circles), give each its grid row and column, and
    write <slide>_r<row>_c<col>.png per core and manifest.csv for 'her2ops ingest'.

    The slide does not say which patient a spot belongs to: the manifest's patient column holds
    the spot id (same as the core code) as a placeholder. Replace it from the TMA map before
    ingesting if patients have several cores.
    """
    from her2ops.imaging.dearray import SlideImage, dearray, found_to_dicts, write_cores

    try:
        image = SlideImage(slide)
        found = dearray(image, rows=rows, cols=cols, expected_diameter=diameter)
        if not found:
            fail(f"no cores found on {slide}")
        manifest = write_cores(image, found, out, progress=not as_json)
    except (FileNotFoundError, ValueError, OSError) as exc:
        fail(f"{slide}: {exc}")
    grid = [max(f.row for f in found), max(f.col for f in found)]
    if as_json:
        emit_json(
            {
                "slide": str(slide),
                "cores": len(found),
                "grid": grid,
                "manifest": str(manifest),
                "found": found_to_dicts(found),
            }
        )
        return
    typer.echo(f"found {len(found)} cores on a {grid[0]} x {grid[1]} grid; manifest: {manifest}")

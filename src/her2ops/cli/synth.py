"""CLI commands ``synth`` (synthetic IHC cores and votes) and ``dearray`` (TMA slides -> cores)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from her2ops.cli._app import BarProgress, app, call, emit_json
from her2ops.pipelines.imaging import dearray_slide, synthesize


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
    ambiguity: Annotated[
        float,
        typer.Option(
            help="Share of cores made ambiguous (borderline or heterogeneous).", min=0, max=1
        ),
    ] = 0.0,
    label_errors: Annotated[
        float,
        typer.Option(
            help="Share of labelled cores given a wrong (adjacent) consensus.", min=0, max=1
        ),
    ] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Write synthetic HER2 IHC cores with simulated pathologist votes.

    OUT gets cores/*.png, manifest.csv (for 'her2ops ingest'), votes.csv (five pathologists,
    plus an adjudicator where the voting protocol needs one) and truth.csv (the class each core
    was drawn from).
    """
    with BarProgress(enabled=not as_json) as bar:
        summary = call(
            synthesize,
            out=out,
            patients=patients,
            cores=cores,
            size=size,
            seed=seed,
            contact_sheet=contact_sheet,
            tma_slide=tma_slide,
            ambiguity=ambiguity,
            label_errors=label_errors,
            progress=bar,
        )
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
    if summary.ambiguous or summary.label_errors:
        typer.echo(
            f"ambiguous cores: {summary.ambiguous}; injected consensus errors: "
            f"{summary.label_errors} (truth.csv)"
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
    page: Annotated[
        int | None,
        typer.Option(help="Which image of a file that holds several (0-based).", min=0),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Find the cores of a TMA slide (Hough circles), give each its grid row and column, and
    write <slide>_r<row>_c<col>.png per core and manifest.csv for 'her2ops ingest'.

    The slide does not say which patient a spot belongs to: the manifest's patient column holds
    the spot id (same as the core code) as a placeholder. Replace it from the TMA map before
    ingesting if patients have several cores.
    """
    with BarProgress(enabled=not as_json) as bar:
        res = call(
            dearray_slide,
            slide=slide,
            out=out,
            rows=rows,
            cols=cols,
            diameter=diameter,
            page=page,
            progress=bar,
        )
    if as_json:
        emit_json(res)
        return
    grid = res["grid"]
    typer.echo(
        f"found {res['cores']} cores on a {grid[0]} x {grid[1]} grid; manifest: {res['manifest']}"
    )

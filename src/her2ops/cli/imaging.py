"""CLI commands (imaging): ``her2ops sample``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from her2ops.cli._app import BarProgress, actor, app, call, emit_json
from her2ops.pipelines.imaging import sample_core


@app.command("sample")
def sample(
    core: Annotated[str, typer.Argument(help="Core code, or the sha256 of a stored image.")],
    profile: Annotated[
        str, typer.Option("--profile", "-p", help="Profile whose PSS geometry to use.")
    ] = "paper",
    sets: Annotated[
        int | None,
        typer.Option("--sets", "-n", help="Number of sets (default: the profile's N)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed.")] = 0,
    png: Annotated[
        Path | None,
        typer.Option("--png", help="Write a contact sheet of the first set to this PNG."),
    ] = None,
    pad_small: Annotated[
        bool,
        typer.Option(
            "--pad-small", help="Pad pyramid levels smaller than a patch with white (small cores)."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Build N pyramid sampling sets for one stored core and report how long it took."""
    with BarProgress(enabled=not as_json) as bar:
        result = call(
            sample_core,
            actor=actor(),
            core=core,
            profile=profile,
            sets=sets,
            seed=seed,
            png=png,
            pad_small=pad_small,
            progress=bar,
        )
    if as_json:
        emit_json(result)
        return
    n, seconds = result["sets"], result["seconds"]
    shape = result["shape"]
    typer.echo(
        f"{result['core']}: {n} sets of {shape[1]} x {shape[2]} x {shape[3]} "
        f"in {seconds:.3f} s ({seconds / n * 1000:.1f} ms per set, "
        f"{result['tiles_decoded']} tiles decoded); tissue fraction "
        f"{result['tissue_fraction']:.2f}"
    )
    if result["fit_warning"]:
        typer.echo(f"warning: {result['fit_warning']}")
    if result["low_tissue"]:
        typer.echo(
            f"warning: mostly background (tissue fraction {result['tissue_fraction']:.2f} < "
            f"{result['min_tissue_fraction']})"
        )
    if png is not None:
        typer.echo(f"contact sheet: {png}")

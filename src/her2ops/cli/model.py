"""CLI command ``her2ops study``: the N/k Monte Carlo study on cached set outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from her2ops.cli._app import app, call, emit_json
from her2ops.pipelines.imaging import run_study_file


@app.command("study")
def study_cmd(
    outputs: Annotated[
        Path, typer.Argument(help="NPZ with 'probs' (cores x M x 4 set outputs) and 'labels'.")
    ],
    n: Annotated[str, typer.Option("--n", help="N values: comma list and ranges, e.g. 1..200.")] = (
        "1..200"
    ),
    k: Annotated[str, typer.Option("--k", help="k values, e.g. 1..20,30,50,100.")] = (
        "1..20,30,50,100"
    ),
    draws: Annotated[int, typer.Option(help="Simulated draws per (N, k) point.")] = 10_000,
    k_at: Annotated[int, typer.Option("--k-at", help="k of the accuracy-vs-N curve.")] = 5,
    n_at: Annotated[int, typer.Option("--n-at", help="N of the accuracy-vs-k curve.")] = 200,
    confidence: Annotated[
        str, typer.Option(help="Confidence of a set output: margin, max, range, std or entropy.")
    ] = "margin",
    seed: Annotated[int, typer.Option(help="Seed of the simulated draws.")] = 0,
    with_replacement: Annotated[
        bool,
        typer.Option("--with-replacement", help="Draw the N outputs with replacement (any N)."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")] = False,
    png: Annotated[Path | None, typer.Option("--png", help="Write the figure to this PNG.")] = None,
) -> None:
    """Accuracy vs N (at k) and vs k (at N) under random set subsets, as in the paper's
    Figs. 4 and 5: min/median/max over draws and confusion matrices (KCS = min(k, N) sets;
    without replacement, points with N > M are skipped)."""
    result = call(
        run_study_file,
        outputs=outputs,
        n=n,
        k=k,
        draws=draws,
        k_at=k_at,
        n_at=n_at,
        confidence=confidence,
        seed=seed,
        png=png,
        replace=with_replacement,
    )
    if as_json:
        emit_json(result.to_dict())
        return
    _print_study(result, png)


def _print_study(result: object, png: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    from her2ops.models.study import StudyResult

    assert isinstance(result, StudyResult)
    console = Console()
    console.print(
        f"{result.cores} cores x {result.outputs_per_core} outputs, {result.draws} draws per "
        f"point, confidence {result.confidence} ({result.seconds:.2f} s)"
    )
    console.print(result.assumption, highlight=False, soft_wrap=True)
    for title, points, col in (
        (f"accuracy vs N (k = {result.k_at})", result.vs_n, "n"),
        (f"accuracy vs k (N = {result.n_at})", result.vs_k, "k"),
    ):
        table = Table(title=title)
        for name in (col.upper() if col == "n" else col, "mean", "min", "median", "max"):
            table.add_column(name, justify="right")
        for p in points:
            table.add_row(
                str(getattr(p, col)), *(f"{v:.2%}" for v in (p.mean, p.min, p.median, p.max))
            )
        console.print(table)
    labels = ("0", "1+", "2+", "3+")
    for point in result.confusion:
        console.print(
            f"[bold]confusion at N = {point.n}, k = {point.k}[/bold] "
            "(rows: true 0..3+, columns: predicted 0..3+)",
            highlight=False,
        )
        head = f"{'':3}{'expected':<22}"
        for name in ("min", "median", "max"):
            head += f"  {name + ' ' + format(point.draws[name]['accuracy'], '.2%'):<16}"
        console.print(head, highlight=False)
        for i, lab in enumerate(labels):
            line = f"{lab:3}" + "".join(f"{v:5.1f}" for v in point.expected[i]) + "  "
            for name in ("min", "median", "max"):
                line += "  " + "".join(f"{v:4d}" for v in point.draws[name]["matrix"][i])
            console.print(line, highlight=False)
    if result.skipped:
        console.print(f"skipped {len(result.skipped)} points (N > M)")
    if png is not None:
        console.print(f"figure: {png}")

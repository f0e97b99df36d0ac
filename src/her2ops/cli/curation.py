"""Curation commands: db, users, ingest, votes, consensus, split, stats, labels."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from her2ops.cli._app import actor, app, db_session, domain_errors, emit_json, fail

db_app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)
users_app = typer.Typer(help="Users and roles.", no_args_is_help=True)
votes_app = typer.Typer(help="Pathologists' votes (append-only).", no_args_is_help=True)
split_app = typer.Typer(help="Patient-level train/val/test splits.", no_args_is_help=True)
labels_app = typer.Typer(help="Consensus labels.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(votes_app, name="votes")
app.add_typer(split_app, name="split")
app.add_typer(labels_app, name="labels")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _print_row_errors(title: str, errors: list[Any]) -> None:
    if errors:
        typer.echo(f"{title}: {len(errors)} row(s) skipped", err=True)
        for e in errors:
            typer.echo(f"  {e}", err=True)


# --- db -------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Migrate the database up (default: to the newest revision)."""
    from her2ops.platform import migrate

    with domain_errors():
        migrate.upgrade(revision=revision)
        typer.echo(f"database at revision {migrate.current()}")


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision ('base' empties it).")],
) -> None:
    """Migrate the database down to REVISION."""
    from her2ops.platform import migrate

    with domain_errors():
        migrate.downgrade(revision)
        typer.echo(f"database at revision {migrate.current() or 'base'}")


@db_app.command("current")
def db_current() -> None:
    """Print the database's revision and the newest one the code knows."""
    from her2ops.platform import migrate

    with domain_errors():
        typer.echo(f"current: {migrate.current() or 'none'}  head: {migrate.head()}")


# --- users ----------------------------------------------------------------------------------


@users_app.command("add")
def users_add(
    username: Annotated[str, typer.Argument(help="Login name.")],
    role: Annotated[
        str, typer.Option(help="pathologist, lab_manager, engineer or admin.")
    ] = "pathologist",
) -> None:
    """Add a user. The first user needs no --as (bootstrap); then only an admin adds users."""
    from her2ops.platform.curation import add_user

    with db_session() as s:
        user = add_user(s, actor=actor(), username=username, role=role)
        typer.echo(f"added user {user.username} ({user.role})")


@users_app.command("list")
def users_list(json_out: JsonOpt = False) -> None:
    """List users and roles."""
    from sqlalchemy import select

    from her2ops.platform.schema import User

    with db_session() as s:
        rows = [
            {"username": u.username, "role": u.role, "active": u.active}
            for u in s.scalars(select(User).order_by(User.username))
        ]
    if json_out:
        emit_json(rows)
    else:
        for r in rows:
            typer.echo(f"{r['username']:<20} {r['role']}")


# --- ingest and votes -----------------------------------------------------------------------


@app.command("ingest")
def ingest(
    manifest: Annotated[
        Path,
        typer.Argument(
            help="CSV: patient, core, image[, slide, row, col, "
            "site]; image paths relative to the CSV."
        ),
    ],
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Load the good rows, report the bad ones.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Validate and ingest cores into the image store and the database (all rows or none)."""
    from tqdm import tqdm

    from her2ops.config import get_settings
    from her2ops.imaging.store import CoreStore
    from her2ops.platform.curation import ingest_manifest

    settings = get_settings()
    store = CoreStore(
        settings.resolved_store_dir,
        jpeg_quality=settings.store_jpeg_quality,
        lossless=settings.store_lossless,
    )

    def bar(items: Any) -> Any:
        return tqdm(
            items,
            desc="validating and storing images",
            unit="core",
            disable=json_out,
            file=sys.stderr,
        )

    with db_session() as s:
        report = ingest_manifest(
            s,
            actor=actor(),
            manifest=manifest,
            store=store,
            max_pixels=settings.max_image_pixels,
            skip_invalid=skip_invalid,
            progress=bar,
        )
    if json_out:
        emit_json(report.to_dict())
        return
    typer.echo(
        f"ingested {len(report.added)} core(s), {report.new_patients} new patient(s); "
        f"{len(report.already_present)} already present"
    )
    for core, conversion in report.conversions.items():
        typer.echo(f"  {core}: converted {conversion}")
    _print_row_errors(str(manifest), report.skipped)


@votes_app.command("import")
def votes_import(
    path: Annotated[
        Path,
        typer.Argument(
            help="CSV: core, pathologist, score[, round, comment]; "
            "scores 0, 1+, 2+, 3+, ND (or 0-3)."
        ),
    ],
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Load the good rows, report the bad ones.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Import votes (append-only; re-importing the same file changes nothing)."""
    from her2ops.platform.votes import import_votes

    with db_session() as s:
        report = import_votes(s, actor=actor(), path=path, skip_invalid=skip_invalid)
    if json_out:
        emit_json(report.to_dict())
        return
    typer.echo(
        f"imported {report.added} vote(s) on {report.cores_touched} core(s); "
        f"{report.unchanged} already recorded"
    )
    _print_row_errors(str(path), report.skipped)


@votes_app.command("cast")
def votes_cast(
    core: Annotated[str, typer.Argument(help="Core code.")],
    score: Annotated[str, typer.Argument(help="0, 1+, 2+, 3+ or ND.")],
    round_: Annotated[str, typer.Option("--round", help="initial, adjudication or review.")] = (
        "review"
    ),
    comment: Annotated[str | None, typer.Option(help="Free text.")] = None,
) -> None:
    """Cast one vote as the acting pathologist."""
    from her2ops.platform.votes import cast_vote

    with db_session() as s:
        vote = cast_vote(s, actor=actor(), core=core, score=score, round=round_, comment=comment)
        typer.echo(f"recorded {vote.score} on {core} (round {vote.round})")


@app.command("consensus")
def consensus(
    all_cores: Annotated[bool, typer.Option("--all", help="Re-resolve every core.")] = False,
    min_agreement: Annotated[int, typer.Option(help="Agreeing votes needed.")] = 2,
    json_out: JsonOpt = False,
) -> None:
    """Apply the voting protocol to the cores whose votes changed (labels are versioned)."""
    from her2ops.platform.consensus import apply_consensus

    with db_session() as s:
        report = apply_consensus(s, actor=actor(), all_cores=all_cores, min_agreement=min_agreement)
    if json_out:
        emit_json(report.to_dict())
        return
    typer.echo(f"resolved {report.evaluated} core(s); {len(report.changed)} label(s) changed")
    for status, n in report.by_status.items():
        typer.echo(f"  {status:<20} {n}")


@labels_app.command("history")
def labels_history(
    core: Annotated[str, typer.Argument(help="Core code.")], json_out: JsonOpt = False
) -> None:
    """Every version of a core's consensus label."""
    from her2ops.platform.consensus import label_history
    from her2ops.scores import SCORE_LABELS

    with db_session() as s:
        rows = [
            {
                "version": r.version,
                "status": r.status,
                "score": SCORE_LABELS[r.score] if r.score is not None else None,
                "n_votes": r.n_votes,
                "agreement": r.agreement,
                "current": r.is_current,
                "at": r.created_at.isoformat(),
            }
            for r in label_history(s, core)
        ]
    if not rows:
        fail(f"no labels for core {core!r}")
    if json_out:
        emit_json(rows)
        return
    for r in rows:
        mark = "*" if r["current"] else " "
        typer.echo(
            f"{mark} v{r['version']} {r['status']:<20} {r['score'] or '-':<3} "
            f"votes={r['n_votes']} {r['at']}"
        )


@labels_app.command("export")
def labels_export(
    split: Annotated[str | None, typer.Option(help="Add each core's partition.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv or json.")] = "csv",
    out: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
) -> None:
    """Export core, patient, partition, score, status, votes, agreement."""
    from her2ops.platform.labels import EXPORT_COLUMNS, export_rows

    if fmt not in ("csv", "json"):
        fail(f"--format must be csv or json, not {fmt!r}")
    with db_session() as s:
        rows = export_rows(s, split=split)
    if fmt == "json":
        import json

        text = json.dumps(rows, indent=2) + "\n"
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(EXPORT_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    if out:
        out.write_text(text)
        typer.echo(f"wrote {len(rows)} row(s) to {out}", err=True)
    else:
        sys.stdout.write(text)


# --- splits and stats -----------------------------------------------------------------------


@split_app.command("create")
def split_create(
    name: Annotated[str, typer.Argument(help="Split name.")],
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same split.")],
    ratios: Annotated[str, typer.Option(help="train,val,test fractions.")] = "0.7,0.1,0.2",
    replace: Annotated[bool, typer.Option("--replace", help="Recreate an unfrozen split.")] = (
        False
    ),
    json_out: JsonOpt = False,
) -> None:
    """Assign every patient to train/val/test, stratified by their highest consensus score."""
    from her2ops.platform.splits import create_split, show_split
    from her2ops.platform.split_rules import parse_ratios

    with domain_errors():
        parsed = parse_ratios(ratios)
    with db_session() as s:
        create_split(s, actor=actor(), name=name, seed=seed, ratios=parsed, replace=replace)
        info = show_split(s, name)
    _print_split(info, json_out)


@split_app.command("extend")
def split_extend(
    name: Annotated[str, typer.Argument(help="Split name.")], json_out: JsonOpt = False
) -> None:
    """Assign patients not yet in the split; never moves anyone (allowed on frozen splits)."""
    from her2ops.platform.splits import extend_split, show_split

    with db_session() as s:
        added = extend_split(s, actor=actor(), name=name)
        info = show_split(s, name)
    if not json_out:
        typer.echo(f"added {len(added)} patient(s)")
    _print_split(info, json_out)


@split_app.command("show")
def split_show(
    name: Annotated[str, typer.Argument(help="Split name.")], json_out: JsonOpt = False
) -> None:
    """Sizes and class balance of a split, by patient and by labelled core."""
    from her2ops.platform.splits import show_split

    with db_session() as s:
        info = show_split(s, name)
    _print_split(info, json_out)


def _print_split(info: dict[str, Any], json_out: bool) -> None:
    if json_out:
        emit_json(info)
        return
    frozen = f"frozen: {info['frozen_reason']}" if info["frozen"] else "not frozen"
    typer.echo(
        f"split {info['name']} (seed {info['seed']}, {frozen}): {info['patients']} "
        f"patients, {info['unassigned_patients']} unassigned"
    )
    for unit in ("by_patient", "by_core"):
        bal = info[unit]
        if not bal:
            continue
        classes = list(bal["overall"]["counts"])
        typer.echo(
            f"  {unit.replace('_', ' ')}: "
            + "  ".join(f"{c}={bal['overall']['proportions'][c]:.1%}" for c in classes)
        )
        for part, p in bal["partitions"].items():
            props = "  ".join(f"{c}={p['proportions'][c]:.1%}" for c in classes)
            typer.echo(
                f"    {part:<6} n={p['n']:<6} {props}  (max dev {p['max_deviation_pp']:.1f} pp)"
            )


@app.command("stats")
def stats(json_out: JsonOpt = False) -> None:
    """Agreement statistics: Fleiss' kappa, pairwise weighted Cohen's kappa, per-pathologist
    agreement with consensus, counts per status and score."""
    from her2ops.platform.labels import stats_summary
    from her2ops.platform.stats import format_stats_table

    with db_session() as s:
        summary = stats_summary(s)
    if json_out:
        emit_json(summary)
    else:
        typer.echo(format_stats_table(summary))

"""Curation commands: db, users, ingest, votes, consensus, split, stats, labels."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from her2ops.cli._app import BarProgress, JsonOpt, actor, app, call, emit_json, print_row_errors
from her2ops.pipelines import curation, database, splits

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

SkipOpt = Annotated[
    bool, typer.Option("--skip-invalid", help="Load the good rows, report the bad ones.")
]


# --- db -------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Migrate the database up (default: to the newest revision)."""
    res = call(database.upgrade, revision=revision)
    typer.echo(f"database at revision {res['current']}")


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision ('base' empties it).")],
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: this deletes data.")] = False,
    i_know: Annotated[
        bool,
        typer.Option(
            "--i-know-this-deletes-data", help="Needed as well on PostgreSQL (production)."
        ),
    ] = False,
) -> None:
    """Migrate the database down to REVISION (an admin, with --yes; deletes data)."""
    res = call(
        database.downgrade,
        actor=actor(),
        revision=revision,
        yes=yes,
        i_know_this_deletes_data=i_know,
    )
    typer.echo(f"database at revision {res['current'] or 'base'}")


@db_app.command("current")
def db_current() -> None:
    """Print the database's revision and the newest one the code knows."""
    res = call(database.current)
    typer.echo(f"current: {res['current'] or 'none'}  head: {res['head']}")


# --- users ----------------------------------------------------------------------------------


PasswordStdinOpt = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from the first line of stdin.")
]


def _read_password(from_stdin: bool, *, confirm: bool) -> str:
    """One line from stdin, or a hidden prompt (twice for a new password)."""
    import getpass

    if from_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    first = getpass.getpass("password: ")
    if confirm and getpass.getpass("again: ") != first:
        typer.echo("error: the two passwords differ", err=True)
        raise typer.Exit(1)
    return first


@users_app.command("add")
def users_add(
    username: Annotated[str, typer.Argument(help="Login name.")],
    role: Annotated[
        str, typer.Option(help="pathologist, lab_manager, engineer or admin.")
    ] = "pathologist",
    password_stdin: PasswordStdinOpt = False,
) -> None:
    """Add a user. The first user needs no --as (bootstrap); then only an admin adds users."""
    password = _read_password(True, confirm=False) if password_stdin else None
    user = call(curation.add_user, actor=actor(), username=username, role=role, password=password)
    typer.echo(f"added user {user['username']} ({user['role']})")


@users_app.command("passwd")
def users_passwd(
    username: Annotated[str, typer.Argument(help="Whose password (yours, or any as admin).")],
    password_stdin: PasswordStdinOpt = False,
) -> None:
    """Set a password; it also ends the user's personal token."""
    from her2ops.pipelines.admin import set_password

    password = _read_password(password_stdin, confirm=True)
    call(set_password, actor=actor(), username=username, password=password)
    typer.echo(f"password of {username} set")


@app.command("login")
def login_cmd(
    username: Annotated[str, typer.Argument(help="Your user name.")],
    password_stdin: PasswordStdinOpt = False,
) -> None:
    """Check your password and keep a personal token in a file only you can read."""
    from her2ops.pipelines.admin import login

    password = _read_password(password_stdin, confirm=False)
    path = call(login, username=username, password=password)
    typer.echo(f"logged in as {username}; token in {path}")


@app.command("logout")
def logout_cmd() -> None:
    """End your personal token: in the database and the token file."""
    from her2ops.pipelines.admin import logout

    if call(logout):
        typer.echo("logged out; token ended and its file removed")
    else:
        typer.echo("not logged in (no token file)")


@users_app.command("list")
def users_list(json_out: JsonOpt = False) -> None:
    """List users and roles."""
    rows = call(curation.list_users, actor=actor())
    if json_out:
        emit_json(rows)
        return
    for r in rows:
        typer.echo(f"{r['username']:<20} {r['role']}")


# --- ingest and votes -----------------------------------------------------------------------


@app.command("ingest")
def ingest(
    manifest: Annotated[
        Path,
        typer.Argument(
            help="CSV: patient, core, image[, slide, row, col, "
            "site, page]; image paths relative to the CSV; page picks one image of a "
            "multi-image file."
        ),
    ],
    skip_invalid: SkipOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Validate and ingest cores into the image store and the database (all rows or none)."""
    with BarProgress(enabled=not json_out) as bar:
        report = call(
            curation.ingest,
            actor=actor(),
            manifest=manifest,
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
    if report.profile_fits:
        from collections import Counter

        from her2ops.profiles import PROFILES

        fits = Counter(p for names in report.profile_fits.values() for p in names)
        typer.echo(
            "  new cores that fit each profile: "
            + ", ".join(f"{name} {fits.get(name, 0)}" for name in PROFILES)
        )
        none = [c for c, names in report.profile_fits.items() if not names]
        if none:
            typer.echo(f"  warning: {len(none)} core(s) fit no profile, e.g. {none[0]}")
    for core, conversion in report.conversions.items():
        typer.echo(f"  {core}: converted {conversion}")
    print_row_errors(str(manifest), report.skipped)


@votes_app.command("import")
def votes_import(
    path: Annotated[
        Path,
        typer.Argument(
            help="CSV: core, pathologist, score[, round, comment]; "
            "scores 0, 1+, 2+, 3+, ND (or 0-3)."
        ),
    ],
    skip_invalid: SkipOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Import votes (append-only; re-importing the same file changes nothing)."""
    report = call(curation.import_votes, actor=actor(), path=path, skip_invalid=skip_invalid)
    if json_out:
        emit_json(report.to_dict())
        return
    typer.echo(
        f"imported {report.added} vote(s) on {report.cores_touched} core(s); "
        f"{report.unchanged} already recorded"
    )
    print_row_errors(str(path), report.skipped)


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
    vote = call(
        curation.cast_vote, actor=actor(), core=core, score=score, round=round_, comment=comment
    )
    typer.echo(f"recorded {vote['score']} on {core} (round {vote['round']})")


@app.command("consensus")
def consensus(
    all_cores: Annotated[bool, typer.Option("--all", help="Re-resolve every core.")] = False,
    min_agreement: Annotated[
        int | None, typer.Option(help="Admins only: override HER2OPS_MIN_AGREEMENT (audited).")
    ] = None,
    min_votes: Annotated[
        int | None, typer.Option(help="Admins only: override HER2OPS_MIN_VOTES (audited).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Apply the voting protocol (the lab's policy from settings) to the cores whose votes
    changed (labels are versioned). Lab managers and admins."""
    report = call(
        curation.run_consensus,
        actor=actor(),
        all_cores=all_cores,
        min_agreement=min_agreement,
        min_votes=min_votes,
    )
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
    rows = call(curation.label_history, actor=actor(), core=core)
    if json_out:
        emit_json(rows)
        return
    for r in rows:
        mark = "*" if r["current"] else " "
        typer.echo(
            f"{mark} v{r['version']} {r['status']:<20} {r['score'] or '-':<3} "
            f"votes={r['n_votes']} {r['at']}"
        )


@labels_app.command("reopen")
def labels_reopen(
    core: Annotated[str, typer.Argument(help="Core code.")],
    reason: Annotated[str | None, typer.Option(help="Why (kept in the audit log).")] = None,
) -> None:
    """Reopen a core for adjudication (lab managers; audited)."""
    label = call(curation.reopen_core, actor=actor(), core=core, reason=reason)
    typer.echo(f"reopened {core}: label v{label['version']} {label['status']}")


@labels_app.command("export")
def labels_export(
    split: Annotated[str | None, typer.Option(help="Add each core's partition.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv or json.")] = "csv",
    out: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
) -> None:
    """Export core, patient, partition, score, status, votes, agreement."""
    call(curation.render_export, rows=[], fmt=fmt)  # refuse a bad --format before the query
    rows = call(curation.export_labels, actor=actor(), split=split)
    text = call(curation.render_export, rows=rows, fmt=fmt)
    if out:
        try:
            out.write_text(text)
        except OSError as exc:
            typer.echo(f"error: cannot write {out}: {exc}", err=True)
            raise typer.Exit(1) from None
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
    balanced_test: Annotated[
        bool, typer.Option("--balanced-test", help="Class-balanced test cores, as the paper's.")
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", help="Confirm --replace (it deletes the assignments).")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Assign every patient to train/val/test, stratified by their highest consensus score."""
    info = call(
        splits.create_split,
        actor=actor(),
        name=name,
        seed=seed,
        ratios=ratios,
        replace=replace,
        balanced_test=balanced_test,
        yes=yes,
    )
    _print_split(info, json_out)


@split_app.command("extend")
def split_extend(
    name: Annotated[str, typer.Argument(help="Split name.")], json_out: JsonOpt = False
) -> None:
    """Assign patients not yet in the split by the rule it was made with (a --balanced-test
    split keeps its test cores class-balanced); never moves anyone (allowed on frozen splits)."""
    info = call(splits.extend_split, actor=actor(), name=name)
    if not json_out:
        where = ", ".join(f"{p} {n}" for p, n in info["added_by_partition"].items())
        typer.echo(f"added {info['added']} patient(s)" + (f" ({where})" if where else ""))
        test = info["class_counts"].get("test")
        if test is not None:
            rule = "class-balanced" if info["balanced_test"] else "proportional"
            typer.echo(
                f"test partition ({rule}), labelled cores per class: "
                + "  ".join(f"{c}: {n}" for c, n in test.items())
            )
    _print_split(info, json_out)


@split_app.command("show")
def split_show(
    name: Annotated[str, typer.Argument(help="Split name.")], json_out: JsonOpt = False
) -> None:
    """Sizes and class balance of a split, by patient and by labelled core."""
    _print_split(call(splits.show_split, actor=actor(), name=name), json_out)


def _print_split(info: dict[str, Any], json_out: bool) -> None:
    if json_out:
        emit_json(info)
        return
    frozen = f"frozen: {info['frozen_reason']}" if info["frozen"] else "not frozen"
    balanced = ", class-balanced test" if info.get("balanced_test") else ""
    typer.echo(
        f"split {info['name']} (seed {info['seed']}{balanced}, {frozen}): {info['patients']} "
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
    typer.echo("  labelled cores per class:")  # issue 13: class counts per partition
    for part, counts in info.get("class_counts", {}).items():
        typer.echo(f"    {part:<6} " + "  ".join(f"{c}: {n:<5}" for c, n in counts.items()))


@app.command("stats")
def stats(json_out: JsonOpt = False) -> None:
    """Agreement statistics: Fleiss' kappa, pairwise weighted Cohen's kappa, per-pathologist
    agreement with consensus, counts per status and score."""
    from her2ops.platform.stats import format_stats_table

    summary = call(curation.agreement_stats, actor=actor())
    if json_out:
        emit_json(summary)
    else:
        typer.echo(format_stats_table(summary))

"""CLI commands ``her2ops review build/add/next/renew/submit/skip/release/list/show``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from her2ops.cli._app import actor, app, call, emit_json

review_app = typer.Typer(
    help="The review queue: flagged cores, claims, blinded votes.", no_args_is_help=True
)
app.add_typer(review_app, name="review")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ItemArg = Annotated[int, typer.Argument(help="Review item id.")]
TokenOpt = Annotated[
    int | None,
    typer.Option("--token", help="Fencing token of your claim (from 'review next --json')."),
]
ModeOpt = Annotated[
    str, typer.Option("--mode", help="blinded (default) or adjudication (shows votes and model).")
]
VotesOpt = Annotated[
    int, typer.Option("--votes", min=1, help="Review votes (pathologists) needed per item.")
]


def _show_view(view: dict[str, Any]) -> None:
    typer.echo(
        f"item {view['item']}: core {view['core']} (round {view['round']}, {view['status']}, "
        f"{view['mode']}{', blinded' if view['blinded'] else ''})"
    )
    if "claim" in view:
        c = view["claim"]
        typer.echo(f"  your claim: token {c['token']}, lease until {c['lease_expires_at']}")
    for r in view.get("reasons") or []:
        typer.echo(f"  {r['flag']} {r['score']:.2f}: {r['reason']}")
    if view.get("consensus"):
        typer.echo(f"  consensus: {view['consensus']['status']} {view['consensus']['score'] or ''}")
    for v in view.get("votes") or []:
        typer.echo(f"  vote {v['pathologist']} ({v['round']}): {v['score']}")
    model = view.get("model")
    if model:
        typer.echo(f"  {model['model']}: final {model['final_score']}, KCS sets:")
        for st in model["kcs_sets"]:
            typer.echo(
                f"    set {st['index']} (seed {st['seed']}): {st['class']}, "
                f"confidence {st['confidence']:.2f}"
            )


@review_app.command("build")
def build(
    model: Annotated[
        list[str],
        typer.Option("--model", help="Model REF; repeat for a committee (first is primary)."),
    ],
    top: Annotated[int | None, typer.Option("--top", min=1, help="Queue at most N items.")] = None,
    mode: ModeOpt = "blinded",
    votes: VotesOpt = 1,
    label_method: Annotated[
        str, typer.Option("--label-method", help="rule (default) or cleanlab.")
    ] = "rule",
    json_out: JsonOpt = False,
) -> None:
    """Flag the cores the model(s) scored and queue the highest-priority ones."""
    from her2ops.pipelines.review import build_queue

    out = call(
        build_queue,
        actor=actor(),
        model_ref=model,
        top=top,
        mode=mode,
        votes_needed=votes,
        label_method=label_method,
    )
    if json_out:
        emit_json(out)
        return
    typer.echo(
        f"{out['flagged']} core(s) flagged by {', '.join(out['models'])}; queued {out['added']}, "
        f"already queued {out['already_queued']}, excluded {out['excluded']}"
    )
    for it in out["top"]:
        typer.echo(
            f"  item {it['item']} {it['core']} priority {it['priority']:.2f}: "
            + ", ".join(it["reasons"])
        )


@review_app.command("add")
def add(
    cores: Annotated[list[str], typer.Argument(help="Core codes.")],
    reason: Annotated[str, typer.Option("--reason", help="Why these cores need a review.")],
    mode: ModeOpt = "blinded",
    votes: VotesOpt = 1,
    json_out: JsonOpt = False,
) -> None:
    """Queue cores by hand (lab managers)."""
    from her2ops.pipelines.review import add_items

    out = call(add_items, actor=actor(), cores=cores, reason=reason, mode=mode, votes_needed=votes)
    if json_out:
        emit_json(out)
        return
    typer.echo(f"queued {out['added']} core(s); already queued {out['already_queued']}")


@review_app.command("next")
def next_cmd(
    lease: Annotated[
        int | None, typer.Option("--lease", min=1, help="Lease seconds (HER2OPS_REVIEW_LEASE_S).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Claim the highest-priority item for you (or show the claim you hold)."""
    from her2ops.pipelines.review import next_item

    view = call(next_item, actor=actor(), lease_s=lease)
    if json_out:
        emit_json(view)
        return
    if view is None:
        typer.echo("nothing to review for you right now")
        return
    _show_view(view)


@review_app.command("renew")
def renew_cmd(item: ItemArg, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """Extend the lease of your claim."""
    from her2ops.pipelines.review import renew

    out = call(renew, actor=actor(), item=item, token=token)
    if json_out:
        emit_json(out)
        return
    typer.echo(f"item {item}: lease until {out['lease_expires_at']}")


@review_app.command("submit")
def submit_cmd(
    item: ItemArg,
    score: Annotated[str, typer.Argument(help="0, 1+, 2+, 3+ or ND.")],
    comment: Annotated[str | None, typer.Option("--comment", help="Free text.")] = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Record your review vote on your claimed item; the core's consensus is recomputed."""
    from her2ops.pipelines.review import submit

    out = call(submit, actor=actor(), item=item, score=score, comment=comment, token=token)
    if json_out:
        emit_json(out)
        return
    b, a = out["label_before"], out["label_after"]
    change = (
        f"label {b['status']} {b['score'] if b['score'] is not None else ''} -> "
        f"{a['status']} {a['score'] if a['score'] is not None else ''}"
        if out["label_changed"]
        else "label unchanged"
    )
    typer.echo(
        f"item {item}: voted {out['score']} on {out['core']}; {out['item_status']}; {change}"
    )


@review_app.command("skip")
def skip_cmd(item: ItemArg, token: TokenOpt = None) -> None:
    """Give your claim back; this item will not be offered to you again."""
    from her2ops.pipelines.review import skip

    call(skip, actor=actor(), item=item, token=token)
    typer.echo(f"item {item}: skipped")


@review_app.command("release")
def release_cmd(item: ItemArg, token: TokenOpt = None) -> None:
    """Give your claim back to the queue."""
    from her2ops.pipelines.review import release

    call(release, actor=actor(), item=item, token=token)
    typer.echo(f"item {item}: released")


@review_app.command("list")
def list_cmd(
    status: Annotated[
        str | None,
        typer.Option("--status", help="open, claimed, done, skipped or expired."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 100,
    json_out: JsonOpt = False,
) -> None:
    """The queue, highest priority first, and counts per status."""
    from her2ops.pipelines.review import list_items

    out = call(list_items, actor=actor(), status=status, limit=limit)
    if json_out:
        emit_json(out)
        return
    typer.echo(", ".join(f"{k}: {v}" for k, v in out["counts"].items()))
    for it in out["items"]:
        extra = (
            f" priority {it['priority']:.2f} {','.join(it['reasons'])}" if "priority" in it else ""
        )
        who = f" by {it['claimed_by']}" if it["claimed_by"] else ""
        typer.echo(
            f"  item {it['item']} {it['core']} {it['status']}{who} votes {it['votes']}{extra}"
        )


@review_app.command("show")
def show_cmd(
    item: ItemArg,
    png: Annotated[
        Path | None,
        typer.Option("--png", help="Draw the KCS sets' patches with class and confidence."),
    ] = None,
    k: Annotated[int | None, typer.Option("--k", min=1, help="Only the k most confident.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """What you may see of an item (blinded for a reviewer on a blinded item)."""
    from her2ops.pipelines.review import show_item

    view = call(show_item, actor=actor(), item=item, png=png, k=k)
    if json_out:
        emit_json(view)
        return
    _show_view(view)
    if png is not None:
        typer.echo(f"wrote {view['png']}")


@review_app.command("retrain")
def retrain_cmd(
    model: Annotated[str, typer.Option("--model", help="Version whose labels to compare.")] = (
        "champion"
    ),
    submit: Annotated[
        bool, typer.Option("--submit", help="Submit a retrain job if the policy says it is due.")
    ] = False,
    profile: Annotated[str | None, typer.Option(help="Profile of the retrain job.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs of the retrain job.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """The retrain policy: training labels new, changed or lost since MODEL was trained; with
    --submit a due retrain becomes a job (extend the split, train a challenger, evaluate it
    beside the champion; nothing is promoted)."""
    from her2ops.pipelines.retrain import check_retrain

    out = call(
        check_retrain,
        actor=actor(),
        model_ref=model,
        submit=submit,
        profile=profile,
        epochs=epochs,
    )
    if json_out:
        emit_json(out)
        return
    typer.echo(
        f"since {out['model']}: {out['reason']}; retrain {'due' if out['due'] else 'not due'}"
    )
    if out["job"] is not None:
        job = out["job"]
        typer.echo(f"submitted retrain job {job.get('id', job)}")

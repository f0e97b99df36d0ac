"""Model commands that cross layers: train, score, evaluate, models list/promote."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from her2ops.cli._app import BarProgress, actor, app, call, emit_json
from her2ops.cli.jobs import submit_in_background
from her2ops.pipelines.evaluate import evaluate_model
from her2ops.pipelines.models import list_models, promote_model
from her2ops.pipelines.score import score_cores

models_app = typer.Typer(help="Registered model versions.", no_args_is_help=True)
app.add_typer(models_app, name="models")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
DeviceOpt = Annotated[str | None, typer.Option(help="torch device (default: cuda if present).")]
# The paper's inference protocol, shared by score and evaluate (None: the profile's N and k).
SetsOpt = Annotated[int | None, typer.Option("--sets", help="N sets per core.")]
TopKOpt = Annotated[int | None, typer.Option("--top-k", help="k most confident sets.")]
PadSmallOpt = Annotated[
    bool,
    typer.Option(
        "--pad-small", help="Pad pyramid levels smaller than a patch with white (small cores)."
    ),
]
ConfidenceOpt = Annotated[str, typer.Option(help="margin (default), max, range, std or entropy.")]
BackgroundOpt = Annotated[
    bool, typer.Option("--background", help="Submit a job for a worker instead (her2ops jobs).")
]


@app.command("train")
def train(
    split: Annotated[str, typer.Option(help="Split to train on (train + val partitions).")],
    profile: Annotated[str, typer.Option(help="paper, demo or test.")] = "paper",
    epochs: Annotated[int | None, typer.Option(help="Override the profile's epochs.")] = None,
    resume: Annotated[str | None, typer.Option("--resume", help="MLflow run id to resume.")] = (
        None
    ),
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    device: DeviceOpt = None,
    ensemble: Annotated[
        int | None,
        typer.Option(help="Train K members (seeds S..S+K-1) as jobs, registered as one ensemble."),
    ] = None,
    resample: Annotated[
        str | None,
        typer.Option(
            help="Training patients of each member: bootstrap (the default with --ensemble), "
            "kfold (member m leaves out fold m of K) or none (default without --ensemble)."
        ),
    ] = None,
    pad_small: PadSmallOpt = False,
    background: BackgroundOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Train a DenseNet PSS model; log to MLflow; register it with alias 'challenger'."""
    params: dict[str, Any] = {
        "split": split,
        "profile": profile,
        "epochs": epochs,
        "seed": seed,
        "device": device,
    }
    if pad_small:
        params["pad_small"] = True
    if resample is not None:
        params["resample"] = resample
    if ensemble is not None:
        submit_in_background("ensemble", {**params, "members": ensemble}, json_out=json_out)
        return
    if background:
        submit_in_background("train", {**params, "resume_run": resume}, json_out=json_out)
        return
    from her2ops.pipelines.train import train_model  # imports torch: only when training

    with BarProgress(enabled=not json_out) as bar:
        out = call(
            train_model,
            actor=actor(),
            split=split,
            profile_name=profile,
            epochs=epochs,
            resume_run=resume,
            seed=seed,
            device=device,
            pad_small=pad_small,
            resample=resample or "none",
            progress=bar,
        )
    if out.version < 0:
        return  # a non-zero torchrun rank: rank 0 reports
    if json_out:
        emit_json(out.to_dict())
        return
    for line in out.warnings:
        typer.echo(f"warning: {line}", err=True)
    typer.echo(
        f"registered {out.name} v{out.version} (challenger) from run {out.run_id}: "
        f"{out.epochs_run} epoch(s), best epoch {out.best_epoch}, val loss "
        f"{out.best_val_loss:.4f}, {out.n_train} train / {out.n_val} val cores, "
        f"{out.skipped} set(s) skipped, {out.seconds:.0f} s"
    )
    if out.resample.get("mode", "none") != "none":
        r = out.resample
        typer.echo(
            f"trained on a {r['mode']} resample: {r['patients']} patient draw(s), "
            f"{r['distinct_patients']} distinct, patients hash {r['patients_hash'][:12]}"
        )


EnsembleOpt = Annotated[
    int | None,
    typer.Option(
        "--ensemble", help="Use a trained ensemble instead of one model (its ensemble job id)."
    ),
]
RuleOpt = Annotated[
    str,
    typer.Option("--rule", help="Ensemble combine rule: pooled_kcs, majority or mean_prob."),
]


def _model_or_ensemble(model: str | None, ensemble: int | None, rule: str) -> dict[str, Any]:
    """A job's model parameters: ``ensemble`` + ``rule`` when an ensemble is named, else
    ``model`` (the job kinds' own ``model=`` / ``ensemble=`` choice)."""
    return {"ensemble": ensemble, "rule": rule} if ensemble is not None else {"model": model}


@app.command("score")
def score(
    model: Annotated[
        str,
        typer.Option("--model", help="champion, challenger, a version number or an MLflow run id."),
    ] = "champion",
    ensemble: EnsembleOpt = None,
    rule: RuleOpt = "pooled_kcs",
    core: Annotated[list[str] | None, typer.Option("--core", help="Core code (repeatable).")] = (
        None
    ),
    split: Annotated[str | None, typer.Option(help="Score a split's partition...")] = None,
    partition: Annotated[str | None, typer.Option(help="...this one (train, val, test).")] = None,
    sets: SetsOpt = None,
    top_k: TopKOpt = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    confidence: ConfidenceOpt = "margin",
    device: DeviceOpt = None,
    background: BackgroundOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Score cores with the paper's protocol (N sets, k most confident, final = max class)."""
    from her2ops.scores import SCORE_LABELS

    if background:
        params = {
            **_model_or_ensemble(model, ensemble, rule),
            "cores": core or None,
            "split": split,
            "partition": partition,
            "n_sets": sets,
            "top_k": top_k,
            "seed": seed,
            "confidence": confidence,
            "device": device,
        }
        submit_in_background("score", params, json_out=json_out)
        return

    if ensemble is not None:
        _score_ensemble(
            ensemble,
            rule=rule,
            cores=core,
            split=split,
            partition=partition,
            n_sets=sets,
            top_k=top_k,
            seed=seed,
            confidence=confidence,
            device=device,
            json_out=json_out,
        )
        return
    with BarProgress(enabled=not json_out) as bar:
        rep = call(
            score_cores,
            actor=actor(),
            model_ref=model,
            cores=core,
            split=split,
            partition=partition,
            n_sets=sets,
            top_k=top_k,
            seed=seed,
            confidence=confidence,
            device=device,
            progress=bar,
        )
    if json_out:
        emit_json(rep.to_dict())
        return
    for r in rep.rows:
        typer.echo(
            f"{r['core']:<16} {SCORE_LABELS[r['final']]:<3} KCS probs "
            + " ".join(f"{p:.3f}" for p in r["kcs_probs"])
        )
    spc = f", {rep.seconds_per_core:.2f} s/core" if rep.seconds_per_core else ""
    typer.echo(
        f"scored {rep.scored} core(s) with {rep.model} v{rep.version}{spc}; "
        f"{rep.already_scored} already scored; {len(rep.failed)} failed"
    )
    for f in rep.failed:
        typer.echo(f"  failed: {f}", err=True)


def _score_ensemble(ensemble: int, *, json_out: bool, **kwargs: Any) -> None:
    from her2ops.pipelines.ensemble import score_ensemble
    from her2ops.scores import SCORE_LABELS

    with BarProgress(enabled=not json_out) as bar:
        rep = call(score_ensemble, actor=actor(), ensemble=ensemble, progress=bar, **kwargs)
    if json_out:
        emit_json(rep.to_dict())
        return
    members = ", ".join(f"v{v}" for v in rep.members)
    for r in rep.rows:
        finals = " ".join(SCORE_LABELS[f] for f in r["members"])
        typer.echo(f"{r['core']:<16} {SCORE_LABELS[r['final']]:<3} members {finals}")
    typer.echo(
        f"scored {rep.scored} core(s) with ensemble {rep.ensemble} ({members}; rule "
        f"{rep.rule}, N={rep.n_sets}, k={rep.top_k}); {rep.already_scored} already scored"
    )


def print_ensemble_evaluation(res: dict[str, Any]) -> None:
    """The ensemble's metrics beside each member's, on the same cores."""
    columns = [c for c in res["table"][0] if c != "metric"] if res["table"] else []
    typer.echo(
        f"ensemble {res['ensemble']} (rule {res['rule']}) on {res['split']}/{res['partition']}: "
        f"{res['cores']} cores, N={res['n_sets']}, k={res['top_k']}"
    )
    typer.echo(f"  {'':<32} " + " ".join(f"{c:>9}" for c in columns))
    for row in res["table"]:
        cells = []
        for c in columns:
            v = row[c]
            cells.append(f"{'-' if v is None else (v if isinstance(v, int) else f'{v:.4f}'):>9}")
        typer.echo(f"  {row['metric']:<32} " + " ".join(cells))


def print_evaluation(res: dict[str, Any]) -> None:
    """The paper's metrics as a table, plainly labelled."""
    typer.echo(
        f"{res['model']} v{res['version']} on {res['split']}/{res['partition']}: "
        f"{res['cores']} cores, N={res['n_sets']}, k={res['top_k']}"
    )
    for row in res["table"]:
        v = row["value"]
        shown = "-" if v is None else (f"{v}" if isinstance(v, int) else f"{v:.4f}")
        typer.echo(f"  {row['metric']:<32} {shown}")
    cm = res["metrics"]["confusion_matrix"]
    typer.echo(
        "  confusion (rows true 0..3+, cols predicted): "
        + " | ".join(" ".join(f"{x:>3}" for x in r) for r in cm)
    )
    typer.echo(f"  plots and JSON: {res['plots']}")
    if "study" in res:
        st = res["study"]
        typer.echo(
            f"  N/k study, accuracy over {st['draws']} random draws per point "
            f"(M={st['outputs_per_core']} set outputs per core, {st['seconds']:.2f} s):"
        )
        show_n = {1, 2, 5, 10, 20, 50, 100, 200}
        show_k = {1, 3, 5, 10, 20, 50, 100}
        points = [("N", p) for p in st["vs_n"] if p["n"] in show_n]
        points += [("k", p) for p in st["vs_k"] if p["k"] in show_k]
        for axis, p in points:
            typer.echo(
                f"    vs {axis}: N={p['n']:<4} k={p['k']:<3} min {p['min']:.4f}  "
                f"median {p['median']:.4f}  max {p['max']:.4f}"
            )
        typer.echo(f"  study plot: {res['plots']}/study.png")
        from her2ops.models.study import study_report_lines  # issue 13: headline, confidences

        for line in study_report_lines(st):
            typer.echo(line)


@app.command("evaluate")
def evaluate(
    split: Annotated[str, typer.Option(help="Split.")],
    model: Annotated[
        str | None,
        typer.Argument(help="champion, challenger, version or run id (or give --ensemble)."),
    ] = None,
    ensemble: EnsembleOpt = None,
    rule: RuleOpt = "pooled_kcs",
    partition: Annotated[str, typer.Option(help="Partition to evaluate.")] = "test",
    sets: SetsOpt = None,
    top_k: TopKOpt = None,
    study: Annotated[bool, typer.Option("--study", help="Also run the N/k Monte Carlo study.")] = (
        False
    ),
    study_sets: Annotated[int, typer.Option(help="Set outputs cached per core (M).")] = 300,
    draws: Annotated[int, typer.Option(help="Monte Carlo draws per point.")] = 10_000,
    with_replacement: Annotated[
        bool, typer.Option("--with-replacement", help="Study draws sets with replacement.")
    ] = False,
    confidence: ConfidenceOpt = "margin",
    device: DeviceOpt = None,
    background: BackgroundOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Accuracy, specificity, ROC AUCs, adjacent-class accuracy, kappa, ECE; logged to MLflow.
    With --ensemble: the ensemble's metrics beside each member's, on the same cores."""
    if (model is None) == (ensemble is None):
        raise typer.BadParameter("give a MODEL or --ensemble ID (one of them)")
    if background:
        params = {
            **_model_or_ensemble(model, ensemble, rule),
            "split": split,
            "partition": partition,
            "n_sets": sets,
            "top_k": top_k,
            "study": study,
            "study_sets": study_sets,
            "study_draws": draws,
            "study_replace": with_replacement,
            "confidence": confidence,
            "device": device,
        }
        submit_in_background("evaluate", params, json_out=json_out)
        return
    if ensemble is not None:
        from her2ops.pipelines.ensemble import evaluate_ensemble

        if study:
            raise typer.BadParameter("the N/k study runs on a single model, not an ensemble")
        with BarProgress(enabled=not json_out) as bar:
            ens = call(
                evaluate_ensemble,
                actor=actor(),
                ensemble=ensemble,
                split=split,
                partition=partition,
                rule=rule,
                n_sets=sets,
                top_k=top_k,
                confidence=confidence,
                device=device,
                progress=bar,
            )
        if json_out:
            emit_json(ens)
        else:
            print_ensemble_evaluation(ens)
        return
    assert model is not None
    with BarProgress(enabled=not json_out) as bar:
        res = call(
            evaluate_model,
            actor=actor(),
            model_ref=model,
            split=split,
            partition=partition,
            n_sets=sets,
            top_k=top_k,
            device=device,
            study=study,
            study_sets=study_sets,
            study_draws=draws,
            study_replace=with_replacement,
            confidence=confidence,
            progress=bar,
        )
    if json_out:
        emit_json(res)
    else:
        print_evaluation(res)


@models_app.command("list")
def models_list(json_out: JsonOpt = False) -> None:
    """Registered versions with lineage and headline metrics."""
    rows = call(list_models, actor=actor())
    if json_out:
        emit_json(rows)
        return
    for r in rows:
        acc = r["metrics"].get("test_accuracy")
        typer.echo(
            f"v{r['version']:<3} {','.join(r['aliases']) or '-':<20} {r['profile']:<6} "
            f"split={r['split']:<8} labels={r['label_snapshot_hash'][:12]} "
            f"test_acc={'-' if acc is None else f'{acc:.3f}'} run={r['run_id']}"
        )


@models_app.command("promote")
def models_promote(
    model: Annotated[str, typer.Argument(help="Version number, alias or run id.")],
    alias: Annotated[str, typer.Option(help="Alias to give it.")] = "champion",
) -> None:
    """Give a version the 'champion' alias (audited)."""
    res = call(promote_model, actor=actor(), ref=model, alias=alias)
    typer.echo(f"{res['name']} v{res['version']} is now {alias}")

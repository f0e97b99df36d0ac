"""The kinds of background job: their parameters, their checks at submit time, their use case.

Everything a job needs is checked when it is submitted (unknown kind or parameter, a model,
split or core that does not exist, values out of range), so a job never fails minutes later for
a reason known at submit time. Parameters are normalised (types converted, a model alias
resolved to its version number), which also makes the idempotency key stable: "score with the
champion" means the version that is champion when the job is submitted.

``selftest`` is an internal kind for the fault tests (``HER2OPS_JOBS_SELFTEST=1``): it sleeps,
raises or kills its own process, and needs no torch.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from her2ops.config import get_settings
from her2ops.errors import Conflict, InvalidRequest, NotFound
from her2ops.pipelines.progress import Progress
from her2ops.pipelines.runtime import get_runtime
from her2ops.platform.access import require
from her2ops.platform.broker import KIND_QUEUES
from her2ops.platform.jobs import Claim, children
from her2ops.platform.labels import label_snapshot
from her2ops.platform.registry import resolve_ref
from her2ops.platform.schema import PARTITIONS, Core
from her2ops.platform.splits import get_split
from her2ops.profiles import get_profile

#: Kinds the table knows but no worker runs yet (submit refuses them with this message).
PLANNED: tuple[str, ...] = ()
#: The job a runner is working on (set by ``pipelines.jobs.run_job``), for kinds that fan out.
CURRENT_JOB: ContextVar[Claim] = ContextVar("her2ops_current_job")


class Deferred(Exception):  # a signal, not an error
    """Raised by a runner that must wait (for its children): re-run it after ``seconds``."""

    def __init__(self, seconds: float, progress: tuple[int, int | None, str]):
        super().__init__(progress[2])
        self.seconds = seconds
        self.progress = progress


COMBINE_RULES = ("pooled_kcs", "majority", "mean_prob")  # her2ops.models.ensemble (no torch)


def _int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError("not an integer")
    return int(v)


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    text = str(v).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("not a boolean")


def _str_list(v: Any) -> list[str]:
    items = v if isinstance(v, list) else str(v).split(",")
    out = [str(i).strip() for i in items if str(i).strip()]
    if not out:
        raise ValueError("empty list")
    return out


@dataclass(frozen=True)
class Param:
    convert: Callable[[Any], Any]
    help: str
    type_name: str


INT = lambda h: Param(_int, h, "integer")  # noqa: E731
FLOAT = lambda h: Param(float, h, "number")  # noqa: E731
STR = lambda h: Param(str, h, "text")  # noqa: E731
BOOL = lambda h: Param(_bool, h, "true/false")  # noqa: E731
LIST = lambda h: Param(_str_list, h, "comma-separated list")  # noqa: E731


Runner = Callable[[str | None, dict[str, Any], Progress], dict[str, Any]]
Validator = Callable[[Session, str | None, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class JobKind:
    name: str
    params: dict[str, Param]
    validate: Validator
    run: Runner
    permission: str
    required: tuple[str, ...] = field(default=())

    @property
    def queue(self) -> str:
        return KIND_QUEUES[self.name]


def _plain(value: Any) -> Any:
    """JSON-safe copy of a use case's result (numpy scalars, paths, dates become plain)."""
    import json

    return json.loads(
        json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    )


# --- validation helpers -------------------------------------------------------------------


def _check_range(params: dict[str, Any], name: str, low: float) -> None:
    if name in params and params[name] < low:
        raise InvalidRequest(f"parameter {name}={params[name]} must be at least {low:g}")


def _resolve_model(session: Session, params: dict[str, Any]) -> Any:
    mv = resolve_ref(session, str(params["model"]), name=get_settings().registered_model_name)
    params["model"] = str(mv.version)
    return mv


def _check_protocol(params: dict[str, Any], profile_name: str) -> None:
    """Fill in the protocol's defaults (so the same work has the same parameters, hence the
    same idempotency key, however it was asked for) and run the scoring use case's own check."""
    from her2ops.pipelines.score import check_protocol

    profile = get_profile(profile_name)
    params.setdefault("n_sets", profile.n_sets)
    params.setdefault("top_k", profile.top_k)
    params.setdefault("seed", 0)
    params.setdefault("confidence", "margin")
    check_protocol(params["n_sets"], params["top_k"], params["confidence"])


def _validate_training(session: Session, p: dict[str, Any]) -> None:
    """What every training kind checks: split, profile, epochs."""
    get_split(session, p["split"])
    p.setdefault("profile", "paper")
    p.setdefault("seed", 0)  # the default made explicit: the same work, the same key
    try:
        get_profile(p["profile"])
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    _check_range(p, "epochs", 1)


def _check_resamples(session: Session, split: str, plans: list[Any]) -> None:
    """Draw each plan over the split's training patients now: a resample that leaves a class
    without training cores is refused at submit time, naming the member and the class."""
    from her2ops.pipelines.resample import resample_training

    snapshot, _ = label_snapshot(session, split)
    train = [i for i in snapshot if i.partition == "train"]
    for plan in plans:
        if plan.mode != "none":
            resample_training(train, plan)


def _validate_train(session: Session, actor: str | None, p: dict[str, Any]) -> dict[str, Any]:
    from her2ops.pipelines.resample import check_resample

    _validate_training(session, p)
    names = ("resample", "member", "members", "resample_seed")
    if any(name in p for name in names):
        plan = check_resample(
            p.get("resample", "none"),
            p.get("member", 0),
            p.get("members", 1),
            p.get("resample_seed", p["seed"]),
        )
        _check_resamples(session, p["split"], [plan])
        # the same work, the same key: no resample is no parameters, any other all four
        if (plan.mode, plan.member, plan.members) == ("none", 0, 1):
            for name in names:
                p.pop(name, None)
        else:
            p.update(zip(names, (plan.mode, plan.member, plan.members, plan.seed), strict=True))
    return p


def _validate_score(session: Session, actor: str | None, p: dict[str, Any]) -> dict[str, Any]:
    _validate_model_or_ensemble(session, p)
    _check_range(p, "loader_workers", 0)
    if "cores" in p:
        if "split" in p or "partition" in p:
            raise InvalidRequest("give either cores or split + partition, not both")
        codes = p["cores"]
        found = set(session.scalars(select(Core.code).where(Core.code.in_(codes))))
        missing = [c for c in codes if c not in found]
        if missing:
            shown = ", ".join(missing[:10]) + (
                f" and {len(missing) - 10} more" * (len(missing) > 10)
            )
            raise NotFound(f"unknown core(s): {shown}")
    elif "split" in p and "partition" in p:
        get_split(session, p["split"])
        if p["partition"] not in PARTITIONS:
            raise InvalidRequest(
                f"unknown partition {p['partition']!r}; use one of {', '.join(PARTITIONS)}"
            )
    else:
        raise InvalidRequest("a score job needs cores=C1,C2,... or split=S and partition=P")
    return p


def _validate_model_or_ensemble(session: Session, p: dict[str, Any]) -> None:
    """``model=REF`` (resolved to its version) or ``ensemble=JOB_ID`` [+ ``rule=``]."""
    from her2ops.pipelines.ensemble import ensemble_versions

    if ("model" in p) == ("ensemble" in p):
        raise InvalidRequest("give model=REF or ensemble=JOB_ID (one of them)")
    if "ensemble" in p:
        versions = ensemble_versions(session, p["ensemble"])
        p.setdefault("rule", "pooled_kcs")
        if p["rule"] not in COMBINE_RULES:
            raise InvalidRequest(
                f"unknown combine rule {p['rule']!r}; use one of {', '.join(COMBINE_RULES)}"
            )
        first = resolve_ref(session, str(versions[0]), name=get_settings().registered_model_name)
        _check_protocol(p, first.profile)
    else:
        if "rule" in p:
            raise InvalidRequest("rule= applies to an ensemble only")
        mv = _resolve_model(session, p)
        _check_protocol(p, mv.profile)


def _validate_evaluate(session: Session, actor: str | None, p: dict[str, Any]) -> dict[str, Any]:
    _validate_model_or_ensemble(session, p)
    if "ensemble" in p and p.get("study"):
        raise InvalidRequest("the N/k study runs on a single model, not an ensemble")
    p.setdefault("partition", "test")
    _check_range(p, "study_sets", 1)
    _check_range(p, "study_draws", 1)
    if p["partition"] not in PARTITIONS:
        raise InvalidRequest(
            f"unknown partition {p['partition']!r}; use one of {', '.join(PARTITIONS)}"
        )
    snapshot, _ = label_snapshot(session, p["split"])
    if not any(i.partition == p["partition"] for i in snapshot):
        raise InvalidRequest(
            f"split {p['split']!r} has no labelled cores in partition {p['partition']!r}"
        )
    return p


def _validate_ensemble(session: Session, actor: str | None, p: dict[str, Any]) -> dict[str, Any]:
    from her2ops.pipelines.resample import MAX_MEMBERS, check_resample

    require(session, actor, "models.train")  # it submits training jobs
    _validate_training(session, p)
    if not 2 <= p["members"] <= MAX_MEMBERS:
        raise InvalidRequest(f"members={p['members']}: an ensemble has 2 to {MAX_MEMBERS} members")
    p.setdefault("resample", "bootstrap")
    seed = p.get("seed", 0)
    plans = [check_resample(p["resample"], m, p["members"], seed) for m in range(p["members"])]
    _check_resamples(session, p["split"], plans)
    return p


SELFTEST_MODES = ("ok", "raise", "kill", "sleep")


def _validate_selftest(session: Session, actor: str | None, p: dict[str, Any]) -> dict[str, Any]:
    p.setdefault("mode", "ok")
    if p["mode"] not in SELFTEST_MODES:
        raise InvalidRequest(f"unknown mode {p['mode']!r}; use one of {', '.join(SELFTEST_MODES)}")
    _check_range(p, "seconds", 0)
    return p


# --- runners: one use case each -----------------------------------------------------------


def _run_train(actor: str | None, p: dict[str, Any], progress: Progress) -> dict[str, Any]:
    from her2ops.pipelines.train import train_model

    out = train_model(
        actor=actor,
        split=p["split"],
        profile_name=p["profile"],
        epochs=p.get("epochs"),
        resume_run=p.get("resume_run"),
        seed=p.get("seed", 0),
        device=p.get("device"),
        pad_small=bool(p.get("pad_small", False)),
        resample=p.get("resample", "none"),
        member=p.get("member", 0),
        members=p.get("members", 1),
        resample_seed=p.get("resample_seed"),
        progress=progress,
    )
    result = _plain(out.to_dict())
    result.pop("history", None)  # per-epoch curves live in MLflow
    return result


def _run_score(actor: str | None, p: dict[str, Any], progress: Progress) -> dict[str, Any]:
    from her2ops.pipelines.ensemble import score_ensemble
    from her2ops.pipelines.score import score_cores

    if "ensemble" in p:
        out = score_ensemble(
            actor=actor,
            ensemble=p["ensemble"],
            cores=p.get("cores"),
            split=p.get("split"),
            partition=p.get("partition"),
            n_sets=p.get("n_sets"),
            top_k=p.get("top_k"),
            seed=p.get("seed", 0),
            confidence=p.get("confidence", "margin"),
            rule=p["rule"],
            device=p.get("device"),
            progress=progress,
        )
        result = _plain(out.to_dict())
        result.pop("rows", None)
        return result

    report = score_cores(
        actor=actor,
        model_ref=p["model"],
        cores=p.get("cores"),
        split=p.get("split"),
        partition=p.get("partition"),
        n_sets=p.get("n_sets"),
        top_k=p.get("top_k"),
        seed=p.get("seed", 0),
        confidence=p.get("confidence", "margin"),
        device=p.get("device"),
        loader_workers=p.get("loader_workers"),
        progress=progress,
    )
    result = _plain(report.to_dict())
    result.pop("rows", None)  # the predictions table holds them
    return result


def _run_evaluate(actor: str | None, p: dict[str, Any], progress: Progress) -> dict[str, Any]:
    from her2ops.pipelines.ensemble import evaluate_ensemble
    from her2ops.pipelines.evaluate import evaluate_model

    if "ensemble" in p:
        return dict(
            _plain(
                evaluate_ensemble(
                    actor=actor,
                    ensemble=p["ensemble"],
                    split=p["split"],
                    partition=p.get("partition", "test"),
                    rule=p["rule"],
                    n_sets=p.get("n_sets"),
                    top_k=p.get("top_k"),
                    seed=p.get("seed", 0),
                    confidence=p.get("confidence", "margin"),
                    device=p.get("device"),
                    progress=progress,
                )
            )
        )

    out = evaluate_model(
        actor=actor,
        model_ref=p["model"],
        split=p["split"],
        partition=p.get("partition", "test"),
        n_sets=p.get("n_sets"),
        top_k=p.get("top_k"),
        seed=p.get("seed", 0),
        confidence=p.get("confidence", "margin"),
        device=p.get("device"),
        study=p.get("study", False),
        **{k: p[k] for k in ("study_sets", "study_draws", "study_replace") if k in p},
        progress=progress,
    )
    return dict(_plain(out))


def _run_ensemble(actor: str | None, p: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Fan out one training job per member (seeds ``seed + i``; member ``i`` of the ensemble's
    patient resample, drawn from the ensemble's ``seed``), then wait for them without holding a
    worker: each look that finds members still training defers this job.
    """
    from her2ops.pipelines.jobs import submit_job

    claim = CURRENT_JOB.get()
    k = p["members"]
    with get_runtime().session() as s:
        members = children(s, claim.job_id)
    # A row submitted before members were resampled has no "resample": its members (and keys)
    # stay as they were, so a crash mid fan-out cannot duplicate them.
    mode = p.get("resample")
    if len(members) < k:  # first run (or a crash mid fan-out): the keys make this idempotent
        for i in range(k):
            params = {name: p[name] for name in ("split", "profile", "epochs", "device")
                      if p.get(name) is not None}  # fmt: skip
            params["seed"] = p.get("seed", 0) + i
            key = f"ensemble:{claim.job_id}:member:{i}"
            if mode is not None:
                params.update(resample=mode, member=i, members=k, resample_seed=p.get("seed", 0))
                key += f":resample:{mode}"
            submit_job(actor=actor, kind="train", params=params, parent_id=claim.job_id,
                       key=key)  # fmt: skip
        raise Deferred(_ensemble_poll(), (0, k, f"0/{k} members trained"))
    bad = [m for m in members if m.status in ("failed", "cancelled")]
    if bad:
        m = bad[0]
        raise Conflict(
            f"member job {m.id} {m.status}: {m.error or 'cancelled'}; retry it "
            f"(her2ops jobs retry {m.id}), then retry this job"
        )
    done = sum(m.status == "succeeded" for m in members)
    if done < k:
        raise Deferred(_ensemble_poll(), (done, k, f"{done}/{k} members trained"))
    versions = [dict(m.result or {}) for m in members]
    return {
        "split": p["split"],
        "profile": p["profile"],
        "resample": mode or "none",
        "members": [
            {
                "job": m.id,
                "version": v.get("version"),
                "run_id": v.get("run_id"),
                "seed": m.params.get("seed"),
                "resample": v.get("resample") or {"mode": "none"},
            }
            for m, v in zip(members, versions, strict=True)
        ],
    }


def _ensemble_poll() -> float:
    return max(1.0, 2 * get_settings().dispatcher_interval_seconds)


def run_selftest(actor: str | None, p: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Sleep (reporting progress), raise, or SIGKILL the process that runs it."""
    mode = p.get("mode", "ok")
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "raise":
        raise RuntimeError("selftest: raised as asked")
    seconds = float(p.get("seconds", 0.0))
    steps = max(1, int(seconds / 0.1))
    for i in range(steps):
        progress(i, steps, "sleeping")
        time.sleep(seconds / steps)
    progress(steps, steps, "sleeping")
    return {"mode": mode, "pid": os.getpid(), "seconds": seconds}


_PROTOCOL = {
    "n_sets": INT("N sets per core (default: the model's profile)"),
    "top_k": INT("k most confident sets (default: the model's profile)"),
    "seed": INT("sampling seed (default 0)"),
    "confidence": STR("margin (default), max, range, std or entropy"),
    "device": STR("torch device (default: HER2OPS_DEVICE, else cuda if present)"),
}

_STUDY_PARAMS = ("split", "partition", "study_sets", "study_draws", "study_replace")

#: Which model a score or evaluate job uses: a registered version, or an ensemble job's members.
_MODEL_OR_ENSEMBLE = {
    "model": STR("champion, challenger, a version or a run id"),
    "ensemble": INT("...or the id of a succeeded ensemble job"),
    "rule": STR("ensemble combine rule: pooled_kcs, majority or mean_prob"),
}

KINDS: dict[str, JobKind] = {
    "train": JobKind(
        name="train",
        params={
            "split": STR("split to train on"),
            "profile": STR("paper, demo or test (default paper)"),
            "epochs": INT("override the profile's epochs"),
            "resume_run": STR("MLflow run id to resume"),
            "seed": INT("seed (default 0)"),
            "device": STR("torch device"),
            "pad_small": BOOL("pad levels smaller than a patch with white"),
            "resample": STR("training patients: none (default), bootstrap or kfold"),
            "member": INT("which resample: member M (0-based) of members (default 0)"),
            "members": INT("members the resample is drawn for; kfold: the folds (default 1)"),
            "resample_seed": INT("seed of the patient resample (default: seed)"),
        },
        required=("split",),
        validate=_validate_train,
        run=_run_train,
        permission="models.train",
    ),
    "score": JobKind(
        name="score",
        params={
            **_MODEL_OR_ENSEMBLE,
            "cores": LIST("core codes"),
            "split": STR("score this split's..."),
            "partition": STR("...partition (train, val, test)"),
            "loader_workers": INT("PSS sampling processes (default: the use case's)"),
            **_PROTOCOL,
        },
        validate=_validate_score,
        run=_run_score,
        permission="models.score",
    ),
    "evaluate": JobKind(
        name="evaluate",
        params={
            **_MODEL_OR_ENSEMBLE,
            "split": STR("split"),
            "partition": STR("partition (default test)"),
            "study": BOOL("also run the N/k study"),
            "study_sets": INT("set outputs cached per core for the study (M, default 300)"),
            "study_draws": INT("Monte Carlo draws per study point (default 10000)"),
            "study_replace": BOOL("study draws sets with replacement"),
            **_PROTOCOL,
        },
        required=("split",),
        validate=_validate_evaluate,
        run=_run_evaluate,
        permission="models.score",
    ),
    "ensemble": JobKind(
        name="ensemble",
        params={
            "split": STR("split to train on"),
            "members": INT("how many models (2-50)"),
            "profile": STR("paper, demo or test (default paper)"),
            "epochs": INT("override the profile's epochs"),
            "seed": INT("seed of the first member; member i uses seed + i"),
            "device": STR("torch device"),
            "resample": STR("members' training patients: bootstrap (default), kfold or none"),
        },
        required=("split", "members"),
        validate=_validate_ensemble,
        run=_run_ensemble,
        permission="models.train",
    ),
}


def _run_retrain(actor: str | None, p: dict[str, Any], progress: Progress) -> dict[str, Any]:
    from her2ops.pipelines.retrain import retrain

    return _plain(
        retrain(
            actor=actor,
            split=p["split"],
            profile=p.get("profile", "paper"),
            epochs=p.get("epochs"),
            seed=p.get("seed", 0),
            device=p.get("device"),
            progress=progress,
        )
    )


KINDS["retrain"] = JobKind(
    name="retrain",
    params={
        "split": STR("split to extend and train on (its test partition stays as it is)"),
        "profile": STR("paper, demo or test (default paper)"),
        "epochs": INT("override the profile's epochs"),
        "seed": INT("seed (default 0)"),
        "device": STR("torch device"),
    },
    required=("split",),
    validate=_validate_train,
    run=_run_retrain,
    permission="models.train",
)


def _validate_study(session: Session, actor: str | None, p: dict[str, Any]) -> dict[str, Any]:
    if "ensemble" in p:
        raise InvalidRequest("the N/k study runs on a single model, not an ensemble")
    return _validate_evaluate(session, actor, p)


def _run_study(actor: str | None, p: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """The N/k study of one model on a split's partition (evaluate with its study)."""
    return _run_evaluate(actor, {**p, "study": True}, progress)


KINDS["study"] = JobKind(
    name="study",
    params={
        "model": STR("champion, challenger, a version or a run id"),
        **{k: v for k, v in KINDS["evaluate"].params.items() if k in _STUDY_PARAMS},
        **_PROTOCOL,
    },
    required=("model", "split"),
    validate=_validate_study,
    run=_run_study,
    permission="models.score",
)


def _validate_flags(session: Session, actor: str | None, p: dict[str, Any]) -> dict[str, Any]:
    from her2ops.pipelines.review import LABEL_METHODS
    from her2ops.platform.schema import REVIEW_MODES

    require(session, actor, "review.enqueue")
    name = get_settings().registered_model_name
    p["models"] = [str(resolve_ref(session, str(r), name=name).version) for r in p["models"]]
    if not p["models"]:
        raise InvalidRequest("name at least one model (models=REF[,REF...])")
    p.setdefault("mode", "blinded")
    p.setdefault("label_method", "rule")
    p.setdefault("votes_needed", 1)
    if p["mode"] not in REVIEW_MODES:
        raise InvalidRequest(f"unknown review mode {p['mode']!r}; use {', '.join(REVIEW_MODES)}")
    if p["label_method"] not in LABEL_METHODS:
        raise InvalidRequest(
            f"unknown label method {p['label_method']!r}; use {', '.join(LABEL_METHODS)}"
        )
    _check_range(p, "top", 1)
    _check_range(p, "votes_needed", 1)
    return p


def _run_flags(actor: str | None, p: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Flag the cores the model(s) scored and queue the top ones for review."""
    from her2ops.pipelines.review import build_queue

    progress(0, 1, "flagging scored cores")
    out = build_queue(
        actor=actor,
        model_ref=p["models"],
        top=p.get("top"),
        mode=p["mode"],
        votes_needed=p["votes_needed"],
        label_method=p["label_method"],
    )
    progress(1, 1, f"queued {out.get('added', 0)}")
    out.pop("top", None)  # the queue itself is in the review tables (review list)
    return dict(_plain(out))


KINDS["flags"] = JobKind(
    name="flags",
    params={
        "models": LIST("model REF(s); several make a committee (the first is primary)"),
        "top": INT("queue at most this many items"),
        "mode": STR("blinded (default) or adjudication"),
        "votes_needed": INT("review votes per item (default 1)"),
        "label_method": STR("rule (default) or cleanlab"),
    },
    required=("models",),
    validate=_validate_flags,
    run=_run_flags,
    permission="review.enqueue",
)


SELFTEST = JobKind(
    name="selftest",
    params={"mode": STR("ok, raise, kill or sleep"), "seconds": FLOAT("how long to sleep")},
    validate=_validate_selftest,
    run=run_selftest,
    permission="models.score",
)


def available_kinds() -> dict[str, JobKind]:
    """The kinds this process accepts (``selftest`` only when the setting enables it)."""
    kinds = dict(KINDS)
    if get_settings().jobs_selftest:
        kinds["selftest"] = SELFTEST
    return kinds


def get_kind(name: str) -> JobKind:
    kinds = available_kinds()
    if name in kinds:
        return kinds[name]
    if name in PLANNED:
        raise InvalidRequest(f"job kind {name!r} has no worker yet; known: {', '.join(kinds)}")
    raise InvalidRequest(f"unknown job kind {name!r}; known: {', '.join(kinds)}")


def normalise_params(
    session: Session, kind: JobKind, actor: str | None, raw: dict[str, Any]
) -> dict[str, Any]:
    """Convert and check every parameter; the kind's own checks run against the database."""
    require(session, actor, kind.permission)
    unknown = sorted(set(raw) - set(kind.params))
    if unknown:
        raise InvalidRequest(
            f"unknown parameter(s) {', '.join(unknown)} for a {kind.name} job; "
            f"accepted: {', '.join(kind.params)}"
        )
    params: dict[str, Any] = {}
    for name, value in raw.items():
        spec = kind.params[name]
        try:
            params[name] = spec.convert(value)
        except (TypeError, ValueError):
            raise InvalidRequest(
                f"parameter {name}={value!r} is not a {spec.type_name} ({spec.help})"
            ) from None
    missing = [r for r in kind.required if r not in params]
    if missing:
        raise InvalidRequest(f"a {kind.name} job needs parameter(s) {', '.join(missing)}")
    return kind.validate(session, actor, params)

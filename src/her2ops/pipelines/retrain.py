"""Relabel -> retrain: the retrain policy and the retrain use case.

The policy (``platform.retrain_policy``) counts the training labels that appeared, changed or
disappeared since the champion's label snapshot; past the thresholds in the settings
(``HER2OPS_RETRAIN_MIN_NEW_LABELS``, ``HER2OPS_RETRAIN_MIN_CHANGED_LABELS``) a retrain is due and
:func:`check_retrain` submits a ``retrain`` job. The job extends the split (new patients only:
existing patients keep their partition, so the test partition stays the one the champion was
judged on), trains a new challenger on the current labels and evaluates it beside the champion on
that test partition. Nothing is promoted: promotion stays a person's decision.
"""

from __future__ import annotations

from typing import Any

from her2ops.pipelines.progress import Progress, no_progress
from her2ops.pipelines.runtime import get_runtime
from her2ops.platform.access import require
from her2ops.platform.registry import resolve_ref
from her2ops.platform.retrain_policy import RetrainPolicy, labels_since, retrain_due
from her2ops.platform.schema import Split


def check_retrain(
    *, actor: str | None, model_ref: str = "champion", submit: bool = False, **job: Any
) -> dict[str, Any]:
    """Whether the labels moved enough since ``model_ref`` was trained; with ``submit``, a due
    retrain is submitted as a job (``job``: its parameters, e.g. profile, epochs)."""
    rt = get_runtime()
    s_ = rt.settings
    policy = RetrainPolicy(s_.retrain_min_new_labels, s_.retrain_min_changed_labels)
    with rt.session() as s:
        require(s, actor, "models.read")
        mv = resolve_ref(s, model_ref, name=s_.registered_model_name)
        delta = labels_since(s, mv.id)
        split = s.get(Split, mv.split_id)
        split_name = split.name if split is not None else None
        version = mv.version
    decision = retrain_due(delta, policy)
    out: dict[str, Any] = {
        "model": f"v{version}",
        "split": split_name,
        "new": delta.new,
        "changed": delta.changed,
        "lost": delta.lost,
        "due": decision.due,
        "reason": decision.reason,
        "job": None,
    }
    if submit and decision.due and split_name is not None:
        from her2ops.pipelines.jobs import submit_job

        params = {"split": split_name, **{k: v for k, v in job.items() if v is not None}}
        out["job"] = submit_job(actor=actor, kind="retrain", params=params)
    return out


def retrain(
    *,
    actor: str | None,
    split: str,
    profile: str = "paper",
    epochs: int | None = None,
    seed: int = 0,
    device: str | None = None,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Extend the split, train a challenger on today's labels, evaluate it beside the champion
    on the split's (unchanged) test partition. Promotes nothing."""
    from her2ops.pipelines.evaluate import evaluate_model
    from her2ops.pipelines.splits import extend_split
    from her2ops.pipelines.train import train_model

    extended = extend_split(actor=actor, name=split)
    out = train_model(
        actor=actor,
        split=split,
        profile_name=profile,
        epochs=epochs,
        seed=seed,
        device=device,
        progress=progress,
    )
    rows = []
    for ref in (str(out.version), "champion"):
        try:
            res = evaluate_model(
                actor=actor, model_ref=ref, split=split, device=device, progress=progress
            )
        except Exception as exc:  # no champion yet: report the challenger alone
            from her2ops.errors import NotFound

            if ref == "champion" and isinstance(exc, NotFound):
                continue
            raise
        rows.append(
            {
                "model": f"v{res['version']}",
                "accuracy": res["metrics"]["accuracy"],
                "cores": res["cores"],
            }
        )
    return {
        "split": split,
        "patients_added": extended.get("added", 0),
        "challenger": out.version,
        "run_id": out.run_id,
        "label_snapshot_hash": out.label_snapshot_hash,
        "test": rows,
    }

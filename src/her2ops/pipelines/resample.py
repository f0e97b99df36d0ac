"""Which training patients an ensemble member trains on: none, a bootstrap or a k-fold resample.

Members of an ensemble differ by seed and by the patients they see. The resample is drawn over
the PATIENTS of the split's train partition (all cores of a patient go in or out together); the
val and test partitions never change. It is a pure function of the patients, their labels and
``(seed, member, members)``, so every torchrun rank, a resumed run and a test draw the same one.

- ``none``: every training patient once.
- ``bootstrap``: as many draws as there are patients, with replacement, stratified by the
  patient's highest label (each stratum draws as many as it holds, so the class mix of the
  partition is kept); a patient drawn twice contributes its cores twice, as distinct copies
  (``copy`` 0, 1, ...) that the dataset gives distinct set streams.
- ``kfold``: the patients are dealt into ``members`` folds (shuffled within each stratum, then
  dealt round-robin, so the folds are balanced by stratum and by size); member ``m`` leaves out
  fold ``m``. The folds depend on ``seed`` and ``members`` only, never on ``member``, so the
  members of one ensemble (which share ``seed``) leave out disjoint folds.

Training needs a core of every class, so a draw (bootstrap) or a fold assignment (kfold) that
leaves some class without a training core is drawn again from the same stream, up to
``MAX_ATTEMPTS`` times (a bootstrap conditioned on keeping every class; on a small partition an
unconditioned one often loses a rare class). The number of attempts is recorded. When no attempt
keeps every class (k-fold with a class held by one patient), the resample is refused, naming the
member and the class.

No torch here: the jobs table checks a resample when a job is submitted.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from her2ops.errors import InvalidRequest
from her2ops.scores import SCORE_LABELS

RESAMPLE_MODES = ("none", "bootstrap", "kfold")
#: Upper bound of an ensemble's size (and so of ``members``).
MAX_MEMBERS = 50
#: Draws (bootstrap) or fold assignments (kfold) tried before a resample is refused.
MAX_ATTEMPTS = 100

_BOOTSTRAP, _KFOLD = 1, 2  # stream tags: a bootstrap and a fold plan never share draws


class HasPatient(Protocol):
    @property
    def patient(self) -> str: ...

    @property
    def label(self) -> int: ...


T = TypeVar("T", bound=HasPatient)


@dataclass(frozen=True)
class Resample:
    """A member's resample: ``mode``, which member of how many, and the shared seed."""

    mode: str = "none"
    member: int = 0
    members: int = 1
    seed: int = 0

    def describe(self) -> str:
        if self.mode == "kfold":
            return f"kfold member {self.member} (fold {self.member} of {self.members} left out)"
        if self.mode == "bootstrap":
            return f"bootstrap member {self.member} of {self.members}"
        return "no resample"


@dataclass(frozen=True)
class TrainingSample:
    """The chosen training cores as ``(item, copy)`` and what to record about the draw."""

    cores: list[tuple[Any, int]]
    patients: list[str]  # sorted, with repeats (a bootstrap's draws)
    resample: Resample
    attempts: int = 1

    @property
    def patients_hash(self) -> str:
        return patients_hash(self.patients)

    def record(self) -> dict[str, Any]:
        """The resample's MLflow params / job result fields."""
        return {
            "mode": self.resample.mode,
            "member": self.resample.member,
            "members": self.resample.members,
            "seed": self.resample.seed,
            "patients": len(self.patients),
            "distinct_patients": len(set(self.patients)),
            "patients_hash": self.patients_hash,
            "cores": len(self.cores),
            "attempts": self.attempts,
        }


def patients_hash(patients: Sequence[str]) -> str:
    """sha256 of the sorted patient list, repeats included (what a member trained on)."""
    return hashlib.sha256(json.dumps(sorted(patients)).encode()).hexdigest()


def check_resample(mode: str, member: int, members: int, seed: int = 0) -> Resample:
    """The resample these values ask for, or ``InvalidRequest`` saying what is wrong."""
    if mode not in RESAMPLE_MODES:
        raise InvalidRequest(f"unknown resample {mode!r}; use one of {', '.join(RESAMPLE_MODES)}")
    if not 1 <= members <= MAX_MEMBERS:
        raise InvalidRequest(f"members={members}: must be between 1 and {MAX_MEMBERS}")
    if not 0 <= member < members:
        raise InvalidRequest(f"member={member} is out of range for {members} member(s) (0-based)")
    if mode == "kfold" and members < 2:
        raise InvalidRequest("a kfold resample needs at least 2 members (folds)")
    if seed < 0:
        raise InvalidRequest(f"seed={seed} must be non-negative")
    return Resample(mode, member, members, seed)


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(p) for p in parts]))


def _strata(items: Sequence[HasPatient]) -> dict[int, list[str]]:
    """Patients by their highest training label (each list sorted)."""
    top: dict[str, int] = {}
    for it in items:
        top[it.patient] = max(top.get(it.patient, -1), int(it.label))
    out: dict[int, list[str]] = {}
    for patient in sorted(top):
        out.setdefault(top[patient], []).append(patient)
    return out


def _classes(items: Sequence[HasPatient], patients: set[str] | Counter[str]) -> set[int]:
    return {int(i.label) for i in items if i.patient in patients}


def _kfold(items: Sequence[HasPatient], members: int, seed: int) -> tuple[list[list[str]], int]:
    """The folds and the attempt that made them (see the module docstring)."""
    rng = _rng(seed, _KFOLD, members)
    strata = _strata(items)
    everyone = {p for patients in strata.values() for p in patients}
    wanted = _classes(items, everyone)
    attempts = 0
    while True:
        attempts += 1
        dealt: list[str] = []
        for _, patients in sorted(strata.items()):
            dealt.extend(patients[i] for i in rng.permutation(len(patients)))
        folds = [sorted(dealt[m::members]) for m in range(members)]
        kept = all(_classes(items, everyone - set(f)) >= wanted for f in folds)
        if kept or attempts == MAX_ATTEMPTS:
            return folds, attempts


def kfold_folds(items: Sequence[HasPatient], members: int, seed: int) -> list[list[str]]:
    """The ``members`` folds of the patients (sorted lists), balanced by stratum and size."""
    return _kfold(items, members, seed)[0]


def _draw(items: Sequence[HasPatient], plan: Resample) -> tuple[list[str], int]:
    strata = _strata(items)
    everyone = sorted(p for patients in strata.values() for p in patients)
    if plan.mode == "none":
        return everyone, 1
    if plan.mode == "bootstrap":
        rng = _rng(plan.seed, _BOOTSTRAP, plan.member)
        wanted = _classes(items, set(everyone))
        attempts = 0
        while True:
            attempts += 1
            drawn: list[str] = []
            for _, patients in sorted(strata.items()):
                drawn.extend(patients[i] for i in rng.integers(0, len(patients), len(patients)))
            if _classes(items, set(drawn)) >= wanted or attempts == MAX_ATTEMPTS:
                return sorted(drawn), attempts
    if len(everyone) < plan.members:
        raise InvalidRequest(
            f"a kfold resample into {plan.members} folds needs at least {plan.members} "
            f"training patients; the train partition has {len(everyone)}"
        )
    folds, attempts = _kfold(items, plan.members, plan.seed)
    left_out = set(folds[plan.member])
    return [p for p in everyone if p not in left_out], attempts


def draw_patients(items: Sequence[HasPatient], plan: Resample) -> list[str]:
    """The training patients of ``plan``, sorted, with a bootstrap's repeats."""
    return _draw(items, plan)[0]


def resample_training(items: Sequence[T], plan: Resample) -> TrainingSample:
    """The training cores of ``plan`` over the train-partition ``items`` (each with ``patient``
    and ``label``), as ``(item, copy)`` pairs in the items' order, copy by copy.

    Refuses (``InvalidRequest``) a resample that leaves a class with no training core.
    """
    patients, attempts = _draw(items, plan)
    times = Counter(patients)
    cores = [(it, c) for it in items for c in range(times.get(it.patient, 0))]
    # only classes the partition has: a partition without some class is train's to refuse
    lost = {int(it.label) for it in items} - {int(it.label) for it, _ in cores}
    missing = [SCORE_LABELS[c] for c in sorted(lost)]
    if missing:
        raise InvalidRequest(
            f"{plan.describe()} (seed {plan.seed}) leaves class {', '.join(missing)} with no "
            f"training core in each of {attempts} attempt(s); every class needs at least one "
            "(the training patients of that class are too few for this resample: use fewer "
            "members, another resample, or label more patients)"
        )
    return TrainingSample(cores, patients, plan, attempts)

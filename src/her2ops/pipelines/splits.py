"""Split use cases: create, extend and show patient-level splits."""

from __future__ import annotations

from typing import Any

from her2ops.errors import InvalidRequest
from her2ops.pipelines.runtime import get_runtime
from her2ops.platform import labels as labels_service
from her2ops.platform import splits as split_service
from her2ops.platform.split_rules import PARTITIONS, parse_ratios


def create_split(
    *,
    actor: str | None,
    name: str,
    seed: int,
    ratios: str = "0.7,0.1,0.2",
    replace: bool = False,
    balanced_test: bool = False,
    yes: bool = False,
) -> dict[str, Any]:
    """Assign every patient to train/val/test (stratified, seeded; ``balanced_test``: a
    class-balanced test partition, as the paper's); the split's summary."""
    parsed = parse_ratios(ratios)
    if replace and not yes:
        raise InvalidRequest(
            f"--replace deletes split {name!r}'s assignments before recreating it; "
            "confirm with --yes"
        )
    with get_runtime().session() as s:
        split_service.create_split(
            s,
            actor=actor,
            name=name,
            seed=seed,
            ratios=parsed,
            replace=replace,
            balanced_test=balanced_test,
        )
        return labels_service.split_summary(s, actor=actor, name=name)


def extend_split(*, actor: str | None, name: str) -> dict[str, Any]:
    """Assign the patients not yet in the split (nobody moves) by the rule it was created with
    (``balanced_test`` keeps the test partition class-balanced by core).

    The split's summary after extending (``show_split``: ``class_counts["test"]`` are the test
    partition's labelled cores per class) plus ``added`` (how many patients) and
    ``added_by_partition``.
    """
    with get_runtime().session() as s:
        added = split_service.extend_split(s, actor=actor, name=name)
        by_partition = {p: n for p in PARTITIONS if (n := list(added.values()).count(p))}
        return {
            **split_service.show_split(s, name),
            "added": len(added),
            "added_by_partition": by_partition,
        }


def show_split(*, actor: str | None, name: str) -> dict[str, Any]:
    """Sizes and class balance of a split, by patient and by labelled core."""
    with get_runtime().session() as s:
        return split_service.show_split(s, name)

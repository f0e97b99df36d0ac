"""Patient-level stratified split assignment (pure functions; no database).

A split assigns every *patient* (never a core) to one partition, so no patient's cores are ever in
two partitions. Patients are stratified by their stratum: the highest consensus score over their
cores, or ``None`` while none of their cores has a label (its own stratum).

Allocation, for each stratum in a fixed order (0, 1+, 2+, 3+, unlabelled):

1. each partition's exact share of the stratum is computed in rationals and rounded down or up
   (never further), so every partition gets its share of every stratum to within one patient;
2. which partitions round up is decided by the rounding deficit carried over the strata already
   allocated, so the partition *totals* also stay within one patient of their ratios;
3. the stratum's patients are ordered by ``sha256(f"{seed}:{code}")`` -- a deterministic shuffle
   that depends only on the seed and the codes (not on input order, not on the numpy version,
   not on which other patients exist) -- and dealt to the partitions with room left, each to
   the one furthest behind its share of the patients dealt so far.

``extend_assignment`` never moves an assigned patient: in each stratum, the partitions below their
share of the stratum's final size are filled up to a common fraction of that share (water-filling;
partitions already above their share get nobody; with nothing assigned yet this is exactly the
share), and the real-valued amounts are then rounded and dealt as above.

``assign_balanced_test`` makes the test partition class-balanced by core instead (the paper's
blind test set); ``extend_balanced_test`` extends such a split by the same rule, so its test
partition stays balanced, and deals the rest as ``extend_assignment`` does.

``core_scores`` (optional, patient -> the consensus scores of their labelled cores) also balances
the split *by core*: inside a stratum, patients with the most cores and highest scores are dealt
first (the seeded hash orders equal profiles), each to the partition furthest behind its share of
the cores in that patient's classes. Without it, core-level class proportions are only balanced
in expectation (on 300 patients with 1-3 cores each, the small validation partition then often
drifts more than 5 points by core); the patient-level guarantees hold either way.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from her2ops.errors import InvalidRequest
from her2ops.scores import SCORE_LABELS

PARTITIONS: tuple[str, ...] = ("train", "val", "test")
UNLABELLED = "unlabelled"

Stratum = int | None


def parse_ratios(text: str) -> dict[str, float]:
    """Parse ``"0.7,0.1,0.2"`` into ``{"train": 0.7, "val": 0.1, "test": 0.2}``.

    Two values mean train and test (no validation partition). Values must be finite, >= 0 and
    sum to 1 within 1e-6. Raises ``ValueError`` with a one-line message otherwise.
    """
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) not in (2, 3) or any(p == "" for p in parts):
        raise InvalidRequest(
            f"bad ratios {text!r}: expected 2 or 3 comma-separated numbers "
            "(train,test or train,val,test), e.g. 0.7,0.1,0.2"
        )
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise InvalidRequest(f"bad ratios {text!r}: not all values are numbers") from None
    names = ("train", "test") if len(values) == 2 else PARTITIONS
    ratios = dict(zip(names, values, strict=True))
    validate_ratios(ratios)
    return ratios


def validate_ratios(ratios: Mapping[str, float]) -> None:
    """Raise ``ValueError`` unless ratios are finite, >= 0, not all 0 and sum to 1 (within 1e-6)."""
    if not ratios:
        raise InvalidRequest("ratios: no partitions")
    for name, r in ratios.items():
        if not math.isfinite(r) or r < 0:
            raise InvalidRequest(f"bad ratio for {name}: {r!r} (must be a finite number >= 0)")
    total = math.fsum(ratios.values())
    if abs(total - 1.0) > 1e-6:
        raise InvalidRequest(f"ratios must sum to 1, not {total:g}")


def _exact_ratios(ratios: Mapping[str, float]) -> dict[str, Fraction]:
    # Rationals make "exact share", floor/ceil and the carried deficits exact: 0.7 * 10 in floats
    # is 7.000000000000001 and would round up.
    validate_ratios(ratios)
    fr = {p: Fraction(r).limit_denominator(10**9) for p, r in ratios.items()}
    total = sum(fr.values())
    return {p: v / total for p, v in fr.items()}


def _stratum_key(stratum: Stratum) -> tuple[int, int]:
    return (1, 0) if stratum is None else (0, int(stratum))


def _check_stratum(code: str, stratum: object) -> None:
    if stratum is not None and (isinstance(stratum, bool) or not isinstance(stratum, int)):
        raise ValueError(f"patient {code!r}: stratum must be a score 0..3 or None, not {stratum!r}")


def _hash_order(seed: int, code: str) -> str:
    return hashlib.sha256(f"{seed}:{code}".encode()).hexdigest()


def _ordered(
    codes: Sequence[str], seed: int, core_scores: Mapping[str, Sequence[int]] | None
) -> list[str]:
    """The stratum's codes in dealing order: seeded hash, after the core profile if known."""

    def key(code: str) -> tuple[Any, ...]:
        profile: tuple[int, ...] = ()
        if core_scores is not None:
            # Most cores and highest scores first: the big, hard-to-place patients are dealt
            # while every partition still has room, the single cores fine-tune at the end.
            scores = sorted((int(s) for s in core_scores.get(code, ())), reverse=True)
            profile = (-len(scores), *(-s for s in scores))
        return (profile, _hash_order(seed, code), code)

    return sorted(codes, key=key)


def _water_fill(
    ratios: Mapping[str, Fraction], have: Mapping[str, int], amount: int
) -> dict[str, Fraction]:
    """Split ``amount`` new patients so partitions below their share rise to a common level.

    Final sizes are ``max(have_p, r_p * L)`` for the one level ``L`` at which they add up: a
    partition already above its share gets nobody, the others end at the same fraction of their
    share (so a small partition is not starved by a large one). With nothing assigned yet this
    is simply ``r_p * amount``.
    """
    active = sorted((p for p in ratios if ratios[p] > 0), key=lambda p: have[p] / ratios[p])
    level = Fraction(0)
    for m in range(1, len(active) + 1):
        first = active[:m]
        level = (amount + sum((have[p] for p in first), 0)) / sum(
            (ratios[p] for p in first), Fraction(0)
        )
        if m == len(active) or level <= have[active[m]] / ratios[active[m]]:
            break
    return {p: max(Fraction(0), ratios[p] * level - have[p]) for p in ratios}


class _CoreTally:
    """Cores per class, seen so far and given to each partition (empty without core scores)."""

    def __init__(
        self,
        names: Sequence[str],
        ratios: Mapping[str, Fraction],
        core_scores: Mapping[str, Sequence[int]] | None,
    ) -> None:
        self.ratios = ratios
        self.core_scores = core_scores or {}
        self.seen: Counter[int] = Counter()
        self.got: dict[str, Counter[int]] = {p: Counter() for p in names}

    def profile(self, code: str) -> Counter[int]:
        return Counter(int(s) for s in self.core_scores.get(code, ()))

    def deficit(self, code: str, partition: str) -> Fraction:
        """How far ``partition`` is behind its share of the classes ``code``'s cores are in."""
        got = self.got[partition]
        share = self.ratios[partition]
        return sum(
            (m * (share * self.seen[k] - got[k]) for k, m in self.profile(code).items()),
            Fraction(0),
        )

    def add(self, code: str, partition: str) -> None:
        profile = self.profile(code)
        self.seen.update(profile)
        if partition in self.got:
            self.got[partition].update(profile)


def _deal(
    codes: Sequence[str], counts: Mapping[str, int], names: Sequence[str], cores: _CoreTally
) -> dict[str, str]:
    """Give each code, in order, to a partition with room left (exactly ``counts`` each).

    The choice goes to the partition furthest behind its share of the cores in this patient's
    classes (all zero without core scores), then to the one furthest behind its share of the
    first i patients (a proportional interleave), then to partition order.
    """
    n = len(codes)
    got = dict.fromkeys(names, 0)
    out: dict[str, str] = {}
    for i, code in enumerate(codes, start=1):
        cores.seen.update(cores.profile(code))
        open_ = [p for p in names if got[p] < counts[p]]
        best = max(
            open_,
            key=lambda p: (
                cores.deficit(code, p),
                Fraction(counts[p] * i, n) - got[p],
                -names.index(p),
            ),
        )
        cores.got[best].update(cores.profile(code))
        got[best] += 1
        out[code] = best
    return out


def _allocate(
    new_by_stratum: Mapping[Stratum, list[str]],
    existing_counts: Mapping[Stratum, Counter[str]],
    ratios: Mapping[str, Fraction],
    seed: int,
    core_scores: Mapping[str, Sequence[int]] | None,
    existing: Mapping[str, str] | None = None,
) -> dict[str, str]:
    names = list(ratios)
    carry = dict.fromkeys(names, Fraction(0))  # running (exact share - allocated), over strata
    cores = _CoreTally(names, ratios, core_scores)
    for code, partition in (existing or {}).items():
        cores.add(code, partition)
    out: dict[str, str] = {}
    for stratum in sorted(new_by_stratum, key=_stratum_key):
        codes = new_by_stratum[stratum]
        n_new = len(codes)
        if n_new == 0:
            continue
        have = existing_counts.get(stratum, Counter())
        shares = _water_fill(ratios, have, n_new)
        counts = {p: math.floor(shares[p]) for p in names}
        for p in names:
            carry[p] += shares[p]
        # Round up where the carried deficit is largest; partition order breaks exact ties.
        n_up = n_new - sum(counts.values())
        fractional = [p for p in names if shares[p] != counts[p]]
        fractional.sort(key=lambda p: (-(carry[p] - counts[p]), names.index(p)))
        for p in fractional[:n_up]:
            counts[p] += 1
        for p in names:
            carry[p] -= counts[p]
        out.update(_deal(_ordered(codes, seed, core_scores), counts, names, cores))
    return out


def assign_patients(
    patients: Mapping[str, Stratum],
    ratios: Mapping[str, float],
    seed: int,
    *,
    core_scores: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, str]:
    """Assign every patient code to a partition of ``ratios``, stratified and deterministic.

    ``patients`` maps a patient code to their stratum (highest consensus score 0..3, or ``None``
    when unlabelled). The result depends only on the set of (code, stratum) pairs, the ratios
    and the seed. See the module docstring for the guarantees.
    """
    by_stratum: dict[Stratum, list[str]] = defaultdict(list)
    for code, stratum in patients.items():
        _check_stratum(code, stratum)
        by_stratum[None if stratum is None else int(stratum)].append(code)
    return _allocate(by_stratum, {}, _exact_ratios(ratios), seed, core_scores)


def extend_assignment(
    existing: Mapping[str, str],
    new_patients: Mapping[str, Stratum],
    ratios: Mapping[str, float],
    seed: int,
    *,
    existing_strata: Mapping[str, Stratum] | None = None,
    core_scores: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, str]:
    """Assign only the patients not yet in ``existing``; nobody already assigned moves.

    ``existing`` maps assigned patient codes to their partition. ``existing_strata`` gives the
    current stratum of those patients: with it, new patients are steered toward each partition's
    ratio *per stratum*; without it every existing patient counts in the stratum ``None``, i.e.
    only the unlabelled stratum is steered by what is already assigned. Patients of
    ``new_patients`` that are already in ``existing`` are ignored. Partitions of ``existing``
    missing from ``ratios`` never receive anyone and are left out of the shares. Returns the new
    assignments only.
    """
    exact = _exact_ratios(ratios)
    counts: dict[Stratum, Counter[str]] = defaultdict(Counter)
    for code, partition in existing.items():
        stratum = existing_strata.get(code) if existing_strata is not None else None
        _check_stratum(code, stratum)
        counts[None if stratum is None else int(stratum)][partition] += 1
    by_stratum: dict[Stratum, list[str]] = defaultdict(list)
    for code, stratum in new_patients.items():
        if code in existing:
            continue
        _check_stratum(code, stratum)
        by_stratum[None if stratum is None else int(stratum)].append(code)
    return _allocate(by_stratum, counts, exact, seed, core_scores, existing)


#: a balanced test partition takes at most this share of any class's labelled cores
BALANCED_TEST_MAX_CLASS_SHARE = Fraction(1, 2)


def balanced_test_targets(per_class: Mapping[int, int], test_ratio: Fraction) -> dict[int, int]:
    """Labelled cores per class a balanced test partition may hold, given the labelled cores per
    class of the whole cohort: ``test_ratio`` of all of them, a quarter per class, at most
    ``BALANCED_TEST_MAX_CLASS_SHARE`` of any one class (rounded down)."""
    total = sum(per_class.values())
    quota = test_ratio * total / len(SCORE_LABELS)
    return {
        k: math.floor(min(quota, per_class.get(k, 0) * BALANCED_TEST_MAX_CLASS_SHARE))
        for k in range(len(SCORE_LABELS))
    }


def _assign_balanced(
    existing: Mapping[str, str],
    new_patients: Mapping[str, Stratum],
    ratios: Mapping[str, float],
    seed: int,
    core_scores: Mapping[str, Sequence[int]],
    existing_strata: Mapping[str, Stratum] | None,
) -> dict[str, str]:
    """The balanced-test rule, for a new split (``existing`` empty) or an extension.

    The targets come from every labelled core (existing and new patients); the test partition
    starts from the cores it already holds; new labelled patients, in seeded hash order, join it
    while none of their classes would pass its target. The other new patients are dealt to the
    remaining partitions in their ratios (the proportional rule, steered by who is already
    there). Nobody in ``existing`` moves.
    """
    exact = _exact_ratios(ratios)
    if "test" not in exact or exact["test"] == 0:
        raise ValueError("a balanced test partition needs a 'test' ratio above 0")
    new = {c: s for c, s in new_patients.items() if c not in existing}
    for code, stratum in new.items():
        _check_stratum(code, stratum)
    profiles = {c: Counter(int(x) for x in core_scores.get(c, ())) for c in (*existing, *new)}
    per_class: Counter[int] = Counter()
    for prof in profiles.values():
        per_class.update(prof)
    target = balanced_test_targets(per_class, exact["test"])
    got: Counter[int] = Counter()
    for code, partition in existing.items():
        if partition == "test":
            got.update(profiles[code])
    test: list[str] = []
    labelled = [c for c in new if profiles[c]]
    for code in sorted(labelled, key=lambda c: (_hash_order(seed, c), c)):
        prof = profiles[code]
        if all(got[k] + m <= target[k] for k, m in prof.items()):
            got.update(prof)
            test.append(code)
    out = dict.fromkeys(test, "test")
    rest = {p: r for p, r in ratios.items() if p != "test"}
    remaining = {c: s for c, s in new.items() if c not in out}
    if remaining:
        if sum(rest.values()) <= 0:
            raise ValueError("a balanced test partition needs another partition with a ratio > 0")
        scale = math.fsum(rest.values())
        out.update(
            extend_assignment(
                {c: p for c, p in existing.items() if p != "test"},
                remaining,
                {p: r / scale for p, r in rest.items()},
                seed,
                existing_strata=existing_strata,
                core_scores=core_scores,
            )
        )
    return out


def assign_balanced_test(
    patients: Mapping[str, Stratum],
    core_scores: Mapping[str, Sequence[int]],
    ratios: Mapping[str, float],
    seed: int,
) -> dict[str, str]:
    """Like :func:`assign_patients`, but the test partition is class-balanced by core, as the
    paper's blind test set (131/131/126/135) while its training set is not.

    Still by patient (a patient's cores are never split). The test partition aims at
    ``ratios["test"]`` of the labelled cores, a quarter in each class; a class with few cores
    gives at most half of them (``BALANCED_TEST_MAX_CLASS_SHARE``, see
    :func:`balanced_test_targets`), so every class keeps cores to train on. Patients are visited
    in the seeded hash order and go to test unless one of their cores' classes would overflow
    (so patients with few cores fill the last places). The other patients, unlabelled ones
    included, are split between the remaining partitions in their ratios by
    :func:`assign_patients` (stratified as usual). Deterministic for a seed.
    """
    return _assign_balanced({}, patients, ratios, seed, core_scores, None)


def extend_balanced_test(
    existing: Mapping[str, str],
    new_patients: Mapping[str, Stratum],
    ratios: Mapping[str, float],
    seed: int,
    *,
    core_scores: Mapping[str, Sequence[int]],
    existing_strata: Mapping[str, Stratum] | None = None,
) -> dict[str, str]:
    """:func:`extend_assignment` for a split made by :func:`assign_balanced_test`.

    Nobody in ``existing`` moves. The per-class targets are recomputed over the labelled cores
    of every patient, existing and new (``core_scores`` must cover both), by the same rule as at
    creation; a new labelled patient joins the test partition, in the seeded hash order, only
    while its cores keep every class within its target. The other new patients go to the
    remaining partitions by their ratios, as :func:`extend_assignment` deals them. With nothing
    existing this is exactly :func:`assign_balanced_test`. Returns the new assignments only.
    """
    return _assign_balanced(existing, new_patients, ratios, seed, core_scores, existing_strata)


def stratum_label(stratum: Stratum) -> str:
    """``"0"``, ``"1+"``, ... for a score, ``"unlabelled"`` for ``None``."""
    return UNLABELLED if stratum is None else SCORE_LABELS[int(stratum)]


def partition_balance(
    assignment: Mapping[str, str], strata: Mapping[str, Stratum]
) -> dict[str, Any]:
    """Per partition: size, count and proportion of each stratum; and the worst deviation.

    Works on any unit: pass patient codes and their strata, or core ids and their scores. Units
    in ``assignment`` must all be in ``strata``; the unlabelled stratum (``None``) is a class of
    its own. ``max_deviation_pp`` is the largest absolute difference, in percentage points,
    between a non-empty partition's class proportion and the whole's.
    """
    missing = [u for u in assignment if u not in strata]
    if missing:
        raise ValueError(f"{len(missing)} assigned units have no stratum (e.g. {missing[0]!r})")
    classes = sorted({strata[u] for u in assignment}, key=_stratum_key)
    overall = Counter(strata[u] for u in assignment)
    total = sum(overall.values())
    per: dict[str, Counter[Stratum]] = defaultdict(Counter)
    for unit, partition in assignment.items():
        per[partition][strata[unit]] += 1
    order = [p for p in PARTITIONS if p in per] + sorted(p for p in per if p not in PARTITIONS)

    def proportions(c: Counter[Stratum], n: int) -> dict[str, float]:
        return {stratum_label(s): c[s] / n for s in classes}

    whole = proportions(overall, total) if total else {}
    partitions: dict[str, Any] = {}
    worst = 0.0
    for p in order:
        n = sum(per[p].values())
        props = proportions(per[p], n)
        dev = max((abs(props[k] - whole[k]) * 100 for k in whole), default=0.0)
        worst = max(worst, dev)
        partitions[p] = {
            "n": n,
            "fraction": n / total,
            "counts": {stratum_label(s): per[p][s] for s in classes},
            "proportions": props,
            "max_deviation_pp": dev,
        }
    return {
        "n": total,
        "overall": {
            "counts": {stratum_label(s): overall[s] for s in classes},
            "proportions": whole,
        },
        "partitions": partitions,
        "max_deviation_pp": worst,
    }

"""Patient-level stratified splits: balance, determinism, extension, ratio parsing."""

from __future__ import annotations

import math
import random
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from her2ops.platform.split_rules import (
    PARTITIONS,
    assign_patients,
    extend_assignment,
    parse_ratios,
    partition_balance,
)

PAPER_CLASSES = (0.17, 0.36, 0.21, 0.26)  # 0, 1+, 2+, 3+
RATIOS = {"train": 0.7, "val": 0.1, "test": 0.2}


def cohort(
    n: int, seed: int, unlabelled: float = 0.0
) -> tuple[dict[str, int | None], dict[str, list[int]]]:
    """Patients with paper-like class imbalance and 1-3 cores each; stratum = max core score."""
    rng = np.random.default_rng(seed)
    strata: dict[str, int | None] = {}
    cores: dict[str, list[int]] = {}
    for i in range(n):
        code = f"P{seed}-{i:04d}"
        if rng.random() < unlabelled:
            strata[code] = None
            cores[code] = []
            continue
        top = int(rng.choice(4, p=PAPER_CLASSES))
        k = int(rng.integers(1, 4))
        # a patient's other cores score the same or one below (tumour heterogeneity)
        scores = [top] + [int(rng.integers(max(0, top - 1), top + 1)) for _ in range(k - 1)]
        strata[code] = top
        cores[code] = scores
    return strata, cores


def core_view(
    assignment: dict[str, str], cores: dict[str, list[int]]
) -> tuple[dict[str, str], dict[str, int | None]]:
    """Expand a patient assignment to cores: (core -> partition, core -> score)."""
    where = {f"{p}/{j}": assignment[p] for p, scores in cores.items() for j in range(len(scores))}
    score: dict[str, int | None] = {
        f"{p}/{j}": s for p, scores in cores.items() for j, s in enumerate(scores)
    }
    return where, score


def within_one(count: int, exact: Fraction) -> bool:
    return math.floor(exact) <= count <= math.ceil(exact)


def exact(ratio: float) -> Fraction:
    return Fraction(ratio).limit_denominator(10**6)


# --------------------------------------------------------------------------- ratios


def test_parse_ratios_valid() -> None:
    assert parse_ratios("0.7,0.1,0.2") == {"train": 0.7, "val": 0.1, "test": 0.2}
    assert parse_ratios(" 0.8 , 0.2 ") == {"train": 0.8, "test": 0.2}
    assert parse_ratios("1,0,0") == {"train": 1.0, "val": 0.0, "test": 0.0}
    assert parse_ratios("0.3333333,0.3333333,0.3333334") == pytest.approx(
        {"train": 1 / 3, "val": 1 / 3, "test": 1 / 3}, abs=1e-6
    )


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("0.7,0.2", "sum to 1"),
        ("0.7,0.1,0.3", "sum to 1"),
        ("1", "2 or 3"),
        ("0.5,0.2,0.2,0.1", "2 or 3"),
        ("0.7,,0.3", "2 or 3"),
        ("", "2 or 3"),
        ("a,b,c", "numbers"),
        ("0.8,0.3,-0.1", ">= 0"),
        ("nan,0.5,0.5", "finite"),
        ("inf,0,0", "finite"),
    ],
)
def test_parse_ratios_errors(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_ratios(text)


def test_assign_rejects_bad_ratios_and_strata() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        assign_patients({"a": 1}, {"train": 0.5, "test": 0.4}, 0)
    with pytest.raises(ValueError, match="stratum"):
        assign_patients({"a": "2+"}, RATIOS, 0)  # type: ignore[dict-item]


# --------------------------------------------------------------------------- balance


@pytest.mark.parametrize("n", [300, 500, 1000])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balance_by_patient_and_by_core(n: int, seed: int) -> None:
    strata, cores = cohort(n, seed=100 + seed)
    for core_scores in (None, cores):
        a = assign_patients(strata, RATIOS, seed, core_scores=core_scores)
        assert set(a) == set(strata)  # every patient exactly once: never in two partitions
        bal = partition_balance(a, strata)
        assert bal["max_deviation_pp"] <= 5.0, bal
        assert set(bal["partitions"]) == set(PARTITIONS)
        for p, r in RATIOS.items():
            # partition sizes track the ratios to within one patient ...
            assert within_one(bal["partitions"][p]["n"], exact(r) * n)
            # ... and so does every stratum
            for s, n_s in Counter(strata.values()).items():
                got = sum(1 for code, part in a.items() if part == p and strata[code] == s)
                assert within_one(got, exact(r) * n_s)
    # by core: the patient dealing also balances core-level classes when core scores are given
    where, score = core_view(a, cores)
    assert partition_balance(where, score)["max_deviation_pp"] <= 5.0


def test_core_scores_improve_core_balance() -> None:
    """The core-aware deal beats a plain seeded shuffle by core, with room to spare at 300."""
    plain: list[float] = []
    aware: list[float] = []
    for seed in range(8):
        strata, cores = cohort(300, seed=200 + seed)
        for core_scores, out in ((None, plain), (cores, aware)):
            a = assign_patients(strata, RATIOS, seed, core_scores=core_scores)
            out.append(partition_balance(*core_view(a, cores))["max_deviation_pp"])
    assert np.mean(aware) < np.mean(plain)
    assert max(aware) <= 3.5, aware


def test_unlabelled_patients_are_their_own_stratum() -> None:
    strata, _ = cohort(400, seed=9, unlabelled=0.25)
    a = assign_patients(strata, RATIOS, 3)
    bal = partition_balance(a, strata)
    assert "unlabelled" in bal["overall"]["counts"]
    assert bal["max_deviation_pp"] <= 5.0
    n_unl = sum(1 for s in strata.values() if s is None)
    for p, r in RATIOS.items():
        assert within_one(bal["partitions"][p]["counts"]["unlabelled"], exact(r) * n_unl)


def test_rounding_invariants_on_random_small_cohorts() -> None:
    """Each stratum and each partition total gets floor or ceil of its exact share."""
    rng = random.Random(4)
    for trial in range(150):
        k = rng.choice([2, 3])
        cuts = sorted(rng.sample(range(1, 20), k - 1))
        parts = [b - a for a, b in zip([0, *cuts], [*cuts, 20], strict=True)]
        names = ("train", "test") if k == 2 else PARTITIONS
        ratios = {p: c / 20 for p, c in zip(names, parts, strict=True)}
        strata = {f"p{i}": rng.choice([0, 1, 2, 3, None]) for i in range(rng.randint(0, 60))}
        a = assign_patients(strata, ratios, trial)
        assert set(a) == set(strata)
        totals = Counter(a.values())
        for p, r in ratios.items():
            assert within_one(totals[p], exact(r) * len(strata)), (trial, ratios)
            for s, n_s in Counter(strata.values()).items():
                got = sum(1 for c, q in a.items() if q == p and strata[c] == s)
                assert within_one(got, exact(r) * n_s), (trial, ratios, s)


def test_zero_ratio_and_two_partitions() -> None:
    strata, _ = cohort(120, seed=5)
    a = assign_patients(strata, {"train": 0.8, "val": 0.0, "test": 0.2}, 1)
    assert set(a.values()) == {"train", "test"}
    b = assign_patients(strata, parse_ratios("0.75,0.25"), 1)
    assert Counter(b.values()) == {"train": 90, "test": 30}
    assert assign_patients({}, RATIOS, 0) == {}
    assert assign_patients({"only": 2}, RATIOS, 0) == {"only": "train"}


# --------------------------------------------------------------------------- determinism


def test_deterministic_order_independent_and_seed_sensitive() -> None:
    strata, cores = cohort(300, seed=42)
    first = assign_patients(strata, RATIOS, 7, core_scores=cores)
    assert assign_patients(strata, RATIOS, 7, core_scores=cores) == first
    items = list(strata.items())
    random.Random(0).shuffle(items)
    shuffled_cores = dict(reversed(list(cores.items())))
    assert assign_patients(dict(items), RATIOS, 7, core_scores=shuffled_cores) == first
    for core_scores in (None, cores):
        a = assign_patients(strata, RATIOS, 7, core_scores=core_scores)
        b = assign_patients(strata, RATIOS, 8, core_scores=core_scores)
        moved = sum(a[c] != b[c] for c in strata)
        assert moved > 30  # a different seed is a different split ...
        assert Counter(a.values()) == Counter(b.values())  # ... with the same sizes


# --------------------------------------------------------------------------- extend


def test_extend_with_nothing_existing_equals_assign() -> None:
    strata, cores = cohort(200, seed=6)
    assert extend_assignment({}, strata, RATIOS, 5) == assign_patients(strata, RATIOS, 5)
    assert extend_assignment({}, strata, RATIOS, 5, core_scores=cores) == assign_patients(
        strata, RATIOS, 5, core_scores=cores
    )


@pytest.mark.parametrize("with_cores", [False, True])
def test_extend_only_adds_and_keeps_balance(with_cores: bool) -> None:
    strata, cores = cohort(500, seed=17)
    codes = sorted(strata)
    old = {c: strata[c] for c in codes[:320]}
    new = {c: strata[c] for c in codes[320:]}
    core_scores = cores if with_cores else None
    existing = assign_patients(old, RATIOS, 3, core_scores=core_scores)
    frozen = dict(existing)
    # callers may pass every patient: the assigned ones are ignored, never moved
    added = extend_assignment(
        existing, strata, RATIOS, 3, existing_strata=strata, core_scores=core_scores
    )
    assert existing == frozen
    assert set(added) == set(new)
    combined = {**existing, **added}
    bal = partition_balance(combined, strata)
    assert bal["max_deviation_pp"] <= 5.0
    for p, r in RATIOS.items():
        assert abs(bal["partitions"][p]["n"] - r * len(strata)) <= 2
    if with_cores:
        assert partition_balance(*core_view(combined, cores))["max_deviation_pp"] <= 5.0
    # deterministic
    assert added == extend_assignment(
        existing, new, RATIOS, 3, existing_strata=strata, core_scores=core_scores
    )


def test_extend_steers_toward_ratios_per_stratum() -> None:
    strata, _ = cohort(400, seed=23)
    codes = sorted(strata)
    # an unbalanced existing split: the first 100 patients all went to train
    existing = dict.fromkeys(codes[:100], "train")
    added = extend_assignment(
        existing, {c: strata[c] for c in codes[100:]}, RATIOS, 1, existing_strata=strata
    )
    combined = {**existing, **added}
    assert {c: combined[c] for c in existing} == existing
    for s, n_s in Counter(strata.values()).items():
        for p, r in RATIOS.items():
            got = sum(1 for c, q in combined.items() if q == p and strata[c] == s)
            # every stratum's train share was reachable, so every partition lands on its share
            assert within_one(got, exact(r) * n_s), (s, p)


def test_extend_never_fills_an_overfull_partition() -> None:
    strata = {f"p{i}": 1 for i in range(20)}
    existing = {f"p{i}": "val" for i in range(10)}  # val already holds half of the stratum
    added = extend_assignment(
        existing, {f"p{i}": 1 for i in range(10, 20)}, RATIOS, 0, existing_strata=strata
    )
    assert "val" not in added.values()
    # the 10 new patients go where the deficits are: train 14, test 4 -> shares 7.67 / 2.33 ...
    assert Counter(added.values()) in ({"train": 8, "test": 2}, {"train": 7, "test": 3})


def test_extend_tolerates_partitions_outside_the_ratios() -> None:
    strata = {f"p{i}": 0 for i in range(30)}
    existing = {f"p{i}": "holdout" for i in range(10)}
    added = extend_assignment(
        existing, {f"p{i}": 0 for i in range(10, 30)}, RATIOS, 0, existing_strata=strata
    )
    assert set(added.values()) <= set(RATIOS)
    assert len(added) == 20


# --------------------------------------------------------------------------- balance report


def test_partition_balance_hand_built() -> None:
    strata: dict[str, int | None] = {"a": 0, "b": 0, "c": 3, "d": 3, "e": None}
    assignment = {"a": "train", "b": "test", "c": "train", "d": "train", "e": "test"}
    bal = partition_balance(assignment, strata)
    assert bal["n"] == 5
    assert bal["overall"]["counts"] == {"0": 2, "3+": 2, "unlabelled": 1}
    train = bal["partitions"]["train"]
    assert train["n"] == 3 and train["counts"] == {"0": 1, "3+": 2, "unlabelled": 0}
    assert train["proportions"]["3+"] == pytest.approx(2 / 3)
    assert train["fraction"] == pytest.approx(3 / 5)
    # test: 1/2 of "0" vs 2/5 overall (10 pp), 0 of "3+" vs 2/5 (40 pp), 1/2 unlabelled vs 1/5
    assert bal["partitions"]["test"]["max_deviation_pp"] == pytest.approx(40.0)
    assert bal["max_deviation_pp"] == pytest.approx(40.0)
    assert list(bal["partitions"]) == ["train", "test"]
    with pytest.raises(ValueError, match="no stratum"):
        partition_balance({"zz": "train"}, strata)


@pytest.mark.parametrize(("n", "seed"), [(60, 3), (300, 1), (1272, 2)])
def test_balanced_test_partition(n: int, seed: int) -> None:
    from her2ops.platform.split_rules import assign_balanced_test

    strata, cores = cohort(n, seed, unlabelled=0.05)
    a = assign_balanced_test(strata, cores, RATIOS, seed)
    assert set(a) == set(strata)  # every patient in exactly one partition
    per = {p: Counter() for p in PARTITIONS}  # type: ignore[var-annotated]
    for code, part in a.items():
        per[part].update(cores[code])
    total = Counter(s for scores in cores.values() for s in scores)
    quota = 0.2 * sum(total.values()) / 4
    for k in range(4):
        target = math.floor(min(quota, total[k] / 2))
        # first fit in seeded order: each class ends at its target or at most 2 cores short
        assert target - 2 <= per["test"][k] <= target, (k, per["test"], target)
    # unlabelled patients never go to test; train and val keep their 7:1 ratio
    assert all(a[c] != "test" for c, s in strata.items() if s is None)
    rest = [c for c in a if a[c] != "test"]
    n_val = sum(1 for c in rest if a[c] == "val")
    assert abs(n_val - len(rest) / 8) <= 4
    # deterministic, seed-sensitive
    assert assign_balanced_test(strata, cores, RATIOS, seed) == a
    assert assign_balanced_test(strata, cores, RATIOS, seed + 1) != a


def test_balanced_test_hand_built() -> None:
    """16 one-core patients of class 0 and 4 of each other class, test ratio 0.5: the quota is
    0.5 * 28 / 4 = 3.5 cores per class, capped at half of each class: 0 -> 3, others -> 2."""
    from her2ops.platform.split_rules import assign_balanced_test

    cores = {f"a{i}": [0] for i in range(16)}
    cores |= {f"{c}{i}": [k] for k, c in ((1, "b"), (2, "c"), (3, "d")) for i in range(4)}
    strata: dict[str, int | None] = {c: s[0] for c, s in cores.items()}
    a = assign_balanced_test(strata, cores, {"train": 0.5, "test": 0.5}, 0)
    test = Counter(cores[c][0] for c in a if a[c] == "test")
    assert test == Counter({0: 3, 1: 2, 2: 2, 3: 2})
    assert Counter(a.values()) == Counter({"train": 19, "test": 9})
    # a two-core patient (0 and 3+) joins test only where both classes have room: no overflow
    cores["mixed"], strata["mixed"] = [0, 3], 3
    b = assign_balanced_test(strata, cores, {"train": 0.5, "test": 0.5}, 0)
    assert Counter(cores[c][k] for c in b if b[c] == "test" for k in range(len(cores[c]))) == (
        Counter({0: 3, 1: 2, 2: 2, 3: 2})
    )
    with pytest.raises(ValueError, match="'test' ratio"):
        assign_balanced_test(strata, cores, {"train": 1.0}, 0)


def _test_cores_per_class(assignment: dict[str, str], cores: dict[str, list[int]]) -> Counter[int]:
    return Counter(s for code, part in assignment.items() if part == "test" for s in cores[code])


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_extend_balanced_test_keeps_the_test_partition_balanced(seed: int) -> None:
    """Property over seeds: a balanced-test split extended in several steps keeps its test
    partition at the creation rule's per-class targets (recomputed on the grown cohort, each
    class at its target or at most 2 cores short, none above), moves nobody, and keeps train
    and val in their ratio."""
    from her2ops.platform.split_rules import assign_balanced_test, extend_balanced_test

    strata, cores = cohort(300, seed, unlabelled=0.05)
    rng = random.Random(seed)
    arrival = sorted(strata)
    rng.shuffle(arrival)
    first = {c: strata[c] for c in arrival[:100]}
    split = assign_balanced_test(first, {c: cores[c] for c in first}, RATIOS, seed)
    for n in (110, 160, 230, 300):  # small and large batches of new patients
        known = {c: strata[c] for c in arrival[:n]}
        frozen = dict(split)
        added = extend_balanced_test(
            split, known, RATIOS, seed, core_scores=cores, existing_strata=strata
        )
        assert split == frozen  # nobody moves ...
        assert set(added) == set(known) - set(split)  # ... and every newcomer is placed
        assert added == extend_balanced_test(
            split, known, RATIOS, seed, core_scores=cores, existing_strata=strata
        )
        split = {**split, **added}
        total = Counter(s for c in known for s in cores[c])
        quota = 0.2 * sum(total.values()) / 4
        test = _test_cores_per_class(split, cores)
        for k in range(4):
            target = math.floor(min(quota, total[k] / 2))
            assert target - 2 <= test[k] <= target, (n, k, test, target)
        assert all(split[c] != "test" for c, s in known.items() if s is None)
        rest = [c for c in split if split[c] != "test"]
        n_val = sum(1 for c in rest if split[c] == "val")
        assert abs(n_val - len(rest) / 8) <= 4


def test_extend_balanced_test_from_nothing_is_assign_balanced_test() -> None:
    from her2ops.platform.split_rules import assign_balanced_test, extend_balanced_test

    strata, cores = cohort(200, 9, unlabelled=0.05)
    assert extend_balanced_test({}, strata, RATIOS, 9, core_scores=cores) == (
        assign_balanced_test(strata, cores, RATIOS, 9)
    )


def test_extend_balanced_test_hand_built() -> None:
    """A test partition already at its targets takes newcomers only as the targets grow: with
    test ratio 0.5 and 4 one-core patients per class the targets are 2 per class; 4 more of
    class 0 raise the quota to 0.5 * 20 / 4 = 2.5 cores and class 0's cap to 4, so the target
    of class 0 stays 2 and every newcomer goes to train."""
    from her2ops.platform.split_rules import assign_balanced_test, extend_balanced_test

    ratios = {"train": 0.5, "test": 0.5}
    cores = {f"{c}{i}": [k] for k, c in enumerate("abcd") for i in range(4)}
    strata: dict[str, int | None] = {c: s[0] for c, s in cores.items()}
    split = assign_balanced_test(strata, cores, ratios, 0)
    assert _test_cores_per_class(split, cores) == Counter({0: 2, 1: 2, 2: 2, 3: 2})
    cores |= {f"e{i}": [0] for i in range(4)}
    strata |= {f"e{i}": 0 for i in range(4)}
    added = extend_balanced_test(split, strata, ratios, 0, core_scores=cores)
    assert added == {f"e{i}": "train" for i in range(4)}
    # 4 more of each other class: targets 4 per class (quota 0.5 * 32 / 4, caps 8 / 2); the
    # newcomers fill classes 1-3 to 4, class 0 has no newcomer and the e's stay in train
    cores |= {f"{c}{i}": [k] for k, c in enumerate("abcd") for i in range(4, 8) if k}
    strata |= {c: s[0] for c, s in cores.items()}
    split |= added
    more = extend_balanced_test(split, strata, ratios, 0, core_scores=cores)
    assert _test_cores_per_class(split | more, cores) == Counter({0: 2, 1: 4, 2: 4, 3: 4})

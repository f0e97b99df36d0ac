"""Synthetic HER2 IHC data sets: core images, manifest, pathologist votes and ground truth.

:func:`generate_dataset` writes, under one folder:

- ``cores/<core>.png``: one synthetic core per file (:func:`synth_core`);
- ``manifest.csv``: patient, core, image (relative to the manifest's folder), slide, row, col,
  site: what ``her2ops ingest`` reads. Cores fill TMA slides ``TMA01``, ``TMA02``, ... of
  ``SLIDE_ROWS`` x ``SLIDE_COLS`` spots (1-based) in patient order; each patient has 1-3 cores
  and one site (``site-A``/``site-B``, a staining batch that shifts hematoxylin and DAB a little);
- ``votes.csv``: core, pathologist, score (0, 1+, 2+, 3+, ND), round, comment: five simulated
  pathologists in round ``initial`` and an ``adjudicator`` where the protocol needs one
  (:mod:`her2ops.synthetic.votes`);
- ``truth.csv``: the class each core was drawn from and what was rendered (artefact, tissue
  fraction, mean membrane DAB optical density measured on the image, ...), plus the consensus
  the votes lead to;
- with ``ambiguity`` > 0, that share of the (non-artefact) cores is ambiguous, recorded in
  ``truth.csv`` (``ambiguity``, ``ambiguous_with``): *borderline* cores have their DAB scaled to
  the boundary between their class and an adjacent one; *heterogeneous* cores hold 40-49 %
  tumour of an adjacent class. Both raise the pathologists' disagreement
  (:func:`her2ops.synthetic.votes.simulate_core_votes`) and the model's uncertainty;
- with ``label_errors`` > 0, that share of the labelled cores gets a consensus of an adjacent
  wrong class (three of five pathologists misread it; ``label_error`` = 1 in ``truth.csv``,
  ``consensus_score`` is the wrong label, ``true_score`` the class drawn);
- optionally ``contact_sheet.png`` (a few cores per class, labelled) and ``tma/TMA-demo.png``,
  a synthetic TMA slide of some of the cores with ``tma/truth.csv`` (for ``her2ops dearray``).

Classes follow the paper's training balance (``CLASS_PRIOR``); a patient's cores share its class
most of the time; about 5 % of the cores are artefacts. Every core has its own random stream
(spawned from the seed), so a seed gives the same data set whatever the order of work.
"""

from __future__ import annotations

import csv
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from her2ops.imaging.stains import dab_od, membrane_dab_od
from her2ops.progress import Progress, no_progress, track
from her2ops.scores import SCORE_LABELS
from her2ops.synthetic.render import ARTEFACTS, CLASS_PATTERNS, synth_core
from her2ops.synthetic.votes import (
    CoreVotes,
    inject_label_error,
    pairwise_agreement,
    simulate_votes,
    status_counts,
)

__all__ = [
    "ARTEFACTS",
    "CLASS_PATTERNS",
    "CLASS_PRIOR",
    "SynthSummary",
    "dab_od",
    "generate_dataset",
    "membrane_dab_od",
    "synth_core",
]

#: class balance of the paper's training set (242 / 526 / 314 / 380 of 1,462 cores).
CLASS_PRIOR: tuple[float, float, float, float] = (0.17, 0.36, 0.21, 0.26)
ARTEFACT_RATE = 0.05
SAME_CLASS_RATE = 0.8  # a patient's further cores keep its class, else an adjacent one
SLIDE_ROWS, SLIDE_COLS = 6, 8
#: (hematoxylin, DAB) multipliers of each site's staining batch.
SITE_STAIN: dict[str, tuple[float, float]] = {"site-A": (1.0, 1.0), "site-B": (1.12, 0.94)}
MANIFEST_COLUMNS = ("patient", "core", "image", "slide", "row", "col", "site")
VOTES_COLUMNS = ("core", "pathologist", "score", "round", "comment")
TRUTH_COLUMNS = (
    "core",
    "patient",
    "true_score",
    "artefact",
    "tissue_fraction",
    "mean_membrane_od",
    "positive_fraction",
    "heterogeneous_class",
    "consensus_status",
    "consensus_score",
    "ambiguity",
    "ambiguous_with",
    "label_error",
)
AMBIGUITY_KINDS: tuple[str, ...] = ("borderline", "heterogeneous")
#: mid-range membrane DAB intensity of each class (``CLASS_PATTERNS``); a borderline core's DAB
#: is scaled to the geometric mean of its class's and the neighbour's
_MID_INTENSITY = {c: sum(p.intensity) / 2 for c, p in CLASS_PATTERNS.items()}
SHEET_PER_CLASS = 5
SHEET_THUMB = 160
TMA_DEMO_SIDE = 240


@dataclass
class SynthSummary:
    """What :func:`generate_dataset` wrote."""

    out: Path
    manifest: Path
    votes: Path
    truth: Path
    patients: int
    cores: int
    size: int
    seed: int
    class_counts: dict[str, int]
    artefacts: dict[str, int]
    consensus: dict[str, int]
    pairwise_agreement: float
    seconds: float
    contact_sheet: Path | None = None
    tma_slide: Path | None = None
    ambiguous: int = 0
    label_errors: int = 0

    @property
    def seconds_per_core(self) -> float:
        return self.seconds / max(self.cores, 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seconds_per_core"] = self.seconds_per_core
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


@dataclass(frozen=True)
class _Plan:
    patient: str
    core: str
    score: int
    artefact: str | None
    site: str
    slide: str
    row: int
    col: int


def _adjacent(score: int, rng: np.random.Generator) -> int:
    return int(rng.choice([s for s in (score - 1, score + 1) if 0 <= s <= 3]))


def plan_dataset(*, patients: int, cores: int, rng: np.random.Generator) -> list[_Plan]:
    """Patients, their 1-3 cores, classes, sites, artefacts and TMA spots."""
    if patients < 1:
        raise ValueError("need at least one patient")
    if not patients <= cores <= 3 * patients:
        raise ValueError(
            f"{cores} cores cannot go to {patients} patients with 1-3 cores each "
            f"(need {patients} to {3 * patients})"
        )
    per_patient = np.ones(patients, dtype=np.int64)
    for _ in range(cores - patients):
        open_ = np.flatnonzero(per_patient < 3)
        per_patient[rng.choice(open_)] += 1
    n_art = round(ARTEFACT_RATE * cores)
    art_idx = set(rng.choice(cores, size=n_art, replace=False).tolist()) if n_art else set()
    art_kinds = [ARTEFACTS[i % len(ARTEFACTS)] for i in range(n_art)]
    rng.shuffle(art_kinds)
    art_of = dict(zip(sorted(art_idx), art_kinds, strict=True))
    plans: list[_Plan] = []
    per_slide = SLIDE_ROWS * SLIDE_COLS
    for p in range(patients):
        pclass = int(rng.choice(4, p=CLASS_PRIOR))
        site = "site-A" if rng.random() < 0.6 else "site-B"
        for j in range(int(per_patient[p])):
            i = len(plans)
            score = pclass if j == 0 or rng.random() < SAME_CLASS_RATE else _adjacent(pclass, rng)
            spot = i % per_slide
            plans.append(
                _Plan(
                    patient=f"P{p + 1:04d}",
                    core=f"C{i + 1:05d}",
                    score=score,
                    artefact=art_of.get(i),
                    site=site,
                    slide=f"TMA{i // per_slide + 1:02d}",
                    row=spot // SLIDE_COLS + 1,
                    col=spot % SLIDE_COLS + 1,
                )
            )
    return plans


def _inject_errors(
    plans: list[_Plan], results: list[CoreVotes], rate: float, rng: np.random.Generator
) -> list[bool]:
    """Turn ``rate`` of the labelled, non-artefact cores' consensus into an adjacent wrong
    class (in place in ``results``); returns which cores were changed."""
    changed = [False] * len(plans)
    if rate <= 0:
        return changed
    eligible = [
        i
        for i, (p, r) in enumerate(zip(plans, results, strict=True))
        if p.artefact is None and r.resolution.has_label
    ]
    n = round(rate * len(eligible))
    for i in sorted(rng.choice(eligible, size=n, replace=False).tolist()) if n else []:
        wrong = _adjacent(plans[i].score, rng)
        results[i] = inject_label_error(results[i], wrong, rng)
        changed[i] = True
    return changed


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _thumb(img: NDArray[np.uint8], side: int) -> Image.Image:
    return Image.fromarray(img).resize((side, side), Image.Resampling.BOX)


def _contact_sheet(thumbs: dict[str, list[tuple[str, Image.Image]]], path: Path) -> None:
    """Rows: classes 0..3 then artefacts; each thumbnail labelled with its core and class."""
    rows = [k for k in (*SCORE_LABELS, "artefact") if thumbs.get(k)]
    side, pad, head, left = SHEET_THUMB, 6, 18, 70
    width = left + SHEET_PER_CLASS * (side + pad) + pad
    height = pad + len(rows) * (side + head + pad)
    sheet = Image.new("RGB", (width, max(height, 1)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=14)
    big = ImageFont.load_default(size=22)
    for r, key in enumerate(rows):
        y = pad + r * (side + head + pad)
        draw.text(
            (8, y + head + side // 2 - 12),
            key if key != "artefact" else "art.",
            fill="black",
            font=big,
        )
        for c, (label, im) in enumerate(thumbs[key][:SHEET_PER_CLASS]):
            x = left + c * (side + pad)
            draw.text((x, y), label, fill="black", font=font)
            sheet.paste(im, (x, y + head))
    sheet.save(path)


def _tma_demo(images: list[NDArray[np.uint8]], out: Path, rng: np.random.Generator) -> Path:
    """A 4 x 6 TMA slide of (up to 21) cores with three empty spots, and its truth."""
    from her2ops.synthetic.tma import make_tma_slide

    out.mkdir(parents=True, exist_ok=True)
    rows, cols, missing = 4, 6, {(1, 4), (3, 2), (4, 6)}
    side = max(im.shape[0] for im in images)
    slide, truth = make_tma_slide(
        images[: rows * cols - len(missing)],
        rows=rows,
        cols=cols,
        spacing=int(side * 1.3),
        jitter=side * 0.08,
        missing=missing,
        rng=rng,
    )
    path = out / "TMA-demo.png"
    Image.fromarray(slide).save(path)
    _write_csv(out / "truth.csv", ("row", "col", "cx", "cy", "size", "index"), truth)
    return path


@dataclass(frozen=True)
class _Ambiguity:
    kind: str  # "" (clear), "borderline" or "heterogeneous"
    neighbour: int | None
    strength: float  # how far toward the neighbour the pathologists read it (0-1)


def plan_ambiguity(plans: list[_Plan], rate: float, rng: np.random.Generator) -> list[_Ambiguity]:
    """Which non-artefact cores are ambiguous, how, and with which adjacent class."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"ambiguity must be between 0 and 1, got {rate}")
    out = []
    for plan in plans:
        if plan.artefact is None and rate > 0 and rng.random() < rate:
            kind = AMBIGUITY_KINDS[int(rng.integers(len(AMBIGUITY_KINDS)))]
            out.append(_Ambiguity(kind, _adjacent(plan.score, rng), float(rng.uniform(0.5, 1.0))))
        else:
            out.append(_Ambiguity("", None, 0.0))
    return out


def generate_dataset(
    out: Path,
    *,
    patients: int,
    cores: int,
    size: int,
    seed: int,
    contact_sheet: bool = False,
    tma_slide: bool = False,
    ambiguity: float = 0.0,
    label_errors: float = 0.0,
    progress: Progress = no_progress,
) -> SynthSummary:
    """Write a synthetic data set of ``cores`` cores from ``patients`` patients (see module doc).

    ``ambiguity``: share of cores made ambiguous; ``label_errors``: share of labelled cores
    given a wrong (adjacent-class) consensus. Both 0 give the data set of earlier versions."""
    if not 0.0 <= label_errors <= 1.0:
        raise ValueError(f"label_errors must be between 0 and 1, got {label_errors}")

    start = time.perf_counter()
    out = Path(out)
    root = np.random.SeedSequence(seed)
    plan_seq, vote_seq, tma_seq, core_seq = root.spawn(4)
    plans = plan_dataset(patients=patients, cores=cores, rng=np.random.default_rng(plan_seq))
    # spawned after the first four, so data sets without ambiguity or errors stay as they were
    (amb_seq,) = root.spawn(1)
    amb_rng = np.random.default_rng(amb_seq)
    amb_of = dict(
        zip((p.core for p in plans), plan_ambiguity(plans, ambiguity, amb_rng), strict=True)
    )
    (out / "cores").mkdir(parents=True, exist_ok=True)

    manifest_rows, truth_rows = [], []
    thumbs: dict[str, list[tuple[str, Image.Image]]] = {}
    demo_images: list[NDArray[np.uint8]] = []
    for plan, seq in track(
        list(zip(plans, core_seq.spawn(len(plans)), strict=True)), progress, "synthesizing cores"
    ):
        amb = amb_of[plan.core]
        h_scale, dab_scale = SITE_STAIN[plan.site]
        if amb.kind == "borderline" and amb.neighbour is not None:
            mid = _MID_INTENSITY[plan.score]
            dab_scale *= float(np.sqrt(mid * _MID_INTENSITY[amb.neighbour]) / mid)
        img, truth = synth_core(
            plan.score,
            size=size,
            rng=np.random.default_rng(seq),
            artefact=plan.artefact,
            stain_scale=(h_scale, dab_scale),
            heterogeneity=float(amb_rng.uniform(0.4, 0.49))
            if amb.kind == "heterogeneous"
            else None,
        )
        if amb.kind == "heterogeneous" and truth["heterogeneous_class"] is not None:
            amb = _Ambiguity(amb.kind, int(truth["heterogeneous_class"]), amb.strength)
            amb_of[plan.core] = amb
        image = f"cores/{plan.core}.png"
        Image.fromarray(img).save(out / image, compress_level=3)
        manifest_rows.append(
            {
                "patient": plan.patient,
                "core": plan.core,
                "image": image,
                "slide": plan.slide,
                "row": plan.row,
                "col": plan.col,
                "site": plan.site,
            }
        )
        truth_rows.append(
            {
                "core": plan.core,
                "patient": plan.patient,
                "true_score": SCORE_LABELS[plan.score],
                "artefact": plan.artefact or "",
                "tissue_fraction": round(truth["tissue_fraction"], 4),
                "mean_membrane_od": round(truth["mean_membrane_od"], 4),
                "positive_fraction": round(truth["positive_fraction"], 4),
                "heterogeneous_class": ""
                if truth["heterogeneous_class"] is None
                else SCORE_LABELS[truth["heterogeneous_class"]],
            }
        )
        key = "artefact" if plan.artefact else SCORE_LABELS[plan.score]
        if contact_sheet and len(thumbs.setdefault(key, [])) < SHEET_PER_CLASS:
            label = f"{plan.core} {plan.artefact or SCORE_LABELS[plan.score]}"
            thumbs[key].append((label, _thumb(img, SHEET_THUMB)))
        if tma_slide and len(demo_images) < 24:
            demo_images.append(np.asarray(_thumb(img, min(size, TMA_DEMO_SIDE))))

    ambig = [amb_of[p.core] for p in plans]
    results = simulate_votes(
        [p.core for p in plans],
        [p.score for p in plans],
        [p.artefact for p in plans],
        np.random.default_rng(vote_seq),
        ambiguous_with=[a.neighbour for a in ambig],
        ambiguity=[a.strength for a in ambig],
    )
    errors = _inject_errors(plans, results, label_errors, amb_rng)
    vote_rows = [asdict(v) for r in results for v in r.votes]
    for row, res in zip(truth_rows, results, strict=True):
        row["consensus_status"] = res.resolution.status.value
        score = res.resolution.score
        row["consensus_score"] = "" if score is None else SCORE_LABELS[int(score)]
    for row, amb, err in zip(truth_rows, ambig, errors, strict=True):
        row["ambiguity"] = amb.kind
        row["ambiguous_with"] = "" if amb.neighbour is None else SCORE_LABELS[amb.neighbour]
        row["label_error"] = 1 if err else ""

    manifest = out / "manifest.csv"
    _write_csv(manifest, MANIFEST_COLUMNS, manifest_rows)
    _write_csv(out / "votes.csv", VOTES_COLUMNS, vote_rows)
    _write_csv(out / "truth.csv", TRUTH_COLUMNS, truth_rows)
    sheet = None
    if contact_sheet:
        sheet = out / "contact_sheet.png"
        _contact_sheet(thumbs, sheet)
    tma = _tma_demo(demo_images, out / "tma", np.random.default_rng(tma_seq)) if tma_slide else None

    classes = Counter(SCORE_LABELS[p.score] for p in plans)
    arts = Counter(p.artefact for p in plans if p.artefact)
    return SynthSummary(
        out=out,
        manifest=manifest,
        votes=out / "votes.csv",
        truth=out / "truth.csv",
        patients=patients,
        cores=len(plans),
        size=size,
        seed=seed,
        class_counts={k: classes.get(k, 0) for k in SCORE_LABELS},
        artefacts={k: arts.get(k, 0) for k in ARTEFACTS},
        consensus=status_counts(results),
        pairwise_agreement=round(pairwise_agreement(results), 4),
        seconds=round(time.perf_counter() - start, 3),
        contact_sheet=sheet,
        tma_slide=tma,
        ambiguous=sum(1 for a in ambig if a.kind),
        label_errors=sum(errors),
    )

"""Imaging use cases: pyramid sampling sets of a stored core, TMA dearraying, synthetic data."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from her2ops.errors import InvalidRequest, NotFound
from her2ops.pipelines.progress import Progress, no_progress, track
from her2ops.pipelines.runtime import get_runtime
from her2ops.platform.schema import Core
from her2ops.profiles import get_profile, with_padding

_SHA_RE = re.compile(r"^[0-9a-fA-F]{64}$")
MAX_SAMPLE_SETS = 1000


def resolve_core(code_or_sha: str) -> tuple[str, int, str]:
    """(sha256, page, name) of a core given by code, or by the sha256 of a stored image (the
    file's only or first image: page 0; other pages are reached by their core's code)."""
    rt = get_runtime()
    if _SHA_RE.match(code_or_sha) and rt.store.has(code_or_sha.lower()):
        return code_or_sha.lower(), 0, code_or_sha.lower()
    with rt.session() as s:
        row = s.execute(select(Core.sha256, Core.page).where(Core.code == code_or_sha)).first()
    if row is None:
        raise NotFound(f"core {code_or_sha}: not a core code nor the sha256 of a stored image")
    return row.sha256, row.page, code_or_sha


def sample_core(
    *,
    actor: str | None,
    core: str,
    profile: str = "paper",
    sets: int | None = None,
    seed: int = 0,
    png: Path | None = None,
    pad_small: bool = False,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Build N pyramid sampling sets of one stored core, time them, optionally draw set 0.

    The sets are keyed by the core code, as training and scoring key them, so these are the
    sets the model sees for that seed.
    """
    from her2ops.imaging.fit import profile_fit
    from her2ops.imaging.pss import SamplingError, core_tissue_fraction, iter_sets
    from her2ops.imaging.store import StoreError

    prof = with_padding(get_profile(profile), pad_small)
    cfg = prof.pss
    n_sets = prof.n_sets if sets is None else sets
    if not 1 <= n_sets <= MAX_SAMPLE_SETS:
        raise InvalidRequest(f"--sets must be between 1 and {MAX_SAMPLE_SETS}, not {n_sets}")
    sha, page, name = resolve_core(core)
    store = get_runtime().store
    first = None
    try:
        start = time.perf_counter()
        with store.open(sha, page, core=name) as img:
            height, width = img.level_shapes[0][:2]
            fit_warning = profile_fit(cfg, width, height, name=profile).warning(name)
            stream = iter_sets(img, cfg, key=name, seed=seed, indices=range(n_sets))
            for pss_set in track(stream, progress, f"sampling {name[:16]}", total=n_sets):
                if first is None:
                    first = pss_set
            seconds = time.perf_counter() - start
            fraction = core_tissue_fraction(img)
            level_shapes = img.level_shapes
            tiles = img.tiles_decoded
    except (StoreError, SamplingError) as exc:
        hint = " (or pass --pad-small)" if "pad_small" in str(exc) else ""
        raise InvalidRequest(f"core {name}: {exc}{hint}") from None
    assert first is not None  # n_sets >= 1
    if png is not None:
        from her2ops.imaging.sheet import contact_sheet

        title = f"{name}  profile {profile}  seed {seed}  set 0"
        try:
            png.parent.mkdir(parents=True, exist_ok=True)
            contact_sheet(first, cfg, title=title).save(png)
        except OSError as exc:
            raise InvalidRequest(f"cannot write {png}: {exc}") from None
    return {
        "core": name,
        "sha256": sha,
        "page": page,
        "profile": profile,
        "seed": seed,
        "sets": n_sets,
        "shape": [n_sets, cfg.channels, cfg.patch_size, cfg.patch_size],
        "seconds": round(seconds, 4),
        "seconds_per_set": round(seconds / n_sets, 4),
        "tiles_decoded": tiles,
        "levels": [list(shape) for shape in level_shapes],
        "tissue_fraction": round(fraction, 4),
        "min_tissue_fraction": cfg.min_tissue_fraction,
        "low_tissue": fraction < cfg.min_tissue_fraction,
        "fit_warning": fit_warning,
        "png": str(png) if png is not None else None,
    }


def dearray_slide(
    *,
    slide: Path,
    out: Path,
    rows: int | None = None,
    cols: int | None = None,
    diameter: float | None = None,
    page: int | None = None,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Find the cores of a TMA slide, give each its grid position, write cores + manifest.
    ``page``: which image of a file that holds several (refused without it)."""
    from her2ops.imaging.dearray import SlideImage, dearray, found_to_dicts, write_cores
    from her2ops.pipelines.bounds import check_grid, check_slide

    check_grid(rows, cols)
    check_slide(slide, page=page)  # the declared size, from the header, before any decoding
    try:
        image = SlideImage(slide, page=page)
        found = dearray(image, rows=rows, cols=cols, expected_diameter=diameter)
        if not found:
            raise InvalidRequest(f"no cores found on {slide}")
        manifest = write_cores(image, found, out, progress=progress)
    except (FileNotFoundError, OSError) as exc:
        raise InvalidRequest(f"{slide}: {exc}") from None
    return {
        "slide": str(slide),
        "cores": len(found),
        "grid": [max(f.row for f in found), max(f.col for f in found)],
        "manifest": str(manifest),
        "found": found_to_dicts(found),
    }


def synthesize(
    *,
    out: Path,
    patients: int,
    cores: int,
    size: int,
    seed: int,
    contact_sheet: bool = False,
    tma_slide: bool = False,
    ambiguity: float = 0.0,
    label_errors: float = 0.0,
    progress: Progress = no_progress,
) -> Any:
    """Write a synthetic data set (cores, manifest, votes, truth); its summary. ``ambiguity``
    and ``label_errors`` are shares in [0, 1] (ambiguous cores, wrong consensus labels)."""
    from her2ops.pipelines.bounds import check_synth
    from her2ops.synthetic.dataset import generate_dataset

    check_synth(patients=patients, cores=cores, size=size)
    if out.exists() and not out.is_dir():
        raise InvalidRequest(f"{out} exists and is not a folder")
    if (out / "manifest.csv").exists():
        raise InvalidRequest(f"{out} already holds a data set (manifest.csv); choose an empty one")
    try:
        return generate_dataset(
            out,
            patients=patients,
            cores=cores,
            size=size,
            seed=seed,
            contact_sheet=contact_sheet,
            tma_slide=tma_slide,
            ambiguity=ambiguity,
            label_errors=label_errors,
            progress=progress,
        )
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    except OSError as exc:
        raise InvalidRequest(f"cannot write the data set to {out}: {exc}") from None


def run_study_file(
    *,
    outputs: Path,
    n: str = "1..200",
    k: str = "1..20,30,50,100",
    draws: int = 10_000,
    k_at: int = 5,
    n_at: int = 200,
    confidence: str = "margin",
    seed: int = 0,
    png: Path | None = None,
    replace: bool = False,
) -> Any:
    """The N/k Monte Carlo study on cached set outputs (NPZ with ``probs`` and ``labels``);
    ``replace``: draw the N outputs with replacement."""
    import numpy as np

    from her2ops.models.inference import CONFIDENCES
    from her2ops.models.study import parse_int_list, run_study

    if confidence not in CONFIDENCES:
        raise InvalidRequest(
            f"unknown confidence {confidence!r}; choose one of {', '.join(CONFIDENCES)}"
        )
    n_values, k_values = parse_int_list(n), parse_int_list(k)
    if not outputs.is_file():
        raise NotFound(f"{outputs} does not exist")
    try:
        with np.load(outputs) as data:
            if "probs" not in data or "labels" not in data:
                raise InvalidRequest(
                    f"{outputs} must hold arrays 'probs' and 'labels' (has: {list(data)})"
                )
            probs, labels = data["probs"], data["labels"]
    except (OSError, ValueError) as exc:
        if isinstance(exc, InvalidRequest):
            raise
        raise InvalidRequest(f"cannot read {outputs}: {exc}") from None
    from her2ops.pipelines.bounds import check_study_inputs

    check_study_inputs(probs, labels, draws=draws)
    result = run_study(
        probs,
        labels,
        n_values=n_values,
        k_values=k_values,
        draws=draws,
        seed=seed,
        k_at=k_at,
        n_at=n_at,
        confidence=confidence,
        replace=replace,
    )
    if png is not None:
        result.plot(png)
    return result

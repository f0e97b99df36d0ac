"""CLI commands (imaging): ``her2ops sample``."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from her2ops.cli._app import app, emit_json, fail

_SHA_RE = re.compile(r"^[0-9a-fA-F]{64}$")


def lookup_core(code: str) -> tuple[str, Path]:
    """(sha256, store root) of a core code, from the database (the pipelines' lookup)."""
    try:
        from her2ops.pipelines.lookup import core_location
    except ImportError:
        fail(
            f"core {code}: not a sha256 in the image store, and the database lookup "
            "(her2ops.pipelines.lookup) is not available"
        )
    try:
        sha, root = core_location(code)
    except Exception as exc:  # the lookup's own errors end here as one line
        fail(f"core {code}: {exc}")
    return str(sha), Path(root)


@app.command("sample")
def sample(
    core: Annotated[str, typer.Argument(help="Core code, or the sha256 of a stored image.")],
    profile: Annotated[
        str, typer.Option("--profile", "-p", help="Profile whose PSS geometry to use.")
    ] = "paper",
    sets: Annotated[
        int | None,
        typer.Option("--sets", "-n", min=1, help="Number of sets (default: the profile's N)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed.")] = 0,
    png: Annotated[
        Path | None,
        typer.Option("--png", help="Write a contact sheet of the first set to this PNG."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Build N pyramid sampling sets for one stored core and report how long it took."""
    from tqdm import tqdm

    from her2ops.config import get_settings
    from her2ops.imaging.pss import SamplingError, core_tissue_fraction, iter_sets
    from her2ops.imaging.store import CoreStore, StoreError
    from her2ops.profiles import get_profile

    try:
        prof = get_profile(profile)
    except ValueError as exc:
        fail(str(exc))
    cfg = prof.pss
    n_sets = sets or prof.n_sets
    settings = get_settings()
    store = CoreStore(settings.resolved_store_dir)
    if _SHA_RE.match(core) and store.has(core.lower()):
        sha, name = core.lower(), core.lower()
    else:
        sha, root = lookup_core(core)
        store, name = CoreStore(root), core

    first = None
    try:
        start = time.perf_counter()
        with store.open(sha, core=name) as img:
            # key = the core code, as training and scoring use, so these are the sets the model sees
            stream = iter_sets(img, cfg, key=name, seed=seed, indices=range(n_sets))
            bar = tqdm(
                stream,
                total=n_sets,
                desc=f"sampling {name[:16]}",
                unit="set",
                disable=as_json,
                file=sys.stderr,
            )
            for pss_set in bar:
                if first is None:
                    first = pss_set
            seconds = time.perf_counter() - start
            fraction = core_tissue_fraction(img)
            level_shapes = img.level_shapes
            tiles = img.tiles_decoded
    except (StoreError, SamplingError) as exc:
        fail(str(exc))
    assert first is not None  # n_sets >= 1

    if png is not None:
        from her2ops.imaging.sheet import contact_sheet

        title = f"{name}  profile {profile}  seed {seed}  set 0"
        try:
            png.parent.mkdir(parents=True, exist_ok=True)
            contact_sheet(first, cfg, title=title).save(png)
        except OSError as exc:
            fail(f"cannot write {png}: {exc}")

    result = {
        "core": name,
        "sha256": sha,
        "profile": profile,
        "seed": seed,
        "sets": n_sets,
        "shape": [n_sets, cfg.channels, cfg.patch_size, cfg.patch_size],
        "seconds": round(seconds, 4),
        "seconds_per_set": round(seconds / n_sets, 4),
        "tiles_decoded": tiles,
        "levels": [list(shape) for shape in level_shapes],
        "tissue_fraction": round(fraction, 4),
        "low_tissue": fraction < cfg.min_tissue_fraction,
        "png": str(png) if png is not None else None,
    }
    if as_json:
        emit_json(result)
        return
    typer.echo(
        f"{name}: {n_sets} sets of {cfg.channels} x {cfg.patch_size} x {cfg.patch_size} "
        f"in {seconds:.3f} s ({seconds / n_sets * 1000:.1f} ms per set, "
        f"{tiles} tiles decoded); tissue fraction {fraction:.2f}"
    )
    if result["low_tissue"]:
        typer.echo(
            f"warning: mostly background (tissue fraction {fraction:.2f} < "
            f"{cfg.min_tissue_fraction})"
        )
    if png is not None:
        typer.echo(f"contact sheet: {png}")

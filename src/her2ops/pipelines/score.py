"""Score cores with a registered model and the paper's protocol; write ``predictions`` rows.

Idempotent on the prediction key (model version, N, k, seed, confidence): a core already scored
under that key is skipped. Each core's prediction is committed as soon as it is made, so a killed
scoring job loses at most the core in flight and a re-run does only what is left.

Sampling runs ahead of the network: a ``DataLoader`` (``loader_workers`` processes, each taking
whole cores) draws the next batches of pyramid sampling sets while the current batch is on the
network, each process into a ring of shared-memory buffers that it reuses (no batch is copied).
A core's N sets are drawn a batch at a time under one plan, so each of its tiles is decoded
once, and channels-last (no transposes on the CPU: the network rearranges them on its device).
Weights come from the run's weights-only artefact (``torch.load(weights_only=True)``), so
scoring never unpickles code from the tracking store.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from her2ops.errors import InvalidRequest
from her2ops.pipelines.progress import Progress, no_progress
from her2ops.pipelines.runtime import Runtime, get_runtime
from her2ops.platform.access import require
from her2ops.platform.predictions import (
    CoreRef,
    PredictionKey,
    cores_by_code,
    partition_cores,
    save_prediction,
    scored_core_ids,
)
from her2ops.platform.registry import resolve_ref
from her2ops.platform.schema import PARTITIONS, ModelVersion
from her2ops.profiles import Profile, get_profile, with_padding

#: Upper bounds of the protocol's arguments (a typo must not mean hours of work).
MAX_SETS = 1000


@dataclass
class ScoreReport:
    model: str
    version: int
    n_sets: int
    top_k: int
    seed: int
    confidence: str
    scored: int = 0
    already_scored: int = 0
    failed: list[str] = field(default_factory=list)
    seconds_per_core: float | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_protocol(n_sets: int, top_k: int, confidence: str) -> None:
    """Refuse a protocol the scorer cannot run, naming the bad value."""
    from her2ops.models.inference import CONFIDENCES

    if confidence not in CONFIDENCES:
        raise InvalidRequest(
            f"unknown confidence {confidence!r}; use one of {', '.join(CONFIDENCES)}"
        )
    if not 1 <= n_sets <= MAX_SETS:
        raise InvalidRequest(f"--sets must be between 1 and {MAX_SETS}, not {n_sets}")
    if not 1 <= top_k <= n_sets:
        raise InvalidRequest(f"--top-k must be between 1 and --sets ({n_sets}), not {top_k}")


def weights_path(rt: Runtime, mv: ModelVersion) -> Path:
    """Local path of the version's weights file (the registered model's only copy of its
    weights): read in place from a local artefact store, downloaded once into DATA_DIR/models
    from a remote one (an ``mlflow server``)."""
    from her2ops.tracking import WEIGHTS_ARTIFACT, WEIGHTS_FILE

    local = rt.tracking.local_artifact(mv.run_id, WEIGHTS_ARTIFACT)
    if local is not None:
        return local
    cache = rt.settings.data_dir / "models" / mv.name / str(mv.version)
    target = cache / WEIGHTS_FILE
    if not target.exists():
        local = rt.tracking.download_artifact(mv.run_id, WEIGHTS_ARTIFACT, cache / "dl")
        local.replace(target)
    return target


def load_model(rt: Runtime, mv: ModelVersion, device: str | None = None) -> tuple[Any, Any]:
    """The version's network in eval mode on ``device`` (default: the settings', else cuda/cpu)."""
    from her2ops.models.network import load_network, pick_device

    dev = pick_device(device or rt.device)
    net, _ = load_network(weights_path(rt, mv), trained_profile(rt, mv), device=dev)
    net.eval()
    return net, dev


def trained_profile(rt: Runtime, mv: ModelVersion) -> Profile:
    """The version's profile as it was trained: padded if the run padded small cores."""
    import json

    pss = json.loads(rt.tracking.run_params(mv.run_id).get("pss", "{}") or "{}")
    return with_padding(get_profile(mv.profile), bool(pss.get("pad_small")))


class _SetChunks:
    """A core's sets in chunks of at most ``chunk`` sets: ``stream(pos)`` yields
    ``(pos, set indices, sets)`` per chunk, drawn under one plan so each tile of the core is
    decoded once for all its N sets (the sets are channels-last: see
    :mod:`her2ops.pipelines.sampling`). A core that cannot be read yields its error text
    instead, with the indices of its last chunk, which closes the core for the consumer.

    Picklable (the sampler drops its open files when pickled), for DataLoader workers.
    """

    def __init__(self, cores: list[CoreRef], sampler: Any, n: int, chunk: int, seed: int):
        from her2ops.pipelines.sampling import set_chunks

        self.cores, self.sampler, self.seed = cores, sampler, seed
        self.chunks = set_chunks(n, chunk)

    def stream(
        self, pos: int, out: np.ndarray | Callable[[], np.ndarray] | None = None
    ) -> Iterator[tuple[int, list[int], Any]]:
        """One core's chunks; into ``out`` (see ``StoreSampler.core_batches``) when given."""
        core = self.cores[pos]
        batches = self.sampler.core_batches(
            core.sha256, core.code, self.seed, self.chunks, page=core.page, out=out
        )
        try:
            for idx, sets in zip(self.chunks, batches, strict=True):
                yield pos, idx, sets
        except OSError as exc:
            yield pos, self.chunks[-1], f"{core.code}: {exc}"


class _RingChunks:
    """The chunks of a core as a sampling process yields them: each batch written into the
    process's next :class:`~her2ops.pipelines.sampling.BatchRing` slot, and only
    ``(pos, set indices, error text or None, (process, slot) or None)`` handed over."""

    def __init__(self, ds: _SetChunks, ring: Any) -> None:
        self.ds, self.ring = ds, ring

    def __call__(self, pos: int) -> Iterator[tuple[int, list[int], str | None, Any]]:
        for pos_, idx, sets in self.ds.stream(pos, self.ring.next_buffer):
            where = self.ring.handed()  # also the slot of a batch that failed half-filled
            yield pos_, idx, sets if isinstance(sets, str) else None, where


#: Batches a sampling process draws ahead of the network, by batch size: 1 for big batches
#: (a paper batch is 480 MB), 2 for small ones.
BIG_BATCH_BYTES = 64 << 20


def _iter_chunks(
    ds: _SetChunks,
    workers: int,
    *,
    prefetch: int | None = None,
    slots: int | None = None,
    start_method: str | None = None,
) -> Iterator[Any]:
    """Every core's chunks; with ``workers``, cores are dealt to sampling processes that run
    ahead of the network (a core's chunks come from one process, in order). Each process
    writes its batches into a ring of ``slots = prefetch + 1`` shared-memory buffers (see
    :class:`~her2ops.pipelines.sampling.BatchRing`: memory ``workers x (prefetch + 1)``
    batches, where handing fresh arrays over held up to ``workers x (prefetch + 1) + 1`` and
    copied each twice), and a batch is a view of its slot until the consumer asks for the next.
    The ring is not pinned (the DataLoader's pinning would copy every batch again), so a
    batch goes to a GPU from pageable memory; registering the ring's buffers as pinned in
    place (``cudaHostRegister``) is left undone: unmeasured, and a pinned batch's copy runs
    asynchronously, past the point where the consumer gives its slot back. ``start_method``:
    how the processes start (default: the platform's; fork and spawn are tested)."""
    largest = max(len(c) for c in ds.chunks)
    if workers == 0:
        # In process, the consumer is done with a chunk before it asks for the next: one
        # buffer serves every chunk (fresh memory would cost as much as sampling into it).
        out = ds.sampler.batch_buffer(largest)
        for pos in range(len(ds.cores)):
            yield from ds.stream(pos, out)
        return
    import multiprocessing

    from torch.utils.data import DataLoader

    from her2ops.models.data import ShardedStream
    from her2ops.pipelines.sampling import BatchRing

    shape = ds.sampler.batch_shape(largest)
    if prefetch is None:
        prefetch = 1 if int(np.prod(shape)) > BIG_BATCH_BYTES else 2
    context = multiprocessing.get_context(start_method)
    ring = BatchRing(workers, prefetch + 1 if slots is None else slots, shape, context)
    loader: DataLoader[Any] = DataLoader(
        ShardedStream(range(len(ds.cores)), _RingChunks(ds, ring)),
        batch_size=None,
        num_workers=workers,
        prefetch_factor=prefetch,
        persistent_workers=False,
        multiprocessing_context=context,
    )
    it = iter(loader)
    try:
        for pos, idx, error, where in it:
            try:
                yield pos, idx, error if error is not None else ring.batch(where, len(idx))
            finally:  # the consumer asked for the next chunk (or stopped): done with this one
                if where is not None:
                    ring.release(where)
    finally:
        ring.close()  # no worker waits for a slot while the loader shuts down
        del it


def default_loader_workers() -> int:
    """Sampling processes beside the network: one per spare CPU core, at most 4."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def score_cores(
    *,
    actor: str | None,
    model_ref: str,
    cores: Iterable[str] | None = None,
    split: str | None = None,
    partition: str | None = None,
    n_sets: int | None = None,
    top_k: int | None = None,
    seed: int = 0,
    confidence: str = "margin",
    device: str | None = None,
    loader_workers: int | None = None,
    progress: Progress = no_progress,
) -> ScoreReport:
    """Score the chosen cores (codes, or a split's partition) and write their predictions."""
    if partition is not None and partition not in PARTITIONS:
        raise InvalidRequest(
            f"unknown partition {partition!r}; valid partitions: {', '.join(PARTITIONS)}"
        )
    rt = get_runtime()
    with rt.session() as s:
        require(s, actor, "models.score")
        mv = resolve_ref(s, model_ref, name=rt.settings.registered_model_name)
        s.expunge(mv)
        profile = trained_profile(rt, mv)
        n = profile.n_sets if n_sets is None else n_sets
        k = profile.top_k if top_k is None else top_k
        check_protocol(n, k, confidence)
        if cores:
            targets = cores_by_code(s, cores)
        elif split and partition:
            targets = partition_cores(s, split, partition)
        else:
            raise InvalidRequest("give --core CODE... or --split NAME --partition P")
        key = PredictionKey(mv.id, n, k, seed, confidence)
        done = scored_core_ids(s, key)
    report = ScoreReport(
        model=mv.name,
        version=mv.version,
        n_sets=n,
        top_k=k,
        seed=seed,
        confidence=confidence,
        already_scored=sum(1 for t in targets if t.id in done),
    )
    todo = [t for t in targets if t.id not in done]
    if todo:
        _score(rt, mv, profile, key, todo, report, device, loader_workers, progress)
    return report


def _score(
    rt: Runtime,
    mv: ModelVersion,
    profile: Profile,
    key: PredictionKey,
    todo: list[CoreRef],
    report: ScoreReport,
    device: str | None,
    loader_workers: int | None,
    progress: Progress,
) -> None:
    from her2ops.models.inference import predict_sets

    net, dev = load_model(rt, mv, device)
    batch = profile.recipe.batch_size
    workers = default_loader_workers() if loader_workers is None else loader_workers
    sampler = rt.sampler(profile.pss)
    ds = _SetChunks(todo, sampler, key.n_sets, batch, key.seed)
    message = f"scoring with {mv.name} v{mv.version}"
    progress(0, len(todo), message)
    outputs: dict[int, list[np.ndarray]] = {}
    failed: set[int] = set()
    started: dict[int, float] = {}
    total_seconds = 0.0
    finished = 0
    try:
        for pos, idx, sets in _iter_chunks(ds, workers):
            started.setdefault(pos, time.perf_counter())
            if isinstance(sets, str):
                if pos not in failed:
                    failed.add(pos)
                    report.failed.append(sets)
                    outputs.pop(pos, None)
            elif pos not in failed:
                outputs.setdefault(pos, []).append(
                    predict_sets(net, sets, device=dev, batch_size=batch)
                )
            if idx[-1] != key.n_sets - 1:
                continue  # the core's last chunk closes it
            finished += 1
            if pos not in failed:
                seconds = time.perf_counter() - started[pos]
                total_seconds += seconds
                _save(rt, key, todo[pos], np.concatenate(outputs.pop(pos)), seconds, report)
                report.scored += 1
            progress(finished, len(todo), message)
    finally:
        sampler.close()
    report.seconds_per_core = total_seconds / report.scored if report.scored else None


def _save(
    rt: Runtime,
    key: PredictionKey,
    core: CoreRef,
    set_probs: np.ndarray,
    seconds: float,
    report: ScoreReport,
) -> None:
    """Decide (KCS, max class) and commit one core's prediction."""
    from her2ops.models.inference import kcs_decision

    d = kcs_decision(set_probs, key.top_k, key.confidence)
    with rt.session() as s:
        save_prediction(
            s,
            key,
            core.id,
            final_score=int(d.final),
            kcs_probs=[float(x) for x in d.kcs_mean_probs],
            set_probs=[[float(x) for x in r] for r in set_probs],
            kcs_indices=[int(i) for i in d.kcs_indices],
            seconds=seconds,
        )
    report.rows.append(
        {
            "core": core.code,
            "final": int(d.final),
            "kcs_probs": [round(float(x), 4) for x in d.kcs_mean_probs],
        }
    )

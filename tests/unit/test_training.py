"""Data and training: seeded sets, augmentation, class weights, fit, checkpoints, exact resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import her2ops
from her2ops.models.data import (
    EpochBatchSampler,
    LabelledCore,
    PSSDataset,
    SampleError,
    augment,
    check_label_coverage,
    class_weights,
    collate_sets,
)
from her2ops.models.inference import score_core
from her2ops.models.network import build_network, load_network
from her2ops.models.toyset import ToySampler, toy_items
from her2ops.models.training import FitConfig, fit
from her2ops.profiles import get_profile

PROFILE = get_profile("test")
TOY = ToySampler.for_profile(PROFILE)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _datasets(
    n_train: int = 8, n_val: int = 4, sampler: ToySampler = TOY, seed: int = 1
) -> tuple[PSSDataset, PSSDataset]:
    train = PSSDataset(toy_items(n_train, prefix="t"), sampler, train=True, seed=seed)
    val = PSSDataset(toy_items(n_val, prefix="v"), sampler, train=False, seed=seed)
    return train, val


# -- data -------------------------------------------------------------------------------------


def test_training_sets_are_fresh_each_epoch_and_validation_sets_fixed() -> None:
    train, val = _datasets()
    a0 = train[0][0]  # type: ignore[index]
    assert torch.equal(a0, train[0][0])  # type: ignore[index]  # same epoch: replayable
    train.set_epoch(1)
    assert not torch.equal(a0, train[0][0])  # type: ignore[index]
    v0 = val[0][0]  # type: ignore[index]
    val.set_epoch(5)
    assert torch.equal(v0, val[0][0])  # type: ignore[index]
    many = PSSDataset(toy_items(2), TOY, train=False, seed=1, sets_per_core=3)
    assert len(many) == 6 and many.labels == [0, 0, 0, 1, 1, 1]
    assert not torch.equal(many[0][0], many[1][0])  # type: ignore[index]


def test_augmentation_moves_whole_set_together() -> None:
    x = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(6, 4, 4)
    seen = set()
    for s in range(40):
        y = augment(x, np.random.default_rng(s))
        # every channel got the same dihedral transform: find it from channel 0
        matches = [t for t in range(8) if np.array_equal(_dihedral(x[0], t), y[0])]
        assert matches
        assert all(np.array_equal(_dihedral(x[c], matches[0]), y[c]) for c in range(6))
        seen.add(matches[0])
    assert len(seen) >= 6  # flips and rotations both happen


def test_augmentation_is_the_same_in_either_layout() -> None:
    """Augmenting a channels-last set then moving its axes = moving them, then augmenting."""
    x = np.random.default_rng(0).integers(0, 256, (7, 6, 6, 3), dtype=np.uint8)  # (P, H, W, 3)
    to_first = lambda a: a.transpose(0, 3, 1, 2).reshape(21, 6, 6)  # noqa: E731
    seen = set()
    for s in range(40):
        last = augment(x, np.random.default_rng(s))
        first = augment(to_first(x), np.random.default_rng(s))
        np.testing.assert_array_equal(to_first(last), first)
        seen.add(last.tobytes())
    assert len(seen) >= 6  # the transforms did vary


def test_dataset_takes_channels_last_sets() -> None:
    """A sampler of (P, size, size, 3) sets (the store's) feeds training: augmented like the
    channels-first sets, collated to (B, P, size, size, 3), and the network takes the batch."""

    def last(item: LabelledCore, seed: int, index: int) -> np.ndarray:
        s = TOY(item, seed, index)
        return np.ascontiguousarray(s.reshape(-1, 3, *s.shape[1:]).transpose(0, 2, 3, 1))

    items = toy_items(4)
    for train in (True, False):
        ref = PSSDataset(items, TOY, train=train, seed=3)
        got = PSSDataset(items, last, train=train, seed=3)
        for i in range(len(items)):
            (a, ya), (b, yb) = ref[i], got[i]  # type: ignore[misc]
            assert b.shape == (PROFILE.pss.num_patches, 32, 32, 3) and ya == yb
            assert torch.equal(b.permute(0, 3, 1, 2).reshape(a.shape), a)
    batch = collate_sets([got[i] for i in range(len(items))])
    assert batch.x is not None and batch.x.shape == (4, PROFILE.pss.num_patches, 32, 32, 3)
    torch.manual_seed(0)
    net = build_network(PROFILE).eval()
    with torch.inference_mode():
        ref_x = collate_sets([ref[i] for i in range(len(items))]).x
        assert torch.equal(net(batch.x), net(ref_x))


def _dihedral(a: np.ndarray, t: int) -> np.ndarray:
    a = np.rot90(a, t % 4)
    return a[:, ::-1] if t >= 4 else a


def test_class_weights_inverse_frequency_and_coverage() -> None:
    w = class_weights([0, 0, 0, 1, 2, 2, 3, 3])
    counts = torch.tensor([3.0, 1.0, 2.0, 2.0])
    torch.testing.assert_close(w, 8 / (4 * counts))
    assert torch.allclose(class_weights([0, 1, 2, 3]), torch.ones(4))
    with pytest.raises(ValueError, match=r"class 2\+ has no training cores"):
        check_label_coverage([0, 1, 3, 3])


def test_unreadable_core_is_a_counted_sentinel_and_bad_geometry_is_an_error() -> None:
    items = toy_items(4)
    ds = PSSDataset(items, replace(TOY, fail_cores=frozenset({items[1].core})), train=True, seed=0)
    batch = collate_sets([ds[i] for i in range(4)])
    assert batch.skipped == [items[1].core]
    assert batch.x is not None and batch.x.shape[0] == 3
    assert batch.y is not None and batch.y.tolist() == [0, 2, 3]

    def too_small(item: LabelledCore, seed: int, index: int) -> np.ndarray:
        raise ValueError("core is 300 px, smaller than the 512 px patch")

    bad = PSSDataset(items, too_small, train=False, seed=0)
    with pytest.raises(SampleError, match=rf"core {items[0].core}.*smaller than the 512 px"):
        bad[0]


def test_batch_sampler_resumes_and_partitions_ranks() -> None:
    full = list(EpochBatchSampler(11, 3, shuffle=True, seed=4, epoch=2, drop_last=True))
    assert len(full) == 3 and all(len(b) == 3 for b in full)
    tail = list(
        EpochBatchSampler(11, 3, shuffle=True, seed=4, epoch=2, drop_last=True, start_step=2)
    )
    assert tail == full[2:]
    other = list(EpochBatchSampler(11, 3, shuffle=True, seed=4, epoch=3, drop_last=True))
    assert other != full
    ranks = [
        [
            i
            for batch in EpochBatchSampler(11, 2, shuffle=True, seed=4, rank=r, world_size=2)
            for i in batch
        ]
        for r in range(2)
    ]
    assert len(ranks[0]) == len(ranks[1]) == 6 and set(ranks[0]) | set(ranks[1]) == set(range(11))


# -- fit --------------------------------------------------------------------------------------


def test_fit_learns_the_toy_task_and_writes_checkpoints(tmp_path: Path) -> None:
    train, val = _datasets(n_train=32, n_val=12)
    seen: list[tuple[int, dict[str, float]]] = []
    cfg = FitConfig(profile=PROFILE, out_dir=tmp_path, epochs=10, batch_size=4, lr=3e-3, seed=0)
    res = fit(cfg, train, val, on_epoch_end=lambda e, m, s: seen.append((e, m)))
    assert res.epochs_run == len(res.history) == len(seen) == 10
    assert {"train_loss", "val_loss", "val_acc", "lr"} <= set(res.history[0])
    assert res.best_val_loss < 0.8 * res.history[0]["val_loss"]
    assert res.best_val_loss == min(h["val_loss"] for h in res.history)
    net, meta = load_network(res.best_checkpoint, PROFILE)
    assert meta["epoch"] == res.best_epoch
    items = toy_items(12, prefix="x")
    finals = [
        score_core(net, TOY.core_fn(it), n_sets=6, top_k=2, seed=3, device="cpu").final
        for it in items
    ]
    assert np.mean(np.array(finals) == np.array([it.label for it in items])) >= 0.75


def test_plateau_lr_and_early_stopping(tmp_path: Path) -> None:
    recipe = replace(
        PROFILE.recipe, plateau_patience=0, plateau_factor=0.5, early_stopping_patience=2
    )
    profile = replace(PROFILE, recipe=recipe)
    train, val = _datasets()
    res = fit(
        FitConfig(
            profile=profile,
            out_dir=tmp_path,
            epochs=25,
            batch_size=2,
            lr=1e-2,
            seed=0,
        ),
        train,
        val,
    )
    losses = [h["val_loss"] for h in res.history]
    # replay the rules on the recorded validation losses
    lr, best = 1e-2, float("inf")
    for i, h in enumerate(res.history):
        assert h["lr"] == pytest.approx(lr)
        if losses[i] < best * (1 - 1e-4):  # ReduceLROnPlateau's default relative threshold
            best = losses[i]
        else:
            lr *= 0.5
    assert res.stopped_early == (res.epochs_run < 25)
    assert res.stopped_early, losses
    tail = losses[-2:]
    assert all(v >= min(losses[:-2]) for v in tail)


def test_skipped_cores_are_counted_not_fatal(tmp_path: Path) -> None:
    sampler = replace(TOY, fail_cores=frozenset({"t002", "v001"}))
    train, val = _datasets(sampler=sampler)
    res = fit(
        FitConfig(profile=PROFILE, out_dir=tmp_path, epochs=2, batch_size=2, seed=0),
        train,
        val,
    )
    assert res.epochs_run == 2
    assert res.skipped == 2 * 2  # one train + one val core, every epoch


def test_missing_class_fails_before_training(tmp_path: Path) -> None:
    items = [it for it in toy_items(8) if it.label != 1]
    train = PSSDataset(items, TOY, train=True, seed=0)
    _, val = _datasets()
    with pytest.raises(ValueError, match=r"class 1\+"):
        fit(FitConfig(profile=PROFILE, out_dir=tmp_path, epochs=1), train, val)
    assert not (tmp_path / "last.pt").exists()


def test_resume_refuses_checkpoint_of_another_profile(tmp_path: Path) -> None:
    train, val = _datasets()
    fit(
        FitConfig(profile=PROFILE, out_dir=tmp_path, epochs=1, batch_size=2),
        train,
        val,
    )
    other = replace(PROFILE, name="test-other")
    with pytest.raises(ValueError, match="profile 'test', not 'test-other'"):
        fit(
            FitConfig(profile=other, out_dir=tmp_path, epochs=2, batch_size=2, resume=True),
            train,
            val,
        )


_CHILD = """
import sys, torch
torch.set_num_threads(1)
from pathlib import Path
from her2ops.models.data import PSSDataset
from her2ops.models.toyset import ToySampler, toy_items
from her2ops.models.training import FitConfig, fit
from her2ops.profiles import get_profile
p = get_profile("test")
toy = ToySampler.for_profile(p, delay=float(sys.argv[2]))
train = PSSDataset(toy_items(8, prefix="t"), toy, train=True, seed=1)
val = PSSDataset(toy_items(4, prefix="v"), toy, train=False, seed=1)
fit(FitConfig(profile=p, out_dir=Path(sys.argv[1]), epochs=3, batch_size=2, seed=0,
              checkpoint_every_steps=1, resume=True), train, val)
"""


def test_exact_resume_after_sigkill_mid_epoch(tmp_path: Path) -> None:
    cfg = dict(profile=PROFILE, epochs=3, batch_size=2, seed=0, checkpoint_every_steps=1)
    train, val = _datasets()
    ref = fit(FitConfig(out_dir=tmp_path / "ref", **cfg), train, val)  # type: ignore[arg-type]
    ref_state = torch.load(ref.last_checkpoint, weights_only=True)

    out = tmp_path / "killed"
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(_CHILD))
    env = dict(os.environ, PYTHONPATH=str(Path(her2ops.__file__).parents[1]))
    child = subprocess.Popen([sys.executable, str(script), str(out), "0.15"], env=env)
    ckpt = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            if (out / "last.pt").exists():
                ckpt = torch.load(out / "last.pt", weights_only=True)
                if ckpt["epoch"] == 1 and ckpt["step"] >= 1:
                    break
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and 1 <= ckpt["step"] < 4 and not ckpt["finished"]  # mid-epoch

    train, val = _datasets()
    res = fit(FitConfig(out_dir=out, resume=True, **cfg), train, val)  # type: ignore[arg-type]
    got = torch.load(res.last_checkpoint, weights_only=True)
    assert res.epochs_run == 3
    for key, value in ref_state["model"].items():
        assert torch.allclose(got["model"][key].float(), value.float()), key
    for a, b in zip(ref.history, res.history, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
    # the run is finished: resuming again changes nothing
    again = fit(FitConfig(out_dir=out, resume=True, **cfg), train, val)  # type: ignore[arg-type]
    assert again.epochs_run == 3


def test_dataloader_workers_do_not_change_the_run(tmp_path: Path) -> None:
    finals = []
    for workers in (0, 2):
        train, val = _datasets()
        res = fit(
            FitConfig(
                profile=PROFILE,
                out_dir=tmp_path / str(workers),
                epochs=1,
                batch_size=2,
                seed=0,
                num_workers=workers,
            ),
            train,
            val,
        )
        finals.append(torch.load(res.last_checkpoint, weights_only=True)["model"])
    for key, value in finals[0].items():
        assert torch.equal(value, finals[1][key]), key

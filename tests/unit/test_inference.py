"""The inference protocol: confidence, KCS, final = max class; batched prediction."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pytest
import torch

from her2ops.models.data import LabelledCore
from her2ops.models.inference import (
    confidence_scores,
    kcs_decision,
    predict_sets,
    score_batches,
    score_core,
)
from her2ops.models.network import build_network
from her2ops.models.toyset import ToySampler
from her2ops.profiles import get_profile


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


P = np.array(
    [
        [0.70, 0.20, 0.05, 0.05],  # margin .50, max .70, class 0
        [0.10, 0.15, 0.15, 0.60],  # margin .45, class 3
        [0.40, 0.35, 0.15, 0.10],  # margin .05, class 0
        [0.05, 0.05, 0.85, 0.05],  # margin .80, class 2
        [0.25, 0.25, 0.25, 0.25],  # margin 0, entropy lowest
    ]
)


def test_confidence_kinds() -> None:
    np.testing.assert_allclose(confidence_scores(P, "margin"), [0.5, 0.45, 0.05, 0.8, 0.0])
    np.testing.assert_allclose(confidence_scores(P, "max"), [0.7, 0.6, 0.4, 0.85, 0.25])
    ent = confidence_scores(P, "entropy")
    assert ent.argmin() == 4 and np.isclose(ent[4], -np.log(4))
    np.testing.assert_allclose(confidence_scores(P, "range"), [0.65, 0.5, 0.3, 0.8, 0.0])
    # population std of the four probabilities, by hand for set 0: mean .25,
    # deviations .45 -.05 -.2 -.2 -> variance (.2025 + .0025 + .04 + .04) / 4
    std = confidence_scores(P, "std")
    assert std[0] == pytest.approx(np.sqrt(0.285 / 4)) and std[4] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="margin"):
        confidence_scores(P, "bogus")


def test_each_measure_can_pick_another_kcs() -> None:
    """The measures disagree on which set is most confident: the choice matters."""
    sets = np.array([[0.55, 0.45, 0.0, 0.0], [0.5, 0.1, 0.2, 0.2], [0.6, 0.2, 0.2, 0.0]])
    # margin .10 / .30 / .40 -> set 2; std .2525 / .1500 / .2179 -> set 0
    assert kcs_decision(sets, 1, "margin").kcs_indices[0] == 2
    assert kcs_decision(sets, 1, "std").kcs_indices[0] == 0


def test_kcs_is_k_most_confident_and_final_is_their_max_class() -> None:
    d = kcs_decision(P, k=2)
    assert list(d.kcs_indices) == [3, 0]
    assert d.final == 2  # classes 2 and 0 -> max is 2
    np.testing.assert_allclose(d.kcs_mean_probs, P[[3, 0]].mean(axis=0))
    d3 = kcs_decision(P, k=3)
    assert set(d3.kcs_indices) == {3, 0, 1} and d3.final == 3
    assert kcs_decision(P, k=1).final == 2


def test_ties_go_to_the_earlier_set() -> None:
    tied = np.array([[0.5, 0.5, 0, 0], [0.1, 0.1, 0.1, 0.7], [0.0, 0.1, 0.1, 0.8], [0.25] * 4])
    # sets 0 and 3 both have margin 0; set 1 margin .6, set 2 margin .7
    assert list(kcs_decision(tied, k=3).kcs_indices) == [2, 1, 0]


def test_k_out_of_range() -> None:
    with pytest.raises(ValueError, match="between 1 and N=5"):
        kcs_decision(P, k=6)


def test_predict_sets_batches_agree_with_one_batch() -> None:
    profile = get_profile("test")
    torch.manual_seed(0)
    net = build_network(profile)
    sets = np.random.default_rng(0).integers(
        0, 256, (5, profile.pss.channels, 32, 32), dtype=np.uint8
    )
    a = predict_sets(net, sets, batch_size=2, device="cpu")
    b = predict_sets(net, sets, batch_size=5, device="cpu")
    assert a.shape == (5, 4) and a.dtype == np.float32
    np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert not net.training  # inference puts the model in eval mode


def test_head_and_softmax_run_in_float32_under_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    """The backbone may run in bf16; the classifier head sees float32 and returns float32."""
    import contextlib

    import her2ops.models.inference as inference

    profile = get_profile("test")
    torch.manual_seed(0)
    net = build_network(profile)
    sets = np.random.default_rng(1).integers(
        0, 256, (3, profile.pss.channels, 32, 32), dtype=np.uint8
    )
    seen: list[torch.dtype] = []
    net.backbone.classifier.register_forward_hook(
        lambda _m, inp, out: seen.extend([inp[0].dtype, out.dtype])
    )
    feature_dtypes: list[torch.dtype] = []
    net.backbone.features.register_forward_hook(
        lambda _m, _inp, out: feature_dtypes.append(out.dtype)
    )

    def cpu_bf16(_device: torch.device) -> contextlib.AbstractContextManager[object]:
        return torch.autocast("cpu", dtype=torch.bfloat16)

    monkeypatch.setattr(inference, "autocast", cpu_bf16)
    out = predict_sets(net, sets, device="cpu")
    assert feature_dtypes == [torch.bfloat16]  # the backbone did run under bf16 autocast
    assert seen == [torch.float32, torch.float32]
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-6)
    # without autocast the float32 head gives exactly the model's own forward
    monkeypatch.undo()
    with torch.inference_mode():
        ref = torch.softmax(net.eval()(torch.as_tensor(sets)), dim=1).numpy()
    np.testing.assert_allclose(predict_sets(net, sets, device="cpu"), ref, rtol=1e-5, atol=1e-7)


def test_score_core_runs_protocol_over_all_sets() -> None:
    profile = get_profile("test")
    torch.manual_seed(0)
    net = build_network(profile)
    toy = ToySampler.for_profile(profile)
    calls: list[list[int]] = []
    inner = toy.core_fn(LabelledCore("c1", "toy://c1", 2))

    def sample(seed: int, indices: Sequence[int]) -> np.ndarray:
        calls.append(list(indices))
        return inner(seed, indices)

    score = score_core(net, sample, n_sets=7, top_k=3, seed=11, batch_size=3, device="cpu")
    assert calls == [[0, 1, 2], [3, 4, 5], [6]]
    assert score.set_probs.shape == (7, 4)
    ref = kcs_decision(score.set_probs, 3)
    assert score.final == ref.final
    np.testing.assert_array_equal(score.kcs_indices, ref.kcs_indices)
    np.testing.assert_allclose(score.kcs_mean_probs, ref.kcs_mean_probs)
    again = score_core(net, inner, n_sets=7, top_k=3, seed=11, batch_size=7, device="cpu")
    np.testing.assert_allclose(again.set_probs, score.set_probs, rtol=1e-4, atol=1e-6)
    assert score.to_dict()["confidence"] == "margin"


def test_score_batches_decides_as_score_core_on_the_same_sets() -> None:
    """Training's validation scores a core from its batches under one plan
    (``score_batches``); the decision is the one ``score_core`` makes on the same sets."""
    torch.manual_seed(0)
    profile = get_profile("test")
    net = build_network(profile).eval()
    inner = ToySampler.for_profile(profile).core_fn(LabelledCore("c1", "toy://c1", 1))
    ref = score_core(net, inner, n_sets=7, top_k=3, seed=5, batch_size=3, device="cpu")
    drawn: list[int] = []

    def batches() -> Iterator[np.ndarray]:
        for chunk in ([0, 1, 2], [3, 4, 5], [6]):
            drawn.append(len(chunk))
            yield inner(5, chunk)

    got = score_batches(net, batches(), top_k=3, batch_size=3, device="cpu")
    assert drawn == [3, 3, 1]
    assert got.final == ref.final
    np.testing.assert_allclose(got.set_probs, ref.set_probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got.kcs_indices, ref.kcs_indices)
    with pytest.raises(ValueError, match="top_k=8"):
        score_batches(net, batches(), top_k=8, device="cpu")
    with pytest.raises(ValueError, match="no sets"):
        score_batches(net, iter([]), top_k=1, device="cpu")


def test_predict_sets_takes_channels_last_sets() -> None:
    """(n, P, H, W, 3) sets, the store sampler's layout, give the channels-first outputs."""
    profile = get_profile("test")
    torch.manual_seed(0)
    net = build_network(profile)
    first = np.random.default_rng(2).integers(
        0, 256, (5, profile.pss.channels, 32, 32), dtype=np.uint8
    )
    last = np.ascontiguousarray(
        first.reshape(5, profile.pss.num_patches, 3, 32, 32).transpose(0, 1, 3, 4, 2)
    )
    np.testing.assert_array_equal(
        predict_sets(net, last, batch_size=2, device="cpu"),
        predict_sets(net, first, batch_size=2, device="cpu"),
    )

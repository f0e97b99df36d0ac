"""The paper's inference protocol: N sets per core, the k most confident (KCS), final = max class.

For one core, ``N`` independent pyramid sampling sets go through the network; each gives a softmax
output. The KCS is the ``k`` most confident outputs; ties in confidence go to the earlier set (a
stable sort), the same rule :mod:`her2ops.models.study` uses. The final score is the largest
predicted class in the KCS; the KCS's averaged probabilities are what ROC curves use.

**Confidence: the choice.** The paper keeps the sets with "a clear preference for one HER2
category", judged by "the disparity in HER2 class probabilities" of the softmax output, and gives
no formula. Our reading, and the default everywhere, is the **margin**: top-1 minus top-2
probability (how clearly one category beats the next). The other readings are offered so the
choice can be measured (``her2ops evaluate --study`` prints the study's median accuracy at
(20, 5) under each): ``max`` (the largest probability), ``range`` (largest minus smallest),
``std`` (standard deviation of the four probabilities) and ``entropy`` (minus the entropy).

The classifier head and the softmax run in float32 at inference, also when the backbone runs
under bf16 autocast on CUDA: bf16 logits (8 bits of mantissa) make near-saturated sets tie in
confidence, and the KCS would then be picked by set order instead of by confidence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from her2ops.models.network import autocast, batch_to_device, unwrap

Confidence = Literal["margin", "max", "range", "std", "entropy"]
#: the confidence measures; the first is the default (see the module docstring)
CONFIDENCES: tuple[str, ...] = ("margin", "max", "range", "std", "entropy")


def confidence_scores(probs: np.ndarray, confidence: str = "margin") -> np.ndarray:
    """Confidence of each softmax output along the last axis (higher = more confident)."""
    p = np.asarray(probs, dtype=np.float64)
    if confidence == "margin":
        top2 = np.sort(p, axis=-1)[..., -2:]
        return top2[..., 1] - top2[..., 0]
    if confidence == "max":
        return p.max(axis=-1)
    if confidence == "range":
        return p.max(axis=-1) - p.min(axis=-1)
    if confidence == "std":
        return p.std(axis=-1)
    if confidence == "entropy":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)
    raise ValueError(f"unknown confidence {confidence!r}; known: {', '.join(CONFIDENCES)}")


def confidence_order(probs: np.ndarray, confidence: str = "margin") -> np.ndarray:
    """Indices sorted by decreasing confidence along axis -2; ties keep the earlier index."""
    conf = confidence_scores(probs, confidence)
    return np.argsort(-conf, axis=-1, kind="stable")


@dataclass(frozen=True)
class Decision:
    """The KCS decision for one core."""

    final: int
    kcs_indices: np.ndarray
    kcs_mean_probs: np.ndarray
    confidences: np.ndarray


def kcs_decision(probs: np.ndarray, k: int, confidence: str = "margin") -> Decision:
    """Apply the protocol to one core's ``(N, 4)`` set outputs."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"expected (N, classes) probabilities, got shape {probs.shape}")
    if not 1 <= k <= probs.shape[0]:
        raise ValueError(f"k={k} must be between 1 and N={probs.shape[0]}")
    conf = confidence_scores(probs, confidence)
    kcs = np.argsort(-conf, kind="stable")[:k]
    final = int(probs[kcs].argmax(axis=1).max())
    return Decision(
        final=final, kcs_indices=kcs, kcs_mean_probs=probs[kcs].mean(axis=0), confidences=conf
    )


def logits_fp32_head(model: nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Logits with the DenseNet features under the device's autocast (bf16 on CUDA) and the
    head (ReLU, global pooling, classifier) in float32."""
    net = unwrap(model)
    backbone = net.backbone
    with autocast(device):
        feats = backbone.features(net.prepare(x))
    with torch.autocast(device.type, enabled=False):
        pooled = nn.functional.adaptive_avg_pool2d(nn.functional.relu(feats.float()), (1, 1))
        head: nn.Module = backbone.classifier
        return head(torch.flatten(pooled, 1)).float()


@torch.inference_mode()
def predict_sets(
    model: nn.Module,
    sets: np.ndarray | torch.Tensor,
    *,
    batch_size: int = 12,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Softmax outputs ``(n, 4)`` (float32) for ``n`` uint8 sets, in batches: (n, 3P, H, W)
    channels-first or (n, P, H, W, 3) channels-last (rearranged on the device, by the network)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    x_all = torch.as_tensor(sets)
    out = []
    for i in range(0, x_all.shape[0], batch_size):
        x = batch_to_device(x_all[i : i + batch_size], device)
        out.append(torch.softmax(logits_fp32_head(model, x, device), dim=1).cpu())
    if not out:
        return np.zeros((0, 4), dtype=np.float32)
    return torch.cat(out).numpy().astype(np.float32)


@dataclass(frozen=True)
class CoreScore:
    """A scored core: the decision and every set's output (kept for review and the N/k study)."""

    final: int
    kcs_mean_probs: np.ndarray
    set_probs: np.ndarray
    kcs_indices: np.ndarray
    confidence_name: str

    def to_dict(self) -> dict[str, object]:
        return {
            "final": self.final,
            "kcs_mean_probs": self.kcs_mean_probs.tolist(),
            "set_probs": self.set_probs.tolist(),
            "kcs_indices": self.kcs_indices.tolist(),
            "confidence": self.confidence_name,
        }


def score_core(
    model: nn.Module,
    sample_fn: Callable[[int, Sequence[int]], np.ndarray],
    *,
    n_sets: int,
    top_k: int,
    seed: int,
    batch_size: int = 12,
    device: torch.device | str | None = None,
    confidence: str = "margin",
) -> CoreScore:
    """Score one core. ``sample_fn(seed, indices)`` draws sets ``indices`` of the core, stacked
    uint8 sets in either layout (see :func:`predict_sets`); it is called one batch at a time (a
    paper-size set is 40 MB). See :func:`score_batches` for a core drawn under one plan."""
    if not 1 <= top_k <= n_sets:
        raise ValueError(f"top_k={top_k} must be between 1 and n_sets={n_sets}")
    chunks = [list(range(i, min(i + batch_size, n_sets))) for i in range(0, n_sets, batch_size)]
    return score_batches(
        model,
        (sample_fn(seed, c) for c in chunks),
        top_k=top_k,
        batch_size=batch_size,
        device=device,
        confidence=confidence,
    )


def score_batches(
    model: nn.Module,
    batches: Iterable[np.ndarray],
    *,
    top_k: int,
    batch_size: int = 12,
    device: torch.device | str | None = None,
    confidence: str = "margin",
) -> CoreScore:
    """Score one core from its sets, given batch by batch (e.g. ``StoreSampler.core_batches``,
    which decodes each tile once for all N sets): the next batch is drawn on a thread while the
    network runs on the current one; then the k most confident sets decide (KCS, max class)."""
    it = iter(batches)
    probs: list[np.ndarray] = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(next, it, None)
        while (sets := pending.result()) is not None:
            pending = pool.submit(next, it, None)
            probs.append(predict_sets(model, sets, batch_size=batch_size, device=device))
    if not probs:
        raise ValueError("no sets to score")
    set_probs = np.concatenate(probs)
    if not 1 <= top_k <= len(set_probs):
        raise ValueError(f"top_k={top_k} must be between 1 and n_sets={len(set_probs)}")
    d = kcs_decision(set_probs, top_k, confidence)
    return CoreScore(
        final=d.final,
        kcs_mean_probs=d.kcs_mean_probs,
        set_probs=set_probs,
        kcs_indices=d.kcs_indices,
        confidence_name=confidence,
    )

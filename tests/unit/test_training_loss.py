"""The paper's class-weighted loss (sum / m), the validation loss's normalisation, and the
number of validation sets per core."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from her2ops.models.training import (
    PaperWeightedCE,
    evaluate_loss,
    validation_sets_per_core,
)
from her2ops.profiles import get_profile

LOGITS = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0]])
TARGET = torch.tensor([0, 2, 3])
WEIGHT = torch.tensor([1.0, 2.0, 0.5, 4.0])


def _by_hand(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> float:
    total = 0.0
    for row, y in zip(logits.tolist(), target.tolist(), strict=True):
        log_p = row[y] - math.log(sum(math.exp(v) for v in row))
        total += -float(weight[y]) * log_p
    return total / len(target)


def test_paper_loss_divides_the_weighted_sum_by_the_batch_size() -> None:
    got = float(PaperWeightedCE(WEIGHT)(LOGITS, TARGET))
    # -(1/3) [1 * log p(0 | row 0) + 0.5 * log p(2 | row 1) + 4 * log p(3 | row 2)]
    assert got == pytest.approx(_by_hand(LOGITS, TARGET, WEIGHT))
    # PyTorch's weighted mean divides by 1 + 0.5 + 4 = 5.5 instead of 3
    torch_mean = float(nn.CrossEntropyLoss(weight=WEIGHT)(LOGITS, TARGET))
    assert torch_mean == pytest.approx(got * 3 / 5.5)
    # with equal weights the two agree
    ones = torch.ones(4)
    assert float(PaperWeightedCE(ones)(LOGITS, TARGET)) == pytest.approx(
        float(nn.CrossEntropyLoss()(LOGITS, TARGET))
    )


def test_validation_loss_uses_the_same_normalisation() -> None:
    """Two batches of different sizes: val_loss = weighted sum over all sets / sets."""
    batches: list[Any] = [
        SimpleNamespace(x=LOGITS[:2], y=TARGET[:2], skipped=[]),
        SimpleNamespace(x=LOGITS[2:], y=TARGET[2:], skipped=["bad-core"]),
    ]
    out = evaluate_loss(nn.Identity(), batches, WEIGHT, torch.device("cpu"))  # type: ignore[arg-type]
    assert out["val_loss"] == pytest.approx(_by_hand(LOGITS, TARGET, WEIGHT))
    assert out["n"] == 3 and out["skipped"] == 1
    assert out["val_acc"] == pytest.approx(2 / 3)  # row 1 predicts 1+, not 2+


def test_validation_sets_per_core(caplog: pytest.LogCaptureFixture) -> None:
    paper, test = get_profile("paper"), get_profile("test")
    assert validation_sets_per_core(paper) == 5
    assert validation_sets_per_core(test) == test.recipe.val_sets_per_core
    assert validation_sets_per_core(paper, 8) == 8
    with caplog.at_level(logging.WARNING, logger="her2ops.models.training"):
        assert validation_sets_per_core(paper, 1) == 1
    assert "sampling noise" in caplog.text
    with pytest.raises(ValueError, match="at least 1"):
        validation_sets_per_core(test, 0)

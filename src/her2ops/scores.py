"""The HER2 score, shared by every layer.

Scores are an ``IntEnum`` 0..3 so that "the maximum class" of the paper's inference protocol is
plain integer ``max``. ND (nondiagnostic / not scorable) is not a class the network predicts; it
is a separate value in votes, represented by ``None`` in :func:`parse_vote`'s result and by the
string ``"ND"`` in files and the database.
"""

from __future__ import annotations

from enum import IntEnum

from her2ops.errors import InvalidRequest


class HER2Score(IntEnum):
    """ASCO/CAP HER2 IHC score."""

    ZERO = 0
    ONE = 1
    TWO = 2
    THREE = 3

    @property
    def label(self) -> str:
        return "0" if self is HER2Score.ZERO else f"{int(self)}+"


ND = "ND"
SCORE_LABELS: tuple[str, ...] = ("0", "1+", "2+", "3+")
NUM_CLASSES = 4

_ALIASES: dict[str, str] = {
    "0": "0",
    "0+": "0",
    "1": "1",
    "1+": "1",
    "2": "2",
    "2+": "2",
    "3": "3",
    "3+": "3",
    "nd": ND,
    "n/d": ND,
    "nondiagnostic": ND,
}


def parse_vote(text: str) -> HER2Score | None:
    """Parse ``0, 1+, 2+, 3+, ND`` (also ``0-3``); ND gives ``None``. Raises ``ValueError``."""
    key = str(text).strip().lower()
    if key not in _ALIASES:
        raise InvalidRequest(f"bad score {text!r}: expected one of 0, 1+, 2+, 3+, ND (or 0-3)")
    value = _ALIASES[key]
    return None if value == ND else HER2Score(int(value))


def vote_to_text(score: HER2Score | None) -> str:
    """Inverse of :func:`parse_vote`."""
    return ND if score is None else score.label

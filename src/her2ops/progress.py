"""One small progress protocol for long use cases: ``progress(done, total, message)``.

A use case calls its ``progress`` argument as work advances; each adapter renders it its own
way: the CLI as a progress bar (``cli/_app.py``), a worker by writing it to the job row, a
dashboard as ``st.progress``. ``message`` names the phase ("validating images", "epoch 3/16");
a new message starts a new phase. ``total`` is None when unknown.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, TypeVar

T = TypeVar("T")


class Progress(Protocol):
    def __call__(self, done: int, total: int | None, message: str) -> None: ...


def no_progress(done: int, total: int | None, message: str) -> None:
    """The default: report nothing."""


def track(
    items: Iterable[T], progress: Progress, message: str, *, total: int | None = None
) -> Iterator[T]:
    """Yield ``items``, reporting (0, total) first and (i, total) after each item."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    progress(0, total, message)
    for done, item in enumerate(items, 1):
        yield item
        progress(done, total, message)

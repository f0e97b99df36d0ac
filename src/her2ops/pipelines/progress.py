"""The progress protocol of the use cases (defined in :mod:`her2ops.progress`, the base layer,
so that lower layers such as ``models.training`` can report through it too)."""

from her2ops.progress import Progress, no_progress, track

__all__ = ["Progress", "no_progress", "track"]

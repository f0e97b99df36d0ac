"""her2ops: automated HER2 scoring of IHC tissue-microarray cores, and the platform around it."""

from __future__ import annotations

__version__ = "0.1.0"

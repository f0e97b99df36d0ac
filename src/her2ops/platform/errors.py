"""Domain errors of the system of record: the shared hierarchy plus row-level import errors."""

from __future__ import annotations

from dataclasses import dataclass

from her2ops.errors import (
    AccessDenied,
    ConfigError,
    Conflict,
    Her2opsError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
)

__all__ = [
    "AccessDenied",
    "ConfigError",
    "Conflict",
    "Her2opsError",
    "ImportRejected",
    "InvalidRequest",
    "NotFound",
    "PermissionDenied",
    "RowError",
]


@dataclass(frozen=True)
class RowError:
    """One bad row of an input file: 1-based line number in the file (header = line 1)."""

    line: int
    reason: str
    key: str = ""

    def __str__(self) -> str:
        where = f"line {self.line}" + (f" ({self.key})" if self.key else "")
        return f"{where}: {self.reason}"


class ImportRejected(InvalidRequest):
    """An import found bad rows; nothing was written. Lists every bad row."""

    def __init__(self, source: str, errors: list[RowError]):
        self.source = source
        self.errors = errors
        head = f"{source}: {len(errors)} bad row(s), nothing imported"
        super().__init__(head + "".join(f"\n  {e}" for e in errors))

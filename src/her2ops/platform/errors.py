"""Domain errors. The CLI turns each into a one-line message; none of them is a bug."""

from __future__ import annotations

from dataclasses import dataclass


class Her2opsError(Exception):
    """Base class of the errors a user can cause and fix."""


class ConfigError(Her2opsError):
    """A setting is wrong (bad URL, unreachable database)."""


class NotFound(Her2opsError):
    """A named thing (core, user, split, model) does not exist."""


class AccessDenied(Her2opsError):
    """The acting user lacks the role an action needs."""


class Conflict(Her2opsError):
    """The action contradicts what is recorded (frozen split, duplicate name)."""


@dataclass(frozen=True)
class RowError:
    """One bad row of an input file: 1-based line number in the file (header = line 1)."""

    line: int
    reason: str
    key: str = ""

    def __str__(self) -> str:
        where = f"line {self.line}" + (f" ({self.key})" if self.key else "")
        return f"{where}: {self.reason}"


class ImportRejected(Her2opsError):
    """An import found bad rows; nothing was written. Lists every bad row."""

    def __init__(self, source: str, errors: list[RowError]):
        self.source = source
        self.errors = errors
        head = f"{source}: {len(errors)} bad row(s), nothing imported"
        super().__init__(head + "".join(f"\n  {e}" for e in errors))

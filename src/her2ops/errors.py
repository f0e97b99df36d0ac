"""The errors a user can cause and fix, for every layer.

Every adapter (CLI, Celery task, dashboard page) maps exactly these to a one-line message for
the user; any other exception is a bug and is shown as one. Messages are written for the user:
they name the bad value, the file or row, and what would be accepted.
"""

from __future__ import annotations


class Her2opsError(Exception):
    """Base class of the errors a user can cause and fix."""


class InvalidRequest(Her2opsError, ValueError):
    """An argument, a file or a row is not acceptable (bad value, out of range, malformed).

    Also a ``ValueError``, so pure helpers that validate input keep their usual contract; the
    adapters catch ``Her2opsError`` only, so a plain ``ValueError`` from deep code stays a bug.
    """


class NotFound(Her2opsError):
    """A named thing (core, user, split, model, job) does not exist."""


class PermissionDenied(Her2opsError):
    """The acting user may not do this (missing role, no credential, not their claim)."""


class Conflict(Her2opsError):
    """The action contradicts what is recorded (frozen split, duplicate, lost lease, race)."""


class ConfigError(Her2opsError):
    """A setting is wrong or a service it names cannot be reached."""


#: Older name of :class:`PermissionDenied`.
AccessDenied = PermissionDenied

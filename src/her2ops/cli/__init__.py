"""The ``her2ops`` command line. Each submodule registers its commands on the shared app."""

from __future__ import annotations

# Importing the command modules registers their commands on ``app``.
from her2ops.cli import curation as _curation
from her2ops.cli import dashboard as _dashboard  # noqa: F401
from her2ops.cli import imaging as _imaging
from her2ops.cli import jobs as _jobs
from her2ops.cli import model as _model
from her2ops.cli import pipeline as _pipeline
from her2ops.cli import review as _review  # noqa: F401  (registers 'her2ops review')
from her2ops.cli import stack as _stack
from her2ops.cli import synth as _synth
from her2ops.cli._app import app

_COMMAND_MODULES = (_curation, _imaging, _jobs, _model, _pipeline, _stack, _synth)


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]

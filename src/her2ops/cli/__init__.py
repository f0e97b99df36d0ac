"""The ``her2ops`` command line. Each submodule registers its commands on the shared app."""

from __future__ import annotations

from her2ops.cli._app import app

# Importing the command modules registers their commands on ``app``.
from her2ops.cli import curation as _curation  # noqa: E402,F401
from her2ops.cli import imaging as _imaging  # noqa: E402,F401
from her2ops.cli import model as _model  # noqa: E402,F401
from her2ops.cli import pipeline as _pipeline  # noqa: E402,F401
from her2ops.cli import synth as _synth  # noqa: E402,F401


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]

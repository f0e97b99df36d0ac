"""``python -m her2ops`` (also what ``torchrun -m her2ops train ...`` launches)."""

from __future__ import annotations

from her2ops.cli import main

if __name__ == "__main__":
    main()

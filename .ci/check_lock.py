"""Check (or stamp) that the lock files match pyproject.toml's dependency tables.

`make lock` resolves the dependencies with pip-compile and then runs this script with `--stamp`,
which writes a `# pyproject-deps-sha256: ...` line at the top of each lock file. CI (and every
`make` install) runs it without arguments: it fails if any lock file is missing, unstamped, or
stamped from dependency tables that differ from pyproject.toml's now, or if a pinned
requirement has no hash. Only the tables that decide what gets installed are hashed
(`build-system.requires`, `project.requires-python`, `project.dependencies`,
`project.optional-dependencies`), so editing the ruff or pytest settings needs no new lock.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ("requirements.lock", "requirements-dev.lock")
STAMP = "# pyproject-deps-sha256: "
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def deps_sha256(pyproject: Path) -> str:
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    project = data.get("project", {})
    tables = {
        "build-system.requires": data.get("build-system", {}).get("requires", []),
        "project.requires-python": project.get("requires-python"),
        "project.dependencies": project.get("dependencies", []),
        "project.optional-dependencies": project.get("optional-dependencies", {}),
    }
    blob = json.dumps(tables, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def recorded(lock: Path) -> str | None:
    for line in lock.read_text(encoding="utf-8").splitlines():
        if line.startswith(STAMP):
            return line[len(STAMP) :].strip()
    return None


def unhashed(lock: Path) -> list[str]:
    """Pinned requirements with no --hash (pip's --require-hashes would refuse them)."""
    entries: list[str] = []
    current: list[str] = []
    for line in lock.read_text(encoding="utf-8").splitlines():
        if line.startswith((" ", "\t")):
            current.append(line)
            continue
        if current:
            entries.append("\n".join(current))
        current = [line] if PIN.match(line) else []
    if current:
        entries.append("\n".join(current))
    return [e.split()[0] for e in entries if "--hash=sha256:" not in e]


def stamp(lock: Path, digest: str) -> None:
    lines = [
        line for line in lock.read_text(encoding="utf-8").splitlines() if not line.startswith(STAMP)
    ]
    lock.write_text("\n".join([STAMP + digest, *lines]) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stamp", action="store_true", help="record the hash (make lock)")
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args(argv)
    digest = deps_sha256(args.root / "pyproject.toml")
    problems: list[str] = []
    for name in LOCKS:
        lock = args.root / name
        if not lock.is_file():
            problems.append(f"{name} is missing")
            continue
        if args.stamp:
            stamp(lock, digest)
        got = recorded(lock)
        if got is None:
            problems.append(f"{name} has no '{STAMP.strip()}' line")
        elif got != digest:
            problems.append(
                f"{name} was locked from other dependencies than pyproject.toml's now "
                f"(recorded {got[:12]}, pyproject {digest[:12]})"
            )
        missing = unhashed(lock)
        if missing:
            problems.append(f"{name}: no hash for {', '.join(missing)}")
    if problems:
        for problem in problems:
            print(f"lock check: {problem}", file=sys.stderr)
        print("lock check: run `make lock` and commit the lock files", file=sys.stderr)
        return 1
    print(f"lock check: {', '.join(LOCKS)} match pyproject.toml ({digest[:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

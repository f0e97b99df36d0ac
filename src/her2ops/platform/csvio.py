"""Reading the CSV files lab managers bring: header checks and 1-based line numbers."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from her2ops.platform.errors import ImportRejected, RowError


@dataclass(frozen=True)
class CsvRow:
    line: int  # 1-based line in the file; the header is line 1
    values: dict[str, str]

    def get(self, key: str) -> str:
        return (self.values.get(key) or "").strip()


def read_csv(path: Path, *, required: tuple[str, ...], optional: tuple[str, ...]) -> list[CsvRow]:
    """All data rows of ``path``; ImportRejected if the file or its header is unusable."""
    if not path.is_file():
        raise ImportRejected(str(path), [RowError(0, "file not found")])
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise ImportRejected(
                    str(path),
                    [RowError(1, f"missing column(s) {', '.join(missing)}; header is {header}")],
                )
            unknown = [h for h in header if h not in required + optional and h]
            if unknown:
                raise ImportRejected(
                    str(path),
                    [
                        RowError(
                            1,
                            f"unknown column(s) {', '.join(unknown)}; "
                            f"expected {', '.join(required + optional)}",
                        )
                    ],
                )
            reader.fieldnames = header
            return list(_rows(reader))
    except UnicodeDecodeError as exc:
        raise ImportRejected(str(path), [RowError(0, f"not UTF-8 text: {exc}")]) from None
    except csv.Error as exc:
        raise ImportRejected(str(path), [RowError(0, f"not a readable CSV file: {exc}")]) from None


def _rows(reader: csv.DictReader[str]) -> Iterator[CsvRow]:
    for values in reader:
        # reader.line_num is the physical line just read; rows with embedded newlines still point
        # at their last line, which is where a spreadsheet user will look for the problem.
        if not any((v or "").strip() for k, v in values.items() if k is not None):
            continue
        yield CsvRow(reader.line_num, {k: (v or "") for k, v in values.items() if k is not None})

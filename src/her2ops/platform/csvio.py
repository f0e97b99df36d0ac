"""Reading the CSV files lab managers bring: header checks and 1-based line numbers.

Nothing is dropped silently: a duplicated column, a row with more values than the header, a NUL
byte or an oversized file is an error that names the line. Blank lines are skipped (spreadsheets
add them); line endings (LF, CRLF) and a UTF-8 byte-order mark make no difference.
"""

from __future__ import annotations

import csv
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from her2ops.platform.errors import ImportRejected, RowError

#: Larger files are refused before parsing (a vote file of 1,000,000 rows is ~40 MB).
MAX_FILE_BYTES = 512 * 1024 * 1024
#: One field of a lab's CSV never needs more (csv's own default limit is 128 KiB).
MAX_FIELD_CHARS = 65_536

#: First characters a spreadsheet reads as a formula (OWASP "CSV injection").
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class CsvRow:
    line: int  # 1-based line in the file; the header is line 1
    values: dict[str, str]
    problem: str | None = None  # a structural problem of the row (extra values, NUL byte)

    def get(self, key: str) -> str:
        return (self.values.get(key) or "").strip()


def text_problem(name: str, value: str, max_len: int, *, code: bool = False) -> str | None:
    """Why ``value`` cannot be stored in a column of ``max_len`` characters, or None.

    Checked before the database so both dialects refuse the same values with the same message
    (PostgreSQL refuses NUL bytes and over-long strings with a driver error; SQLite stores them).
    ``code=True`` also refuses control and line-break characters (codes are printed one a line).
    """
    if "\x00" in value:
        return f"{name} contains a NUL byte"
    if len(value) > max_len:
        return f"{name} has {len(value)} characters (at most {max_len})"
    if code and any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in value):
        return f"{name} {value[:40]!r} contains control or line-break characters"
    return None


def spreadsheet_safe(value: object) -> object:
    """``value`` with a leading apostrophe if a spreadsheet would run it as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def read_csv(path: Path, *, required: tuple[str, ...], optional: tuple[str, ...]) -> list[CsvRow]:
    """All data rows of ``path``; ImportRejected if the file or its header is unusable."""
    if not path.is_file():
        raise ImportRejected(str(path), [RowError(0, "file not found")])
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ImportRejected(
            str(path), [RowError(0, f"file has {size:,} bytes (at most {MAX_FILE_BYTES:,})")]
        )
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            try:
                raw_header = next(reader)
            except StopIteration:
                raw_header = []
            header = [h.strip().lower() for h in raw_header]
            while header and not header[-1]:
                header.pop()  # trailing empty columns a spreadsheet adds
            missing = [c for c in required if c not in header]
            if missing:
                raise ImportRejected(
                    str(path),
                    [RowError(1, f"missing column(s) {', '.join(missing)}; header is {header}")],
                )
            dupes = sorted({h for h in header if h and header.count(h) > 1})
            if dupes:
                raise ImportRejected(
                    str(path), [RowError(1, f"duplicated column(s) {', '.join(dupes)}")]
                )
            unknown = [h for h in header if h not in required + optional]
            if unknown:
                raise ImportRejected(
                    str(path),
                    [
                        RowError(
                            1,
                            f"unknown column(s) {', '.join(repr(u) for u in unknown)}; "
                            f"expected {', '.join(required + optional)}",
                        )
                    ],
                )
            return list(_rows(reader, header))
    except UnicodeDecodeError as exc:
        raise ImportRejected(str(path), [RowError(0, f"not UTF-8 text: {exc}")]) from None
    except csv.Error as exc:
        raise ImportRejected(str(path), [RowError(0, f"not a readable CSV file: {exc}")]) from None


def _rows(reader: Iterator[list[str]], header: list[str]) -> Iterator[CsvRow]:
    n = len(header)
    for fields in reader:
        # reader.line_num is the physical line just read; rows with embedded newlines still point
        # at their last line, which is where a spreadsheet user will look for the problem.
        line = reader.line_num  # type: ignore[attr-defined]
        if not any(f.strip() for f in fields):
            continue
        extra = [f for f in fields[n:] if f.strip()]
        values = dict(zip(header, fields[:n], strict=False))
        problem = None
        if extra:
            problem = (
                f"{len(fields)} values for {n} columns (extra: "
                f"{', '.join(repr(e[:20]) for e in extra[:3])})"
            )
        elif any("\x00" in f for f in fields):
            problem = "contains a NUL byte"
        elif any(len(f) > MAX_FIELD_CHARS for f in fields):
            problem = f"a value has more than {MAX_FIELD_CHARS:,} characters"
        yield CsvRow(line, values, problem)

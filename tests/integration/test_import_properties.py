"""Property-based tests (hypothesis) of the CSV importers: a file saved again in another shape
(line endings, column order, blank lines, a byte-order mark, repeated rows) and re-imports never
change the database state; nor does reordering the rows that carry no order in time (initial
and adjudication votes; review votes keep their file order). No input makes an importer write
part of a file. Both dialects; every example works on cores of its own.
"""

from __future__ import annotations

import csv
import io
import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from her2ops.platform.consensus import apply_consensus
from her2ops.platform.curation import ingest_manifest
from her2ops.platform.db import session_scope
from her2ops.platform.errors import ImportRejected
from her2ops.platform.schema import ConsensusLabel, Core, Patient, User, Vote
from her2ops.platform.votes import import_votes
from tests.factories import make_png, seed_users, store

PATHOLOGISTS = ("p1", "p2", "p3")
SCORES = ("0", "1+", "2+", "3+", "ND")
COLUMNS = ("core", "pathologist", "score", "round", "comment")
_counter = itertools.count()
_SETTINGS = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- strategies -------------------------------------------------------------------------------

comments = st.sampled_from(["", "", "fine", "weak staining", "=SUM(A1)", "a, b"])


@st.composite
def vote_files(draw: st.DrawFn) -> list[dict[str, str]]:
    """Rows of a valid vote file on cores c0..c3 (without the per-example prefix).

    c0 and c1 may be disputed (p1 and p2 disagree) and then adjudicated by p4, from outside the
    panel, as the label policy asks; c2 and c3 get random initial votes and review votes.
    """
    rows: list[dict[str, str]] = []
    for core in (0, 1):
        if draw(st.booleans()):
            rows.append(_row(core, "p1", "0", "initial", draw(comments)))
            rows.append(_row(core, "p2", "2+", "initial", draw(comments)))
            if draw(st.booleans()):
                rows.append(_row(core, "p4", draw(st.sampled_from(SCORES)), "adjudication", ""))
    for core in (2, 3):
        for who in PATHOLOGISTS:
            if draw(st.booleans()):
                rows.append(
                    _row(core, who, draw(st.sampled_from(SCORES)), "initial", draw(comments))
                )
    reviews = draw(
        st.lists(
            st.tuples(st.integers(2, 3), st.sampled_from(PATHOLOGISTS), st.sampled_from(SCORES)),
            max_size=6,
        )
    )
    rows += [_row(c, w, s, "review", "") for c, w, s in reviews]
    return rows


def _row(core: int, who: str, score: str, rnd: str, comment: str) -> dict[str, str]:
    return {
        "core": f"c{core}",
        "pathologist": who,
        "score": score,
        "round": rnd,
        "comment": comment,
    }


@st.composite
def reshaped(
    draw: st.DrawFn, rows: list[dict[str, str]]
) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """The same rows in another shape: order of the timeless rows, repeated rows, and how the
    file is written (column order, line ending, blank lines, BOM, trailing newline)."""
    timeless = [r for r in rows if r["round"] != "review"]
    review = [r for r in rows if r["round"] == "review"]
    timeless = draw(st.permutations(timeless))
    # interleave: keep the review rows' relative order
    slots = draw(
        st.lists(
            st.booleans(),
            min_size=len(timeless) + len(review),
            max_size=len(timeless) + len(review),
        )
    )
    out: list[dict[str, str]] = []
    ti, ri = iter(timeless), iter(review)
    left_t, left_r = len(timeless), len(review)
    for take_review in slots:
        if (take_review and left_r) or not left_t:
            out.append(next(ri))
            left_r -= 1
        else:
            out.append(next(ti))
            left_t -= 1
    if out and draw(st.booleans()):
        i = draw(st.integers(0, len(out) - 1))
        out.insert(i + 1, dict(out[i]))  # a row repeated right after itself
    shape = {
        "columns": draw(st.permutations(COLUMNS)),
        "newline": draw(st.sampled_from(["\n", "\r\n"])),
        "blank_every": draw(st.sampled_from([0, 2, 3])),
        "bom": draw(st.booleans()),
        "trailing": draw(st.booleans()),
    }
    return out, shape


def write(
    path: Path, rows: list[dict[str, str]], prefix: str, shape: dict[str, Any] | None = None
) -> Path:
    shape = shape or {
        "columns": COLUMNS,
        "newline": "\n",
        "blank_every": 0,
        "bom": False,
        "trailing": True,
    }
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator=shape["newline"])
    w.writerow(shape["columns"])
    for i, r in enumerate(rows):
        r = {**r, "core": prefix + r["core"]}
        w.writerow([r[c] for c in shape["columns"]])
        if shape["blank_every"] and i % shape["blank_every"] == 0:
            buf.write(shape["newline"])
    text = buf.getvalue()
    if not shape["trailing"]:
        text = text.rstrip("\r\n")
    path.write_bytes((("\ufeff" if shape["bom"] else "") + text).encode("utf-8"))
    return path


# --- helpers ----------------------------------------------------------------------------------


def _users_once() -> None:
    with session_scope() as s:
        if s.scalar(select(User).where(User.username == "lm")) is not None:
            return
    seed_users(len(PATHOLOGISTS) + 1)  # p4 adjudicates


def _cores(prefix: str) -> None:
    with session_scope() as s:
        patient = Patient(code=f"{prefix}P")
        s.add(patient)
        s.flush()
        for i in range(4):
            s.add(
                Core(
                    code=f"{prefix}c{i}",
                    patient_id=patient.id,
                    source_path="-",
                    sha256=f"{prefix}{i}".ljust(64, "0"),
                    width=1,
                    height=1,
                )
            )


def state(prefix: str) -> tuple[Any, ...]:
    """Votes (without ids and times) and current labels of the example's cores."""
    with session_scope() as s:
        apply_consensus(s, actor="lm")
        votes = sorted(
            (code.removeprefix(prefix), user, rnd, seq, score, comment or "")
            for code, user, rnd, seq, score, comment in s.execute(
                select(Core.code, User.username, Vote.round, Vote.seq, Vote.score, Vote.comment)
                .join(Core, Core.id == Vote.core_id)
                .join(User, User.id == Vote.user_id)
                .where(Core.code.like(f"{prefix}%"))
            )
        )
        labels = sorted(
            (code.removeprefix(prefix), status, score)
            for code, status, score in s.execute(
                select(Core.code, ConsensusLabel.status, ConsensusLabel.score)
                .join(Core, Core.id == ConsensusLabel.core_id)
                .where(Core.code.like(f"{prefix}%"), ConsensusLabel.is_current.is_(True))
            )
        )
    return tuple(votes), tuple(labels)


def _import(path: Path) -> None:
    with session_scope() as s:
        import_votes(s, actor="lm", path=path)


# --- properties -------------------------------------------------------------------------------


@_SETTINGS
@given(data=st.data())
def test_reshaped_vote_files_and_reimports_change_nothing(
    db_url: str, tmp_path: Path, data: st.DataObject
) -> None:
    _users_once()
    rows = data.draw(vote_files())
    variant, shape = data.draw(reshaped(rows))
    a, b = f"x{next(_counter)}-", f"x{next(_counter)}-"
    _cores(a)
    _cores(b)
    _import(write(tmp_path / "a.csv", rows, a))
    once = state(a)
    _import(write(tmp_path / "a2.csv", variant, a, shape))  # the same votes, saved again
    _import(write(tmp_path / "a.csv", rows, a))  # and re-imported as they were
    assert state(a) == once
    _import(write(tmp_path / "b.csv", variant, b, shape))  # the other shape, imported first
    assert state(b) == once


@_SETTINGS
@given(data=st.data())
def test_no_input_writes_part_of_a_file(db_url: str, tmp_path: Path, data: st.DataObject) -> None:
    _users_once()
    rows = data.draw(vote_files())
    bad = data.draw(
        st.lists(
            st.sampled_from(
                [
                    {"core": "c9", "pathologist": "p1", "score": "1+", "round": "", "comment": ""},
                    {"core": "c0", "pathologist": "lm", "score": "1+", "round": "", "comment": ""},
                    {"core": "c1", "pathologist": "p2", "score": "4+", "round": "", "comment": ""},
                    {"core": "c2", "pathologist": "p3", "score": "0", "round": "x", "comment": ""},
                    {
                        "core": "c3",
                        "pathologist": "p1",
                        "score": "0",
                        "round": "",
                        "comment": "nul\x00",
                    },
                ]
            ),
            min_size=1,
            max_size=3,
        )
    )
    positions = [data.draw(st.integers(0, len(rows) + i)) for i in range(len(bad))]
    mixed = list(rows)
    for pos, row in zip(positions, bad, strict=True):
        mixed.insert(pos, row)
    prefix = f"y{next(_counter)}-"
    _cores(prefix)
    before = state(prefix)
    with pytest.raises(ImportRejected) as info:
        _import(write(tmp_path / "bad.csv", mixed, prefix))
    assert len(info.value.errors) >= len(bad)
    assert state(prefix) == before


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_reshaped_manifests_change_nothing(
    db_url: str, tmp_path: Path, data: st.DataObject
) -> None:
    columns = ("patient", "core", "image", "site", "row", "col")
    folder = tmp_path / "m"
    rows = [(f"P{i // 2}", f"M{i}", f"img/m{i}.png", "A", str(i), "0") for i in range(4)]
    if not (folder / "img" / "m3.png").exists():
        for i in range(4):
            make_png(folder / "img" / f"m{i}.png", seed=1000 + i, size=(40, 40))
        _users_once()

    def manifest(
        order: list[int], cols: tuple[str, ...], newline: str, blank: bool, dup: bool
    ) -> Path:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator=newline)
        w.writerow(cols)
        picked = [rows[i] for i in order] + ([rows[order[0]]] if dup else [])
        for r in picked:
            w.writerow([dict(zip(columns, r, strict=True))[c] for c in cols])
            if blank:
                buf.write(newline)
        path = folder / "manifest.csv"
        path.write_bytes(buf.getvalue().encode())
        return path

    def snapshot() -> tuple[Any, ...]:
        with session_scope() as s:
            return tuple(
                s.execute(
                    select(Core.code, Patient.code, Core.sha256, Core.grid_row, Patient.site)
                    .join(Patient, Patient.id == Core.patient_id)
                    .order_by(Core.code)
                ).all()
            )

    def ingest(path: Path) -> None:
        with session_scope() as s:
            ingest_manifest(s, actor="lm", manifest=path, store=store(), max_pixels=10**6)

    with session_scope() as s:
        empty = s.scalar(select(Core.id).limit(1)) is None
    if empty:
        ingest(manifest([0, 1, 2, 3], columns, "\n", False, False))
    first = snapshot()
    assert len(first) == 4
    order = data.draw(st.permutations(range(4)))
    cols = data.draw(st.permutations(columns))
    variant = manifest(
        list(order),
        tuple(cols),
        data.draw(st.sampled_from(["\n", "\r\n"])),
        data.draw(st.booleans()),
        data.draw(st.booleans()),
    )
    ingest(variant)
    assert snapshot() == first
    # a bad row anywhere: the whole file is refused and nothing changes
    text = variant.read_text()
    bad_row = ",".join(
        {
            "patient": "P9",
            "core": "M9",
            "image": "img/none.png",
            "site": "A",
            "row": "1",
            "col": "0",
        }[c]
        for c in cols
    )
    variant.write_text(text + bad_row + "\n")
    with pytest.raises(ImportRejected):
        ingest(variant)
    assert snapshot() == first

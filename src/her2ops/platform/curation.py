"""Curation services: users and core ingest. Each is one transaction, all rows or none."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from her2ops.imaging.readers import ImageError, ImageInfo, file_sha256, read_rgb
from her2ops.imaging.store import CoreStore, StoreError
from her2ops.platform import audit
from her2ops.platform.access import require, user_count
from her2ops.platform.auth import hash_password
from her2ops.platform.csvio import CsvRow, read_csv, text_problem
from her2ops.platform.errors import Conflict, ImportRejected, InvalidRequest, RowError
from her2ops.platform.schema import ROLES, Core, Patient, Slide, User

T = TypeVar("T")
Progress = Callable[[Iterable[T]], Iterable[T]]


def _no_progress(items: Iterable[T]) -> Iterable[T]:
    return items


USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def validate_username(username: str) -> str:
    """The stripped name, or InvalidRequest: 1-64 of letters, digits, ``.``, ``_``, ``-``.

    No spaces, line breaks or other characters that could forge output lines or act as a
    spreadsheet formula (the name appears in exports as ``name:score``).
    """
    name = username.strip()
    if not USERNAME.match(name):
        raise InvalidRequest(
            f"bad username {name[:70]!r}: 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def add_user(
    session: Session,
    *,
    actor: str | None,
    username: str,
    role: str,
    password: str | None = None,
) -> User:
    """Add a user. The very first user may be added without an actor (bootstrap); after that
    only an admin adds users. Names differing only by case are refused (they would be told
    apart by nobody reading an export)."""
    if role not in ROLES:
        raise InvalidRequest(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    username = validate_username(username)
    password_hash = hash_password(password) if password is not None else None
    bootstrap = user_count(session) == 0
    actor_user = None if bootstrap else require(session, actor, "users.add")
    clash = session.scalar(select(User).where(func.lower(User.username) == username.lower()))
    if clash is not None:
        same = "" if clash.username == username else f" (as {clash.username!r})"
        raise Conflict(f"user {username!r} already exists{same}")
    user = User(username=username, role=role, password_hash=password_hash)
    session.add(user)
    session.flush()
    audit.record(
        session,
        actor=actor_user or user,
        action="users.add",
        entity="user",
        key=username,
        details={"role": role, "bootstrap": bootstrap, "password": password is not None},
    )
    return user


def list_users(session: Session, *, actor: str | None) -> list[dict[str, object]]:
    """Users and roles, for any active user."""
    require(session, actor, "users.list")
    return [
        {
            "username": u.username,
            "role": u.role,
            "active": u.active,
            "password": u.password_hash is not None,
        }
        for u in session.scalars(select(User).order_by(User.username))
    ]


@dataclass
class IngestReport:
    """What an ingest did: new cores, rows already present (re-run), and rows skipped."""

    manifest: str
    added: list[str] = field(default_factory=list)
    already_present: list[str] = field(default_factory=list)
    skipped: list[RowError] = field(default_factory=list)
    new_patients: int = 0
    conversions: dict[str, str] = field(default_factory=dict)
    #: core -> profiles it fits (filled by the ingest use case; pure arithmetic on the size)
    profile_fits: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "manifest": self.manifest,
            "profile_fits": self.profile_fits,
            "added": len(self.added),
            "already_present": len(self.already_present),
            "new_patients": self.new_patients,
            "skipped": [{"line": e.line, "key": e.key, "reason": e.reason} for e in self.skipped],
            "conversions": self.conversions,
        }


@dataclass
class _Candidate:
    row: CsvRow
    patient: str
    core: str
    image: Path
    slide: str | None
    grid_row: int | None
    grid_col: int | None
    site: str | None
    page: int | None = None
    sha256: str = ""
    info: ImageInfo | None = None

    @property
    def image_key(self) -> tuple[str, int]:
        """What identifies the core's image: (file sha256, page); no page column means 0."""
        return self.sha256, self.page or 0


MANIFEST_REQUIRED = ("patient", "core", "image")
#: ``page``: which image of a file that holds several (multi-page TIFF, animated PNG,
#: multi-picture JPEG), 0-based; such a file is refused without it.
MANIFEST_OPTIONAL = ("slide", "row", "col", "site", "page")
MAX_PAGE = 10_000


#: Column limits of the schema, checked before the database so both dialects refuse alike.
CODE_LIMITS = {"patient": 64, "core": 128, "slide": 128, "site": 64}
MAX_GRID = 100_000
MAX_PATH = 4096


def _parse_manifest_row(row: CsvRow, base: Path) -> _Candidate | RowError:
    patient, core, image = row.get("patient"), row.get("core"), row.get("image")
    key = (core or patient)[:40]
    if row.problem:
        return RowError(row.line, row.problem, key)
    for name, value in (("patient", patient), ("core", core), ("image", image)):
        if not value:
            return RowError(row.line, f"empty {name}", key)
    for name, limit in CODE_LIMITS.items():
        if bad := text_problem(name, row.get(name), limit, code=True):
            return RowError(row.line, bad, key)
    if bad := text_problem("image", image, MAX_PATH, code=True):
        return RowError(row.line, bad, key)
    grid: list[int | None] = []
    for name in ("row", "col"):
        text = row.get(name)
        if not text:
            grid.append(None)
            continue
        try:
            value_int = int(text)
        except ValueError:
            return RowError(row.line, f"{name} {text[:20]!r} is not an integer", key)
        if not 0 <= value_int <= MAX_GRID:
            return RowError(row.line, f"{name} {text[:20]!r} is not in 0..{MAX_GRID:,}", key)
        grid.append(value_int)
    page: int | None = None
    if text := row.get("page"):
        try:
            page = int(text)
        except ValueError:
            return RowError(row.line, f"page {text[:20]!r} is not an integer", key)
        if not 0 <= page <= MAX_PAGE:
            return RowError(row.line, f"page {text[:20]!r} is not in 0..{MAX_PAGE:,}", key)
    path = Path(image)
    if not path.is_absolute():
        path = base / path
    return _Candidate(
        row=row,
        patient=patient,
        core=core,
        image=path,
        slide=row.get("slide") or None,
        grid_row=grid[0],
        grid_col=grid[1],
        site=row.get("site") or None,
        page=page,
    )


def ingest_manifest(
    session: Session,
    *,
    actor: str | None,
    manifest: Path,
    store: CoreStore,
    max_pixels: int,
    skip_invalid: bool = False,
    progress: Progress[_Candidate] = _no_progress,
) -> IngestReport:
    """Validate every row and image of ``manifest``, then store and record the cores.

    All rows or none: any bad row raises :class:`ImportRejected` listing every bad row, and
    nothing is written to the database. With ``skip_invalid`` the good rows are loaded and the
    bad ones reported. Re-running a manifest is a no-op (same core code, patient and image). An
    image is a page of a file: different pages of one multi-page file are different cores.
    Images are copied into the store before the database transaction; a rejected import can
    leave store files that no core references, which is harmless (content-addressed, reused).
    """
    actor_user = require(session, actor, "cores.ingest")
    manifest = manifest.resolve()
    rows = read_csv(manifest, required=MANIFEST_REQUIRED, optional=MANIFEST_OPTIONAL)
    report = IngestReport(manifest=str(manifest))
    errors: list[RowError] = []
    candidates: list[_Candidate] = []

    seen_core: dict[str, int] = {}
    seen_core_row: dict[str, _Candidate] = {}
    seen_patient_site: dict[str, tuple[str | None, int]] = {}
    for row in rows:
        parsed = _parse_manifest_row(row, manifest.parent)
        if isinstance(parsed, RowError):
            errors.append(parsed)
            continue
        if parsed.core in seen_core:
            first = seen_core_row[parsed.core]
            if _same_row(first, parsed):
                continue  # the same row repeated (a re-saved file): nothing new
            errors.append(
                RowError(
                    row.line,
                    f"duplicate core code (also on line {seen_core[parsed.core]})",
                    parsed.core,
                )
            )
            continue
        seen_core[parsed.core] = row.line
        seen_core_row[parsed.core] = parsed
        prior = seen_patient_site.get(parsed.patient)
        if prior and parsed.site and prior[0] and prior[0] != parsed.site:
            errors.append(
                RowError(
                    row.line,
                    f"patient {parsed.patient} has site {parsed.site!r} "
                    f"here but {prior[0]!r} on line {prior[1]}",
                    parsed.core,
                )
            )
            continue
        if parsed.site or not prior:
            seen_patient_site[parsed.patient] = (
                parsed.site or (prior[0] if prior else None),
                row.line,
            )
        candidates.append(parsed)

    # What the database already holds for these codes.
    existing_cores = {
        c.code: c for c in _in_chunks(session, Core, Core.code, [c.core for c in candidates])
    }
    existing_patients = {
        p.code: p
        for p in _in_chunks(session, Patient, Patient.code, [c.patient for c in candidates])
    }
    patient_of_core_id = {p.id: p.code for p in existing_patients.values()}

    # Hash every file first (cheap, streaming): duplicates and re-runs are recognised before
    # any image is decoded, and each new image is then decoded exactly once. An image is a
    # (file, page) pair: the pages of one multi-page file are different cores.
    valid: list[_Candidate] = []
    seen_image: dict[tuple[str, int], _Candidate] = {}
    for cand in candidates:
        if not cand.image.is_file():
            errors.append(RowError(cand.row.line, f"{cand.image}: no such file", cand.core))
            continue
        try:
            cand.sha256 = file_sha256(cand.image)
        except OSError as exc:
            errors.append(RowError(cand.row.line, f"{cand.image}: cannot read: {exc}", cand.core))
            continue
        other = seen_image.get(cand.image_key)
        if other is not None:
            errors.append(
                RowError(
                    cand.row.line,
                    f"same image as core {other.core} on line {other.row.line}" + _page_note(cand),
                    cand.core,
                )
            )
            continue
        seen_image[cand.image_key] = cand
        valid.append(cand)

    shas = [sha for sha, _ in seen_image]
    by_image = {(c.sha256, c.page): c for c in _in_chunks(session, Core, Core.sha256, shas)}
    to_add: list[_Candidate] = []
    for cand in valid:
        existing = existing_cores.get(cand.core)
        if existing is not None:
            same_patient = patient_of_core_id.get(existing.patient_id) == cand.patient
            same_image = (existing.sha256, existing.page) == cand.image_key
            if same_image and same_patient:
                report.already_present.append(cand.core)
            else:
                what = "patient" if same_image else "image"
                errors.append(
                    RowError(
                        cand.row.line,
                        f"duplicate core code: already ingested with a different {what}",
                        cand.core,
                    )
                )
            continue
        holder = by_image.get(cand.image_key)
        if holder is not None:
            errors.append(
                RowError(
                    cand.row.line,
                    f"same image as core {holder.code}, already ingested" + _page_note(cand),
                    cand.core,
                )
            )
            continue
        patient = existing_patients.get(cand.patient)
        if patient is not None and cand.site and patient.site and patient.site != cand.site:
            errors.append(
                RowError(
                    cand.row.line,
                    f"patient {cand.patient} has site "
                    f"{cand.site!r} here but {patient.site!r} "
                    "in the database",
                    cand.core,
                )
            )
            continue
        to_add.append(cand)

    # Validate (size limit before decoding, full decode) and store each new image in one pass.
    # Store files of rows rejected later are harmless: the store is content-addressed.
    stored: dict[str, str] = {}
    for cand in progress(to_add):
        try:
            cand.info, rgb = read_rgb(
                cand.image, max_pixels=max_pixels, sha256=cand.sha256, page=cand.page
            )
        except ImageError as exc:
            errors.append(RowError(cand.row.line, str(exc), cand.core))
            continue
        if errors and not skip_invalid:
            continue  # the import will be rejected: validate the rest, store nothing more
        try:
            stored[cand.core] = _store_once(store, rgb, *cand.image_key)
        except (StoreError, OSError) as exc:
            errors.append(RowError(cand.row.line, f"could not store image: {exc}", cand.core))
        del rgb
    if errors and not skip_invalid:
        raise ImportRejected(str(manifest), sorted(errors, key=lambda e: e.line))
    report.skipped = sorted(errors, key=lambda e: e.line)

    slides = {
        s.code: s
        for s in _in_chunks(session, Slide, Slide.code, [c.slide for c in to_add if c.slide])
    }
    for cand in to_add:
        if cand.core not in stored:
            continue
        assert cand.info is not None
        patient = existing_patients.get(cand.patient)
        if patient is None:
            patient = Patient(code=cand.patient, site=cand.site)
            session.add(patient)
            existing_patients[cand.patient] = patient
            report.new_patients += 1
        elif cand.site and not patient.site:
            patient.site = cand.site
        slide = None
        if cand.slide:
            slide = slides.get(cand.slide)
            if slide is None:
                slide = Slide(code=cand.slide)
                session.add(slide)
                slides[cand.slide] = slide
        session.flush()
        session.add(
            Core(
                code=cand.core,
                patient_id=patient.id,
                slide_id=slide.id if slide else None,
                grid_row=cand.grid_row,
                grid_col=cand.grid_col,
                source_path=str(cand.image)
                + (f" [page {cand.page}]" if cand.page is not None else ""),
                store_location=stored[cand.core],
                sha256=cand.info.sha256,
                page=cand.page or 0,
                width=cand.info.width,
                height=cand.info.height,
                conversion=cand.info.conversion,
                status="ingested",
            )
        )
        report.added.append(cand.core)
        if cand.info.conversion:
            report.conversions[cand.core] = cand.info.conversion
    session.flush()
    if report.added:
        audit.record(
            session,
            actor=actor_user,
            action="cores.ingest",
            entity="manifest",
            key=str(manifest)[-256:],
            details={
                "sha256": file_sha256(manifest),
                "added": len(report.added),
                "already_present": len(report.already_present),
                "skipped": len(report.skipped),
            },
        )
    return report


def _same_row(a: _Candidate, b: _Candidate) -> bool:
    def fields(c: _Candidate) -> tuple[object, ...]:
        return (c.patient, c.core, c.image, c.page or 0, c.slide, c.grid_row, c.grid_col, c.site)

    return fields(a) == fields(b)


def _page_note(cand: _Candidate) -> str:
    return f" (page {cand.page} of the same file)" if cand.page is not None else ""


def _store_once(store: CoreStore, rgb: Any, sha256: str, page: int) -> str:
    """Store location of image ``page`` of file ``sha256``, written unless an intact copy is
    already there."""
    if store.has(sha256, page):
        try:
            return store.describe(sha256, page).location
        except StoreError:
            pass  # a damaged copy: rewrite it
    return store.put_array(rgb, sha256=sha256, page=page).location


def _in_chunks(session: Session, model: type[T], column: object, values: list[str]) -> list[T]:
    """``SELECT model WHERE column IN values`` in chunks (bind-parameter limits)."""
    out: list[T] = []
    unique = sorted(set(values))
    for i in range(0, len(unique), 5000):
        chunk = unique[i : i + 5000]
        out.extend(session.scalars(select(model).where(column.in_(chunk))))  # type: ignore[attr-defined]
    return out

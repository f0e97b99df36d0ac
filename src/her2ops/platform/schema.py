"""The system of record: SQLAlchemy 2.0 typed ORM, one schema for PostgreSQL and SQLite.

Relationships load ``lazy="raise"`` so nothing is fetched behind a caller's back; queries say what
they join. Constraint names follow one naming convention so SQLite batch migrations can address
them. Votes are append-only (database triggers refuse UPDATE and DELETE, see the migration);
consensus labels are versioned (a change of outcome adds a row and moves ``is_current``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from her2ops.platform.protocol import LabelStatus, Round

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ROLES = ("pathologist", "lab_manager", "engineer", "admin")
# One source for these names: the protocol's enums (the CHECK constraints are built from them).
VOTE_ROUNDS = tuple(r.value for r in Round)
VOTE_SCORES = ("0", "1+", "2+", "3+", "ND")
LABEL_STATUSES = tuple(s.value for s in LabelStatus)
#: The statuses that carry a training label.
LABELLED_STATUSES = tuple(s.value for s in LabelStatus if s.has_label)
CORE_STATUSES = ("ingested", "failed")
PARTITIONS = ("train", "val", "test")

# BigInteger ids on PostgreSQL, INTEGER (rowid alias) on SQLite so autoincrement works there.
IdType = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: DateTime(timezone=True)}  # noqa: RUF012


class Patient(Base):
    """A pseudonymous patient. No names or birth dates are stored, by design."""

    __tablename__ = "patients"
    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    site: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    cores: Mapped[list[Core]] = relationship(back_populates="patient", lazy="raise")


class Slide(Base):
    __tablename__ = "slides"
    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    code: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Core(Base):
    """One TMA core image: image ``page`` of the source file whose sha256 is ``sha256`` (page 0:
    the file's only or first image). The pair is unique, so one multi-page file can hold many
    cores; the store names the copy by the pair (``CoreStore.location_for``)."""

    __tablename__ = "cores"
    __table_args__ = (
        CheckConstraint(f"status IN {_in(CORE_STATUSES)}", name="status"),
        CheckConstraint("page >= 0", name="page"),
        UniqueConstraint("sha256", "page"),
    )
    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    code: Mapped[str] = mapped_column(String(128), unique=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    slide_id: Mapped[int | None] = mapped_column(ForeignKey("slides.id"), index=True)
    grid_row: Mapped[int | None] = mapped_column(Integer)
    grid_col: Mapped[int | None] = mapped_column(Integer)
    source_path: Mapped[str] = mapped_column(Text)
    store_location: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    page: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    conversion: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default="ingested")
    failure_reason: Mapped[str | None] = mapped_column(Text)
    needs_consensus: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    #: Bumped with every vote on the core; consensus clears ``needs_consensus`` only if unchanged.
    votes_version: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    patient: Mapped[Patient] = relationship(back_populates="cores", lazy="raise")


class User(Base):
    """A user. ``password_hash`` is argon2id; ``token_hash`` the sha256 of their personal token."""

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(f"role IN {_in(ROLES)}", name="role"),
        Index("ix_users_token_hash", "token_hash"),
    )
    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    password_hash: Mapped[str | None] = mapped_column(String(256))
    token_hash: Mapped[str | None] = mapped_column(String(64))
    token_created_at: Mapped[datetime | None] = mapped_column()


class Vote(Base):
    """An append-only vote. One per (core, user, round) except ``review``, which may repeat:
    ``seq`` is 0 in the other rounds and counts 1, 2, ... in review, so one unique key enforces it.
    """

    __tablename__ = "votes"
    __table_args__ = (
        CheckConstraint(f"score IN {_in(VOTE_SCORES)}", name="score"),
        CheckConstraint(f"round IN {_in(VOTE_ROUNDS)}", name="round"),
        CheckConstraint(
            "(round = 'review' AND seq >= 1) OR (round <> 'review' AND seq = 0)", name="seq"
        ),
        UniqueConstraint("core_id", "user_id", "round", "seq"),
        Index("uq_votes_core_id_import_key", "core_id", "import_key", unique=True),
    )
    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    core_id: Mapped[int] = mapped_column(ForeignKey("cores.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    score: Mapped[str] = mapped_column(String(2))
    round: Mapped[str] = mapped_column(String(16))
    seq: Mapped[int] = mapped_column(Integer, default=0)
    comment: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: Content key of an imported vote (platform/votes.py); re-imports are recognised by it.
    import_key: Mapped[str | None] = mapped_column(String(64))


class ConsensusLabel(Base):
    """A version of a core's consensus. A change of outcome adds a row and marks it current."""

    __tablename__ = "consensus_labels"
    __table_args__ = (
        CheckConstraint(f"status IN {_in(LABEL_STATUSES)}", name="status"),
        UniqueConstraint("core_id", "version"),
        Index("ix_consensus_labels_current", "core_id", "is_current"),
    )
    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    core_id: Mapped[int] = mapped_column(ForeignKey("cores.id"))
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(24))
    score: Mapped[int | None] = mapped_column(Integer)
    n_votes: Mapped[int] = mapped_column(Integer)
    agreement: Mapped[float | None] = mapped_column(Float)
    is_current: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Split(Base):
    """A named patient-level split. ``frozen_at`` is set once a model has trained on it."""

    __tablename__ = "splits"
    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    seed: Mapped[int] = mapped_column(Integer)
    ratios: Mapped[dict[str, float]] = mapped_column(JSON)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    frozen_at: Mapped[datetime | None] = mapped_column()
    frozen_reason: Mapped[str | None] = mapped_column(Text)


class SplitAssignment(Base):
    """Patient -> partition; the primary key makes one partition per patient per split."""

    __tablename__ = "split_assignments"
    __table_args__ = (CheckConstraint(f"partition IN {_in(PARTITIONS)}", name="partition"),)
    split_id: Mapped[int] = mapped_column(ForeignKey("splits.id"), primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), primary_key=True)
    partition: Mapped[str] = mapped_column(String(8))
    stratum: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEvent(Base):
    """Who did what, when. Written in the same transaction as the change it records."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    action: Mapped[str] = mapped_column(String(64), index=True)
    entity: Mapped[str] = mapped_column(String(64))
    entity_key: Mapped[str | None] = mapped_column(String(256))
    details: Mapped[dict[str, object] | None] = mapped_column(JSON)


class ModelVersion(Base):
    """A registered model version, mirrored from the MLflow registry with its lineage.

    ``(name, version)`` is MLflow's registered model name and version; ``run_id`` the MLflow run
    that trained it. Lineage: the split, the hash of the exact label snapshot it was trained on,
    the profile, and the code version.
    """

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version"),)
    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[str] = mapped_column(String(64), unique=True)
    profile: Mapped[str] = mapped_column(String(32))
    split_id: Mapped[int] = mapped_column(ForeignKey("splits.id"))
    label_snapshot_hash: Mapped[str] = mapped_column(String(64))
    code_version: Mapped[str] = mapped_column(String(64))
    aliases: Mapped[list[str]] = mapped_column(JSON, default=list)
    metrics: Mapped[dict[str, object] | None] = mapped_column(JSON)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Prediction(Base):
    """One core scored by one model version with the paper's protocol (N sets, top-k, seed).

    ``kcs_probs`` are the averaged class probabilities of the k most confident sets;
    ``set_probs`` every set's softmax output (N x 4), kept for review and re-analysis.
    """

    __tablename__ = "predictions"
    __table_args__ = (
        # one prediction per core, model version and protocol (N, k, seed, confidence)
        UniqueConstraint(
            "core_id",
            "model_version_id",
            "n_sets",
            "top_k",
            "seed",
            "confidence",
            name="uq_predictions_protocol",
        ),
        CheckConstraint("final_score >= 0 AND final_score <= 3", name="final_score"),
    )
    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    core_id: Mapped[int] = mapped_column(ForeignKey("cores.id"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    n_sets: Mapped[int] = mapped_column(Integer)
    top_k: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer)
    confidence: Mapped[str] = mapped_column(String(16))
    final_score: Mapped[int] = mapped_column(Integer)
    kcs_probs: Mapped[list[float]] = mapped_column(JSON)
    set_probs: Mapped[list[list[float]]] = mapped_column(JSON)
    kcs_indices: Mapped[list[int]] = mapped_column(JSON)
    seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


class Job(Base):
    """One piece of background work; the source of truth that Celery messages only point at.

    ``idempotency_key`` makes a second submission of the same work return this row. A worker
    holds the job while ``lease_expires_at`` is in the future; each claim increments
    ``fencing_token`` and every write a worker makes names its token in the same statement, so a
    worker whose lease expired cannot overwrite the work of the one that took over.
    ``dispatched_at`` is NULL until a message was sent: the dispatcher's outbox. ``run_after``
    holds a deferred job (a parent waiting for its children) back until then.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"status IN {_in(JOB_STATUSES)}", name="status"),
        CheckConstraint("attempts >= 0 AND max_attempts >= 1", name="attempts"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
    )
    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    queue: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, object]] = mapped_column(JSON)
    idempotency_key: Mapped[str] = mapped_column(String(256), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    progress_done: Mapped[int | None] = mapped_column(Integer)
    progress_total: Mapped[int | None] = mapped_column(Integer)
    progress_message: Mapped[str | None] = mapped_column(Text)
    progress_at: Mapped[datetime | None] = mapped_column()
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    worker: Mapped[str | None] = mapped_column(String(256))
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    fencing_token: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    result: Mapped[dict[str, object] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    error_detail: Mapped[str | None] = mapped_column(Text)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    dispatched_at: Mapped[datetime | None] = mapped_column()
    run_after: Mapped[datetime | None] = mapped_column()
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()


class EnsemblePrediction(Base):
    """One core scored by an ensemble (the ``ensemble`` job naming its member versions) under
    one combine rule and protocol. The members' own predictions are ordinary ``predictions``
    rows; ``member_finals`` repeats their decisions in member order for review.
    """

    __tablename__ = "ensemble_predictions"
    __table_args__ = (
        UniqueConstraint(
            "core_id",
            "ensemble_job_id",
            "rule",
            "n_sets",
            "top_k",
            "seed",
            "confidence",
            name="uq_ensemble_predictions_protocol",
        ),
        CheckConstraint("final_score >= 0 AND final_score <= 3", name="final_score"),
    )
    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    core_id: Mapped[int] = mapped_column(ForeignKey("cores.id"), index=True)
    ensemble_job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    rule: Mapped[str] = mapped_column(String(16))
    n_sets: Mapped[int] = mapped_column(Integer)
    top_k: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer)
    confidence: Mapped[str] = mapped_column(String(16))
    final_score: Mapped[int] = mapped_column(Integer)
    probs: Mapped[list[float]] = mapped_column(JSON)
    member_finals: Mapped[list[int]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- review queue (active learning) --------------------------------------------------------------

REVIEW_STATUSES = ("open", "claimed", "done", "skipped", "expired")
#: Statuses of an item still in the queue; at most one such item per core (a partial unique
#: index). ``skipped`` and ``expired`` items are claimable again (not by whoever skipped).
REVIEW_ACTIVE_STATUSES = ("open", "claimed", "expired", "skipped")
REVIEW_MODES = ("blinded", "adjudication")
#: Statuses a claim takes an item from (a lapsed claim is first marked ``expired``).
REVIEW_CLAIMABLE_STATUSES = ("open", "expired", "skipped")


class ReviewItem(Base):
    """One core queued for review in one review round (``round`` counts 1, 2, ... per core).

    ``reasons`` are the flags that raised it (``[{"flag", "score", "reason"}]``) and
    ``model_version_ids`` the model versions whose predictions did; ``prediction_id`` is the
    primary model's prediction (its KCS sets are what drove the decision). A claim sets
    ``claimed_by_id``, ``lease_expires_at`` and increments ``fencing_token``; a vote is accepted
    only with the current token. ``votes_needed`` review votes (from different pathologists)
    finish the item.
    """

    __tablename__ = "review_items"
    __table_args__ = (
        CheckConstraint(f"status IN {_in(REVIEW_STATUSES)}", name="status"),
        CheckConstraint(f"mode IN {_in(REVIEW_MODES)}", name="mode"),
        CheckConstraint("votes_needed >= 1", name="votes_needed"),
        UniqueConstraint("core_id", "round"),
        Index(
            "ix_review_items_one_active_per_core",
            "core_id",
            unique=True,
            sqlite_where=text(f"status IN {_in(REVIEW_ACTIVE_STATUSES)}"),
            postgresql_where=text(f"status IN {_in(REVIEW_ACTIVE_STATUSES)}"),
        ),
        # claims walk this index backwards (priority, then newest) and stop at the first match
        Index(
            "ix_review_items_claimable",
            "priority",
            "id",
            sqlite_where=text(f"status IN {_in(REVIEW_CLAIMABLE_STATUSES)}"),
            postgresql_where=text(f"status IN {_in(REVIEW_CLAIMABLE_STATUSES)}"),
        ),
        Index(
            "ix_review_items_leases",
            "lease_expires_at",
            sqlite_where=text("status = 'claimed'"),
            postgresql_where=text("status = 'claimed'"),
        ),
    )
    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    core_id: Mapped[int] = mapped_column(ForeignKey("cores.id"))
    round: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16), default="open")
    mode: Mapped[str] = mapped_column(String(16), default="blinded")
    source: Mapped[str] = mapped_column(String(16), default="flags")
    priority: Mapped[float] = mapped_column(Float, default=0.0)
    reasons: Mapped[list[dict[str, object]]] = mapped_column(JSON, default=list)
    model_version_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    prediction_id: Mapped[int | None] = mapped_column(ForeignKey("predictions.id"))
    votes_needed: Mapped[int] = mapped_column(Integer, default=1)
    votes_done: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    claimed_at: Mapped[datetime | None] = mapped_column()
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    fencing_token: Mapped[int] = mapped_column(Integer, default=0)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    done_at: Mapped[datetime | None] = mapped_column()


class ReviewSkip(Base):
    """A pathologist skipped an item: it is not offered to them again."""

    __tablename__ = "review_skips"
    item_id: Mapped[int] = mapped_column(ForeignKey("review_items.id"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

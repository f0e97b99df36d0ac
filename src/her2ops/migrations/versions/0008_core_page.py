"""core page: a core's image is (file sha256, page), unique as a pair

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 00:20:00

- ``cores.page``: which image of the source file the core is (0: the file's only or first
  image; every existing core gets 0, which is what was ingested for it), ``page >= 0``.
- The unique key ``uq_cores_sha256`` becomes ``uq_cores_sha256_page``: two cores may come from
  different pages of one multi-page file, never from the same page twice.

On SQLite the unique key is part of the table definition, so the table is rebuilt (batch
mode). Other tables refer to ``cores``; ``env.py`` runs SQLite migrations with foreign keys off
and checks them before committing, as SQLite's ALTER TABLE procedure asks.

Downgrade refuses (``Conflict``, one line in the CLI) while two cores share a file: the old
schema cannot hold them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from her2ops.errors import Conflict

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_SHARED_FILES = (
    "SELECT sha256, COUNT(*) FROM cores GROUP BY sha256 HAVING COUNT(*) > 1 ORDER BY sha256 LIMIT 5"
)


def upgrade() -> None:
    with op.batch_alter_table("cores", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("page", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
        batch_op.drop_constraint(batch_op.f("uq_cores_sha256"), type_="unique")
        batch_op.create_unique_constraint(batch_op.f("uq_cores_sha256_page"), ["sha256", "page"])
        batch_op.create_check_constraint(batch_op.f("ck_cores_page"), "page >= 0")
    _check_foreign_keys()


def downgrade() -> None:
    shared = op.get_bind().execute(sa.text(_SHARED_FILES)).all()
    if shared:
        files = ", ".join(f"{sha[:12]}... ({n} cores)" for sha, n in shared)
        raise Conflict(
            "cannot downgrade below 0008: several cores come from pages of one file "
            f"({files}); the earlier schema allows one core per file"
        )
    with op.batch_alter_table("cores", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_cores_page"), type_="check")
        batch_op.drop_constraint(batch_op.f("uq_cores_sha256_page"), type_="unique")
        batch_op.create_unique_constraint(batch_op.f("uq_cores_sha256"), ["sha256"])
        batch_op.drop_column("page")
    _check_foreign_keys()


def _check_foreign_keys() -> None:
    """After a SQLite rebuild (foreign keys off, see env.py): every reference still resolves."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    broken = bind.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        raise RuntimeError(f"rebuilding cores broke foreign keys: {broken[:5]}")

"""hardening: credentials on users, a per-core votes counter, content keys of imported votes

Revision ID: 0005
Revises: 0003
Create Date: 2026-11-27 19:05:00

- ``users.password_hash`` (argon2id) and ``users.token_hash`` / ``users.token_created_at``
  (sha256 of the personal token written by ``her2ops login``).
- ``cores.votes_version``: bumped whenever a vote arrives; a consensus run clears a core's
  ``needs_consensus`` mark only if the counter is still the one it read (compare-and-clear), so
  votes that arrive during a run are never left unresolved.
- ``votes.import_key``: content key of an imported vote (see ``platform/votes.py``); unique per
  core so that two concurrent imports of the same rows cannot both append them.

Columns are added with plain ``ALTER TABLE ... ADD COLUMN`` (no batch copy on SQLite), so the
append-only triggers of ``votes`` survive.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("password_hash", sa.String(length=256), nullable=True))
    op.add_column("users", sa.Column("token_hash", sa.String(length=64), nullable=True))
    op.add_column("users", sa.Column("token_created_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "cores",
        sa.Column("votes_version", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )
    op.add_column("votes", sa.Column("import_key", sa.String(length=64), nullable=True))
    op.create_index("uq_votes_core_id_import_key", "votes", ["core_id", "import_key"], unique=True)
    op.create_index("ix_users_token_hash", "users", ["token_hash"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_users_token_hash", table_name="users")
    op.drop_index("uq_votes_core_id_import_key", table_name="votes")
    # SQLite >= 3.35 drops a column in place (the append-only triggers stay).
    op.drop_column("votes", "import_key")
    op.drop_column("cores", "votes_version")
    op.drop_column("users", "token_created_at")
    op.drop_column("users", "token_hash")
    op.drop_column("users", "password_hash")

"""review queue: review_items (one active item per core), review_skips

Revision ID: 0007
Revises: 0006 (jobs; the lead re-chains it if other branches land first)
Create Date: 2026-11-27 19:13:04.412945
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "review_items",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("core_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.Float(), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("model_version_ids", sa.JSON(), nullable=False),
        sa.Column(
            "prediction_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("votes_needed", sa.Integer(), nullable=False),
        sa.Column("votes_done", sa.Integer(), nullable=False),
        sa.Column(
            "claimed_by_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("fencing_token", sa.Integer(), nullable=False),
        sa.Column(
            "created_by_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "mode IN ('blinded', 'adjudication')", name=op.f("ck_review_items_mode")
        ),
        sa.CheckConstraint(
            "status IN ('open', 'claimed', 'done', 'skipped', 'expired')",
            name=op.f("ck_review_items_status"),
        ),
        sa.CheckConstraint("votes_needed >= 1", name=op.f("ck_review_items_votes_needed")),
        sa.ForeignKeyConstraint(
            ["claimed_by_id"], ["users.id"], name=op.f("fk_review_items_claimed_by_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["core_id"], ["cores.id"], name=op.f("fk_review_items_core_id_cores")
        ),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["users.id"], name=op.f("fk_review_items_created_by_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["predictions.id"],
            name=op.f("fk_review_items_prediction_id_predictions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_items")),
        sa.UniqueConstraint("core_id", "round", name=op.f("uq_review_items_core_id_round")),
    )
    with op.batch_alter_table("review_items", schema=None) as batch_op:
        batch_op.create_index(
            "ix_review_items_claimable",
            ["priority", "id"],
            unique=False,
            sqlite_where=sa.text("status IN ('open', 'expired', 'skipped')"),
            postgresql_where=sa.text("status IN ('open', 'expired', 'skipped')"),
        )
        batch_op.create_index(
            batch_op.f("ix_review_items_claimed_by_id"), ["claimed_by_id"], unique=False
        )
        batch_op.create_index(
            "ix_review_items_leases",
            ["lease_expires_at"],
            unique=False,
            sqlite_where=sa.text("status = 'claimed'"),
            postgresql_where=sa.text("status = 'claimed'"),
        )
        batch_op.create_index(
            "ix_review_items_one_active_per_core",
            ["core_id"],
            unique=True,
            sqlite_where=sa.text("status IN ('open', 'claimed', 'expired', 'skipped')"),
            postgresql_where=sa.text("status IN ('open', 'claimed', 'expired', 'skipped')"),
        )

    op.create_table(
        "review_skips",
        sa.Column("item_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["item_id"], ["review_items.id"], name=op.f("fk_review_skips_item_id_review_items")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_review_skips_user_id_users")
        ),
        sa.PrimaryKeyConstraint("item_id", "user_id", name=op.f("pk_review_skips")),
    )


def downgrade() -> None:
    op.drop_table("review_skips")
    with op.batch_alter_table("review_items", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_review_items_one_active_per_core",
            sqlite_where=sa.text("status IN ('open', 'claimed', 'expired', 'skipped')"),
            postgresql_where=sa.text("status IN ('open', 'claimed', 'expired', 'skipped')"),
        )
        batch_op.drop_index(
            "ix_review_items_leases",
            sqlite_where=sa.text("status = 'claimed'"),
            postgresql_where=sa.text("status = 'claimed'"),
        )
        batch_op.drop_index(batch_op.f("ix_review_items_claimed_by_id"))
        batch_op.drop_index(
            "ix_review_items_claimable",
            sqlite_where=sa.text("status IN ('open', 'expired', 'skipped')"),
            postgresql_where=sa.text("status IN ('open', 'expired', 'skipped')"),
        )

    op.drop_table("review_items")

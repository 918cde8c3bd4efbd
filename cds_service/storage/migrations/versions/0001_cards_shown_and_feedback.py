"""cards_shown and feedback

Revision ID: 0001
Revises:
Create Date: 2026-06-15
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cards_shown",
        sa.Column("card_uuid", sa.String(64), primary_key=True),
        sa.Column("service_id", sa.String(200), nullable=False),
        sa.Column("rule", sa.String(200), nullable=False),
        sa.Column("ruleset_version", sa.String(100), nullable=False),
        sa.Column("indicator", sa.String(16), nullable=False),
        sa.Column("hook_instance", sa.Text(), nullable=False),
        sa.Column("patient_key", sa.String(64), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("suggestion_uuids", sa.JSON(), nullable=False),
    )
    op.create_index("ix_cards_shown_rule_version", "cards_shown", ["rule", "ruleset_version", "issued_at"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("card_uuid", sa.String(64), sa.ForeignKey("cards_shown.card_uuid"), nullable=False),
        # copied from the card, for the suppression index below
        sa.Column("patient_key", sa.String(64), nullable=False),
        sa.Column("rule", sa.String(200), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("accepted_suggestions", sa.JSON(), nullable=False),
        sa.Column("override_reason_system", sa.Text(), nullable=True),
        sa.Column("override_reason_code", sa.Text(), nullable=True),
        sa.Column("override_reason_display", sa.Text(), nullable=True),
        sa.Column("user_comment", sa.Text(), nullable=True),
        sa.Column("outcome_timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("outcome IN ('accepted', 'overridden')", name="ck_feedback_outcome"),
        sa.UniqueConstraint("card_uuid", "outcome", "outcome_timestamp", name="uq_feedback_item"),
    )
    op.create_index(
        "ix_feedback_suppression", "feedback", ["patient_key", "rule", "outcome", "outcome_timestamp"]
    )


def downgrade() -> None:
    op.drop_index("ix_feedback_suppression", table_name="feedback")
    op.drop_table("feedback")
    op.drop_index("ix_cards_shown_rule_version", table_name="cards_shown")
    op.drop_table("cards_shown")

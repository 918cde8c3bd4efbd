"""admin_sign_in_attempts: the console's sign-in throttle, shared by every worker and replica

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "admin_sign_in_attempts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        # SHA-256 of (user name, address): neither is stored in clear (admin/sign_in_throttle.throttle_key)
        sa.Column("throttle_key", sa.String(64), nullable=False),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_sign_in_attempts_key", "admin_sign_in_attempts", ["throttle_key", "attempted_at"])
    op.create_index("ix_sign_in_attempts_at", "admin_sign_in_attempts", ["attempted_at"])  # the purge


def downgrade() -> None:
    op.drop_index("ix_sign_in_attempts_at", table_name="admin_sign_in_attempts")
    op.drop_index("ix_sign_in_attempts_key", table_name="admin_sign_in_attempts")
    op.drop_table("admin_sign_in_attempts")

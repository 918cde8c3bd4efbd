"""admin console: accounts, audit log, rule-set versions and their deployments

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "admin_users",
        sa.Column("username", sa.String(200), primary_key=True),
        sa.Column("password_hash", sa.Text(), nullable=True),  # None: signs in through OpenID Connect only
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("display_name", sa.Text(), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("role IN ('viewer', 'editor', 'deployer')", name="ck_admin_users_role"),
    )
    op.create_table(
        "admin_audit",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("from_version", sa.String(100), nullable=True),
        sa.Column("to_version", sa.String(100), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
    )
    op.create_index("ix_admin_audit_at", "admin_audit", ["at"])
    op.create_table(
        "ruleset_versions",
        sa.Column("version", sa.String(100), primary_key=True),
        sa.Column("content", sa.Text(), nullable=False),  # the YAML text as written, comments included
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deployed_by", sa.String(200), nullable=True),
        sa.Column("deployed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('draft', 'active', 'retired')", name="ck_ruleset_versions_status"),
    )
    # One row per change of the active version (seed, deploy, rollback): its sequence number is what every
    # replica polls. prior_sequence is the state a rollback from this one returns to (a stack of deploys).
    op.create_table(
        "ruleset_deployments",
        sa.Column("sequence", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                  autoincrement=False),
        sa.Column("version", sa.String(100), sa.ForeignKey("ruleset_versions.version"), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("prior_sequence", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.CheckConstraint("action IN ('seed', 'deploy', 'rollback')", name="ck_ruleset_deployments_action"),
    )
    # The one row every replica reads (cheaply, by primary key) and every change locks first
    # (PostgreSQL: SELECT ... FOR UPDATE; SQLite: BEGIN IMMEDIATE), so two deploys at once run one after the other.
    op.create_table(
        "ruleset_active",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("sequence", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("version", sa.String(100), sa.ForeignKey("ruleset_versions.version"), nullable=True),
        sa.CheckConstraint("id = 1", name="ck_ruleset_active_one_row"),
    )
    op.bulk_insert(
        sa.table("ruleset_active", sa.column("id", sa.Integer()), sa.column("sequence", sa.BigInteger()),
                 sa.column("version", sa.String())),
        [{"id": 1, "sequence": 0, "version": None}],
    )


def downgrade() -> None:
    op.drop_table("ruleset_active")
    op.drop_table("ruleset_deployments")
    op.drop_table("ruleset_versions")
    op.drop_index("ix_admin_audit_at", table_name="admin_audit")
    op.drop_table("admin_audit")
    op.drop_table("admin_users")

"""users and API tokens of the management API

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "opt_users",
        sa.Column("user_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("username", sa.String(length=100), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("role IN ('viewer', 'operator')", name=op.f("ck_opt_users_role")),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_opt_users")),
        sa.UniqueConstraint("username", name=op.f("uq_opt_users_username")),
    )
    op.create_table(
        "opt_api_tokens",
        sa.Column("token_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["opt_users.user_id"], ondelete="CASCADE", name=op.f("fk_opt_api_tokens_user_id_opt_users")
        ),
        sa.PrimaryKeyConstraint("token_id", name=op.f("pk_opt_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_opt_api_tokens_token_hash")),
    )
    with op.batch_alter_table("opt_api_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_opt_api_tokens_user_id"), ["user_id"], unique=False)


def downgrade() -> None:
    op.drop_table("opt_api_tokens")
    op.drop_table("opt_users")

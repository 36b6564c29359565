"""catalogue administration: the admin role and the audit log

Revision ID: 0005
Revises: 0004

* ``opt_users.role`` also admits ``admin`` (catalogue writes).
* ``opt_audit_log``: every catalogue and split change, who made it, old and new values.

Changing a CHECK constraint on SQLite means rebuilding ``opt_users`` (batch mode). With foreign
keys on (the engine turns them on), dropping the old table cascades to ``opt_api_tokens``, so the
tokens are kept aside and put back after the rebuild, whatever the pragma says.

The downgrade drops the audit log, its history with it, and makes admins operators.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

OLD_ROLES = "role IN ('viewer', 'operator')"
NEW_ROLES = "role IN ('viewer', 'operator', 'admin')"


def _replace_role_check(condition: str) -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        op.execute("CREATE TEMPORARY TABLE _bidopt_tokens_0005 AS SELECT * FROM opt_api_tokens")
    with op.batch_alter_table("opt_users") as batch:
        batch.drop_constraint(op.f("ck_opt_users_role"), type_="check")
        batch.create_check_constraint("role", condition)
    if sqlite:
        op.execute("DELETE FROM opt_api_tokens")
        op.execute("INSERT INTO opt_api_tokens SELECT * FROM _bidopt_tokens_0005")
        op.execute("DROP TABLE _bidopt_tokens_0005")


def upgrade() -> None:
    _replace_role_check(NEW_ROLES)
    op.create_table(
        "opt_audit_log",
        sa.Column("audit_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("object_type", sa.String(length=16), nullable=False),
        sa.Column("object_key", sa.String(length=200), nullable=False),
        sa.Column("entity_code", sa.String(length=64), nullable=True),
        sa.Column("old_value", sa.Text(), nullable=True),
        sa.Column("new_value", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("audit_id", name=op.f("pk_opt_audit_log")),
    )
    op.create_index("ix_opt_audit_log_entity_code_audit_id", "opt_audit_log", ["entity_code", "audit_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_opt_audit_log_entity_code_audit_id", table_name="opt_audit_log")
    op.drop_table("opt_audit_log")
    # admins become operators: the old constraint does not admit them
    op.execute("UPDATE opt_users SET role = 'operator' WHERE role = 'admin'")
    _replace_role_check(OLD_ROLES)

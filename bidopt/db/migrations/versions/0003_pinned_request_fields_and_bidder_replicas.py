"""runs pin their features' request fields; bidder replicas report what they serve

Revision ID: 0003
Revises: 0002

* ``opt_run_features.request_field``: the macro's request field when the run was trained, so
  that editing a macro later does not change how an old run's keys are built. Existing rows
  are filled from their macro's current field (the best there is for runs made before).
* ``opt_bidder_replicas``: one row per bidder replica with the split it serves per entity.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("opt_run_features", schema=None) as batch_op:
        batch_op.add_column(sa.Column("request_field", sa.String(length=200), nullable=True))
    # a correlated subquery: the same statement on SQLite and PostgreSQL
    op.execute(
        "UPDATE opt_run_features SET request_field = ("
        "SELECT m.request_field FROM opt_feature_macros m WHERE m.macro_id = opt_run_features.macro_id) "
        "WHERE macro_id IS NOT NULL"
    )
    op.create_table(
        "opt_bidder_replicas",
        sa.Column("replica_id", sa.String(length=200), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("reported_at", sa.DateTime(), nullable=False),
        sa.Column("refresh_seconds", sa.Float(), nullable=False),
        sa.Column("ready", sa.Boolean(), nullable=False),
        sa.Column("serving", sa.Text(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("replica_id", name=op.f("pk_opt_bidder_replicas")),
    )


def downgrade() -> None:
    op.drop_table("opt_bidder_replicas")
    with op.batch_alter_table("opt_run_features", schema=None) as batch_op:
        batch_op.drop_column("request_field")

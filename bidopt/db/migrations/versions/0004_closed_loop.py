"""closed loop: event compactions, optimizer schedules, split reasons, replica counters

Revision ID: 0004
Revises: 0003

* ``opt_event_compactions``: which hours of an entity's bidder events are in its warehouse.
* ``opt_schedules``: per-entity optimizer schedules; ``opt_runs.scheduled_for`` (unique per
  entity) is the slot a scheduled run was made for, so two schedulers cannot both create it.
* ``opt_deployments.reason``: why an automatic actor (a guardrail, a promotion) deployed a split.
* ``opt_bidder_replicas.counters``: a replica's notice counters (accepted, rejected by reason).
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "opt_event_compactions",
        sa.Column("compaction_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("entity_id", sa.Integer(), nullable=False),
        sa.Column("hour_start", sa.DateTime(), nullable=False),
        sa.Column("decisions", sa.Integer(), nullable=False),
        sa.Column("rows_loaded", sa.Integer(), nullable=False),
        sa.Column("wins", sa.Integer(), nullable=False),
        sa.Column("clicks", sa.Integer(), nullable=False),
        sa.Column("compacted_at", sa.DateTime(), nullable=False),
        sa.Column("compacted_by", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(
            ["entity_id"],
            ["opt_entities.entity_id"],
            name=op.f("fk_opt_event_compactions_entity_id_opt_entities"),
        ),
        sa.PrimaryKeyConstraint("compaction_id", name=op.f("pk_opt_event_compactions")),
        sa.UniqueConstraint("entity_id", "hour_start", name=op.f("uq_opt_event_compactions_entity_id_hour_start")),
    )
    op.create_table(
        "opt_schedules",
        sa.Column("schedule_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("entity_id", sa.Integer(), nullable=False),
        sa.Column("every_hours", sa.Float(), nullable=False),
        sa.Column("configs", sa.Text(), nullable=False),
        sa.Column("next_due_at", sa.DateTime(), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_run_id", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["entity_id"], ["opt_entities.entity_id"], name=op.f("fk_opt_schedules_entity_id_opt_entities")
        ),
        sa.PrimaryKeyConstraint("schedule_id", name=op.f("pk_opt_schedules")),
        sa.UniqueConstraint("entity_id", name=op.f("uq_opt_schedules_entity_id")),
    )
    # Plain ADD COLUMN and a unique index, never a batch table rebuild: on SQLite a rebuild drops
    # and recreates opt_runs, and with foreign keys on the drop cascades to every run's configs,
    # metrics and features (the with-data migration test caught exactly that).
    if "scheduled_for" not in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("opt_runs")}:
        op.add_column("opt_runs", sa.Column("scheduled_for", sa.DateTime(), nullable=True))  # kept by a downgrade
    op.create_index("ix_opt_runs_entity_id_scheduled_for", "opt_runs", ["entity_id", "scheduled_for"], unique=True)
    op.add_column("opt_deployments", sa.Column("reason", sa.Text(), nullable=True))
    op.add_column("opt_bidder_replicas", sa.Column("counters", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("opt_bidder_replicas", schema=None) as batch_op:
        batch_op.drop_column("counters")
    with op.batch_alter_table("opt_deployments", schema=None) as batch_op:
        batch_op.drop_column("reason")
    op.drop_index("ix_opt_runs_entity_id_scheduled_for", table_name="opt_runs")
    # opt_runs.scheduled_for stays: dropping a column rebuilds opt_runs on SQLite, and the rebuild's
    # DROP TABLE cascades to the runs' configs, metrics and features. 0003's code ignores it.
    op.drop_table("opt_schedules")
    op.drop_table("opt_event_compactions")

"""initial schema: the ten opt_ tables

Revision ID: 0001
Revises:
Create Date: 2026-11-25 00:33:07.743847
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "opt_master",
        sa.Column("master_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("source_code", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("source_type", sa.String(length=16), nullable=False),
        sa.Column("auction_type", sa.String(length=16), nullable=False),
        sa.Column("macro_namespace", sa.String(length=32), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("auction_type IN ('first_price', 'second_price')", name=op.f("ck_opt_master_auction_type")),
        sa.CheckConstraint("source_type IN ('exchange', 'ssp')", name=op.f("ck_opt_master_source_type")),
        sa.PrimaryKeyConstraint("master_id", name=op.f("pk_opt_master")),
        sa.UniqueConstraint("source_code", name=op.f("uq_opt_master_source_code")),
    )
    op.create_table(
        "opt_versions",
        sa.Column("version_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("version_name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("anchor_feature", sa.String(length=64), nullable=False),
        sa.Column("min_win_auc", sa.Float(), nullable=False),
        sa.Column("max_win_ece", sa.Float(), nullable=False),
        sa.Column("min_bid_coverage", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("version_id", name=op.f("pk_opt_versions")),
        sa.UniqueConstraint("version_name", name=op.f("uq_opt_versions_version_name")),
    )
    op.create_table(
        "opt_entities",
        sa.Column("entity_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("entity_code", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("master_id", sa.Integer(), nullable=False),
        sa.Column("current_version_id", sa.Integer(), nullable=False),
        sa.Column("base_path", sa.String(length=500), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["current_version_id"],
            ["opt_versions.version_id"],
            name=op.f("fk_opt_entities_current_version_id_opt_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["master_id"], ["opt_master.master_id"], name=op.f("fk_opt_entities_master_id_opt_master")
        ),
        sa.PrimaryKeyConstraint("entity_id", name=op.f("pk_opt_entities")),
        sa.UniqueConstraint("entity_code", name=op.f("uq_opt_entities_entity_code")),
    )
    with op.batch_alter_table("opt_entities", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_opt_entities_master_id"), ["master_id"], unique=False)

    op.create_table(
        "opt_feature_macros",
        sa.Column("macro_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("master_id", sa.Integer(), nullable=False),
        sa.Column("feature_name", sa.String(length=64), nullable=False),
        sa.Column("macro_template", sa.String(length=100), nullable=False),
        sa.Column("request_field", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=1), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.CheckConstraint("status IN ('A', 'I')", name=op.f("ck_opt_feature_macros_status")),
        sa.ForeignKeyConstraint(
            ["master_id"], ["opt_master.master_id"], name=op.f("fk_opt_feature_macros_master_id_opt_master")
        ),
        sa.PrimaryKeyConstraint("macro_id", name=op.f("pk_opt_feature_macros")),
        sa.UniqueConstraint("master_id", "feature_name", name=op.f("uq_opt_feature_macros_master_id_feature_name")),
    )
    op.create_table(
        "opt_entity_configs",
        sa.Column("entity_config_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("entity_id", sa.Integer(), nullable=False),
        sa.Column("config_key", sa.String(length=64), nullable=False),
        sa.Column("config_value", sa.String(length=500), nullable=False),
        sa.Column("value_type", sa.String(length=8), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint(
            "value_type IN ('bool', 'int', 'float', 'str')", name=op.f("ck_opt_entity_configs_value_type")
        ),
        sa.ForeignKeyConstraint(
            ["entity_id"],
            ["opt_entities.entity_id"],
            name=op.f("fk_opt_entity_configs_entity_id_opt_entities"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("entity_config_id", name=op.f("pk_opt_entity_configs")),
        sa.UniqueConstraint("entity_id", "config_key", name=op.f("uq_opt_entity_configs_entity_id_config_key")),
    )
    op.create_table(
        "opt_runs",
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("entity_id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("triggered_by", sa.String(length=100), nullable=False),
        sa.Column("trigger_type", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("completed_at", sa.DateTime(), nullable=True),
        sa.Column("worker_id", sa.String(length=200), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("segments_count", sa.Integer(), nullable=True),
        sa.Column("bid_median", sa.Float(), nullable=True),
        sa.Column("bid_min", sa.Float(), nullable=True),
        sa.Column("bid_max", sa.Float(), nullable=True),
        sa.Column("s3_output_path", sa.String(length=1000), nullable=True),
        sa.Column("validation_status", sa.String(length=16), nullable=True),
        sa.Column("validation_details", sa.Text(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'running', 'completed', 'failed')", name=op.f("ck_opt_runs_status")),
        sa.CheckConstraint(
            "trigger_type IN ('manual', 'api', 'scheduled', 'retry')", name=op.f("ck_opt_runs_trigger_type")
        ),
        sa.CheckConstraint(
            "validation_status IS NULL OR validation_status IN ('passed', 'failed')",
            name=op.f("ck_opt_runs_validation_status"),
        ),
        sa.ForeignKeyConstraint(
            ["entity_id"], ["opt_entities.entity_id"], name=op.f("fk_opt_runs_entity_id_opt_entities")
        ),
        sa.ForeignKeyConstraint(
            ["version_id"], ["opt_versions.version_id"], name=op.f("fk_opt_runs_version_id_opt_versions")
        ),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_opt_runs")),
    )
    with op.batch_alter_table("opt_runs", schema=None) as batch_op:
        batch_op.create_index("ix_opt_runs_entity_id_status", ["entity_id", "status"], unique=False)
        batch_op.create_index("ix_opt_runs_status_created_at", ["status", "created_at"], unique=False)

    op.create_table(
        "opt_deployments",
        sa.Column("deployment_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("split_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("entity_id", sa.Integer(), nullable=False),
        sa.Column("traffic_pct", sa.Integer(), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("deployed_by", sa.String(length=100), nullable=False),
        sa.Column("deployed_at", sa.DateTime(), nullable=False),
        sa.Column("deactivated_at", sa.DateTime(), nullable=True),
        sa.CheckConstraint("traffic_pct > 0 AND traffic_pct <= 100", name=op.f("ck_opt_deployments_traffic_pct")),
        sa.ForeignKeyConstraint(
            ["entity_id"], ["opt_entities.entity_id"], name=op.f("fk_opt_deployments_entity_id_opt_entities")
        ),
        sa.ForeignKeyConstraint(["run_id"], ["opt_runs.run_id"], name=op.f("fk_opt_deployments_run_id_opt_runs")),
        sa.PrimaryKeyConstraint("deployment_id", name=op.f("pk_opt_deployments")),
    )
    with op.batch_alter_table("opt_deployments", schema=None) as batch_op:
        batch_op.create_index("ix_opt_deployments_entity_id_is_active", ["entity_id", "is_active"], unique=False)

    op.create_table(
        "opt_run_configs",
        sa.Column("run_config_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("section", sa.String(length=16), nullable=False),
        sa.Column("config_key", sa.String(length=64), nullable=False),
        sa.Column("config_value", sa.String(length=500), nullable=False),
        sa.Column("value_type", sa.String(length=8), nullable=False),
        sa.CheckConstraint("section IN ('business', 'technical')", name=op.f("ck_opt_run_configs_section")),
        sa.CheckConstraint("value_type IN ('bool', 'int', 'float', 'str')", name=op.f("ck_opt_run_configs_value_type")),
        sa.ForeignKeyConstraint(
            ["run_id"], ["opt_runs.run_id"], name=op.f("fk_opt_run_configs_run_id_opt_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_config_id", name=op.f("pk_opt_run_configs")),
        sa.UniqueConstraint("run_id", "config_key", name=op.f("uq_opt_run_configs_run_id_config_key")),
    )
    op.create_table(
        "opt_run_features",
        sa.Column("run_feature_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("feature_name", sa.String(length=64), nullable=False),
        sa.Column("feature_order", sa.Integer(), nullable=False),
        sa.Column("is_anchor", sa.Boolean(), nullable=False),
        sa.Column("signal_score", sa.Float(), nullable=True),
        sa.Column("macro_id", sa.Integer(), nullable=True),
        sa.CheckConstraint(
            "signal_score IS NULL OR (signal_score >= 0 AND signal_score <= 100)",
            name=op.f("ck_opt_run_features_signal_score"),
        ),
        sa.ForeignKeyConstraint(
            ["macro_id"], ["opt_feature_macros.macro_id"], name=op.f("fk_opt_run_features_macro_id_opt_feature_macros")
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["opt_runs.run_id"], name=op.f("fk_opt_run_features_run_id_opt_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_feature_id", name=op.f("pk_opt_run_features")),
        sa.UniqueConstraint("run_id", "feature_name", name=op.f("uq_opt_run_features_run_id_feature_name")),
        sa.UniqueConstraint("run_id", "feature_order", name=op.f("uq_opt_run_features_run_id_feature_order")),
    )
    op.create_table(
        "opt_run_metrics",
        sa.Column("metric_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("section", sa.String(length=64), nullable=False),
        sa.Column("metric_name", sa.String(length=100), nullable=False),
        sa.Column("metric_value", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["opt_runs.run_id"], name=op.f("fk_opt_run_metrics_run_id_opt_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("metric_id", name=op.f("pk_opt_run_metrics")),
        sa.UniqueConstraint(
            "run_id", "section", "metric_name", name=op.f("uq_opt_run_metrics_run_id_section_metric_name")
        ),
    )


def downgrade() -> None:
    op.drop_table("opt_run_metrics")
    op.drop_table("opt_run_features")
    op.drop_table("opt_run_configs")
    with op.batch_alter_table("opt_deployments", schema=None) as batch_op:
        batch_op.drop_index("ix_opt_deployments_entity_id_is_active")

    op.drop_table("opt_deployments")
    with op.batch_alter_table("opt_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_opt_runs_status_created_at")
        batch_op.drop_index("ix_opt_runs_entity_id_status")

    op.drop_table("opt_runs")
    op.drop_table("opt_entity_configs")
    op.drop_table("opt_feature_macros")
    with op.batch_alter_table("opt_entities", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_opt_entities_master_id"))

    op.drop_table("opt_entities")
    op.drop_table("opt_versions")
    op.drop_table("opt_master")

"""SQLAlchemy 2.0 typed models of the ``opt_*`` tables (the ten optimizer tables, users and tokens,
bidder replicas, compactions, schedules, the audit log).

Reading of the two catalogue tables:

* ``opt_master`` is the catalogue of supply sources (an exchange or SSP) the
  buyer bids on: its auction type and the macro namespace its bid requests use.
* ``opt_versions`` holds versioned optimizer set-ups (anchor feature, quality
  thresholds); an entity points at one with ``current_version_id`` and every
  run records the version it was made with.

Timestamps are naive UTC (``bidopt.db.models.utcnow``) on both SQLite and
PostgreSQL. Status values are text with CHECK constraints rather than native
enums so that migrations stay identical on both databases. Schema changes go
through Alembic migrations only (``bidopt/db/migrations``); a test checks that
the migrations produce exactly these models.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

RUN_STATUSES = ("pending", "running", "completed", "failed")
TRIGGER_TYPES = ("manual", "api", "scheduled", "retry")
VALIDATION_STATUSES = ("passed", "failed")
AUCTION_TYPES = ("first_price", "second_price")
SOURCE_TYPES = ("exchange", "ssp")
MACRO_STATUSES = ("A", "I")  # A = active, I = inactive
CONFIG_SECTIONS = ("business", "technical")
ROLES = ("viewer", "operator", "admin")  # viewer: read; operator: also runs and splits; admin: also the catalogue
VALUE_TYPES = ("bool", "int", "float", "str")


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


# Deterministic constraint names so that migrations and models agree on both databases.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class OptMaster(Base):
    """A supply source: exchange or SSP."""

    __tablename__ = "opt_master"
    __table_args__ = (
        CheckConstraint(_in("source_type", SOURCE_TYPES), name="source_type"),
        CheckConstraint(_in("auction_type", AUCTION_TYPES), name="auction_type"),
    )

    master_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source_code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    source_type: Mapped[str] = mapped_column(String(16))
    auction_type: Mapped[str] = mapped_column(String(16))
    macro_namespace: Mapped[str] = mapped_column(String(32))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class OptVersion(Base):
    """A versioned optimizer set-up."""

    __tablename__ = "opt_versions"

    version_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version_name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    anchor_feature: Mapped[str] = mapped_column(String(64), default="geo_region_name")
    # Validation thresholds applied to every run of this version.
    min_win_auc: Mapped[float] = mapped_column(Float, default=0.55)
    max_win_ece: Mapped[float] = mapped_column(Float, default=0.05)
    min_bid_coverage: Mapped[float] = mapped_column(Float, default=0.95)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class OptEntity(Base):
    """An advertiser line the optimizer buys for, e.g. ``drugs_hcp``."""

    __tablename__ = "opt_entities"

    entity_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    entity_code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    master_id: Mapped[int] = mapped_column(ForeignKey("opt_master.master_id"), index=True)
    current_version_id: Mapped[int] = mapped_column(ForeignKey("opt_versions.version_id"))
    # Where the entity's artifacts live: an absolute URL (s3://bucket/x, file:///x)
    # or a path relative to the artifact store URL of the settings.
    base_path: Mapped[str] = mapped_column(String(500))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    master: Mapped[OptMaster] = relationship()
    current_version: Mapped[OptVersion] = relationship()
    configs: Mapped[list[OptEntityConfig]] = relationship(
        back_populates="entity", order_by="OptEntityConfig.config_key"
    )


class OptEntityConfig(Base):
    """Static settings of an entity (``floor_available``, ``npi_enabled``, ``domain_enabled``)."""

    __tablename__ = "opt_entity_configs"
    __table_args__ = (
        UniqueConstraint("entity_id", "config_key"),
        CheckConstraint(_in("value_type", VALUE_TYPES), name="value_type"),
    )

    entity_config_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    entity_id: Mapped[int] = mapped_column(ForeignKey("opt_entities.entity_id", ondelete="CASCADE"))
    config_key: Mapped[str] = mapped_column(String(64))
    config_value: Mapped[str] = mapped_column(String(500))
    value_type: Mapped[str] = mapped_column(String(8))
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    entity: Mapped[OptEntity] = relationship(back_populates="configs")


class OptRun(Base):
    """One optimizer run of one entity."""

    __tablename__ = "opt_runs"
    __table_args__ = (
        CheckConstraint(_in("status", RUN_STATUSES), name="status"),
        CheckConstraint(_in("trigger_type", TRIGGER_TYPES), name="trigger_type"),
        CheckConstraint(
            "validation_status IS NULL OR " + _in("validation_status", VALIDATION_STATUSES),
            name="validation_status",
        ),
        # claim_next_pending_run: oldest pending first
        Index("ix_opt_runs_status_created_at", "status", "created_at"),
        # runs of an entity by status (completed + passed, run lists)
        Index("ix_opt_runs_entity_id_status", "entity_id", "status"),
        Index("ix_opt_runs_entity_id_scheduled_for", "entity_id", "scheduled_for", unique=True),
    )

    run_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    entity_id: Mapped[int] = mapped_column(ForeignKey("opt_entities.entity_id"))
    version_id: Mapped[int] = mapped_column(ForeignKey("opt_versions.version_id"))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    triggered_by: Mapped[str] = mapped_column(String(100))
    trigger_type: Mapped[str] = mapped_column(String(16), default="manual")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime)
    # Who holds a running run and when it last said it is alive (crash recovery).
    worker_id: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    segments_count: Mapped[int | None] = mapped_column(Integer)
    bid_median: Mapped[float | None] = mapped_column(Float)
    bid_min: Mapped[float | None] = mapped_column(Float)
    bid_max: Mapped[float | None] = mapped_column(Float)
    s3_output_path: Mapped[str | None] = mapped_column(String(1000))
    validation_status: Mapped[str | None] = mapped_column(String(16))
    validation_details: Mapped[str | None] = mapped_column(Text)
    error_message: Mapped[str | None] = mapped_column(Text)
    # The slot a scheduled run was created for (0004); unique per entity, so two schedulers that
    # race for the same slot cannot both create a run (NULL for runs that were not scheduled).
    scheduled_for: Mapped[datetime | None] = mapped_column(DateTime)

    entity: Mapped[OptEntity] = relationship()
    version: Mapped[OptVersion] = relationship()
    configs: Mapped[list[OptRunConfig]] = relationship(
        back_populates="run", order_by="(OptRunConfig.section, OptRunConfig.config_key)"
    )


class OptRunConfig(Base):
    """A config value an operator set for a run (defaults are written too)."""

    __tablename__ = "opt_run_configs"
    __table_args__ = (
        UniqueConstraint("run_id", "config_key"),
        CheckConstraint(_in("section", CONFIG_SECTIONS), name="section"),
        CheckConstraint(_in("value_type", VALUE_TYPES), name="value_type"),
    )

    run_config_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("opt_runs.run_id", ondelete="CASCADE"))
    section: Mapped[str] = mapped_column(String(16))
    config_key: Mapped[str] = mapped_column(String(64))
    config_value: Mapped[str] = mapped_column(String(500))
    value_type: Mapped[str] = mapped_column(String(8))

    run: Mapped[OptRun] = relationship(back_populates="configs")


class OptRunMetric(Base):
    """A metric of a run, grouped by section (win_rate_model, ctr_model, ...)."""

    __tablename__ = "opt_run_metrics"
    __table_args__ = (UniqueConstraint("run_id", "section", "metric_name"),)

    metric_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("opt_runs.run_id", ondelete="CASCADE"))
    section: Mapped[str] = mapped_column(String(64))
    metric_name: Mapped[str] = mapped_column(String(100))
    metric_value: Mapped[float | None] = mapped_column(Float)


class OptFeatureMacro(Base):
    """How a segment feature is read from a bid request of a supply source."""

    __tablename__ = "opt_feature_macros"
    __table_args__ = (
        UniqueConstraint("master_id", "feature_name"),
        CheckConstraint(_in("status", MACRO_STATUSES), name="status"),
    )

    macro_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    master_id: Mapped[int] = mapped_column(ForeignKey("opt_master.master_id"))
    feature_name: Mapped[str] = mapped_column(String(64))
    macro_template: Mapped[str] = mapped_column(String(100))  # e.g. [ADX_GEO_STATE]
    request_field: Mapped[str] = mapped_column(String(200))  # e.g. device.geo.region
    status: Mapped[str] = mapped_column(String(1), default="A")
    description: Mapped[str | None] = mapped_column(Text)


class OptRunFeature(Base):
    """A segment feature chosen by a run, in key order."""

    __tablename__ = "opt_run_features"
    __table_args__ = (
        UniqueConstraint("run_id", "feature_order"),
        UniqueConstraint("run_id", "feature_name"),
        CheckConstraint("signal_score IS NULL OR (signal_score >= 0 AND signal_score <= 100)", name="signal_score"),
    )

    run_feature_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("opt_runs.run_id", ondelete="CASCADE"))
    feature_name: Mapped[str] = mapped_column(String(64))
    feature_order: Mapped[int] = mapped_column(Integer)
    is_anchor: Mapped[bool] = mapped_column(Boolean, default=False)
    signal_score: Mapped[float | None] = mapped_column(Float)
    macro_id: Mapped[int | None] = mapped_column(ForeignKey("opt_feature_macros.macro_id"))
    # The macro's request field when the run was trained (0003): editing the macro later must not
    # change how this run's keys are built. NULL only for features without a macro (floor_bucket).
    request_field: Mapped[str | None] = mapped_column(String(200))

    macro: Mapped[OptFeatureMacro | None] = relationship()


class OptDeployment(Base):
    """One run's share of an entity's traffic. Rows of one split share ``split_id``."""

    __tablename__ = "opt_deployments"
    __table_args__ = (
        CheckConstraint("traffic_pct > 0 AND traffic_pct <= 100", name="traffic_pct"),
        Index("ix_opt_deployments_entity_id_is_active", "entity_id", "is_active"),
    )

    deployment_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    split_id: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[str] = mapped_column(ForeignKey("opt_runs.run_id"))
    entity_id: Mapped[int] = mapped_column(ForeignKey("opt_entities.entity_id"))
    traffic_pct: Mapped[int] = mapped_column(Integer)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    deployed_by: Mapped[str] = mapped_column(String(100))
    deployed_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    deactivated_at: Mapped[datetime | None] = mapped_column(DateTime)
    # Why this split was deployed, when an automatic actor did it (0004): a guardrail's breach,
    # a promotion. NULL for an operator's own split.
    reason: Mapped[str | None] = mapped_column(Text)

    run: Mapped[OptRun] = relationship()


class OptBidderReplica(Base):
    """What one bidder replica serves, as it last reported it (0003). Each replica upserts its own
    row on every refresh and deletes it on a clean stop; a row not reported for more than three of
    its refresh intervals belongs to a replica that is gone."""

    __tablename__ = "opt_bidder_replicas"

    replica_id: Mapped[str] = mapped_column(String(200), primary_key=True)  # host:pid:random
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    reported_at: Mapped[datetime] = mapped_column(DateTime)  # the database's clock, not the replica's
    refresh_seconds: Mapped[float] = mapped_column(Float)
    ready: Mapped[bool] = mapped_column(Boolean, default=False)
    # JSON {entity_code: {"split_id", "runs": [{"run_id", "traffic_pct"}], "loaded_at", "error"}}
    serving: Mapped[str] = mapped_column(Text)
    last_error: Mapped[str | None] = mapped_column(Text)
    # JSON of the replica's counters since it started (0004): notices accepted and rejected by reason
    counters: Mapped[str | None] = mapped_column(Text)


class OptEventCompaction(Base):
    """One hour of an entity's bidder events loaded into its warehouse as bid-log rows (0004).
    Loading an hour replaces the platform rows of that hour, so compacting again adds nothing;
    this row records when it was done and what it loaded."""

    __tablename__ = "opt_event_compactions"
    __table_args__ = (UniqueConstraint("entity_id", "hour_start"),)

    compaction_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    entity_id: Mapped[int] = mapped_column(ForeignKey("opt_entities.entity_id"))
    hour_start: Mapped[datetime] = mapped_column(DateTime)
    # the hour's decisions (bids and no-bids; test requests and repeated answers excluded)
    decisions: Mapped[int] = mapped_column(Integer)
    rows_loaded: Mapped[int] = mapped_column(Integer)  # bid-log rows written (bids, and floor no-bids as lost bids)
    wins: Mapped[int] = mapped_column(Integer)
    clicks: Mapped[int] = mapped_column(Integer)
    compacted_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    compacted_by: Mapped[str] = mapped_column(String(100))


class OptSchedule(Base):
    """An entity's optimizer schedule (0004): every ``every_hours`` a pending run with these
    configs and ``trigger_type = scheduled`` is created for the slot ``next_due_at``."""

    __tablename__ = "opt_schedules"

    schedule_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    entity_id: Mapped[int] = mapped_column(ForeignKey("opt_entities.entity_id"), unique=True)
    every_hours: Mapped[float] = mapped_column(Float)
    configs: Mapped[str] = mapped_column(Text)  # JSON of run configs, validated like a run's
    next_due_at: Mapped[datetime] = mapped_column(DateTime)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_run_id: Mapped[str | None] = mapped_column(String(32))


class OptUser(Base):
    """A person or service that calls the management API. Not one of the ten optimizer tables:
    it records who may act, so that ``triggered_by`` and ``deployed_by`` name a real caller."""

    __tablename__ = "opt_users"
    __table_args__ = (CheckConstraint(_in("role", ROLES), name="role"),)

    user_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class OptApiToken(Base):
    """An API token of a user. Only its SHA-256 is stored; the token is shown once."""

    __tablename__ = "opt_api_tokens"

    token_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("opt_users.user_id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)

    user: Mapped[OptUser] = relationship()


class OptAuditLog(Base):
    """One change to the catalogue or to a traffic split (0005): who, when, what, the old and the
    new values of the fields that changed (JSON). Written in the transaction of the change itself,
    so a change that rolls back leaves no row, and every row is a change that happened."""

    __tablename__ = "opt_audit_log"
    __table_args__ = (Index("ix_opt_audit_log_entity_code_audit_id", "entity_code", "audit_id"),)

    audit_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(32))  # e.g. macro.update, split.replace
    object_type: Mapped[str] = mapped_column(String(16))  # source, macro, version, entity, split
    object_key: Mapped[str] = mapped_column(String(200))  # ADX, ADX/geo_region_name, v2, drugs_hcp, ...
    entity_code: Mapped[str | None] = mapped_column(String(64))  # the entity it concerns, if one
    old_value: Mapped[str | None] = mapped_column(Text)  # JSON of the changed fields before
    new_value: Mapped[str | None] = mapped_column(Text)  # ... and after

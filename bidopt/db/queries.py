"""Every SQL operation of the three actors as a named function.

All functions take a ``Session`` and leave the transaction to the caller
(``session_scope``), except where a docstring says the caller must commit at
once (claiming a run). Errors an operator can cause raise ``BidoptError``
subclasses with a readable message; the session is then rolled back by the
caller and the database is left as it was. Users and API tokens are in
``bidopt.db.access``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bidopt.configs import (
    ENTITY_CONFIG_SPECS,
    RUN_CONFIG_SPECS,
    parse_run_configs,
    typed_value,
)
from bidopt.db.audit import record_change
from bidopt.db.engine import database_now
from bidopt.db.models import (
    RUN_STATUSES,
    OptDeployment,
    OptEntity,
    OptEntityConfig,
    OptFeatureMacro,
    OptMaster,
    OptRun,
    OptRunConfig,
    OptRunFeature,
    OptRunMetric,
    utcnow,
)
from bidopt.errors import Conflict, InvalidConfig, NotFound

# --------------------------------------------------------------------------- entities


def find_entity_by_code(session: Session, entity_code: str) -> OptEntity | None:
    return session.scalar(select(OptEntity).where(OptEntity.entity_code == entity_code))


def get_entity_by_code(session: Session, entity_code: str) -> OptEntity:
    entity = find_entity_by_code(session, entity_code)
    if entity is None:
        raise NotFound(f"unknown entity: {entity_code}")
    return entity


def list_entities(session: Session) -> list[OptEntity]:
    return list(session.scalars(select(OptEntity).order_by(OptEntity.entity_code)))


def get_entity_configs(session: Session, entity_id: int) -> dict[str, Any]:
    """The entity's static settings, typed; keys it lacks take their documented default."""
    values = {key: spec.default for key, spec in ENTITY_CONFIG_SPECS.items()}
    rows = session.scalars(select(OptEntityConfig).where(OptEntityConfig.entity_id == entity_id))
    for row in rows:
        values[row.config_key] = typed_value(row.value_type, row.config_value)
    return values


def set_entity_config(session: Session, entity_id: int, key: str, raw_value: Any) -> None:
    spec = ENTITY_CONFIG_SPECS.get(key)
    if spec is None:
        raise InvalidConfig(f"unknown entity config key: {key} (known: {', '.join(ENTITY_CONFIG_SPECS)})")
    text = spec.to_text(spec.parse(raw_value))
    row = session.scalar(
        select(OptEntityConfig).where(OptEntityConfig.entity_id == entity_id, OptEntityConfig.config_key == key)
    )
    if row is None:
        session.add(
            OptEntityConfig(
                entity_id=entity_id, config_key=key, config_value=text, value_type=spec.value_type, updated_at=utcnow()
            )
        )
    else:
        row.config_value, row.value_type, row.updated_at = text, spec.value_type, utcnow()
    session.flush()


def list_active_feature_macros(session: Session, master_id: int) -> list[OptFeatureMacro]:
    return list(
        session.scalars(
            select(OptFeatureMacro)
            .where(OptFeatureMacro.master_id == master_id, OptFeatureMacro.status == "A")
            .order_by(OptFeatureMacro.feature_name)
        )
    )


# --------------------------------------------------------------------------- runs

RUN_ID_FORMAT = "%Y%m%d_%H%M%S"
_MAX_SAME_SECOND = 1000


def create_run(
    session: Session,
    entity_code: str,
    configs: Mapping[str, Any],
    *,
    triggered_by: str,
    trigger_type: str = "manual",
    scheduled_for: datetime | None = None,
    now: datetime | None = None,
) -> OptRun:
    """Validate ``configs`` and insert a pending run with all its config values.

    Run ids are the creation second (``20260203_150000``); a second run created
    in the same second gets ``_01``, ``_02``, ... The insert happens under a
    savepoint so that a concurrent writer that took the same id makes us try
    the next suffix instead of failing.

    ``scheduled_for`` is the schedule slot a scheduled run is made for; unique per entity (an
    index), so a slot that already has its run raises ``Conflict`` and inserts nothing, even when
    a concurrent scheduler took it between our check and our insert.
    """
    # FOR SHARE: a concurrent deactivation (FOR UPDATE, bidopt.catalogue) waits for this run, or this
    # waits for it and sees the entity inactive
    entity = session.scalar(select(OptEntity).where(OptEntity.entity_code == entity_code).with_for_update(read=True))
    if entity is None:
        raise NotFound(f"unknown entity: {entity_code}")
    if not entity.is_active:
        raise Conflict(f"entity {entity_code} is inactive")
    if not triggered_by:
        raise InvalidConfig("triggered_by is required")
    values = parse_run_configs(dict(configs))
    if scheduled_for is not None:
        _refuse_taken_slot(session, entity, scheduled_for)
    now = now or utcnow()
    base = now.strftime(RUN_ID_FORMAT)
    taken = set(
        session.scalars(
            select(OptRun.run_id).where(or_(OptRun.run_id == base, OptRun.run_id.like(base + "\\_%", escape="\\")))
        )
    )
    for n in range(_MAX_SAME_SECOND):
        run_id = base if n == 0 else f"{base}_{n:02d}"
        if run_id in taken:
            continue
        try:
            with session.begin_nested():
                run = OptRun(
                    run_id=run_id,
                    entity_id=entity.entity_id,
                    version_id=entity.current_version_id,
                    status="pending",
                    triggered_by=triggered_by,
                    trigger_type=trigger_type,
                    created_at=now,
                    attempts=0,
                    scheduled_for=scheduled_for,
                )
                session.add(run)
                session.flush()
                for key, value in values.items():
                    spec = RUN_CONFIG_SPECS[key]
                    session.add(
                        OptRunConfig(
                            run_id=run_id,
                            section=spec.section,
                            config_key=key,
                            config_value=spec.to_text(value),
                            value_type=spec.value_type,
                        )
                    )
                session.flush()
            return run
        except IntegrityError:
            if scheduled_for is not None:
                _refuse_taken_slot(session, entity, scheduled_for)  # a concurrent scheduler took the slot
            taken.add(run_id)  # someone else took this id between our read and our insert
    raise Conflict(f"more than {_MAX_SAME_SECOND} runs created in the second {base}")


class SlotTaken(Conflict):
    """The schedule slot already has its run (``create_run`` with ``scheduled_for``)."""


def _refuse_taken_slot(session: Session, entity: OptEntity, scheduled_for: datetime) -> None:
    taken_by = session.scalar(
        select(OptRun.run_id).where(OptRun.entity_id == entity.entity_id, OptRun.scheduled_for == scheduled_for)
    )
    if taken_by is not None:
        slot = f"{scheduled_for:%Y-%m-%d %H:%M:%S}"
        raise SlotTaken(f"{entity.entity_code} already has run {taken_by} for the slot {slot}")


def get_run(session: Session, run_id: str) -> OptRun:
    run = session.get(OptRun, run_id)
    if run is None:
        raise NotFound(f"unknown run: {run_id}")
    return run


def list_runs(
    session: Session, *, entity_code: str | None = None, status: str | None = None, limit: int = 100
) -> list[OptRun]:
    stmt = select(OptRun).order_by(OptRun.created_at.desc(), OptRun.run_id.desc()).limit(limit)
    if entity_code is not None:
        stmt = stmt.where(OptRun.entity_id == get_entity_by_code(session, entity_code).entity_id)
    if status is not None:
        if status not in RUN_STATUSES:
            raise InvalidConfig(f"status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
        stmt = stmt.where(OptRun.status == status)
    return list(session.scalars(stmt))


def get_run_configs(session: Session, run_id: str) -> dict[str, Any]:
    rows = session.scalars(select(OptRunConfig).where(OptRunConfig.run_id == run_id))
    return {r.config_key: typed_value(r.value_type, r.config_value) for r in rows}


def get_run_configs_by_section(session: Session, run_id: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    rows = session.scalars(
        select(OptRunConfig)
        .where(OptRunConfig.run_id == run_id)
        .order_by(OptRunConfig.section, OptRunConfig.config_key)
    )
    for r in rows:
        out.setdefault(r.section, {})[r.config_key] = typed_value(r.value_type, r.config_value)
    return out


def claim_next_pending_run(session: Session, worker_id: str, *, now: datetime | None = None) -> OptRun | None:
    """Atomically take the oldest pending run and mark it running; ``None`` if there is none.

    PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED`` so concurrent workers pass
    over each other's candidates. Both databases: a compare-and-set update
    (``WHERE status = 'pending'``) so a run is claimed by exactly one worker even
    where row locks do not exist. The caller must commit right after.
    """
    now = now or database_now(session)
    for _ in range(50):
        stmt = (
            select(OptRun.run_id).where(OptRun.status == "pending").order_by(OptRun.created_at, OptRun.run_id).limit(1)
        )
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        run_id = session.scalar(stmt)
        if run_id is None:
            return None
        result = session.execute(
            update(OptRun)
            .where(OptRun.run_id == run_id, OptRun.status == "pending")
            .values(
                status="running",
                started_at=now,
                heartbeat_at=now,
                worker_id=worker_id,
                attempts=OptRun.attempts + 1,
                error_message=None,
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            run = session.get(OptRun, run_id, populate_existing=True)
            return run
    return None


# A claim is a lease: (worker_id, attempt), attempt being ``opt_runs.attempts`` right after the
# claim. Requeueing and re-claiming a run always changes ``attempts``, so every write of a worker
# that names its attempt is refused once the run has moved on -- even when the same driver process
# (same worker_id) re-claimed it. Functions below take ``attempt`` as a keyword; the optimizer
# always passes it. Without it they match the worker alone (operators' tools and older callers).


def _held_by(worker_id: str | None, attempt: int | None) -> list:
    conds = [OptRun.status == "running"]
    if worker_id is not None:
        conds.append(OptRun.worker_id == worker_id)
    if attempt is not None:
        conds.append(OptRun.attempts == attempt)
    return conds


def heartbeat_run(
    session: Session, run_id: str, worker_id: str, *, attempt: int | None = None, now: datetime | None = None
) -> bool:
    """Record that ``worker_id`` (attempt ``attempt``) still works on ``run_id``; False if the run
    is no longer its own -- the worker must then stop and leave the run alone."""
    result = session.execute(
        update(OptRun)
        .where(OptRun.run_id == run_id, *_held_by(worker_id, attempt))
        .values(heartbeat_at=now or database_now(session))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def holds_run_lease(session: Session, run_id: str, worker_id: str, attempt: int) -> bool:
    """Whether ``run_id`` is still running under this worker's attempt (a read; changes nothing)."""
    found = session.scalar(select(OptRun.run_id).where(OptRun.run_id == run_id, *_held_by(worker_id, attempt)))
    return found is not None


@dataclass
class RunStats:
    segments_count: int
    bid_median: float
    bid_min: float
    bid_max: float
    s3_output_path: str
    validation_status: str  # passed | failed
    validation_details: list[str]


def mark_run_completed(
    session: Session,
    run_id: str,
    stats: RunStats,
    *,
    worker_id: str | None = None,
    attempt: int | None = None,
    now: datetime | None = None,
) -> None:
    """running -> completed with summary stats; ``stats.s3_output_path`` is the completing
    attempt's folder. Raises ``Conflict`` if the run is not running (or, with ``worker_id`` /
    ``attempt``, no longer held by that lease)."""
    if stats.validation_status not in ("passed", "failed"):
        raise InvalidConfig(f"validation_status must be passed or failed, got {stats.validation_status!r}")
    result = session.execute(
        update(OptRun)
        .where(OptRun.run_id == run_id, *_held_by(worker_id, attempt))
        .values(
            status="completed",
            completed_at=now or utcnow(),
            segments_count=stats.segments_count,
            bid_median=stats.bid_median,
            bid_min=stats.bid_min,
            bid_max=stats.bid_max,
            s3_output_path=stats.s3_output_path,
            validation_status=stats.validation_status,
            validation_details=json.dumps(stats.validation_details),
            error_message=None,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        raise Conflict(f"run {run_id} is not running{_lease_text(worker_id, attempt)}")


def _lease_text(worker_id: str | None, attempt: int | None) -> str:
    text = f" for {worker_id}" if worker_id else ""
    return text + (f" (attempt {attempt})" if attempt is not None else "")


def mark_run_failed(
    session: Session,
    run_id: str,
    error: str,
    *,
    worker_id: str | None = None,
    attempt: int | None = None,
    now: datetime | None = None,
) -> None:
    """pending/running -> failed with the error; with ``worker_id`` / ``attempt`` only a running
    run still held by that lease. Raises ``Conflict`` if the run already ended (or moved on)."""
    if worker_id is None and attempt is None:
        conds = [OptRun.status.in_(("pending", "running"))]
    else:
        conds = _held_by(worker_id, attempt)
    result = session.execute(
        update(OptRun)
        .where(OptRun.run_id == run_id, *conds)
        .values(
            status="failed",
            completed_at=now or utcnow(),
            error_message=error[:4000],
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        if worker_id is None and attempt is None:
            raise Conflict(f"run {run_id} cannot be marked failed: it is not pending or running")
        raise Conflict(f"run {run_id} cannot be marked failed: it is not running{_lease_text(worker_id, attempt)}")


def release_run_lease(
    session: Session,
    run_id: str,
    *,
    worker_id: str | None,
    attempt: int,
    reason: str,
    max_attempts: int,
    heartbeat_at: datetime | None | object = ...,
    now: datetime | None = None,
) -> str | None:
    """End attempt ``attempt`` of a running run whose work was lost (its worker or task died, or
    it ran past its time limit): back to ``pending`` while ``attempt < max_attempts``, else
    ``failed`` ("gave up after N attempts: <reason>"). Returns the new status, or ``None`` when
    the run is no longer held by that lease (it completed, failed or was taken over meanwhile:
    nothing is changed). ``heartbeat_at``, when given, must also still match (stale requeue)."""
    conds = [
        OptRun.run_id == run_id,
        OptRun.status == "running",
        OptRun.worker_id == worker_id,
        OptRun.attempts == attempt,
    ]
    if heartbeat_at is not ...:
        conds.append(OptRun.heartbeat_at == heartbeat_at)
    if attempt < max_attempts:
        values = dict(
            status="pending",
            worker_id=None,
            heartbeat_at=None,
            started_at=None,
            error_message=f"requeued after attempt {attempt}: {reason}"[:4000],
        )
        new_status = "pending"
    else:
        values = dict(
            status="failed",
            completed_at=now or utcnow(),
            error_message=f"gave up after {attempt} attempts: {reason}"[:4000],
        )
        new_status = "failed"
    result = session.execute(update(OptRun).where(*conds).values(**values).execution_options(synchronize_session=False))
    return new_status if result.rowcount == 1 else None


def requeue_stale_runs(
    session: Session, *, heartbeat_timeout: timedelta, max_attempts: int, now: datetime | None = None
) -> list[tuple[str, str]]:
    """Runs whose worker stopped heartbeating go back to pending, or fail after ``max_attempts``.

    Returns ``[(run_id, new_status), ...]``.
    """
    now = now or database_now(session)
    stale = list(
        session.scalars(select(OptRun).where(OptRun.status == "running", OptRun.heartbeat_at < now - heartbeat_timeout))
    )
    changed = []
    for run in stale:
        reason = f"worker {run.worker_id} stopped heartbeating (last {run.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC)"
        # The same lease and the same last heartbeat as read: a beat or a requeue in between wins.
        new_status = release_run_lease(
            session,
            run.run_id,
            worker_id=run.worker_id,
            attempt=run.attempts,
            reason=reason,
            max_attempts=max_attempts,
            heartbeat_at=run.heartbeat_at,
            now=now,
        )
        if new_status is not None:
            changed.append((run.run_id, new_status))
    return changed


@dataclass
class FeatureRecord:
    feature_name: str
    feature_order: int
    is_anchor: bool
    signal_score: float | None
    macro_id: int | None
    # the macro's request field as the run read it when it started (None: no macro, floor_bucket);
    # the bidder builds the run's keys from this, never from the macro's current field
    request_field: str | None = None


def record_run_features(session: Session, run_id: str, features: Sequence[FeatureRecord]) -> None:
    """Replace the run's features (a retried run writes them again)."""
    get_run(session, run_id)
    session.query(OptRunFeature).filter(OptRunFeature.run_id == run_id).delete()
    for f in features:
        session.add(
            OptRunFeature(
                run_id=run_id,
                feature_name=f.feature_name,
                feature_order=f.feature_order,
                is_anchor=f.is_anchor,
                signal_score=f.signal_score,
                macro_id=f.macro_id,
                request_field=f.request_field,
            )
        )
    session.flush()


def record_run_metrics(session: Session, run_id: str, metrics: Mapping[str, Mapping[str, float | None]]) -> None:
    """Write ``{section: {name: value}}``, replacing earlier values of the same names."""
    get_run(session, run_id)
    for section, values in metrics.items():
        if not values:
            continue
        session.query(OptRunMetric).filter(
            OptRunMetric.run_id == run_id,
            OptRunMetric.section == section,
            OptRunMetric.metric_name.in_(list(values)),
        ).delete(synchronize_session=False)
        for name, value in values.items():
            v = None if value is None else float(value)
            if v is not None and v != v:  # NaN is not storable portably; record it as unknown
                v = None
            session.add(OptRunMetric(run_id=run_id, section=section, metric_name=name, metric_value=v))
    session.flush()


def get_run_metrics(session: Session, run_id: str) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    rows = session.scalars(
        select(OptRunMetric)
        .where(OptRunMetric.run_id == run_id)
        .order_by(OptRunMetric.section, OptRunMetric.metric_name)
    )
    for r in rows:
        out.setdefault(r.section, {})[r.metric_name] = r.metric_value
    return out


@dataclass
class RunFeatureWithMacro:
    feature_order: int
    feature_name: str
    is_anchor: bool
    signal_score: float | None
    macro_id: int | None
    macro_template: str | None
    request_field: str | None  # pinned when the run was trained (opt_run_features), not the macro's now


def get_run_features_with_macros(session: Session, run_id: str) -> list[RunFeatureWithMacro]:
    """The run's features in key order, with the macro each is read from (if any) and the request
    field the run was trained with: a macro edited since does not change an old run's keys."""
    rows = session.execute(
        select(OptRunFeature, OptFeatureMacro)
        .outerjoin(OptFeatureMacro, OptFeatureMacro.macro_id == OptRunFeature.macro_id)
        .where(OptRunFeature.run_id == run_id)
        .order_by(OptRunFeature.feature_order)
    )
    return [
        RunFeatureWithMacro(
            f.feature_order,
            f.feature_name,
            f.is_anchor,
            f.signal_score,
            f.macro_id,
            m.macro_template if m else None,
            f.request_field,
        )
        for f, m in rows
    ]


def list_completed_passed_runs(session: Session, entity_code: str) -> list[OptRun]:
    """Runs that may take traffic: completed with validation passed, newest first."""
    entity = get_entity_by_code(session, entity_code)
    return list(
        session.scalars(
            select(OptRun)
            .where(
                OptRun.entity_id == entity.entity_id, OptRun.status == "completed", OptRun.validation_status == "passed"
            )
            .order_by(OptRun.completed_at.desc(), OptRun.run_id.desc())
        )
    )


# --------------------------------------------------------------------------- traffic splits


def get_current_traffic_split(session: Session, entity_code: str) -> list[OptDeployment]:
    entity = get_entity_by_code(session, entity_code)
    return list(
        session.scalars(
            select(OptDeployment)
            .where(OptDeployment.entity_id == entity.entity_id, OptDeployment.is_active.is_(True))
            .order_by(OptDeployment.traffic_pct.desc(), OptDeployment.run_id)
        )
    )


def get_traffic_split_history(session: Session, entity_code: str) -> list[OptDeployment]:
    """Every deployment row of the entity, newest split first."""
    entity = get_entity_by_code(session, entity_code)
    return list(
        session.scalars(
            select(OptDeployment)
            .where(OptDeployment.entity_id == entity.entity_id)
            .order_by(OptDeployment.split_id.desc(), OptDeployment.traffic_pct.desc(), OptDeployment.run_id)
        )
    )


def validate_split_shape(split: Iterable[tuple[str, Any]]) -> list[tuple[str, int]]:
    """Integers in 1..100, no run twice, adding up to 100."""
    pairs: list[tuple[str, int]] = []
    seen: set[str] = set()
    for run_id, pct in split:
        if isinstance(pct, bool) or not isinstance(pct, int):
            try:
                text = str(pct).strip()
                if not text.lstrip("-").isdigit():
                    raise ValueError
                pct = int(text)
            except ValueError:
                raise InvalidConfig(f"traffic percentage of {run_id} must be a whole number, got {pct!r}") from None
        if pct <= 0 or pct > 100:
            raise InvalidConfig(f"traffic percentage of {run_id} must be between 1 and 100, got {pct}")
        if run_id in seen:
            raise InvalidConfig(f"run {run_id} appears twice in the split")
        seen.add(run_id)
        pairs.append((run_id, pct))
    if not pairs:
        raise InvalidConfig("a traffic split needs at least one run")
    total = sum(p for _, p in pairs)
    if total != 100:
        raise InvalidConfig(f"traffic percentages must add up to 100, got {total}")
    return pairs


def replace_traffic_split(
    session: Session,
    entity_code: str,
    split: Mapping[str, Any] | Iterable[tuple[str, Any]],
    *,
    deployed_by: str,
    reason: str | None = None,
    expected_split_id: int | None | object = ...,
    now: datetime | None = None,
) -> list[OptDeployment]:
    """Deactivate the entity's active split and activate ``split`` ({run_id: pct}) in one transaction.

    The entity row is locked first (``FOR UPDATE`` on PostgreSQL; SQLite
    serialises writers with ``BEGIN IMMEDIATE``), so two concurrent
    replacements run one after the other and never leave two active sets.

    ``reason`` (why an automatic actor deployed it) is stored on the new rows. ``expected_split_id``
    makes it a compare-and-set: the replacement happens only if the active split is still that one
    (``None``: the entity has no active split), checked under the lock; otherwise ``Conflict`` and
    nothing is written. An automatic actor that judged a split passes its id, so an operator's
    change in between wins.
    """
    pairs = validate_split_shape(split.items() if isinstance(split, Mapping) else split)
    if not deployed_by:
        raise InvalidConfig("deployed_by is required")
    entity = session.scalar(select(OptEntity).where(OptEntity.entity_code == entity_code).with_for_update())
    if entity is None:
        raise NotFound(f"unknown entity: {entity_code}")
    runs = {
        r.run_id: r for r in session.scalars(select(OptRun).where(OptRun.run_id.in_([run_id for run_id, _ in pairs])))
    }
    for run_id, _ in pairs:
        run = runs.get(run_id)
        if run is None:
            raise NotFound(f"unknown run: {run_id}")
        if run.entity_id != entity.entity_id:
            raise InvalidConfig(f"run {run_id} belongs to another entity, not {entity_code}")
        if run.status != "completed":
            raise Conflict(f"run {run_id} is {run.status}, not completed")
        if run.validation_status != "passed":
            raise Conflict(f"run {run_id} did not pass validation ({run.validation_status or 'not validated'})")
    if expected_split_id is not ...:
        active_split_id = session.scalar(
            select(func.max(OptDeployment.split_id)).where(
                OptDeployment.entity_id == entity.entity_id, OptDeployment.is_active.is_(True)
            )
        )
        if active_split_id != expected_split_id:
            now_text, expected_text = active_split_id or "none", expected_split_id or "none"
            raise Conflict(
                f"the active split of {entity_code} is now {now_text}, not {expected_text}: it was changed meanwhile;"
                f" nothing was done"
            )
    now = now or utcnow()
    last_split = session.scalar(
        select(func.max(OptDeployment.split_id)).where(OptDeployment.entity_id == entity.entity_id)
    )
    split_id = (last_split or 0) + 1
    before = session.execute(
        select(OptDeployment.split_id, OptDeployment.run_id, OptDeployment.traffic_pct).where(
            OptDeployment.entity_id == entity.entity_id, OptDeployment.is_active.is_(True)
        )
    ).all()
    record_change(
        session,
        actor=deployed_by,
        action="split.replace",
        object_type="split",
        object_key=f"{entity_code}/{split_id}",
        entity_code=entity_code,
        old={"split_id": before[0].split_id, "split": {r.run_id: r.traffic_pct for r in before}} if before else None,
        new={"split_id": split_id, "split": dict(pairs), **({"reason": reason} if reason else {})},
    )
    session.execute(
        update(OptDeployment)
        .where(OptDeployment.entity_id == entity.entity_id, OptDeployment.is_active.is_(True))
        .values(is_active=False, deactivated_at=now)
        .execution_options(synchronize_session=False)
    )
    rows = [
        OptDeployment(
            split_id=split_id,
            run_id=run_id,
            entity_id=entity.entity_id,
            traffic_pct=pct,
            is_active=True,
            deployed_by=deployed_by,
            deployed_at=now,
            reason=reason,
        )
        for run_id, pct in pairs
    ]
    session.add_all(rows)
    session.flush()
    return rows


@dataclass
class ActiveDeployment:
    entity_code: str
    split_id: int
    run_id: str
    traffic_pct: int
    s3_output_path: str | None


def list_active_deployments(session: Session, entity_code: str | None = None) -> list[ActiveDeployment]:
    """What the bidder serves: every active split row with the run's output path."""
    stmt = (
        select(
            OptEntity.entity_code,
            OptDeployment.split_id,
            OptDeployment.run_id,
            OptDeployment.traffic_pct,
            OptRun.s3_output_path,
        )
        .join(OptEntity, OptEntity.entity_id == OptDeployment.entity_id)
        .join(OptRun, OptRun.run_id == OptDeployment.run_id)
        .where(OptDeployment.is_active.is_(True), OptEntity.is_active.is_(True))
        .order_by(OptEntity.entity_code, OptDeployment.run_id)
    )
    if entity_code is not None:
        stmt = stmt.where(OptEntity.entity_code == entity_code)
    return [ActiveDeployment(*row) for row in session.execute(stmt)]


def get_master(session: Session, master_id: int) -> OptMaster:
    master = session.get(OptMaster, master_id)
    if master is None:
        raise NotFound(f"unknown supply source: {master_id}")
    return master

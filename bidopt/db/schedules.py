"""Per-entity optimizer schedules (``opt_schedules``): set, list, remove, and creating the runs that
have come due.

Two schedulers at once (two control loops, a control loop and ``bidopt schedules tick``) never
create the same run twice: a scheduler takes a slot by a compare-and-set on ``next_due_at`` (``WHERE
next_due_at = <the value it read>``) in the same transaction as the run's insert, and the unique
index on ``(entity_id, scheduled_for)`` is the backstop. Functions leave the transaction to the
caller, like ``bidopt.db.queries``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from bidopt.configs import SCHEDULE_EVERY_HOURS, parse_run_configs
from bidopt.db import queries as q
from bidopt.db.engine import database_now
from bidopt.db.models import OptEntity, OptRun, OptSchedule
from bidopt.errors import Conflict, InvalidConfig, NotFound

log = logging.getLogger(__name__)

SCHEDULER = "scheduler"  # triggered_by of scheduled runs


def parse_every_hours(raw: Any) -> float:
    """The period in hours: a finite number from a minute to a year (text or a JSON number)."""
    return SCHEDULE_EVERY_HOURS.parse(raw)


def set_schedule(
    session: Session,
    entity_code: str,
    every_hours: Any,
    configs: Mapping[str, Any],
    *,
    created_by: str,
    start_at: datetime | None = None,
) -> OptSchedule:
    """Create or replace the entity's schedule: a run with ``configs`` (validated now, and again when
    each run is created) every ``every_hours``, the first due at ``start_at`` (naive UTC; default now)."""
    entity = q.get_entity_by_code(session, entity_code)
    if not created_by:
        raise InvalidConfig("created_by is required")
    hours = parse_every_hours(every_hours)
    values = parse_run_configs(dict(configs), fill_defaults=False)
    now = database_now(session)
    row = session.scalar(select(OptSchedule).where(OptSchedule.entity_id == entity.entity_id))
    if row is None:
        row = OptSchedule(entity_id=entity.entity_id, created_at=now)
        session.add(row)
    row.every_hours = hours
    row.configs = json.dumps(values, sort_keys=True)
    row.next_due_at = start_at or now
    row.is_active = True
    row.created_by = created_by
    session.flush()
    return row


def get_schedule(session: Session, entity_code: str) -> OptSchedule:
    entity = q.get_entity_by_code(session, entity_code)
    row = session.scalar(select(OptSchedule).where(OptSchedule.entity_id == entity.entity_id))
    if row is None:
        raise NotFound(f"{entity_code} has no optimizer schedule")
    return row


def list_schedules(session: Session) -> list[tuple[str, OptSchedule]]:
    """``(entity_code, schedule)`` for every schedule, by entity code."""
    rows = session.execute(
        select(OptEntity.entity_code, OptSchedule)
        .join(OptEntity, OptEntity.entity_id == OptSchedule.entity_id)
        .order_by(OptEntity.entity_code)
    )
    return [(code, row) for code, row in rows]


def remove_schedule(session: Session, entity_code: str) -> None:
    """Delete the entity's schedule (``NotFound`` if it has none); runs it created stay."""
    session.delete(get_schedule(session, entity_code))
    session.flush()


def next_slot_after(slot: datetime, every: timedelta, now: datetime) -> tuple[datetime, datetime]:
    """``(latest, following)``: the latest slot ``slot + k·every`` at or before ``now`` (``slot`` itself
    when on time) and the first one after ``now``. A scheduler that was down for a week thus makes
    one run, for the latest slot, and the schedule keeps its phase."""
    if now < slot:
        return slot, slot
    missed = math.floor((now - slot) / every)
    latest = slot + missed * every
    return latest, latest + every


@dataclass
class ScheduledRun:
    entity_code: str
    run_id: str | None  # None: the slot was taken but no run could be made (error says why)
    scheduled_for: datetime
    error: str | None = None


def create_due_runs(session: Session, *, now: datetime | None = None) -> list[ScheduledRun]:
    """For each active schedule with ``next_due_at <= now`` (the database's clock by default), take
    the slot and create a pending run for it: the schedule's configs, ``trigger_type = scheduled``,
    ``triggered_by = scheduler``, ``scheduled_for`` = the latest slot that has come due; then
    ``next_due_at`` moves to the first slot after ``now``.

    Taking the slot is a compare-and-set on ``next_due_at``, in a savepoint together with the run's
    insert; a scheduler that lost the race (its update matched no row, or the slot's run exists)
    creates nothing. A schedule whose configs no longer validate, or whose entity is inactive,
    still moves on (so it does not fail every tick) and reports the error instead of a run."""
    now = now or database_now(session)
    due = list(
        session.execute(
            select(OptSchedule, OptEntity.entity_code)
            .join(OptEntity, OptEntity.entity_id == OptSchedule.entity_id)
            .where(OptSchedule.is_active.is_(True), OptSchedule.next_due_at <= now)
            .order_by(OptSchedule.next_due_at, OptSchedule.schedule_id)
        )
    )
    created: list[ScheduledRun] = []
    for schedule, entity_code in due:
        seen = schedule.next_due_at
        slot, following = next_slot_after(seen, timedelta(hours=schedule.every_hours), now)
        with session.begin_nested():
            taken = session.execute(
                update(OptSchedule)
                .where(
                    OptSchedule.schedule_id == schedule.schedule_id,
                    OptSchedule.next_due_at == seen,
                    OptSchedule.is_active.is_(True),
                )
                .values(next_due_at=following)
                .execution_options(synchronize_session=False)
            )
            if taken.rowcount != 1:
                continue  # another scheduler took this slot first (or the schedule was changed)
            unfinished = session.scalar(
                select(OptRun.run_id).where(
                    OptRun.entity_id == schedule.entity_id,
                    OptRun.trigger_type == "scheduled",
                    OptRun.status.in_(("pending", "running")),
                )
            )
            if unfinished is not None:
                # the optimizer has not got to the last one (down, or slower than the period): another
                # run on the same data would only queue behind it; the slot is skipped, not queued
                log.info(
                    "schedule of %s: slot %s skipped, scheduled run %s not finished", entity_code, slot, unfinished
                )
                created.append(
                    ScheduledRun(entity_code, None, slot, f"skipped: scheduled run {unfinished} not finished")
                )
                continue
            try:
                with session.begin_nested():
                    run = q.create_run(
                        session,
                        entity_code,
                        json.loads(schedule.configs),
                        triggered_by=SCHEDULER,
                        trigger_type="scheduled",
                        scheduled_for=slot,
                    )
            except q.SlotTaken as exc:  # the slot's run exists already: nothing to make
                log.info("schedule of %s: %s", entity_code, exc)
                continue
            except (Conflict, InvalidConfig, NotFound) as exc:
                log.warning("scheduled run of %s for %s not created: %s", entity_code, slot, exc)
                created.append(ScheduledRun(entity_code, None, slot, str(exc)))
                continue
            session.execute(
                update(OptSchedule)
                .where(OptSchedule.schedule_id == schedule.schedule_id)
                .values(last_run_id=run.run_id)
                .execution_options(synchronize_session=False)
            )
            created.append(ScheduledRun(entity_code, run.run_id, slot))
    session.expire_all()  # the compare-and-set updates bypassed the identity map
    return created

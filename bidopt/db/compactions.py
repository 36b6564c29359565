"""Which hours of an entity's bidder events were loaded into its warehouse (``opt_event_compactions``).

The warehouse write of an hour replaces that hour (``replace_platform_hour``), so the record is
bookkeeping, not a guard: a record lost to a failure after the warehouse write only means the
hour is compacted again, with the same result.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bidopt.db.models import OptEventCompaction, utcnow


@dataclass(frozen=True)
class HourCounts:
    decisions: int
    rows_loaded: int
    wins: int
    clicks: int


def compactions_by_hour(session: Session, entity_id: int) -> dict[datetime, OptEventCompaction]:
    rows = session.scalars(select(OptEventCompaction).where(OptEventCompaction.entity_id == entity_id))
    return {r.hour_start: r for r in rows}


def list_compactions(session: Session, entity_id: int, *, limit: int = 1000) -> list[OptEventCompaction]:
    """The entity's compacted hours, newest first."""
    return list(
        session.scalars(
            select(OptEventCompaction)
            .where(OptEventCompaction.entity_id == entity_id)
            .order_by(OptEventCompaction.hour_start.desc())
            .limit(limit)
        )
    )


def record_compaction(
    session: Session, entity_id: int, hour_start: datetime, counts: HourCounts, *, compacted_by: str
) -> None:
    """Insert or update the hour's record (two compactors racing: the insert that loses updates instead)."""
    values = dict(
        decisions=counts.decisions,
        rows_loaded=counts.rows_loaded,
        wins=counts.wins,
        clicks=counts.clicks,
        compacted_at=utcnow(),
        compacted_by=compacted_by[:100],
    )

    def update_row() -> int:
        return session.execute(
            update(OptEventCompaction)
            .where(OptEventCompaction.entity_id == entity_id, OptEventCompaction.hour_start == hour_start)
            .values(**values)
            .execution_options(synchronize_session=False)
        ).rowcount

    if update_row():
        return
    try:
        with session.begin_nested():
            session.add(OptEventCompaction(entity_id=entity_id, hour_start=hour_start, **values))
    except IntegrityError:
        update_row()

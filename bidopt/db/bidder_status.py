"""What bidder replicas serve (``opt_bidder_replicas``) and whether a split is live on them.

Each replica upserts its own row after every refresh (``report_replica``) and deletes it on a
clean stop (``remove_replica``). ``reported_at`` is the database's clock, and so is the "now"
that ages it (``database_now``): replicas and the API server on hosts whose clocks disagree
still agree on how old a report is. A replica that has not reported for more than
``SILENT_AFTER_INTERVALS`` of its own refresh intervals is *silent* and counts as lagging:
a replica whose refresh hangs still answers from its old split and reports nothing, so silence
is not proof of death. Only after ``GONE_AFTER`` (longer than Serve takes to replace a replica
that fails its health check) is it *gone* and not counted; rows gone for more than
``PURGE_AFTER`` are deleted by the next report.

Each report also carries the replica's counters since it started (``counters``: notices accepted
by kind, rejected by reason, events written and dropped); ``notice_counters`` sums them.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from bidopt.db.engine import database_now
from bidopt.db.models import OptBidderReplica

SILENT_AFTER_INTERVALS = 3
GONE_AFTER = timedelta(minutes=3)
PURGE_AFTER = timedelta(days=1)


def report_replica(session: Session, status: dict[str, Any], *, started_at: float) -> None:
    """Insert or update the row of ``status["replica_id"]`` (only its own replica writes it)."""
    now = database_now(session)
    values = dict(
        hostname=status["hostname"][:255],
        pid=int(status["pid"]),
        started_at=datetime.fromtimestamp(started_at, timezone.utc).replace(tzinfo=None),
        reported_at=now,
        refresh_seconds=float(status["refresh_seconds"]),
        ready=bool(status["ready"]),
        serving=json.dumps(status["serving"], sort_keys=True),
        last_error=(status["last_error"] or None) and status["last_error"][:4000],
        counters=json.dumps(status.get("counters") or {}, sort_keys=True),
    )
    replica_id = status["replica_id"]
    result = session.execute(
        update(OptBidderReplica)
        .where(OptBidderReplica.replica_id == replica_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 0:
        session.add(OptBidderReplica(replica_id=replica_id, **values))
    session.execute(
        delete(OptBidderReplica)
        .where(OptBidderReplica.reported_at < now - PURGE_AFTER)
        .execution_options(synchronize_session=False)
    )
    session.flush()


def remove_replica(session: Session, replica_id: str) -> None:
    session.execute(
        delete(OptBidderReplica)
        .where(OptBidderReplica.replica_id == replica_id)
        .execution_options(synchronize_session=False)
    )


def list_replicas(session: Session) -> list[OptBidderReplica]:
    return list(session.scalars(select(OptBidderReplica).order_by(OptBidderReplica.replica_id)))


def notice_counters(session: Session) -> dict[str, dict[str, int]]:
    """``{"accepted": {kind: n}, "rejected": {reason: n}}`` summed over the bidder replicas that are not
    gone (reported within ``GONE_AFTER``), from the counters each reports since it started: a replica
    that is gone no longer counts (its counts go with it; the events it wrote stay)."""
    now = database_now(session)
    total: dict[str, dict[str, int]] = {"accepted": {}, "rejected": {}}
    for row in list_replicas(session):
        if (now - row.reported_at).total_seconds() > GONE_AFTER.total_seconds() or not row.counters:
            continue
        try:
            counters = json.loads(row.counters)
        except ValueError:
            continue
        for group in ("accepted", "rejected"):
            for name, n in (counters.get(group) or {}).items():
                if isinstance(n, int) and not isinstance(n, bool):
                    total[group][name] = total[group].get(name, 0) + n
    return total


def _ts(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def split_liveness(session: Session, entity_code: str, split_id: int | None) -> dict[str, Any]:
    """Whether the entity's active split (``split_id``, None for none) is what every reporting
    bidder replica serves.

    Returns ``{"live", "summary", "replicas": [...]}``; each replica has ``state`` ``live``,
    ``lagging`` (with ``reason``: its error for this entity, else its last error, else that it
    has not refreshed since the change), ``silent`` (no report for more than
    ``SILENT_AFTER_INTERVALS`` of its refresh intervals: counted as lagging) or ``gone`` (no report
    for ``GONE_AFTER``; not counted). ``live`` is true only when at least one replica reports and
    none lags.
    """
    now = database_now(session)
    replicas, live, lagging, gone = [], 0, 0, 0
    for row in list_replicas(session):
        age = (now - row.reported_at).total_seconds()
        serving = json.loads(row.serving).get(entity_code) or {}
        served = serving.get("split_id")
        view = {
            "replica_id": row.replica_id,
            "hostname": row.hostname,
            "pid": row.pid,
            "ready": row.ready,
            "split_id": served,
            "loaded_at": serving.get("loaded_at"),
            "reported_at": _ts(row.reported_at),
            "seconds_since_report": round(max(age, 0.0), 1),
            "reason": None,
        }
        if age > GONE_AFTER.total_seconds():
            view["state"] = "gone"
            view["reason"] = f"no report for {age:.0f} s: stopped without saying so"
            gone += 1
        elif age > SILENT_AFTER_INTERVALS * row.refresh_seconds:
            view["state"] = "silent"
            view["reason"] = (
                f"no report for {age:.0f} s (more than {SILENT_AFTER_INTERVALS} refresh intervals): "
                f"its refresh hangs, or it stopped without saying so"
            )
            lagging += 1
        elif served == split_id and row.ready:
            view["state"] = "live"
            live += 1
        else:
            view["state"] = "lagging"
            lagging += 1
            if serving.get("error"):
                view["reason"] = serving["error"]
            elif row.last_error:
                view["reason"] = row.last_error
            elif not row.ready:
                view["reason"] = "starting: first load not finished"
            else:
                view["reason"] = (
                    f"serves split {served if served is not None else 'none'}; has not refreshed "
                    f"since the change (every {row.refresh_seconds:g} s)"
                )
        replicas.append(view)
    reporting = live + lagging
    if reporting == 0:
        summary = "no bidder replica is reporting"
    elif lagging == 0:
        summary = f"live on all {reporting} bidder replica{'s' if reporting != 1 else ''}"
    else:
        summary = f"{lagging} of {reporting} bidder replicas lag"
    if gone:
        summary += f" ({gone} gone)"
    return {"live": reporting > 0 and lagging == 0, "summary": summary, "replicas": replicas}

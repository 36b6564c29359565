"""``bidopt status``: per entity, the active split, what each bidder replica serves, and the last
minutes' traffic, from the replicas' own status rows (``opt_bidder_replicas``).

The CLI (``bidopt status``), the API (``GET /api/status``) and the UI (``#/status``) call ``status``.
It reads the database only: no Ray, no Prometheus. Each bidder replica reports, with every refresh,
a rolling window of its own counts (``counters["traffic"]``, kept by ``bidopt.metrics``: per entity
``{"window_seconds", "requests", "bids", "no_bids": {reason: n}}``). Rates here are the sum over
replicas of each one's counts divided by its own window: a replica that started two minutes ago
covers two minutes, not five. Requests with ``"test": 1`` are in these counts like any other (the
A/B readout leaves them out; here they are traffic the bidder answered).

Which replicas count: those *reporting* (``live`` or ``lagging`` in
``bidopt.db.bidder_status.split_liveness``: a report within ``SILENT_AFTER_INTERVALS`` of their
refresh intervals). A *silent* replica is listed but its traffic is not added (its window is as old
as its last report); a *gone* one is neither listed nor counted.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session

from bidopt.db import bidder_status
from bidopt.db import queries as q
from bidopt.db.engine import database_now
from bidopt.views import format_ts


def _reporting(row, now) -> bool:
    """Whether the replica's report is recent enough to count its traffic (neither silent nor gone)."""
    age = (now - row.reported_at).total_seconds()
    limit = min(bidder_status.SILENT_AFTER_INTERVALS * row.refresh_seconds, bidder_status.GONE_AFTER.total_seconds())
    return age <= limit


def _traffic_of(row) -> dict[str, dict]:
    """The replica's ``counters["traffic"]``, or ``{}`` if it reports none (an older bidder) or it is unreadable."""
    try:
        traffic = (json.loads(row.counters) if row.counters else {}).get("traffic")
    except (ValueError, AttributeError):
        return {}
    return traffic if isinstance(traffic, dict) else {}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class _Sum:
    """Traffic of one entity summed over replicas: counts, and rates per second (each replica's
    counts over its own window)."""

    def __init__(self) -> None:
        self.replicas = 0
        self.window_seconds = 0.0
        self.requests = self.bids = 0
        self.no_bids: dict[str, int] = {}
        self.rates = {"requests": 0.0, "bids": 0.0, "no_bids": 0.0}
        self.reason_rates: dict[str, float] = {}

    def add(self, t: Any) -> None:
        if not isinstance(t, dict):
            return
        window = t.get("window_seconds")
        window = float(window) if isinstance(window, (int, float)) and not isinstance(window, bool) else 0.0
        requests, bids = _count(t.get("requests")), _count(t.get("bids"))
        no_bids = t.get("no_bids")
        reasons = {str(k): _count(v) for k, v in no_bids.items()} if isinstance(no_bids, dict) else {}
        self.replicas += 1
        self.window_seconds = max(self.window_seconds, window)
        self.requests += requests
        self.bids += bids
        for reason, n in reasons.items():
            self.no_bids[reason] = self.no_bids.get(reason, 0) + n
        if window > 0:  # a window of nothing yet adds counts but no rate
            self.rates["requests"] += requests / window
            self.rates["bids"] += bids / window
            self.rates["no_bids"] += sum(reasons.values()) / window
            for reason, n in reasons.items():
                self.reason_rates[reason] = self.reason_rates.get(reason, 0.0) + n / window

    def view(self) -> dict[str, Any]:
        decided = self.bids + sum(self.no_bids.values())
        return {
            "replicas": self.replicas,
            "window_seconds": round(self.window_seconds, 1),
            "requests": self.requests,
            "bids": self.bids,
            "no_bids": sum(self.no_bids.values()),
            "no_bids_by_reason": dict(sorted(self.no_bids.items(), key=lambda kv: (-kv[1], kv[0]))),
            "bid_share": round(self.bids / decided, 4) if decided else None,
            "requests_per_second": round(self.rates["requests"], 3),
            "bids_per_second": round(self.rates["bids"], 3),
            "no_bids_per_second": round(self.rates["no_bids"], 3),
            "no_bids_per_second_by_reason": {
                r: round(v, 3) for r, v in sorted(self.reason_rates.items(), key=lambda kv: (-kv[1], kv[0]))
            },
        }


def status(session: Session, entity_code: str | None = None) -> dict[str, Any]:
    """Per active entity (or only ``entity_code``, active or not: ``NotFound`` if there is none):
    ``split`` (id, runs and shares, who deployed it when; None without one), ``bidders`` (is the split
    live on every reporting replica), ``replicas`` (each one not gone: state, the split it serves,
    ``loaded_at``, its error for the entity, its last report) and ``traffic`` (requests, bids and
    no-bids by reason over the replicas' windows, as counts and per second). ``other_traffic``: what
    the replicas counted for entity labels that are not listed (``unknown``: an entity they do not know)."""
    if entity_code is not None:
        entities = [q.get_entity_by_code(session, entity_code)]
    else:
        entities = [e for e in q.list_entities(session) if e.is_active]
    now = database_now(session)
    rows = {row.replica_id: row for row in bidder_status.list_replicas(session)}
    counted = sorted(replica_id for replica_id, row in rows.items() if _reporting(row, now))
    traffic_of = {replica_id: _traffic_of(rows[replica_id]) for replica_id in counted}
    listed = {e.entity_code for e in entities}
    out: list[dict[str, Any]] = []
    for entity in entities:
        code = entity.entity_code
        split_rows = q.get_current_traffic_split(session, code)
        split_id = split_rows[0].split_id if split_rows else None
        liveness = bidder_status.split_liveness(session, code, split_id)
        traffic = _Sum()
        replicas = []
        for view in liveness["replicas"]:
            if view["state"] == "gone":
                continue
            row = rows.get(view["replica_id"])
            serving = {}
            if row is not None:
                try:
                    serving = json.loads(row.serving).get(code) or {}
                except (ValueError, AttributeError):
                    serving = {}
            replicas.append(
                {
                    "replica_id": view["replica_id"],
                    "hostname": view["hostname"],
                    "pid": view["pid"],
                    "state": view["state"],
                    "ready": view["ready"],
                    "split_id": view["split_id"],
                    "loaded_at": view["loaded_at"],
                    "error": serving.get("error"),
                    "reason": view["reason"],
                    "reported_at": view["reported_at"],
                    "seconds_since_report": view["seconds_since_report"],
                }
            )
        for replica_id in counted:
            if code in traffic_of[replica_id]:
                traffic.add(traffic_of[replica_id][code])
        out.append(
            {
                "entity_code": code,
                "is_active": entity.is_active,
                "split": {
                    "split_id": split_id,
                    "deployed_by": split_rows[0].deployed_by,
                    "deployed_at": format_ts(split_rows[0].deployed_at),
                    "runs": [{"run_id": r.run_id, "traffic_pct": r.traffic_pct} for r in split_rows],
                }
                if split_rows
                else None,
                "bidders": {"live": liveness["live"], "summary": liveness["summary"]},
                "replicas": replicas,
                "traffic": traffic.view(),
            }
        )
    other: dict[str, _Sum] = {}
    if entity_code is None:
        for replica_id in counted:
            for label, t in traffic_of[replica_id].items():
                if label not in listed:
                    other.setdefault(str(label), _Sum()).add(t)
    return {
        "generated_at": format_ts(now),
        "replicas_counted": len(counted),
        "entities": out,
        "other_traffic": {label: s.view() for label, s in sorted(other.items())},
    }

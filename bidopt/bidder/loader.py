"""Keeping a bidder's tables in step with the active splits, off the request path.

``Refresher.refresh_once()`` reads the active deployments from the database; for
an entity whose split changed it loads each run's ``suggested_bids.csv`` and
``domain_multipliers.csv`` from the artifact store (checked against the
manifest), publishes them to the shared cache, and swaps in a new
``BidderState`` in one assignment, so a request sees the old split or the new
one, never half of either. If anything of an entity's new split fails to load,
its previous split keeps serving and the error is logged; if the database is
down, nothing changes. ``start()`` runs it on an interval in a daemon thread.
"""

from __future__ import annotations

import csv
import io
import logging

import orjson
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from bidopt.artifacts import read_run_artifacts
from bidopt.bidder.core import EMPTY_STATE, BidderState, Decision, EntityServing, RunTables
from bidopt.bidder.fields import feature_reader
from bidopt.cache import BidCache
from bidopt.db import queries as q
from bidopt.db.engine import get_engine, session_scope
from bidopt.warehouse.contract import backoff_key

log = logging.getLogger("bidopt.bidder")


@dataclass(frozen=True)
class PlannedRun:
    run_id: str
    traffic_pct: int
    output_url: str
    features: tuple[tuple[str, str | None], ...]  # (feature_name, request_field)
    max_bid_cpm: float


def read_plan(database_url: str) -> dict[str, tuple[int, list[PlannedRun]]]:
    """``{entity: (split_id, runs)}`` of every active split, from the database."""
    plan: dict[str, tuple[int, list[PlannedRun]]] = {}
    with session_scope(get_engine(database_url)) as s:
        for d in q.list_active_deployments(s):
            features = tuple((f.feature_name, f.request_field) for f in q.get_run_features_with_macros(s, d.run_id))
            max_bid = float(q.get_run_configs(s, d.run_id).get("max_bid_cpm", 1e9))
            split_id, runs = plan.setdefault(d.entity_code, (d.split_id, []))
            runs.append(PlannedRun(d.run_id, d.traffic_pct, d.s3_output_path or "", features, max_bid))
    return plan


def load_run_tables(run: PlannedRun) -> RunTables:
    """A run's tables from the artifact store, checked against its manifest."""
    if not run.output_url:
        raise ValueError(f"run {run.run_id} has no output path")
    manifest, files = read_run_artifacts(run.output_url, ["suggested_bids.csv", "domain_multipliers.csv"])
    bids_csv = files["suggested_bids.csv"].decode()
    bids = {row["segment_key"]: float(row["bid_cpm"]) for row in csv.DictReader(io.StringIO(bids_csv))}
    n = len(run.features)
    if backoff_key([], n) not in bids:
        raise ValueError(f"run {run.run_id}: bid table has no entity default row")
    mult_csv = files["domain_multipliers.csv"].decode()
    multipliers = {row["domain"]: float(row["multiplier"]) for row in csv.DictReader(io.StringIO(mult_csv))}
    return RunTables(
        run_id=run.run_id, features=tuple(f for f, _ in run.features),
        readers=tuple(feature_reader(f, field) for f, field in run.features),
        bids=bids, multipliers=multipliers, max_bid_cpm=run.max_bid_cpm,
        checksum=manifest["files"]["suggested_bids.csv"]["sha256"])


class Refresher:
    def __init__(self, database_url: str, cache: BidCache | None = None, interval: float = 5.0) -> None:
        self.database_url, self.cache, self.interval = database_url, cache, interval
        self.state: BidderState = EMPTY_STATE
        self._runs: dict[str, RunTables] = {}  # a completed run's artifacts never change
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def refresh_once(self) -> dict[str, str]:
        """One refresh; returns what happened per entity (``kept``, ``loaded``, ``failed: ...``)."""
        try:
            plan = read_plan(self.database_url)
        except Exception as exc:  # noqa: BLE001 - database down: keep serving what we have
            self.last_error = f"database: {exc}".splitlines()[0]
            log.warning("bidder refresh: cannot read splits (%s); serving the last good split", self.last_error)
            return {"*": "failed: " + self.last_error}
        outcome: dict[str, str] = {}
        entities = dict(self.state.entities)
        for entity in set(entities) - set(plan):
            del entities[entity]
            outcome[entity] = "removed"
        for entity, (split_id, runs) in plan.items():
            current = entities.get(entity)
            if current is not None and current.split_id == split_id:
                outcome[entity] = "kept"
                if not self._published(entity, split_id):  # e.g. memcached restarted empty
                    self._publish(current)
                    outcome[entity] = "kept, republished"
                continue
            try:
                tables = tuple(self._tables(r) for r in runs)
            except Exception as exc:  # noqa: BLE001 - one bad run keeps the entity's previous split
                self.last_error = f"{entity} split {split_id}: {type(exc).__name__}: {exc}"
                log.error("bidder refresh: %s; still serving the previous split", self.last_error)
                outcome[entity] = "failed: " + self.last_error
                continue
            entities[entity] = EntityServing(entity, split_id, tables, tuple(r.traffic_pct for r in runs))
            outcome[entity] = "loaded"
            self._publish(entities[entity])
        self.state = BidderState(entities, time.time())  # the one atomic swap
        self._runs = {r.run_id: r for e in entities.values() for r in e.runs}
        return outcome

    def _tables(self, run: PlannedRun) -> RunTables:
        tables = self._runs.get(run.run_id)
        return tables if tables is not None else load_run_tables(run)

    def _published(self, entity: str, split_id: int) -> bool:
        """Whether the shared cache holds this split (True when there is no cache or it is unreachable:
        publishing is retried on the next refresh either way)."""
        if self.cache is None:
            return True
        try:
            current = self.cache.get_json(entity, "split")
        except Exception:  # noqa: BLE001 - unreachable: nothing to do until it is back
            return True
        return current is not None and current.get("split_id") == split_id

    def _publish(self, serving: EntityServing) -> None:
        """The split's tables, then the split itself (readers that see the split find its tables)."""
        if self.cache is None:
            return
        entity = serving.entity_code
        try:
            for t in serving.runs:
                self.cache.publish_run(entity, t.run_id, t.bids, t.multipliers,
                                       {"features": list(t.features), "checksum": t.checksum, "rows": len(t.bids)})
            self.cache.publish_split(entity, {"split_id": serving.split_id, "runs": [
                {"run_id": t.run_id, "traffic_pct": w} for t, w in zip(serving.runs, serving.weights)]})
        except Exception as exc:  # noqa: BLE001 - the shared cache is for others; we serve from memory
            log.warning("bidder refresh: publishing %s to %s failed: %s", entity, self.cache.url, exc)

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                self.refresh_once()
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=loop, name="bidder-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


class DecisionLog:
    """Bid decisions (run, segment key, price) as JSON lines, for A/B analysis. Requests only
    append to a bounded in-memory queue; a thread writes batches to ``<dir>/decisions-<tag>.jsonl``."""

    def __init__(self, folder: Path, tag: str, *, flush_seconds: float = 1.0, max_queued: int = 1_000_000) -> None:
        self.path = Path(folder) / f"decisions-{tag}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._queue: deque = deque(maxlen=max_queued)  # oldest dropped if the disk cannot keep up
        self._stop = threading.Event()
        self._flush_seconds = flush_seconds
        self._thread = threading.Thread(target=self._loop, name="decision-log", daemon=True)
        self._thread.start()

    def record(self, entity_code: str, decisions: list[Decision]) -> None:
        now = time.time()
        for d in decisions:
            self._queue.append((now, entity_code, d))

    def flush(self) -> int:
        batch = []
        while self._queue:
            batch.append(self._queue.popleft())
        if batch:
            # one write per batch, serialised with orjson: this thread shares the GIL with the
            # request path, so a slow flush would show up as tail latency
            lines = b"".join(orjson.dumps({
                "ts": round(ts, 3), "entity_code": entity, "run_id": d.run_id, "request_id": d.request_id,
                "impid": d.impid, "segment_key": d.segment_key, "level": d.level, "price": d.price,
                "domain_multiplier": d.multiplier}) + b"\n" for ts, entity, d in batch)
            with open(self.path, "ab") as fh:
                fh.write(lines)
        return len(batch)

    def _loop(self) -> None:
        while not self._stop.wait(self._flush_seconds):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()

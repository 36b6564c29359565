"""Keeping a bidder's tables in step with the active splits, off the request path.

``Refresher.refresh_once()`` reads the active deployments from the database; for
an entity whose split changed it loads each run's ``suggested_bids.csv`` and
``domain_multipliers.csv`` from the artifact store (checked against the
manifest), publishes them to the shared cache, and swaps in a new
``BidderState`` in one assignment, so a request sees the old split or the new
one, never half of either. If anything of an entity's new split fails to load,
its previous split keeps serving and the error is kept for the status report;
if the database is down, nothing changes. A run's features are read from the
request fields pinned on the run when it was trained, not from the macros now.

``first_load()`` does the first refresh before a replica takes traffic (retrying a
database that cannot be reached); ``start()`` then refreshes on an interval in a
daemon thread. A refresher with a ``replica_id`` reports what it serves
(``status()``) to ``opt_bidder_replicas`` after every refresh and removes its row
on ``stop()``; reporting is best effort and never stops serving.

Each refresh also reads the catalogue (``read_catalogue``): every active entity with the request
fields of its supply source's active macros. An entity's split is loaded with them, so that its
decision events read the contract's features the run does not use from the macros of the time;
an entity without a split is still *known* (its requests get decision rows and its notices are
accepted). A catalogue that cannot be read keeps the previous one.

With a shared cache (``memcached://``) the refresher has ``Tiers`` (``bidopt.bidder.tiers``): a
new split's runs are published to memcached once, by whichever replica claims each run version
first, and every replica keeps only the runs' pinned back-off rows in memory and reads the rest
through its bounded near cache. A refresh first tries every entity without waiting for another
replica's publishing, then waits for those it left. With ``memory://`` (``tiers`` None) every
replica holds every table, as before.

``check_run_servable`` is the check ``bidopt.service.set_traffic_split`` makes before
switching: the same planning and loading as a refresh, so the two cannot disagree.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy.orm import Session

from bidopt.artifacts import read_run_artifacts
from bidopt.bidder.core import (
    EMPTY_STATE,
    BidderState,
    EntityServing,
    RunTables,
    SourceFields,
    source_event_readers,
)
from bidopt.bidder.fields import feature_reader
from bidopt.bidder.tiers import PublishingElsewhere, TieredBids, Tiers
from bidopt.cache import BidCache
from bidopt.db import bidder_status
from bidopt.db import queries as q
from bidopt.db.engine import get_engine, session_scope
from bidopt.warehouse.contract import FEATURE_COLUMNS, backoff_key

log = logging.getLogger("bidopt.bidder")
DATABASE = "*"  # the key of a refresh that could not read the splits at all (outcome and errors)
STUCK_AFTER_INTERVALS = 10
STUCK_AFTER_MIN_SECONDS = 60.0


class BidderNotReady(RuntimeError):
    """A replica could not read the active splits in time; Serve retries the replica."""


@dataclass(frozen=True)
class PlannedRun:
    run_id: str
    traffic_pct: int
    output_url: str
    features: tuple[tuple[str, str | None], ...]  # (feature_name, request_field pinned on the run)
    max_bid_cpm: float
    min_bid_cpm: float = 0.0


def plan_run(session: Session, run_id: str, traffic_pct: int, output_url: str | None) -> PlannedRun:
    """What the bidder needs to load one run: its features with the request fields it was trained
    with, its price bounds and where its artifacts are."""
    features = tuple((f.feature_name, f.request_field) for f in q.get_run_features_with_macros(session, run_id))
    configs = q.get_run_configs(session, run_id)
    return PlannedRun(
        run_id,
        traffic_pct,
        output_url or "",
        features,
        float(configs.get("max_bid_cpm", 1e9)),
        float(configs.get("min_bid_cpm", 0.0)),
    )


def read_plan(
    database_url: str, known: dict[str, tuple[int, list[PlannedRun]]] | None = None
) -> dict[str, tuple[int, list[PlannedRun]]]:
    """``{entity: (split_id, runs)}`` of every active split, from the database.

    ``known``: the previous plan. A run planned there under the same split, share and output path
    is reused instead of read again (a completed run's features and configs never change; one
    edited by hand in the database is seen when its split changes or the replica restarts), so an
    unchanged fleet costs no per-run query: planning every run on every refresh took 283 ms of
    CPU for 500 entities, in each replica's process, once per refresh interval."""
    known = known or {}
    plan: dict[str, tuple[int, list[PlannedRun]]] = {}
    with session_scope(get_engine(database_url)) as s:
        for d in q.list_active_deployments(s):
            split_id, runs = plan.setdefault(d.entity_code, (d.split_id, []))
            before = known.get(d.entity_code)
            reused = None
            if before is not None and before[0] == d.split_id:
                reused = next(
                    (
                        r
                        for r in before[1]
                        if (r.run_id, r.traffic_pct, r.output_url) == (d.run_id, d.traffic_pct, d.s3_output_path or "")
                    ),
                    None,
                )
            runs.append(reused or plan_run(s, d.run_id, d.traffic_pct, d.s3_output_path))
    return plan


def read_catalogue(database_url: str) -> dict[str, SourceFields]:
    """``{entity_code: ((feature_name, request_field), ...)}`` of every active entity: the active
    macros of its supply source that name a contract feature column."""
    catalogue: dict[str, SourceFields] = {}
    with session_scope(get_engine(database_url)) as s:
        by_source: dict[int, SourceFields] = {}
        for entity in q.list_entities(s):
            if not entity.is_active:
                continue
            if entity.master_id not in by_source:
                macros = q.list_active_feature_macros(s, entity.master_id)
                by_source[entity.master_id] = tuple(
                    (m.feature_name, m.request_field) for m in macros if m.feature_name in FEATURE_COLUMNS
                )
            catalogue[entity.entity_code] = by_source[entity.master_id]
    return catalogue


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
        run_id=run.run_id,
        features=tuple(f for f, _ in run.features),
        readers=tuple(feature_reader(f, field) for f, field in run.features),
        bids=bids,
        multipliers=multipliers,
        max_bid_cpm=run.max_bid_cpm,
        min_bid_cpm=run.min_bid_cpm,
        checksum=manifest["files"]["suggested_bids.csv"]["sha256"],
    )


def check_run_servable(session: Session, run_id: str) -> None:
    """Load the completed run ``run_id`` exactly as a bidder would (manifest, checksums, entity
    default row, a request field for every feature); raises with the reason if it cannot be."""
    run = q.get_run(session, run_id)
    load_run_tables(plan_run(session, run_id, 100, run.s3_output_path))


def new_replica_id() -> str:
    """``host:pid:random``: two replicas on hosts of the same name (or containers that are each
    pid 1) still get different ids."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if ts else None


class Refresher:
    def __init__(
        self,
        database_url: str,
        cache: BidCache | None = None,
        interval: float = 5.0,
        *,
        replica_id: str | None = None,
        tiers: Tiers | None = None,
    ) -> None:
        self.database_url, self.cache, self.interval = database_url, cache, interval
        self.tiers = tiers  # None: every table in memory (memory://); else the shared tier and near cache
        self.replica_id = replica_id  # None: report nowhere (tests, tools)
        self.started_at = time.time()
        self.state: BidderState = EMPTY_STATE
        self.ready = False  # set once the first load is done (first_load)
        self.refreshed_at: float | None = None  # wall clock of the last refresh that read the splits
        self.attempted_at = time.monotonic()  # when the last refresh attempt ended, read or not
        # entity -> why its active split is not the one served (DATABASE: the splits could not be read);
        # replaced as a whole by each refresh, so a reader never sees it half-updated
        self.errors: dict[str, str] = {}
        self._loaded_at: dict[str, float] = {}  # entity -> when its served split was loaded
        self._runs: dict[str, RunTables] = {}  # a completed run's artifacts never change
        self._plan: dict[str, tuple[int, list[PlannedRun]]] = {}  # the last plan read (read_plan)
        self.catalogue: dict[str, SourceFields] = {}  # the last catalogue read (read_catalogue)
        self._known: dict = {}  # entity -> decision-event readers without a split, from the catalogue
        self.counters: Callable[[], dict] | None = None  # the replica's counters, reported with its status
        self.on_refresh: Callable[[dict[str, str]], None] | None = None  # told each refresh's outcome
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def last_error(self) -> str | None:
        """What went wrong in the latest refresh, or None."""
        return "; ".join(self.errors[k] for k in sorted(self.errors)) or None

    def refresh_once(self) -> dict[str, str]:
        """One refresh, then a status report; returns what happened per entity (``kept``,
        ``loaded``, ``removed``, ``failed: ...``; ``{"*": "failed: database: ..."}`` if the
        splits could not be read)."""
        outcome = self._refresh()
        if self.on_refresh is not None:
            self.on_refresh(outcome)
        self.report()
        self.attempted_at = time.monotonic()
        return outcome

    def _refresh(self) -> dict[str, str]:
        try:
            plan = self._plan = read_plan(self.database_url, self._plan)
        except Exception as exc:  # noqa: BLE001 - database down: keep serving what we have
            error = f"database: {exc}".splitlines()[0]
            self.errors = {**self.errors, DATABASE: error}
            log.warning("bidder refresh: cannot read splits (%s); serving the last good split", error)
            return {DATABASE: "failed: " + error}
        self._read_catalogue()
        outcome: dict[str, str] = {}
        errors: dict[str, str] = {}
        entities = dict(self.state.entities)
        loaded_at = dict(self._loaded_at)
        # tiered: the served run versions memcached has lost, in one get_many for every entity
        missing = self.tiers.missing(entities.values()) if self.tiers is not None else set()
        for entity in set(entities) - set(plan):
            del entities[entity]
            loaded_at.pop(entity, None)
            outcome[entity] = "removed"
        deferred: list[str] = []  # tiered: entities another replica is publishing (waited for below)
        deadline: float | None = None  # tiered: until when the waiting pass waits, in all
        for wait in (False, True):
            for entity in deferred if wait else plan:
                split_id, runs = plan[entity]
                current = entities.get(entity)
                if current is not None and current.split_id == split_id:
                    outcome[entity] = "kept"
                    if not self._published(entity, split_id, current, missing):  # e.g. memcached restarted empty
                        if self._publish(current, runs):
                            outcome[entity] = "kept, republished"
                    continue
                if wait and deadline is None and self.tiers is not None:
                    deadline = time.monotonic() + self.tiers.wait_seconds  # one for every deferred entity
                try:
                    tables = tuple(
                        self._tables(r, entity, wait=wait or self.tiers is None, deadline=deadline) for r in runs
                    )
                except PublishingElsewhere:
                    deferred.append(entity)
                    continue
                except Exception as exc:  # noqa: BLE001 - one bad run keeps the entity's previous split
                    errors[entity] = f"{entity} split {split_id}: {type(exc).__name__}: {exc}".splitlines()[0]
                    log.error("bidder refresh: %s; still serving the previous split", errors[entity])
                    outcome[entity] = "failed: " + errors[entity]
                    continue
                entities[entity] = EntityServing(
                    entity, split_id, tables, tuple(r.traffic_pct for r in runs), self.catalogue.get(entity, ())
                )
                loaded_at[entity] = time.time()
                outcome[entity] = "loaded"
                self._publish(entities[entity], runs)
        self.errors, self._loaded_at, self.refreshed_at = errors, loaded_at, time.time()
        self.state = BidderState(entities, time.time(), self._known)  # the one atomic swap
        self._runs = {r.run_id: r for e in entities.values() for r in e.runs}
        if self.tiers is not None:
            self.tiers.forget({r.bids.version for r in self._runs.values() if isinstance(r.bids, TieredBids)})
        return outcome

    def _read_catalogue(self) -> None:
        try:
            catalogue = read_catalogue(self.database_url)
        except Exception as exc:  # noqa: BLE001 - keep the last catalogue; the splits were read
            log.warning("bidder refresh: cannot read the catalogue (%s); keeping the last one", exc)
            return
        if catalogue != self.catalogue or not self._known:
            self.catalogue = catalogue
            self._known = {code: source_event_readers(fields) for code, fields in catalogue.items()}

    def first_load(self, timeout: float) -> dict[str, str]:
        """Refresh until every active split is loaded or ``timeout`` seconds have passed, then
        mark the replica ready. Raises ``BidderNotReady`` if by then the splits could not even be
        read (the database is unreachable); a split that still fails to load after the timeout is
        left out (its error reported) so that one bad run does not keep every entity from serving."""
        deadline = time.monotonic() + timeout
        pause = min(0.5, self.interval)
        while True:
            outcome = self.refresh_once()
            failed = {e: o for e, o in outcome.items() if o.startswith("failed")}
            left = deadline - time.monotonic()
            if not failed:
                break
            if left <= 0:
                if DATABASE in failed:
                    raise BidderNotReady(
                        f"could not read the active splits within {timeout:g} s: {self.errors.get(DATABASE)}"
                    )
                log.error(
                    "bidder: ready without %s after %g s: %s", ", ".join(sorted(failed)), timeout, self.last_error
                )
                break
            log.warning("bidder: first load incomplete (%s); retrying", self.last_error)
            if self._stop.wait(min(pause, left)):
                raise BidderNotReady("stopped during the first load")
            pause = min(pause * 2, 5.0)
        self.ready = True
        self.report()
        return outcome

    def status(self) -> dict:
        """What this replica serves, per entity, for ``GET /openrtb2/_status`` and the replicas table."""
        state, errors, loaded_at = self.state, self.errors, self._loaded_at
        serving: dict[str, dict] = {}
        for code, e in state.entities.items():
            serving[code] = {
                "split_id": e.split_id,
                "loaded_at": _iso(loaded_at.get(code)),
                "runs": [{"run_id": t.run_id, "traffic_pct": w} for t, w in zip(e.runs, e.weights)],
            }
        for code, error in errors.items():
            if code != DATABASE:
                serving.setdefault(code, {"split_id": None, "loaded_at": None, "runs": []})["error"] = error
        replica_id = self.replica_id or ""
        hostname, pid = socket.gethostname(), os.getpid()
        return {
            "replica_id": replica_id,
            "hostname": hostname,
            "pid": pid,
            "ready": self.ready,
            "started_at": _iso(self.started_at),
            "refreshed_at": _iso(self.refreshed_at),
            "refresh_seconds": self.interval,
            "serving": serving,
            "last_error": self.last_error,
            "counters": self.counters() if self.counters is not None else {},
        }

    def report(self) -> None:
        """Write ``status()`` to this replica's row; a database error is logged, never raised."""
        if self.replica_id is None or self._stop.is_set():  # a stopped replica has removed its row
            return
        try:
            with session_scope(get_engine(self.database_url)) as s:
                bidder_status.report_replica(s, self.status(), started_at=self.started_at)
        except Exception as exc:  # noqa: BLE001 - reporting is for operators; serving goes on
            log.warning("bidder: cannot report status: %s", str(exc).splitlines()[0] if str(exc) else exc)

    def _tables(
        self, run: PlannedRun, entity: str = "", *, wait: bool = True, deadline: float | None = None
    ) -> RunTables:
        tables = self._runs.get(run.run_id)
        if tables is not None:
            return tables
        if self.tiers is not None:
            return self.tiers.run_tables(entity, run, load_run_tables, wait=wait, deadline=deadline)
        return load_run_tables(run)

    def _published(
        self, entity: str, split_id: int, current: EntityServing | None = None, missing: set[str] = frozenset()
    ) -> bool:
        """Whether the shared cache holds this split (True when there is no cache or it is unreachable:
        publishing is retried on the next refresh either way). Tiered: whether every run version of
        ``current`` still has its marker (``missing``: the versions found without one)."""
        if self.cache is None:
            return True
        if self.tiers is not None:
            return current is None or not any(
                isinstance(t.bids, TieredBids) and t.bids.version in missing for t in current.runs
            )
        try:
            current = self.cache.get_json(entity, "split")
        except Exception:  # noqa: BLE001 - unreachable: nothing to do until it is back
            return True
        return current is not None and current.get("split_id") == split_id

    def _publish(self, serving: EntityServing, runs: list[PlannedRun] | None = None) -> bool:
        """The split's tables, then the split itself (readers that see the split find its tables).
        Tiered: the runs' rows are published by ``Tiers`` when loaded (once, by one replica); here
        only lost run versions again (``runs``: the split's plan) and the split key. Returns whether
        this replica wrote any table (tiered: False when other replicas hold the claims)."""
        if self.cache is None:
            return False
        entity = serving.entity_code
        if self.tiers is not None:
            written = 0
            try:
                written = self.tiers.republish(serving, runs or [], load_run_tables)
            except Exception as exc:  # noqa: BLE001 - retried on the next refresh; pinned rows still bid
                log.warning("bidder refresh: republishing %s to %s failed: %s", entity, self.cache.url, exc)
            try:
                self.tiers.publish_split(serving)
            except Exception as exc:  # noqa: BLE001 - retried on the next refresh
                log.warning("bidder refresh: publishing %s's split to %s failed: %s", entity, self.cache.url, exc)
            return written > 0
        try:
            for t in serving.runs:
                self.cache.publish_run(
                    entity,
                    t.run_id,
                    t.bids,
                    t.multipliers,
                    {"features": list(t.features), "checksum": t.checksum, "rows": len(t.bids)},
                )
            self.cache.publish_split(
                entity,
                {
                    "split_id": serving.split_id,
                    "runs": [{"run_id": t.run_id, "traffic_pct": w} for t, w in zip(serving.runs, serving.weights)],
                },
            )
        except Exception as exc:  # noqa: BLE001 - the shared cache is for others; we serve from memory
            log.warning("bidder refresh: publishing %s to %s failed: %s", entity, self.cache.url, exc)
            return False
        return True

    def start(self) -> None:
        """Refresh every ``interval`` seconds in a daemon thread (after ``first_load``, the first
        refresh comes one interval later)."""

        def loop() -> None:
            if self.refreshed_at is not None and self._stop.wait(self.interval):
                return
            while not self._stop.is_set():
                self.refresh_once()
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=loop, name="bidder-refresh", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        """Whether the refresh thread is alive (False before ``start`` and after ``stop``)."""
        return self._thread is not None and self._thread.is_alive()

    def stuck_for(self) -> float | None:
        """Seconds since the last refresh attempt ended, if that is more than ``STUCK_AFTER_INTERVALS``
        intervals (and at least ``STUCK_AFTER_MIN_SECONDS``): the thread hangs (a database or store
        call that never returns) while requests are still answered from an old split and the
        replica no longer reports. None while refreshes keep ending, successful or not."""
        waited = time.monotonic() - self.attempted_at
        return waited if waited > max(STUCK_AFTER_INTERVALS * self.interval, STUCK_AFTER_MIN_SECONDS) else None

    def stop(self) -> None:
        """Stop refreshing and remove this replica's row (best effort): a clean stop is not a lag."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.tiers is not None:
            self.tiers.close()
        if self.replica_id is None:
            return
        try:
            with session_scope(get_engine(self.database_url)) as s:
                bidder_status.remove_replica(s, self.replica_id)
        except Exception as exc:  # noqa: BLE001 - the row then ages into "gone"
            log.warning("bidder: cannot remove replica row: %s", str(exc).splitlines()[0] if str(exc) else exc)

"""Buffered event writing: the request path appends, a daemon thread writes Parquet parts.

``EventWriter.add`` only appends to an in-memory queue (no I/O, no Arrow on the request path).
Every ``flush_seconds`` the writer's thread takes what is queued, turns it into rows (``render``,
per kind, per entity or for every entity at once by the layout: the bidder reads a decision's
request features there, off the request path), and writes them, naming each part with the
writer's id and a sequence number it counts up. So a process that dies loses at most what was
queued since its last flush: ``flush_seconds`` plus the time one flush takes.

What a flush writes depends on ``split_seconds`` (``bidopt.events.store`` has the layout):

* ``0``: one part per (kind, entity, hour) with events. A replica serving hundreds of entities
  writes hundreds of parts a flush, at 1.2 ms of its CPU each on the local folder and 2.4-4 ms on
  S3 (``benchmarks/event_writer.py``): as much CPU as the requests themselves at fleet size.
* above 0 (the bidder's ``BIDOPT_EVENTS_SPLIT_SECONDS``, 60): one *mixed* part per (kind, hour),
  holding every entity; every ``split_seconds`` the writer then writes what those mixed parts held
  as one *split* part per (kind, entity, hour), from memory (they are not read back), and deletes
  the mixed parts. A flush is then a put or two whatever the number of entities, and the
  per-entity parts are 60 times fewer. A split is written a slice of ``split_parts_per_flush``
  parts or more a flush (``_slice``: hundreds of parts at fleet size would hold a flush for seconds). Splitting only
  saves readers work: until it is done, and for ever if it never is (the writer dies, the store
  refuses), readers read the mixed parts, so nothing depends on it for correctness, and the
  writer may give up a split (its rows past ``max_buffered``) without losing an event.

Where the store's writes wait on a network (``concurrent_puts``: S3), up to ``write_threads``
parts are written at once.

A part that fails to write (the store is down) is kept, with its sequence number, and written
again under the same key on the next flush: a write that did go through although it reported an
error is overwritten by the same bytes, not duplicated. Kept parts are bounded (``max_buffered``
events, and as many queued between two flushes): beyond it the oldest events are dropped and
counted (``stats()["dropped"]``), so a store that stays down costs memory up to the bound, then
the oldest events. A split waits until every mixed part it covers is written: a split covering a
mixed part written later would hide that part's rows from readers.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from bidopt.errors import InvalidConfig
from bidopt.events.schema import SCHEMAS, conform_to_schema, rows_to_table
from bidopt.events.store import EventStore, MixedPart, open_event_store
from bidopt.warehouse.base import check_entity_code

log = logging.getLogger("bidopt.events")
RENDER_CHUNK = 200  # events turned into rows at a time (about 2 ms of the GIL in the bidder)
RENDER_PAUSE_SECONDS = 0.001
# A mixed part of an hour that ended this long ago (by the wall clock, checked before each put: a
# store down for hours, a writer stalled with events queued) is never written but dropped, counted,
# and a split part of such an hour never written (its rows stay in the mixed parts): the sweep
# (EventStore.sweep_mixed_parts) takes over the mixed parts of hours that ended SWEEP_AFTER (6 h)
# ago, and a writer acting on them after it would hide or double rows.
LATE_SECONDS = 2 * 3600


def wall_clock() -> float:
    """Unix time, by which an hour's events are late (a function of its own: tests move it)."""
    return time.time()


def _late(hour: datetime) -> bool:
    """Whether ``hour`` (naive UTC) ended ``LATE_SECONDS`` ago or more."""
    return wall_clock() >= hour.replace(tzinfo=timezone.utc).timestamp() + 3600 + LATE_SECONDS


# kind -> turns a batch of (entity code, event time in unix seconds, queued item) into rows of that
# kind's schema, one per item and in the items' order (the writer puts each row under its item's
# entity by position; a batch that makes another number of rows is refused, an order changed is not
# seen): a list of dicts, or a table in the schema. A batch holds
# one entity's events where the writer writes a part per entity, and every entity's of a kind and hour
# in the mixed layout (RENDER_CHUNK at a time: a table per entity was most of a flush's CPU at fleet
# size, benchmarks/event_writer.py)
Render = Callable[[list[tuple[str, float, Any]]], "list[dict] | pa.Table"]


def dict_rows(items: list[tuple[str, float, Any]]) -> list[dict]:
    """The default render: each item is already a row (a dict with the schema's names)."""
    return [row for _, _, row in items]


@dataclass
class _Part:
    kind: str
    entity_code: str | None  # None: a mixed part (every entity of a flush)
    hour: datetime
    seq: int
    table: pa.Table


@dataclass
class _Split:
    """The split parts of this writer's mixed parts ``first`` to ``last``: what is left to write of
    them (by kind, entity and hour), then the mixed parts to delete."""

    first: int
    last: int
    groups: dict[tuple[str, str, datetime], pa.Table]
    mixed_keys: list[str]
    rows: int  # in groups (a counter: stats() reads it from other threads while the groups change)
    begun: float  # time.monotonic() when it began
    nbytes: int  # what its tables hold in memory (their slices share it until the last is written)
    parts: int  # its groups when it began (the pace of its slices)
    keep_mixed: bool = False  # a group could not be written: its rows stay readable only in the mixed parts


class EventWriter:
    """Buffers events and writes them as parts of an events store, from a daemon thread.

    ``split_seconds``: 0 writes a part per entity each flush; above 0, a mixed part per flush, split
    into per-entity parts every ``split_seconds``, or sooner once the rows waiting for it take
    ``max_unsplit_bytes`` of memory (module docstring); a flush writes ``split_parts_per_flush``
    parts of the splits begun (more where that would not write them before the next is due; all
    of them past ``max_unsplit_bytes``), so a split takes several flushes at fleet size. ``start=False`` leaves the
    thread off (tests call ``flush`` and ``split`` themselves)."""

    def __init__(
        self,
        events_url: str | EventStore,
        writer_id: str,
        flush_seconds: float = 1.0,
        *,
        render: dict[str, Render] | None = None,
        max_buffered: int = 500_000,
        max_queued_bytes: int = 256 * 1024 * 1024,
        write_threads: int = 1,
        split_seconds: float = 0.0,
        max_unsplit_bytes: int = 64 * 1024 * 1024,
        split_parts_per_flush: int = 64,
        start: bool = True,
    ) -> None:
        self.store = events_url if isinstance(events_url, EventStore) else open_event_store(events_url)
        self.writer_id, self.flush_seconds, self.max_buffered = writer_id, flush_seconds, max_buffered
        self.render = render or {}
        self._queue: deque = deque()  # (kind, entity, unix time, item, bytes); append/popleft are thread-safe
        # What the queued items hold alive, as their callers declare it (a decision keeps its parsed
        # bid request until the flush renders it: a 229 KB request kept 1.4 MB per decision): bounded
        # too, so a store that stalls, or hostile large requests, cannot run the replica out of memory.
        self.max_queued_bytes = max_queued_bytes
        self._queued_bytes = 0
        self._bytes_lock = threading.Lock()
        if write_threads < 1:
            raise InvalidConfig(f"write_threads must be at least 1, got {write_threads}")
        # writes the parts of a flush concurrently (None: one thread, in the flusher itself), where the
        # store's writes wait on a network: on the local folder they are this process's CPU, and
        # threads there only contend for the GIL (benchmarks/event_writer.py)
        self._writers = (
            ThreadPoolExecutor(write_threads, thread_name_prefix=f"event-parts-{writer_id}")
            if write_threads > 1 and self.store.concurrent_puts
            else None
        )
        self._failed: list[_Part] = []  # parts whose write failed, retried first (flush thread only)
        self._failed_rows = 0
        self._seq = 0
        if not 0 <= split_seconds < float("inf"):
            raise InvalidConfig(f"split_seconds must be 0 or more, got {split_seconds}")
        self.split_seconds, self.max_unsplit_bytes = split_seconds, max_unsplit_bytes
        if split_parts_per_flush < 1:
            raise InvalidConfig(f"split_parts_per_flush must be at least 1, got {split_parts_per_flush}")
        # the mixed parts written since the last split began: their tables by (kind, hour), their keys;
        # the next split covers the sequence numbers from _split_from to the newest part's
        self._split_from = 1
        self._unsplit: dict[tuple[str, datetime], list[pa.Table]] = {}
        self._unsplit_keys: list[str] = []
        self._unsplit_rows = self._unsplit_bytes = 0  # counters of _unsplit, read by stats() from other threads
        self._splits: list[_Split] = []  # begun, not finished (oldest first)
        self.split_parts_per_flush = split_parts_per_flush
        self._split_failures = 0  # slices in a row that met a failing store
        self._split_backoff = 0  # flushes to wait before the next slice
        self._last_split = time.monotonic()
        self.splits_abandoned = 0
        self._lock = threading.Lock()  # one flush at a time (the thread and close/flush callers)
        self._stop = threading.Event()
        self.written = self.dropped = self.write_failures = 0
        self.last_error: str | None = None
        self._thread: threading.Thread | None = None
        pa.array([0.0])  # pyarrow's first conversion takes a quarter of a second: not in the first flush
        if start:
            self._thread = threading.Thread(target=self._loop, name=f"event-writer-{writer_id}", daemon=True)
            self._thread.start()

    def add(self, kind: str, entity_code: str, event_time: float, item: Any, nbytes: int = 0) -> None:
        """Queue one event (``event_time``: unix seconds; ``item``: what ``render[kind]`` turns into a row;
        ``nbytes``: about how much memory it holds alive)."""
        if len(self._queue) >= self.max_buffered:
            self._drop_oldest()
        self._count_bytes(nbytes)
        self._queue.append((kind, entity_code, event_time, item, nbytes))

    def add_many(self, kind: str, entity_code: str, event_time: float, items, nbytes: int = 0) -> None:
        """Queue several events of one time (a request's decisions); ``nbytes``: what they hold alive
        together (the request they share), counted once."""
        if len(self._queue) + len(items) > self.max_buffered:
            for i, item in enumerate(items):
                self.add(kind, entity_code, event_time, item, nbytes if i == 0 else 0)
            return
        self._count_bytes(nbytes)
        self._queue.extend(
            [(kind, entity_code, event_time, item, nbytes if i == 0 else 0) for i, item in enumerate(items)]
        )

    def _count_bytes(self, nbytes: int) -> None:
        if not nbytes:
            return
        with self._bytes_lock:
            self._queued_bytes += nbytes
        while self._queued_bytes > self.max_queued_bytes and self._queue:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        try:
            item = self._queue.popleft()
        except IndexError:  # the flush thread took everything meanwhile
            return
        self.dropped += 1
        if item[4]:
            with self._bytes_lock:
                self._queued_bytes -= item[4]

    @property
    def running(self) -> bool:
        """Whether the flush thread is alive (False when started with ``start=False`` or closed)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def buffered(self) -> int:
        """Events queued or kept from a failed write, not yet in the store."""
        return len(self._queue) + self._failed_rows

    def stats(self) -> dict[str, Any]:
        return {
            "written": self.written,
            "buffered": self.buffered,
            "dropped": self.dropped,
            "queued_bytes": self._queued_bytes,
            "write_failures": self.write_failures,
            "last_error": self.last_error,
            "unsplit": self.unsplit,
            "splits_abandoned": self.splits_abandoned,
        }

    @property
    def unsplit(self) -> int:
        """Events in the store's mixed parts that this writer has not split yet (held in memory)."""
        return self._unsplit_rows + sum(split.rows for split in list(self._splits))

    def flush(self) -> int:
        """Write what is queued (and retry parts that failed before), then begin a split of the mixed
        parts if ``split_seconds`` have passed since the last one began, and write a slice of the
        splits begun (``_slice``); returns the rows written now.
        Never raises for a store that fails: the parts are kept for the next flush."""
        with self._lock:
            written = self._flush()
            if not self.split_seconds:
                return written
            # (the memory trigger only when a split can begin: with a part of its range unwritten, the store
            # is failing, and retrying the pending splits every flush would spend the CPU splits save)
            due = time.monotonic() - self._last_split >= self.split_seconds or (
                self._unsplit_bytes >= self.max_unsplit_bytes and self._split_can_begin()
            )
            if due:
                self._begin_split()
            # A split is written a slice a flush: at 500 entities a whole one is 500 parts or more, 1.4 to
            # 6 s of this thread, and a flush that waits that long breaks the bound on what a crash loses
            # (flush_seconds plus one flush). After a failure the slices wait 2, 4, 8... flushes, up to a
            # split interval (no retry storm against a failing store), or until the next split is due.
            if self._splits and (due or self._split_backoff <= 0):
                self._write_splits(self._slice())
            elif self._split_backoff > 0:
                self._split_backoff -= 1
            return written

    def split(self, deadline: float | None = None) -> int:
        """Split every mixed part written so far, now (``close`` does; tests do), whole, or slice after
        slice until ``time.monotonic()`` passes ``deadline`` or a slice fails; returns the split parts
        written. Never raises for a store that fails: what is left is tried again next time."""
        with self._lock:
            self._begin_split()
            if deadline is None:
                return self._write_splits(None)
            written = 0
            while self._splits and time.monotonic() < deadline:
                written += self._write_splits(self.split_parts_per_flush)
                if self._split_failures:
                    break
            return written

    def _slice(self) -> int | None:
        """The split parts this flush writes: ``split_parts_per_flush``, or more where that would not
        write the splits begun before the next is due (twice the pace that writes them in one split
        interval), or all of them once the rows they and the next split hold take
        ``max_unsplit_bytes`` (None)."""
        if self._unsplit_bytes + sum(split.nbytes for split in self._splits) >= self.max_unsplit_bytes:
            return None
        parts = sum(split.parts for split in self._splits)
        return max(self.split_parts_per_flush, math.ceil(2 * parts / self._flushes_per_split))

    @property
    def _flushes_per_split(self) -> float:
        return max(self.split_seconds / max(self.flush_seconds, 1e-3), 1.0)

    def _map(self, work: Callable[[Any], Exception | None], items: list) -> list[Exception | None]:
        """``work`` on each item, on the writer threads where there are some and more than one item."""
        if self._writers is not None and len(items) > 1:
            try:
                return list(self._writers.map(work, items))
            except RuntimeError as exc:  # no thread to be had (a limit, the interpreter exiting)
                log.warning("events: cannot write parts in threads (%s); writing them one at a time", exc)
        # a part the pool wrote, or is still writing, is rewritten: the same key and bytes
        return [work(item) for item in items]

    def _flush(self) -> int:
        parts = self._failed + self._take()
        self._failed = []
        written = 0
        kept = []
        outcomes = self._map(self._write, parts)
        # the counters are this thread's alone: the writers only report what happened
        for part, exc in zip(parts, outcomes):
            if isinstance(exc, InvalidConfig):  # the part itself is wrong (a bad entity code): never writable
                self.dropped += part.table.num_rows
                log.error(
                    "events: dropped %d %s events that cannot be written: %s", part.table.num_rows, part.kind, exc
                )
                continue
            if exc is not None:  # store down: keep the part, retry next flush
                self.write_failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                log.warning("events: writing to %s failed (%s); kept for the next flush", self.store.url, exc)
                kept.append(part)  # and go on: other parts (other entities, other keys) may still go through
                continue
            written += part.table.num_rows
            if part.entity_code is None and part.seq >= self._split_from:
                self._unsplit.setdefault((part.kind, part.hour), []).append(part.table)
                self._unsplit_rows += part.table.num_rows
                self._unsplit_bytes += part.table.nbytes
                self._unsplit_keys.append(self.store.mixed_part_key(part.kind, part.hour, self.writer_id, part.seq))
        self._failed = self._bounded(kept)
        self._failed_rows = sum(p.table.num_rows for p in self._failed)
        self.written += written
        self._bound_unsplit()
        return written

    def _write(self, part: _Part) -> Exception | None:
        """Write one part; returns what it raised (None: written)."""
        if part.entity_code is None and _late(part.hour):  # never writable (LATE_SECONDS): dropped, counted
            return InvalidConfig(f"its hour ended {LATE_SECONDS} s ago or more: the sweep's now")
        try:
            if part.entity_code is None:
                self.store.write_mixed_part(part.kind, part.hour, part.table, writer_id=self.writer_id, seq=part.seq)
            else:
                self.store.write_part(
                    part.kind, part.entity_code, part.hour, part.table, writer_id=self.writer_id, seq=part.seq
                )
        except Exception as exc:  # noqa: BLE001 - flush decides: dropped (InvalidConfig) or kept for a retry
            return exc
        return None

    def _begin_split(self) -> None:
        """Begin a split of the mixed parts written since the last one began (when no part it would
        cover is still unwritten)."""
        self._last_split = time.monotonic()
        if self._split_can_begin() and self._seq >= self._split_from:
            split = None
            if self._unsplit_keys:
                groups = _by_entity(self._unsplit)
                split = _Split(
                    first=self._split_from,
                    last=self._seq,
                    groups=groups,
                    mixed_keys=self._unsplit_keys,
                    rows=sum(t.num_rows for t in groups.values()),
                    begun=time.monotonic(),
                    nbytes=self._unsplit_bytes,
                    parts=len(groups),
                )
            # (seq numbers with no part written, all dropped, are covered by no split: nothing to hide)
            self._split_from = self._seq + 1
            self._forget_unsplit()  # (before the append: stats() would count these rows twice in between)
            if split is not None:
                self._splits.append(split)

    def _write_splits(self, limit: int | None) -> int:
        """Carry on the splits begun, oldest first: write up to ``limit`` of their per-entity parts (all:
        None), and delete a split's mixed parts once its parts are all written; returns the parts written."""
        written = attempted = 0
        failed = False
        for split in list(self._splits):
            groups = list(split.groups.items())
            if limit is not None:
                if groups and attempted >= limit:
                    break  # (a split with no group left only has its delete to retry: that goes on)
                groups = groups[: limit - attempted]
            attempted += len(groups)
            outcomes = self._map(lambda group, s=split: self._write_split(s, *group), groups)
            for (group, table), exc in zip(groups, outcomes):
                if exc is None or isinstance(exc, InvalidConfig):  # written, or never writable
                    del split.groups[group]
                    split.rows -= table.num_rows
                    written += exc is None
                    if exc is not None:  # its rows are readable in the mixed parts only: keep those
                        split.keep_mixed = True
                        log.error("events: cannot split %d %s events of %s: %s", table.num_rows, *group[:2], exc)
                else:
                    failed = True
                    self.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                    log.warning("events: splitting to %s failed (%s); tried again later", self.store.url, exc)
            if split.groups:
                break  # later splits wait: the store is failing, or this flush's slice is written
            split.nbytes = split.parts = 0  # written: only its delete is left, which holds no rows
            try:
                if not split.keep_mixed:
                    self.store.delete_parts(split.mixed_keys)
            except Exception as exc:  # noqa: BLE001 - the mixed parts are covered now: left, they cost readers only
                failed = True  # (and the later splits go on: a store that never deletes must not stop them)
                self.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                log.warning("events: deleting %d split mixed parts failed (%s)", len(split.mixed_keys), exc)
                if time.monotonic() - split.begun < LATE_SECONDS:
                    continue
                # given up: the sweep deletes them (they are covered), and a store that never deletes must
                # not grow this list, nor the deletes tried each flush, for ever
                log.warning("events: left %d split mixed parts to the sweep", len(split.mixed_keys))
            self._splits.remove(split)
        if failed:
            self._split_failures += 1
            self._split_backoff = min(2**self._split_failures, int(self._flushes_per_split))
        else:
            self._split_failures = self._split_backoff = 0
        return written

    def _split_can_begin(self) -> bool:
        """Whether every mixed part a split would cover now is written (or dropped): a split covering one
        written later would hide that part's rows from readers."""
        return not any(part.seq >= self._split_from for part in self._failed)

    def _forget_unsplit(self) -> None:
        self._unsplit, self._unsplit_keys = {}, []
        self._unsplit_rows = self._unsplit_bytes = 0

    def _write_split(self, split: _Split, group: tuple[str, str, datetime], table: pa.Table) -> Exception | None:
        kind, entity, hour = group
        if _late(hour):
            # never writable: its rows stay in the mixed parts, for readers and then the sweep, which may
            # have split those parts already (a second split of the same rows would double them)
            return InvalidConfig(f"its hour ended {LATE_SECONDS} s ago or more (the sweep's now)")
        try:
            self.store.write_split_part(
                kind, entity, hour, table, writer_id=self.writer_id, first=split.first, last=split.last
            )
        except Exception as exc:  # noqa: BLE001 - _split decides
            return exc
        return None

    def _bound_unsplit(self) -> None:
        """Forget splits beyond ``max_buffered`` rows, oldest first: their rows are in the store's mixed
        parts, which readers go on reading (a split half written covers only the entities it wrote)."""
        while self.unsplit > self.max_buffered:
            # the oldest that holds rows (one with only its delete left holds none: given up, its mixed parts
            # would stay for ever)
            split = next((split for split in self._splits if split.rows), None)
            if split is None:
                break
            self._splits.remove(split)
            self.splits_abandoned += 1
            log.warning("events: gave up a split of mixed parts (more than %d events unsplit)", self.max_buffered)
        if self.unsplit > self.max_buffered:
            # no split will cover these parts: the next begins after the newest part numbered so far
            self._forget_unsplit()
            self._split_from = self._seq + 1
            self.splits_abandoned += 1
            log.warning("events: gave up splitting mixed parts (more than %d events unsplit)", self.max_buffered)

    def _take(self) -> list[_Part]:
        """Everything queued, as one table per (kind, entity, hour), or per (kind, hour) in the mixed
        layout, each with the next sequence number."""
        groups: dict[tuple, list[tuple[str, float, Any]]] = {}
        mixed = bool(self.split_seconds)
        queue = self._queue
        while queue:
            try:
                kind, entity, ts, item, nbytes = queue.popleft()
            except IndexError:  # drained by a concurrent drop of the oldest
                break
            if nbytes:
                with self._bytes_lock:
                    self._queued_bytes -= nbytes
            hour = int(ts // 3600)
            groups.setdefault((kind, hour) if mixed else (kind, entity, hour), []).append((entity, ts, item))
        parts = []
        for group, items in groups.items():
            kind, hour = group[0], group[-1]
            items = self._writable(kind, items)
            table = (self._mixed_table if mixed else self._entity_table)(kind, items) if items else None
            if table is not None:
                self._seq += 1
                parts.append(_Part(kind, None if mixed else group[1], _hour_start(hour), self._seq, table))
        return parts

    def _writable(self, kind: str, items: list[tuple[str, float, Any]]) -> list[tuple[str, float, Any]]:
        """``items`` without those of entity codes no part can be written under (dropped, counted): a
        mixed part holds any code, but its split would refuse the part of such a one."""
        bad: dict[str, str] = {}
        for entity in {entity for entity, _, _ in items}:
            try:
                check_entity_code(entity)
            except InvalidConfig as exc:
                bad[entity] = str(exc)
        if not bad:
            return items
        for entity, reason in bad.items():
            n = sum(1 for e, _, _ in items if e == entity)
            log.error("events: dropped %d %s events that cannot be written: %s", n, kind, reason)
            self.dropped += n
        return [item for item in items if item[0] not in bad]

    def _entity_table(self, kind: str, items: list[tuple[str, float, Any]]) -> pa.Table | None:
        """One entity's events as rows (None: they cannot be, and are dropped, loudly)."""
        try:
            return self._render(kind, items)
        except InvalidConfig as exc:
            log.error("events: dropped %d %s events that cannot be written: %s", len(items), kind, exc)
        except Exception:  # a bug in a render or a row: lose this batch, loudly, not the writer
            log.exception("events: cannot turn %d %s events of %s into rows; dropped", len(items), kind, items[0][0])
        self.dropped += len(items)
        return None

    def _mixed_table(self, kind: str, items: list[tuple[str, float, Any]]) -> pa.Table | None:
        """Every entity's events as one table in ``kind``'s schema, each row under the entity it was
        queued for (which readers and the split go by), rendered ``RENDER_CHUNK`` events at a time
        with a pause between chunks (``_render``). Checked here, not at the write: where a chunk
        cannot be rendered, or does not fit the schema (a null in a required column), each entity of
        that chunk is tried alone and only those at fault are dropped, where at the write they would
        fail, and hold, every entity's rows of the part."""
        render = self.render.get(kind, dict_rows)
        tables = []
        for chunk in _chunks(items):
            try:
                tables.append(_as_mixed(kind, _rendered(kind, render, chunk), [entity for entity, _, _ in chunk]))
                continue
            except Exception as exc:  # noqa: BLE001 - find the entities at fault, one at a time (below)
                log.warning(
                    "events: cannot turn %d %s events of several entities into rows together (%s); "
                    "trying each entity alone",
                    len(chunk),
                    kind,
                    f"{type(exc).__name__}: {exc}".splitlines()[0],
                )
            tables += self._mixed_by_entity(kind, chunk)  # (out of the except: no chained traceback)
        return pa.concat_tables(tables) if tables else None

    def _mixed_by_entity(self, kind: str, chunk: list[tuple[str, float, Any]]) -> list[pa.Table]:
        by_entity: dict[str, list[tuple[str, float, Any]]] = {}
        for item in chunk:
            by_entity.setdefault(item[0], []).append(item)
        kept = []
        for entity, batch in by_entity.items():
            table = self._entity_table(kind, batch)
            if table is None:
                continue
            try:
                kept.append(_as_mixed(kind, table, [entity] * table.num_rows))
            except Exception as exc:  # noqa: BLE001 - this batch alone is lost, loudly
                log.error("events: dropped %d %s events of %s: %s", table.num_rows, kind, entity, exc)
                self.dropped += table.num_rows
        return kept

    def _render(self, kind: str, items: list[tuple[str, float, Any]]) -> pa.Table:
        """``items`` as one table, rendered ``RENDER_CHUNK`` at a time with a pause between chunks: this
        thread shares the GIL with the request path, and one long stretch of Python here (thousands of
        rows) would hold every request behind it (the tail latency of the bidder)."""
        render = self.render.get(kind, dict_rows)
        tables = [_rendered(kind, render, chunk) for chunk in _chunks(items)]
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]

    def _bounded(self, parts: list[_Part]) -> list[_Part]:
        """``parts`` (oldest first) without their oldest rows beyond ``max_buffered`` (counted as dropped)."""
        excess = sum(p.table.num_rows for p in parts) - self.max_buffered
        while excess > 0 and parts:
            oldest = parts[0]
            if oldest.table.num_rows <= excess or oldest.entity_code is None:
                # (a mixed part goes whole: its rest under a new key would be read twice beside the full
                # part, had that been written after all, until a split covered both)
                parts.pop(0)
                excess -= min(excess, oldest.table.num_rows)
                self.dropped += oldest.table.num_rows
            else:  # what is left of it, under a new key: the full part may have been written after all
                # (a PUT that timed out on our side), and a part is never rewritten with other rows
                self._seq += 1
                parts[0] = _Part(oldest.kind, oldest.entity_code, oldest.hour, self._seq, oldest.table.slice(excess))
                self.dropped += excess
                excess = 0
        return parts

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - a bug in one flush must not stop the next ones
                log.exception("events: flush failed")

    def close(self, timeout: float = 10.0) -> int:
        """Stop the thread and write what is left, and split the mixed parts, retrying a failing store
        until ``timeout`` seconds have passed; returns the events left unwritten (0 when everything
        is in the store, split or not)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            self.flush()
            if not self.buffered and self.split_seconds:
                self.split(deadline)  # left unsplit, the mixed parts are read as they are: this saves readers work
            if (not self.buffered and not self.unsplit) or time.monotonic() >= deadline:
                break
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))
        with self._lock:  # a flush after this one writes in its own thread
            writers, self._writers = self._writers, None
        if writers is not None:
            writers.shutdown(wait=False)  # idle: the last flush above has returned
        if self.buffered:
            log.error(
                "events: %d events could not be written to %s: %s", self.buffered, self.store.url, self.last_error
            )
        return self.buffered


def _hour_start(hour: int) -> datetime:
    """The naive UTC start of the hour numbered ``hour`` since the epoch."""
    return datetime.fromtimestamp(hour * 3600, timezone.utc).replace(tzinfo=None)


def _chunks(items: list) -> Iterator[list]:
    """``items`` ``RENDER_CHUNK`` at a time, with a pause of ``RENDER_PAUSE_SECONDS`` between chunks (the
    writer's thread gives the GIL to the request path)."""
    for start in range(0, len(items), RENDER_CHUNK):
        if start:
            time.sleep(RENDER_PAUSE_SECONDS)
        yield items[start : start + RENDER_CHUNK]


def _rendered(kind: str, render: Render, items: list[tuple[str, float, Any]]) -> pa.Table:
    """``render(items)`` as a table, one row per item (a render that makes more or fewer rows than it
    was given events is refused: their rows could not be told apart)."""
    rows = render(items)
    table = rows if isinstance(rows, pa.Table) else rows_to_table(kind, rows)
    if table.num_rows != len(items):
        raise ValueError(f"the {kind} render made {table.num_rows} rows of {len(items)} events")
    return table


def _as_mixed(kind: str, table: pa.Table, codes: list[str]) -> pa.Table:
    """``table`` in ``kind``'s schema, its ``entity_code`` column ``codes`` (one per row)."""
    schema = SCHEMAS[kind]
    table = conform_to_schema(table, schema)
    return table.set_column(
        schema.get_field_index("entity_code"), schema.field("entity_code"), pa.array(codes, pa.string())
    )


def _by_entity(tables: dict[tuple[str, datetime], list[pa.Table]]) -> dict[tuple[str, str, datetime], pa.Table]:
    """The rows of mixed parts (by kind and hour) as one table per kind, entity and hour, each in the
    order its rows were written: ``MixedPart``'s one stable sort by entity and zero-copy slices of it
    (a filter per entity over a minute of flushes took 80 s for 500 entities, each filter a pass over
    every chunk)."""
    groups = {}
    for (kind, hour), parts in tables.items():
        mixed = MixedPart(pa.concat_tables(parts))
        for code in mixed.index:
            groups[(kind, code, hour)] = mixed.rows_of(code)
    return groups

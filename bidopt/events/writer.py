"""Buffered event writing: the request path appends, a daemon thread writes Parquet parts.

``EventWriter.add`` only appends to an in-memory queue (no I/O, no Arrow on the request path).
Every ``flush_seconds`` the writer's thread takes what is queued, turns it into rows (``render``,
per kind: the bidder reads a decision's request features there, off the request path), and
writes one part per (kind, entity, hour) through ``EventStore.write_part``, naming it with the
writer's id and a sequence number it counts up. So a process that dies loses at most what was
queued since its last flush: ``flush_seconds`` plus the time one flush takes.

The parts of one flush are written by up to ``write_threads`` threads at once where the store's
writes wait on a network (``concurrent_puts``: S3): a replica serving hundreds of entities writes
that many parts per flush, and one after another at an object store's latency (tens of
milliseconds a PUT) they would take longer than the interval between flushes.

A part that fails to write (the store is down) is kept, with its sequence number, and written
again under the same key on the next flush: a write that did go through although it reported an
error is overwritten by the same bytes, not duplicated. Kept parts are bounded (``max_buffered``
events, and as many queued between two flushes): beyond it the oldest events are dropped and
counted (``stats()["dropped"]``), so a store that stays down costs memory up to the bound, then
the oldest events.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from bidopt.errors import InvalidConfig
from bidopt.events.schema import rows_to_table
from bidopt.events.store import EventStore, open_event_store

log = logging.getLogger("bidopt.events")
RENDER_CHUNK = 200  # events turned into rows at a time (about 2 ms of the GIL in the bidder)
RENDER_PAUSE_SECONDS = 0.001

# kind -> turns an entity's batch of (event time in unix seconds, queued item) into rows of that kind's
# schema: a list of dicts, or a table in the schema
Render = Callable[[str, list[tuple[float, Any]]], "list[dict] | pa.Table"]


def dict_rows(entity_code: str, items: list[tuple[float, Any]]) -> list[dict]:
    """The default render: each item is already a row (a dict with the schema's names)."""
    return [row for _, row in items]


@dataclass
class _Part:
    kind: str
    entity_code: str
    hour: datetime
    seq: int
    table: pa.Table


class EventWriter:
    """Buffers events and writes them as parts of an events store, from a daemon thread.

    ``start=False`` leaves the thread off (tests call ``flush`` themselves)."""

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
        }

    def flush(self) -> int:
        """Write what is queued (and retry parts that failed before); returns the rows written now.
        Never raises for a store that fails: the parts are kept for the next flush."""
        with self._lock:
            parts = self._failed + self._take()
            self._failed = []
            written = 0
            kept = []
            outcomes = None
            if self._writers is not None and len(parts) > 1:
                try:
                    outcomes = list(self._writers.map(self._write, parts))
                except RuntimeError as exc:  # no thread to be had (a limit, the interpreter exiting)
                    log.warning("events: cannot write parts in threads (%s); writing them one at a time", exc)
            if outcomes is None:  # a part the pool wrote, or is still writing, is rewritten: the same key and bytes
                outcomes = [self._write(part) for part in parts]
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
            self._failed = self._bounded(kept)
            self._failed_rows = sum(p.table.num_rows for p in self._failed)
            self.written += written
            return written

    def _write(self, part: _Part) -> Exception | None:
        """Write one part; returns what it raised (None: written)."""
        try:
            self.store.write_part(
                part.kind, part.entity_code, part.hour, part.table, writer_id=self.writer_id, seq=part.seq
            )
        except Exception as exc:  # noqa: BLE001 - flush decides: dropped (InvalidConfig) or kept for a retry
            return exc
        return None

    def _take(self) -> list[_Part]:
        """Everything queued, as one table per (kind, entity, hour), each with the next sequence number."""
        groups: dict[tuple[str, str, int], list[tuple[float, Any]]] = {}
        queue = self._queue
        while queue:
            try:
                kind, entity, ts, item, nbytes = queue.popleft()
            except IndexError:  # drained by a concurrent drop of the oldest
                break
            if nbytes:
                with self._bytes_lock:
                    self._queued_bytes -= nbytes
            groups.setdefault((kind, entity, int(ts // 3600)), []).append((ts, item))
        parts = []
        for (kind, entity, hour), items in groups.items():
            try:
                table = self._render(kind, entity, items)
            except Exception:  # a bug in a render or a row: lose this batch, loudly, not the writer
                log.exception("events: cannot turn %d %s events of %s into rows; dropped", len(items), kind, entity)
                self.dropped += len(items)
                continue
            self._seq += 1
            start = datetime.fromtimestamp(hour * 3600, timezone.utc).replace(tzinfo=None)
            parts.append(_Part(kind, entity, start, self._seq, table))
        return parts

    def _render(self, kind: str, entity: str, items: list[tuple[float, Any]]) -> pa.Table:
        """``items`` as one table, rendered ``RENDER_CHUNK`` at a time with a pause between chunks: this
        thread shares the GIL with the request path, and one long stretch of Python here (thousands of
        rows) would hold every request behind it (the tail latency of the bidder)."""
        render = self.render.get(kind, dict_rows)
        tables = []
        for start in range(0, len(items), RENDER_CHUNK):
            if start:
                time.sleep(RENDER_PAUSE_SECONDS)
            rows = render(entity, items[start : start + RENDER_CHUNK])
            tables.append(rows if isinstance(rows, pa.Table) else rows_to_table(kind, rows))
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]

    def _bounded(self, parts: list[_Part]) -> list[_Part]:
        """``parts`` (oldest first) without their oldest rows beyond ``max_buffered`` (counted as dropped)."""
        excess = sum(p.table.num_rows for p in parts) - self.max_buffered
        while excess > 0 and parts:
            oldest = parts[0]
            if oldest.table.num_rows <= excess:
                parts.pop(0)
                excess -= oldest.table.num_rows
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
        """Stop the thread and write what is left, retrying a failing store until ``timeout`` seconds
        have passed; returns the events left unwritten (0 when everything is in the store)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            self.flush()
            if not self.buffered or time.monotonic() >= deadline:
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

"""Reading and writing event parts in an events store (any artifact store URL: ``file://``, ``s3://``).

A part is one Parquet file of one kind, entity and hour, written whole (the local store renames a
finished temporary file; an S3 PUT is atomic), so a reader sees a part completely or not at all.
Parts are never rewritten: a writer names each new part ``part-<writer_id>-<seq>.parquet`` with its
own id and a sequence number it counts up, so two bidders never write the same key.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bidopt.artifacts import open_artifact_store
from bidopt.artifacts.base import ArtifactStore
from bidopt.errors import InvalidConfig
from bidopt.events.schema import EVENT_KINDS, SCHEMAS, conform_to_schema
from bidopt.warehouse.base import check_entity_code

HOUR_FORMAT = "%Y%m%dT%H"
# Parsed parts kept in memory per process, by (store URL, key): a part is never rewritten with other
# rows, so a reader that comes back (the control loop every tick, the management API) reads only the
# parts that are new since. Measured here: re-reading 1,200 small parts took 2.6 s, each tick.
PART_CACHE_BYTES = 256 * 1024 * 1024
READ_THREADS = 8  # parts fetched at once (S3 GETs wait on the network, Parquet decoding drops the GIL)


class _PartCache:
    """A least-recently-used map of parsed parts, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self._tables: OrderedDict[tuple[str, str], pa.Table] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> pa.Table | None:
        with self._lock:
            table = self._tables.get(key)
            if table is not None:
                self._tables.move_to_end(key)
            return table

    def put(self, key: tuple[str, str], table: pa.Table) -> None:
        size = table.nbytes
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._tables.pop(key, None)
            self.bytes += size - (old.nbytes if old is not None else 0)
            self._tables[key] = table
            while self.bytes > self.max_bytes:
                _, evicted = self._tables.popitem(last=False)
                self.bytes -= evicted.nbytes


_PARTS = _PartCache(PART_CACHE_BYTES)


def hour_of(ts: datetime) -> datetime:
    """The start of the hour ``ts`` (naive UTC) falls in."""
    return ts.replace(minute=0, second=0, microsecond=0)


def _kind(kind: str) -> str:
    if kind not in EVENT_KINDS:
        raise InvalidConfig(f"event kind must be one of {', '.join(EVENT_KINDS)}, got {kind!r}")
    return kind


class EventStore:
    """Event parts below one store URL."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self.url = store.url

    @staticmethod
    def part_key(kind: str, entity_code: str, hour: datetime, writer_id: str, seq: int) -> str:
        safe_writer = "".join(c if c.isalnum() or c in "-_" else "-" for c in writer_id)
        return (
            f"{_kind(kind)}/entity_code={check_entity_code(entity_code)}/hour={hour_of(hour).strftime(HOUR_FORMAT)}/"
            f"part-{safe_writer}-{seq:08d}.parquet"
        )

    @property
    def concurrent_puts(self) -> bool:
        """Whether parts written several at once go faster (``ArtifactStore.concurrent_puts``)."""
        return self.store.concurrent_puts

    def write_part(
        self, kind: str, entity_code: str, hour: datetime, table: pa.Table, *, writer_id: str, seq: int
    ) -> str:
        """Write ``table`` (``kind``'s schema, rows of ``entity_code`` in ``hour``) as one part; returns its key."""
        table = table.cast(SCHEMAS[_kind(kind)])
        key = self.part_key(kind, entity_code, hour, writer_id, seq)
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        self.store.put_bytes(key, sink.getvalue())
        return key

    def hours(self, kind: str, entity_code: str) -> list[datetime]:
        """The hours that have parts of ``kind`` for ``entity_code``, oldest first."""
        prefix = f"{_kind(kind)}/entity_code={check_entity_code(entity_code)}/"
        found = set()
        for key in self.store.list_keys(prefix):
            part = key[len(prefix) :].split("/", 1)[0]
            if part.startswith("hour="):
                try:
                    found.add(datetime.strptime(part[5:], HOUR_FORMAT))
                except ValueError:
                    continue  # not a partition of ours
        return sorted(found)

    def part_keys(
        self, kind: str, entity_code: str, start: datetime | None = None, end: datetime | None = None
    ) -> list[str]:
        """Keys of the parts whose hour overlaps ``[start, end)`` (either bound open when None)."""
        keys = []
        for hour in self.hours(kind, entity_code):
            if (end is not None and hour >= end) or (start is not None and hour + timedelta(hours=1) <= start):
                continue
            prefix = f"{kind}/entity_code={entity_code}/hour={hour.strftime(HOUR_FORMAT)}/"
            keys.extend(k for k in self.store.list_keys(prefix) if k.endswith(".parquet"))
        return keys

    def _read_part(self, key: str, schema: pa.Schema) -> pa.Table:
        return conform_to_schema(pq.read_table(io.BytesIO(self.store.get_bytes(key))), schema)

    def read(self, kind: str, entity_code: str, start: datetime | None = None, end: datetime | None = None) -> pa.Table:
        """Every row of ``kind`` for ``entity_code`` with ``start <= event_time < end``, in ``kind``'s schema."""
        schema = SCHEMAS[_kind(kind)]
        keys = self.part_keys(kind, entity_code, start, end)
        tables = {key: _PARTS.get((self.url, key)) for key in keys}
        missing = [key for key, table in tables.items() if table is None]
        if missing:
            with ThreadPoolExecutor(min(READ_THREADS, len(missing))) as pool:
                for key, table in zip(missing, pool.map(lambda k: self._read_part(k, schema), missing)):
                    tables[key] = table
                    _PARTS.put((self.url, key), table)
        table = pa.concat_tables([tables[key] for key in keys]) if keys else schema.empty_table()
        if start is not None:
            table = table.filter(pc.greater_equal(table["event_time"], pa.scalar(start, pa.timestamp("us"))))
        if end is not None:
            table = table.filter(pc.less(table["event_time"], pa.scalar(end, pa.timestamp("us"))))
        return table


def open_event_store(url: str) -> EventStore:
    """The events store at ``url`` (``file:///folder`` or ``s3://bucket/prefix``)."""
    return EventStore(open_artifact_store(url))

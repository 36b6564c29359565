"""Reading and writing event parts in an events store (any artifact store URL: ``file://``, ``s3://``).

A part is one Parquet file written whole (the local store renames a finished temporary file; an S3
PUT is atomic), so a reader sees a part completely or not at all. Parts are never rewritten with
other rows: a writer names each part with its own id and a sequence number it counts up, so two
bidders never write the same key. There are three kinds of part, all read the same way:

* ``<kind>/entity_code=<code>/hour=<H>/part-<writer>-<seq>.parquet``: one entity's rows of one
  flush (``EventWriter`` with ``split_seconds=0``, and every part written before the mixed layout);
* ``<kind>/mixed/hour=<H>/part-<writer>-<seq>.parquet``: every entity's rows of one flush, one put
  per kind and hour however many entities had traffic (``EventWriter``'s flush);
* ``<kind>/entity_code=<code>/hour=<H>/split-<writer>-<first>-<last>.parquet``: one entity's rows of
  that writer's mixed parts ``first`` to ``last`` of that hour, written a minute or so later, after
  which the writer deletes those mixed parts (``EventWriter.split``).

A reader of one entity reads its own parts and the mixed parts of the hours it asks for, skipping a
mixed part that one of the entity's split parts covers: each row is read once, before, during and
after a split. It lists the mixed parts before the entity's own (a split written between the two
listings then hides its mixed part rather than adding to it), and lists the entity's own parts
again when a mixed part it listed has been deleted since (its splits were all written before the
delete).

Mixed parts that no split takes over (a writer killed before its split, a split given up, a delete
that failed) are read as they are until ``sweep_mixed_parts`` (``bidopt events sweep``, the control
loop once an hour) splits and deletes those of hours that ended ``SWEEP_AFTER`` (6 h) ago, the same
way; writers never write a mixed part, nor a split part, of an hour that ended two hours ago by
their wall clock just before each put (``LATE_SECONDS`` in ``bidopt.events.writer``), so none acts
on those any more. (What this assumes: the four hours between the two bounds exceed any pause of a
writer between that check and its put plus the skew between its clock and the sweeper's.)
"""

from __future__ import annotations

import io
import logging
import re
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bidopt.artifacts import open_artifact_store
from bidopt.artifacts.base import ArtifactStore
from bidopt.errors import InvalidConfig, NotFound
from bidopt.events.schema import EVENT_KINDS, SCHEMAS, conform_to_schema
from bidopt.warehouse.base import check_entity_code

log = logging.getLogger("bidopt.events")
HOUR_FORMAT = "%Y%m%dT%H"
# Parsed parts kept in memory per process, by (store URL, key): a part is never rewritten with other
# rows, so a reader that comes back (the control loop every tick, the management API) reads only the
# parts that are new since. Measured here: re-reading 1,200 small parts took 2.6 s, each tick.
PART_CACHE_BYTES = 256 * 1024 * 1024
# Snappy, not zstd: a bidder writes every part (a split, 500 parts a minute at fleet size), and a
# part of 240 decisions took 1.96 ms of CPU with zstd, 1.03 with snappy, for 13% more bytes (21.0 vs
# 23.8 KB); parts written with zstd before read as they are
PART_COMPRESSION = "snappy"
READ_THREADS = 8  # parts fetched at once (S3 GETs wait on the network, Parquet decoding drops the GIL)
MIXED = "mixed"  # the folder of the parts that hold every entity of a flush
# a read of at most this many hours lists their mixed folders one by one, a longer one the whole folder
MIXED_LISTING_HOURS = timedelta(hours=48)
# The sweeper takes the mixed parts left in hours that ended this long ago (a replica killed before its
# split, a split given up or not deleted): a writer never writes a mixed or split part of an hour that
# ended 2 h ago (bidopt.events.writer.LATE_SECONDS), so none acts on these any more
SWEEP_AFTER = timedelta(hours=6)
# it splits a writer's mixed parts of an hour in fixed ranges of sequence numbers: the same range whoever
# sweeps and whenever (two sweepers write the same keys with the same rows), and a bounded read each
SWEEP_SEQS = 256


class _PartCache:
    """A least-recently-used map of parsed parts (tables, ``MixedPart``), bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self._tables: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> Any:
        with self._lock:
            table = self._tables.get(key)
            if table is not None:
                self._tables.move_to_end(key)
            return table

    def put(self, key: tuple[str, str], table: Any) -> None:
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


def _safe(writer_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in writer_id)


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
        return (
            f"{_kind(kind)}/entity_code={check_entity_code(entity_code)}/hour={hour_of(hour).strftime(HOUR_FORMAT)}/"
            f"part-{_safe(writer_id)}-{seq:08d}.parquet"
        )

    @staticmethod
    def mixed_part_key(kind: str, hour: datetime, writer_id: str, seq: int) -> str:
        """The key of a part holding every entity's rows of ``kind`` in ``hour`` from one flush."""
        folder = f"{_kind(kind)}/{MIXED}/hour={hour_of(hour).strftime(HOUR_FORMAT)}"
        return f"{folder}/part-{_safe(writer_id)}-{seq:08d}.parquet"

    @staticmethod
    def split_part_key(kind: str, entity_code: str, hour: datetime, writer_id: str, first: int, last: int) -> str:
        """The key of ``entity_code``'s rows of ``writer_id``'s mixed parts ``first`` to ``last`` in ``hour``."""
        if not 0 < first <= last:
            raise InvalidConfig(f"a split covers mixed parts first <= last, got {first} and {last}")
        return (
            f"{_kind(kind)}/entity_code={check_entity_code(entity_code)}/hour={hour_of(hour).strftime(HOUR_FORMAT)}/"
            f"split-{_safe(writer_id)}-{first:08d}-{last:08d}.parquet"
        )

    @property
    def concurrent_puts(self) -> bool:
        """Whether parts written several at once go faster (``ArtifactStore.concurrent_puts``)."""
        return self.store.concurrent_puts

    def write_part(
        self, kind: str, entity_code: str, hour: datetime, table: pa.Table, *, writer_id: str, seq: int
    ) -> str:
        """Write ``table`` (``kind``'s schema, rows of ``entity_code`` in ``hour``) as one part; returns its key."""
        return self._put_table(kind, self.part_key(kind, entity_code, hour, writer_id, seq), table)

    def write_mixed_part(self, kind: str, hour: datetime, table: pa.Table, *, writer_id: str, seq: int) -> str:
        """Write ``table`` (rows of any entities in ``hour``) as one mixed part; returns its key."""
        return self._put_table(kind, self.mixed_part_key(kind, hour, writer_id, seq), table)

    def write_split_part(
        self, kind: str, entity_code: str, hour: datetime, table: pa.Table, *, writer_id: str, first: int, last: int
    ) -> str:
        """Write ``table``, every row of ``entity_code`` in ``writer_id``'s mixed parts ``first`` to ``last``
        of ``hour`` (and nothing else: readers then skip those mixed parts for this entity)."""
        return self._put_table(kind, self.split_part_key(kind, entity_code, hour, writer_id, first, last), table)

    def delete_parts(self, keys: list[str]) -> None:
        """Delete the parts ``keys`` (a split's mixed parts, once its split parts are all written)."""
        self.store.delete_many(keys)

    def sweep_mixed_parts(self, kind: str, now: datetime, after: timedelta = SWEEP_AFTER) -> dict[str, int]:
        """Split, and then delete, the mixed parts of ``kind`` left in the hours that ended ``after`` or
        more before ``now`` (naive UTC); returns the mixed parts deleted, the split parts written, and
        the mixed parts kept (a part that cannot be split, or that another sweeper is deleting: the
        next sweep tries again).

        A writer's mixed parts of an hour go in fixed ranges of ``SWEEP_SEQS`` sequence numbers: for
        each entity with rows in a range that no split of its own covers, one split part named after
        the whole range with those rows, then the range's mixed parts are deleted. Readers see each
        row once throughout (the writer's split protocol: splits before deletes). Two sweepers at once
        write the same keys with the same rows: a sweeper that lists a range after another began
        deleting it finds every entity's split part already written, and writes nothing."""
        schema = SCHEMAS[_kind(kind)]
        out = {"mixed_parts_deleted": 0, "split_parts_written": 0, "mixed_parts_kept": 0}
        for hour, keys in sorted(self._keys_by_hour(f"{kind}/{MIXED}/").items()):
            if hour + timedelta(hours=1) + after > now:
                continue
            ranges: dict[tuple[str, int], list[tuple[int, str]]] = {}
            for key in keys:
                match = _PART_NAME.fullmatch(key.rsplit("/", 1)[-1])
                if match:
                    seq = int(match[2])
                    ranges.setdefault((match[1], (seq - 1) // SWEEP_SEQS), []).append((seq, key))
            for (writer, bucket), parts in sorted(ranges.items()):
                first, last = bucket * SWEEP_SEQS + 1, (bucket + 1) * SWEEP_SEQS
                written, deleted = self._sweep_range(kind, hour, writer, first, last, sorted(parts), schema)
                out["split_parts_written"] += written
                out["mixed_parts_deleted" if deleted else "mixed_parts_kept"] += len(parts)
        return out

    def _sweep_range(
        self, kind: str, hour: datetime, writer: str, first: int, last: int, parts: list[tuple[int, str]], schema
    ) -> tuple[int, bool]:
        """One range of one writer's mixed parts of ``hour`` split and deleted: the split parts written,
        and whether the mixed parts were deleted (else kept, for the next sweep)."""
        keys = [key for _, key in parts]
        try:
            fetched, missing = self._fetch(keys, schema, cache=False)  # (parts about to go: not readers' cache)
        except Exception as exc:  # noqa: BLE001 - an unreadable part: this range is kept, the others go on
            log.warning("events: cannot sweep %s's mixed parts %d-%d of %s: %s", writer, first, last, hour, exc)
            return 0, False
        if missing:  # another sweeper is deleting them: its split parts are written, the rest is its
            return 0, False
        written = 0
        for entity in sorted({code for part in fetched.values() for code in part.index}):
            try:
                prefix = f"{kind}/entity_code={check_entity_code(entity)}/"
            except InvalidConfig as exc:  # no part can hold it: its rows stay readable in the mixed parts
                log.warning("events: cannot sweep %s's mixed parts %d-%d of %s: %s", writer, first, last, hour, exc)
                return written, False
            covered = _split_ranges(self._keys_by_hour(prefix, hour).get(hour, []))
            tables = [fetched[key].rows_of(entity) for key in keys if not _is_covered(key, covered)]
            tables = [t for t in tables if t.num_rows]
            if not tables:
                continue
            try:
                self.write_split_part(
                    kind, entity, hour, pa.concat_tables(tables), writer_id=writer, first=first, last=last
                )
            except Exception as exc:  # noqa: BLE001 - kept: the next sweep finds this entity uncovered still
                log.warning("events: cannot sweep %s's mixed parts %d-%d of %s: %s", writer, first, last, hour, exc)
                return written, False
            written += 1
        try:
            self.delete_parts(keys)
        except Exception as exc:  # noqa: BLE001 - covered now: the next sweep deletes them, the other ranges go on
            log.warning("events: cannot delete %s's swept mixed parts %d-%d of %s: %s", writer, first, last, hour, exc)
            return written, False
        return written, True

    def _put_table(self, kind: str, key: str, table: pa.Table) -> str:
        table = table.cast(SCHEMAS[_kind(kind)])
        sink = io.BytesIO()
        pq.write_table(table, sink, compression=PART_COMPRESSION)
        self.store.put_bytes(key, sink.getvalue())
        return key

    def _keys_by_hour(self, prefix: str, hour: datetime | None = None) -> dict[datetime, list[str]]:
        """The parts below ``prefix`` by the ``hour=`` folder they are in (only ``hour``'s, listing that
        folder alone, when given)."""
        found: dict[datetime, list[str]] = {}
        within = f"hour={hour.strftime(HOUR_FORMAT)}/" if hour is not None else ""
        for key in self.store.list_keys(prefix + within):
            folder, _, name = key[len(prefix) :].partition("/")
            if not folder.startswith("hour=") or "/" in name or not name.endswith(".parquet"):
                continue  # not a part of ours
            try:
                hour = datetime.strptime(folder[5:], HOUR_FORMAT)
            except ValueError:
                continue
            found.setdefault(hour, []).append(key)
        return found

    def _mixed_keys(self, kind: str, start: datetime | None, end: datetime | None) -> dict[datetime, list[str]]:
        """The mixed parts of ``kind`` by hour: of the hours of ``[start, end)`` one folder at a time where
        there are few (a compaction's, a guardrail tick's), else of every hour."""
        prefix = f"{_kind(kind)}/{MIXED}/"
        if start is None or end is None or not timedelta(0) < end - start <= MIXED_LISTING_HOURS:
            return self._keys_by_hour(prefix)
        found: dict[datetime, list[str]] = {}
        hour = hour_of(start)
        while hour < end:
            found.update(self._keys_by_hour(prefix, hour))
            hour += timedelta(hours=1)
        return found

    def _parts(
        self, kind: str, entity_code: str, start: datetime | None, end: datetime | None, fetch: str = "all"
    ) -> tuple[list[str], list[str], dict[str, pa.Table | MixedPart]]:
        """The entity's own parts and the mixed parts none of its splits covers, whose hour overlaps
        ``[start, end)``, and what they hold (module docstring: the mixed parts are listed first; one
        that is gone when read was split and deleted, its splits written before, so the entity's own
        parts are listed again without it). ``fetch``: which parts to read, ``all``, or ``mixed``
        only those in hours with no part of the entity's own (what ``hours`` needs to know)."""
        schema = SCHEMAS[_kind(kind)]
        mixed = self._mixed_keys(kind, start, end)
        prefix = f"{kind}/entity_code={check_entity_code(entity_code)}/"
        gone: set[str] = set()
        while True:
            own = self._keys_by_hour(prefix)
            own_keys = [key for hour in sorted(own) if _overlaps(hour, start, end) for key in own[hour]]
            mixed_keys = []
            for hour in sorted(mixed):
                if _overlaps(hour, start, end):
                    covered = _split_ranges(own.get(hour, []))
                    mixed_keys += [k for k in mixed[hour] if k not in gone and not _is_covered(k, covered)]
            own_hours = set(own)
            wanted = (
                own_keys + mixed_keys
                if fetch == "all"
                else [key for key in mixed_keys if self._hour_of_key(key) not in own_hours]
            )
            parts, missing = self._fetch(wanted, schema)
            if not missing:
                return own_keys, mixed_keys, parts
            if missing - set(mixed_keys):  # an entity's own part is never deleted
                raise NotFound(f"event parts vanished while read: {sorted(missing - set(mixed_keys))[:3]}")
            gone |= missing  # each round removes a part of the first listing: this ends

    def hours(self, kind: str, entity_code: str) -> list[datetime]:
        """The hours that have rows of ``kind`` for ``entity_code``, oldest first: those of its own parts,
        and those of the mixed parts that hold rows of it."""
        own_keys, _, parts = self._parts(kind, entity_code, None, None, fetch="mixed")
        found = {self._hour_of_key(key) for key in own_keys}
        found |= {self._hour_of_key(key) for key, part in parts.items() if part.rows_of(entity_code).num_rows}
        return sorted(found)

    @staticmethod
    def _hour_of_key(key: str) -> datetime:
        folder = key.rsplit("/", 2)[-2]
        return datetime.strptime(folder[len("hour=") :], HOUR_FORMAT)

    def _read_part(self, key: str, schema: pa.Schema) -> pa.Table | MixedPart:
        table = conform_to_schema(pq.read_table(io.BytesIO(self.store.get_bytes(key))), schema)
        return MixedPart(table) if f"/{MIXED}/" in key else table

    def _fetch(
        self, keys: list[str], schema: pa.Schema, cache: bool = True
    ) -> tuple[dict[str, pa.Table | MixedPart], set[str]]:
        """The parsed parts of ``keys`` (from the cache where it has them; put in it with ``cache``), and the
        keys not found."""

        def fetch(key: str) -> pa.Table | MixedPart | None:
            try:
                return self._read_part(key, schema)
            except NotFound:
                return None

        parts = {key: _PARTS.get((self.url, key)) for key in keys}
        missing = [key for key, part in parts.items() if part is None]
        gone = set()
        if missing:
            with ThreadPoolExecutor(min(READ_THREADS, len(missing))) as pool:
                for key, part in zip(missing, pool.map(fetch, missing)):
                    if part is None:
                        gone.add(key)
                        continue
                    parts[key] = part
                    if cache:
                        _PARTS.put((self.url, key), part)
        return {k: v for k, v in parts.items() if v is not None}, gone

    def read(self, kind: str, entity_code: str, start: datetime | None = None, end: datetime | None = None) -> pa.Table:
        """Every row of ``kind`` for ``entity_code`` with ``start <= event_time < end``, in ``kind``'s schema
        (in the order of their parts, not sorted by time)."""
        schema = SCHEMAS[_kind(kind)]
        own_keys, mixed_keys, parts = self._parts(kind, entity_code, start, end)
        tables = [parts[key] for key in own_keys] + [parts[key].rows_of(entity_code) for key in mixed_keys]
        table = pa.concat_tables(tables) if tables else schema.empty_table()
        if start is not None:
            table = table.filter(pc.greater_equal(table["event_time"], pa.scalar(start, pa.timestamp("us"))))
        if end is not None:
            table = table.filter(pc.less(table["event_time"], pa.scalar(end, pa.timestamp("us"))))
        return table


class MixedPart:
    """A parsed mixed part, sorted by entity (stably: each entity's rows in the order written), with
    where each entity's rows are: a reader of one entity slices it instead of filtering every row, as
    every entity's reader does every control-loop tick; the writer's split cuts its parts the same way."""

    def __init__(self, table: pa.Table) -> None:
        table = table.combine_chunks()
        self.table = table.take(pc.sort_indices(table, sort_keys=[("entity_code", "ascending")]))
        counts = pc.value_counts(self.table["entity_code"])  # in order of first appearance: the sorted order
        self.index, offset = {}, 0
        for code, count in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()):
            self.index[code] = (offset, count)
            offset += count

    @property
    def nbytes(self) -> int:
        return self.table.nbytes

    def rows_of(self, entity_code: str) -> pa.Table:
        offset, count = self.index.get(entity_code, (0, 0))
        return self.table.slice(offset, count)


def _overlaps(hour: datetime, start: datetime | None, end: datetime | None) -> bool:
    return not ((end is not None and hour >= end) or (start is not None and hour + timedelta(hours=1) <= start))


_SPLIT_NAME = re.compile(r"split-(.+)-([0-9]{8,})-([0-9]{8,})\.parquet")
_PART_NAME = re.compile(r"part-(.+)-([0-9]{8,})\.parquet")


def _split_ranges(keys: list[str]) -> dict[str, list[tuple[int, int]]]:
    """The mixed parts that the split parts among ``keys`` cover: writer -> ``(first, last)`` ranges
    (a split part whose name is not ours covers nothing, and is still read)."""
    ranges: dict[str, list[tuple[int, int]]] = {}
    for key in keys:
        match = _SPLIT_NAME.fullmatch(key.rsplit("/", 1)[-1])
        if match:
            ranges.setdefault(match[1], []).append((int(match[2]), int(match[3])))
    return ranges


def _is_covered(mixed_key: str, ranges: dict[str, list[tuple[int, int]]]) -> bool:
    match = _PART_NAME.fullmatch(mixed_key.rsplit("/", 1)[-1])
    return bool(match) and any(first <= int(match[2]) <= last for first, last in ranges.get(match[1], ()))


def open_event_store(url: str) -> EventStore:
    """The events store at ``url`` (``file:///folder`` or ``s3://bucket/prefix``)."""
    return EventStore(open_artifact_store(url))

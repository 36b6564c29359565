"""Bidder tiers: memcached as the shared tier, a near cache bounded in bytes in each replica.

Chosen when ``BIDOPT_CACHE_URL`` is a shared cache (``memcached://``); with ``memory://`` (the
embedded default) every replica keeps every table in memory as before and none of this runs.

**Publishing, once per run version.** A run's *version* is its id and a hash of the checksums in its
manifest (``run_version``): keys never mix two runs' rows, nor two contents of one run. The first
replica that needs a version it cannot find claims it (memcached ``add`` of its ``claim`` key, which
expires after ``CLAIM_SECONDS`` unless renewed between batches of rows: a replica that dies or stalls
loses it soon), reads the run from the artifact store and
writes, in this order, every row (``bidopt:<entity>:<version>:bid:<segment key>``), the *pinned*
blob (the anchor back-off rows, the entity default, the domain multipliers, the features and row
count, as JSON in ``PINNED_CHUNK`` pieces ``...:pinned:<i>``, their count in ``...:pinned``: one
memcached item holds 1 MiB by default) and the ``...:published`` marker. Every other replica waits for the pinned
blob and never reads the table from the artifact store. The split itself comes from the database as
before; ``bidopt:<entity>:split`` is written for other readers with each run's version.

**Reading.** A replica's ``RunTables`` for a tiered run holds the pinned rows (never evicted: a
memcached outage still bids from the anchor's row or the default) and ``TieredBids`` in place of
the full table. A request resolves the split to its run once (the state it read), so every key it
reads is of that run's version. A segment key is looked up in the ``NearCache`` (LRU, bounded by
``BIDOPT_BIDDER_NEAR_CACHE_BYTES``, an absent key is cached as absent for ``ABSENT_SECONDS``). On a miss, with
``BIDOPT_BIDDER_NEAR_MISS=backoff`` (the default) the request is answered from the pinned back-off
row at once and the key is queued for the ``Fetcher`` thread, which fills the near cache with
batched ``get_many`` calls; with ``fetch`` the miss is read from memcached on the request path
(one round trip, no fetch for a second after an error). The README's *Bidder tiers* gives the
measurements behind the default.

A batch's results for a version are stored only if its ``published`` marker came back in the same
``get_many``: a memcached that restarted empty is not taken to say that every key is absent (the
refresher notices the missing marker and republishes the whole version: rows, pinned blob, marker).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from queue import Empty, SimpleQueue
from typing import Protocol

from bidopt.artifacts import MANIFEST, open_artifact_store
from bidopt.bidder.core import EntityServing, RunTables
from bidopt.bidder.fields import feature_reader
from bidopt.cache import BidCache, cache_key
from bidopt.warehouse.contract import KEY_SEPARATOR, WILDCARD


class PlannedRun(Protocol):
    """What ``bidopt.bidder.loader.PlannedRun`` gives of a run (not imported: the loader imports this)."""

    run_id: str
    output_url: str
    features: tuple[tuple[str, str | None], ...]
    max_bid_cpm: float
    min_bid_cpm: float


log = logging.getLogger("bidopt.bidder")

# What one near-cache entry costs beyond its segment key's string: the (version, key) tuple, the
# OrderedDict's slot and links and the float (measured with tracemalloc: 161 bytes for tuple and slot
# on CPython 3.12, a float 24).
ENTRY_BYTES = 185
CLAIM_SECONDS = 30  # a claimer that died frees its claim after this (renewed while it writes)
WAIT_SECONDS = 30.0  # how long a refresh waits for other replicas' publishing, in all, before it gives up
ABSENT_SECONDS = 60.0  # an absent key is fetched again after this (a row memcached evicted comes back)
PINNED_CHUNK = 512 * 1024  # bytes per item of the pinned blob (memcached's default item limit is 1 MiB)
WRITE_BATCH = 5_000  # rows per set_many of the publisher (the claim is renewed between them)
FETCH_BATCH = 256  # keys per get_many of the fetcher
MAX_PENDING = 50_000  # keys queued for the fetcher at most (more misses are answered, not queued)
FETCH_PAUSE_AFTER_ERROR = 1.0  # seconds without fetches after memcached failed
MISS_MODES = ("backoff", "fetch")


class _Absent:
    """A segment key the run's table does not have (cached, so that it is not fetched again)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT = _Absent()


class PublishingElsewhere(RuntimeError):
    """Another replica holds the claim to publish this run version and has not finished."""


def run_version(run_id: str, manifest: dict) -> str:
    """``<run id>.<12 hex>``: the run and a hash of its artifacts' checksums."""
    files = manifest.get("files", {})
    digest = hashlib.sha256(
        "|".join(f"{n}:{files[n]['sha256']}" for n in sorted(files) if "sha256" in files[n]).encode()
    ).hexdigest()
    return f"{run_id}.{digest[:12]}"


def is_pinned_key(key: str) -> bool:
    """Whether a bid-table key is a back-off row kept in memory: the entity default (``*|*|*``) or an
    anchor's row (``california|*|*``). A one-feature table is all pinned: it is as small as that."""
    return all(part == WILDCARD for part in key.split(KEY_SEPARATOR)[1:])


def row_key(entity: str, version: str, segment: str) -> str:
    return cache_key(entity, version, "bid", segment)


def pinned_key(entity: str, version: str) -> str:
    return cache_key(entity, version, "pinned")


def marker_key(entity: str, version: str) -> str:
    return cache_key(entity, version, "published")


def claim_key(entity: str, version: str) -> str:
    return cache_key(entity, version, "claim")


def pinned_chunk_key(entity: str, version: str, i: int) -> str:
    return cache_key(entity, version, "pinned", str(i))


def entry_bytes(key: tuple[str, str]) -> int:
    return ENTRY_BYTES + sys.getsizeof(key[1])


class NearCache:
    """One replica's near cache: ``(version, segment key) -> bid`` (or ``ABSENT``), least recently used
    first out, at most ``max_bytes`` by ``entry_bytes``.

    ``get`` runs on the request path without a lock (one dict read and a ``move_to_end``, each
    atomic under the GIL); ``put_many`` (the fetcher, or a request in ``fetch`` mode) takes a lock."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"near cache bound must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self.data: OrderedDict = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.fills = self.evictions = self.absent_fills = 0
        self.absent_seconds = ABSENT_SECONDS
        self._absent_until: dict = {}  # key -> when its ABSENT entry goes (fetched again then)
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]):
        value = self.data.get(key)
        if value is ABSENT and time.monotonic() >= self._absent_until.get(key, 0.0):
            self._drop(key)  # a row memcached evicted while its marker stayed: fetch it again
            value = None
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        try:
            self.data.move_to_end(key)
        except KeyError:  # evicted by the fetcher in between
            pass
        return value

    def put_many(self, items: Iterable[tuple[tuple[str, str], object]]) -> None:
        with self._lock:
            data = self.data
            for key, value in items:
                if key in data:
                    continue
                size = entry_bytes(key)
                if size > self.max_bytes:
                    continue
                data[key] = value
                self.bytes += size
                self.fills += 1
                if value is ABSENT:
                    self.absent_fills += 1
                    self._absent_until[key] = time.monotonic() + self.absent_seconds
            while self.bytes > self.max_bytes and data:
                old, _ = data.popitem(last=False)
                self.bytes -= entry_bytes(old)
                self._absent_until.pop(old, None)
                self.evictions += 1

    def _drop(self, key: tuple[str, str]) -> None:
        with self._lock:
            if self.data.pop(key, None) is not None:
                self.bytes -= entry_bytes(key)
            self._absent_until.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self.data.clear()
            self._absent_until.clear()
            self.bytes = 0

    def stats(self) -> dict:
        looked = self.hits + self.misses
        return {
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "entries": len(self.data),
            "hits": self.hits,
            "misses": self.misses,
            "hit_ratio": round(self.hits / looked, 4) if looked else None,
            "fills": self.fills,
            "absent_fills": self.absent_fills,
            "evictions": self.evictions,
        }


class TieredBids:
    """A tiered run's bid table as ``RunTables.bids``: ``get`` reads the pinned rows, then the near cache,
    then (on a miss) asks the fetcher. ``len`` is the table's row count."""

    __slots__ = ("entity", "version", "pinned", "near", "fetcher", "rows")

    def __init__(self, entity: str, version: str, pinned: dict, near: NearCache, fetcher: Fetcher, rows: int):
        self.entity, self.version, self.pinned = entity, version, pinned
        self.near, self.fetcher, self.rows = near, fetcher, rows

    def get(self, key: str, default=None):
        value = self.pinned.get(key)
        if value is not None:
            return value
        value = self.near.get((self.version, key))
        if value is None:
            value = self.fetcher.miss(self, key)
            if value is None:
                return default
        return default if value is ABSENT else value

    def __getitem__(self, key: str) -> float:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __len__(self) -> int:
        return self.rows

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TieredBids) and (self.entity, self.version) == (other.entity, other.version)

    __hash__ = None  # type: ignore[assignment]


class Fetcher:
    """Fills the near cache from the shared tier: queued misses in batches (a daemon thread), or one
    key at once on the request path (``mode="fetch"``)."""

    def __init__(
        self,
        cache: BidCache,
        near: NearCache,
        *,
        mode: str = "backoff",
        batch: int = FETCH_BATCH,
        max_pending: int = MAX_PENDING,
        start: bool = True,
    ) -> None:
        if mode not in MISS_MODES:
            raise ValueError(f"near-cache miss mode must be one of {', '.join(MISS_MODES)}, got {mode!r}")
        self.cache, self.near, self.mode = cache, near, mode
        self.batch, self.max_pending = batch, max_pending
        self._queue: SimpleQueue = SimpleQueue()
        self._pending: set = set()
        self._stop = threading.Event()
        self._paused_until = 0.0
        self._warned_at = -60.0
        self.batches = self.errors = self.dropped = self.unpublished = 0
        self._thread: threading.Thread | None = None
        if start and mode == "backoff":
            self._thread = threading.Thread(target=self._run, name="bidder-near-fill", daemon=True)
            self._thread.start()

    def miss(self, bids: TieredBids, segment: str):
        """On the request path: ``None`` (answer from the back-off rows; the key is queued), or in
        ``fetch`` mode the value read now (``ABSENT`` if the table has no such key)."""
        if self.mode == "fetch":
            return self._fetch_now(bids, segment)
        key = (bids.version, segment)
        if key in self._pending:
            return None
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            return None
        self._pending.add(key)
        self._queue.put((bids, segment))
        return None

    def _fetch_now(self, bids: TieredBids, segment: str):
        if time.monotonic() < self._paused_until:
            return None
        fills = self._fill([(bids, segment)])
        return fills[0][1] if fills else None

    def _fill(self, items: list[tuple[TieredBids, str]]) -> list:
        keys: dict[str, tuple[TieredBids, str]] = {}
        markers: dict[str, str] = {}
        for bids, segment in items:
            keys[row_key(bids.entity, bids.version, segment)] = (bids, segment)
            markers.setdefault(bids.version, marker_key(bids.entity, bids.version))
        try:
            found = self.cache.get_many(list(keys) + list(markers.values()))
        except Exception as exc:  # noqa: BLE001 - memcached down: answers come from the pinned rows
            self.errors += 1
            self._paused_until = time.monotonic() + FETCH_PAUSE_AFTER_ERROR
            now = time.monotonic()
            if now - self._warned_at >= 60:
                self._warned_at = now
                log.warning("bidder: cannot read %s (%s); bidding from the pinned back-off rows", self.cache.url, exc)
            return []
        self.batches += 1
        published = {v for v, k in markers.items() if k in found}
        fills = []
        for k, (bids, segment) in keys.items():
            if bids.version not in published:
                self.unpublished += 1  # not (or no longer) in memcached: cache nothing
                continue
            value = found.get(k)
            fills.append(((bids.version, segment), float(value) if value is not None else ABSENT))
        self.near.put_many(fills)
        return fills

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                items = [self._queue.get(timeout=0.5)]
            except Empty:
                continue
            while len(items) < self.batch:
                try:
                    items.append(self._queue.get_nowait())
                except Empty:
                    break
            try:
                self._fill(items)
            except Exception:  # a bug: keep the thread alive, answers come from the pinned rows
                log.exception("bidder: near-cache fill failed")
            finally:
                for bids, segment in items:
                    self._pending.discard((bids.version, segment))
            pause = self._paused_until - time.monotonic()
            if pause > 0:
                self._stop.wait(pause)

    @property
    def running(self) -> bool:
        return self.mode == "fetch" or (self._thread is not None and self._thread.is_alive())

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def stats(self) -> dict:
        return {
            "mode": self.mode,
            "batches": self.batches,
            "errors": self.errors,
            "pending": len(self._pending),
            "dropped": self.dropped,
            "unpublished": self.unpublished,
        }


def pinned_blob(tables: RunTables) -> dict:
    """What every replica keeps of a run: its back-off rows, multipliers, features and size."""
    return {
        "features": list(tables.features),
        "pinned": {k: v for k, v in tables.bids.items() if is_pinned_key(k)},
        "multipliers": tables.multipliers,
        "rows": len(tables.bids),
        "checksum": tables.checksum,
    }


class Tiers:
    """The shared tier and this replica's near cache, used by the ``Refresher`` (``bidopt.bidder.loader``)."""

    def __init__(
        self,
        cache: BidCache,
        near_bytes: int,
        *,
        miss: str = "backoff",
        owner: str = "",
        wait_seconds: float = WAIT_SECONDS,
        claim_seconds: int = CLAIM_SECONDS,
        start: bool = True,
    ) -> None:
        self.cache, self.owner = cache, owner or "bidder"
        self.wait_seconds, self.claim_seconds = wait_seconds, claim_seconds
        self.near = NearCache(near_bytes)
        self.fetcher = Fetcher(cache, self.near, mode=miss, start=start)
        self.published_versions = 0  # run versions this replica wrote to the shared tier
        self.pinned_bytes: dict[str, int] = {}  # version -> approximate bytes of its pinned rows

    # -- loading (the refresh thread) --------------------------------------------------------------

    def run_tables(
        self,
        entity: str,
        run: PlannedRun,
        load: Callable[[PlannedRun], RunTables],
        *,
        wait: bool = True,
        deadline: float | None = None,
    ) -> RunTables:
        """The tiered tables of ``run``: its pinned rows from the shared tier, publishing them first
        when no replica has (``load`` reads the full run from the artifact store). Memcached
        unreachable: the run is read from the artifact store and only its pinned rows kept (the
        refresh after memcached is back publishes it). ``wait=False``: raise ``PublishingElsewhere``
        instead of waiting for another replica's publishing; ``deadline`` (``time.monotonic()``): wait
        until then at most (one deadline for every run a refresh waits for), else ``wait_seconds``."""
        if not run.output_url:
            raise ValueError(f"run {run.run_id} has no output path")
        manifest = json.loads(open_artifact_store(run.output_url).get_bytes(MANIFEST))
        version = run_version(run.run_id, manifest)
        expected = manifest.get("files", {}).get("suggested_bids.csv", {}).get("sha256")
        try:
            blob = self._pinned(entity, version)
        except Exception as exc:  # noqa: BLE001 - the shared tier is down: bid from the pinned rows
            log.warning("bidder: %s unreachable (%s); loading %s from the artifact store", self.cache.url, exc, version)
            blob = pinned_blob(_checked(load(run), version, expected))
        else:
            if blob is None:
                blob = self._publish_or_wait(entity, run, version, load, wait, expected, deadline)
        return self._tables(entity, run, version, blob)

    def _pinned(self, entity: str, version: str) -> dict | None:
        """The pinned blob, read from its chunks (None if the header or any chunk is gone)."""
        value = self.cache.get(pinned_key(entity, version))
        if value is None:
            return None
        header = json.loads(value)
        if "chunks" not in header:
            return header
        keys = [pinned_chunk_key(entity, version, i) for i in range(int(header["chunks"]))]
        found = self.cache.get_many(keys)
        if len(found) != len(keys):
            return None
        return json.loads("".join(found[k] for k in keys))

    def _publish_or_wait(
        self,
        entity: str,
        run: PlannedRun,
        version: str,
        load: Callable[[PlannedRun], RunTables],
        wait: bool,
        expected: str | None,
        deadline: float | None = None,
    ) -> dict:
        claim = claim_key(entity, version)
        token = f"{self.owner}:{uuid.uuid4().hex[:12]}"
        if self.cache.add(claim, token, expire=self.claim_seconds):
            return self._publish_claimed(entity, run, version, load, claim, token, expected)
        if not wait:
            raise PublishingElsewhere(f"{version} is being published by another bidder")
        if deadline is None:
            deadline = time.monotonic() + self.wait_seconds
        pause = 0.02
        while time.monotonic() < deadline:
            time.sleep(pause)
            blob = self._pinned(entity, version)
            if blob is not None:
                return blob
            if self.cache.add(claim, token, expire=self.claim_seconds):  # the claimer gave up or died
                return self._publish_claimed(entity, run, version, load, claim, token, expected)
            pause = min(pause * 2, 0.5)
        raise TimeoutError(f"{version} was not published by the bidder holding its claim in time")

    def _publish_claimed(
        self,
        entity: str,
        run: PlannedRun,
        version: str,
        load: Callable[[PlannedRun], RunTables],
        claim: str,
        token: str,
        expected: str | None,
    ) -> dict:
        try:
            if self.cache.get(marker_key(entity, version)) is not None:  # published just before the claim
                done = self._pinned(entity, version)
                if done is not None:
                    return done
            tables = _checked(load(run), version, expected)
            blob = pinned_blob(tables)
            self._write(entity, version, tables, blob, claim, token)
        finally:
            try:
                if self.cache.get(claim) == token:
                    self.cache.delete(claim)  # done (or failed): another replica may claim it at once
            except Exception:  # noqa: BLE001 - it expires anyway
                pass
        return blob

    def _renew(self, claim: str, token: str) -> None:
        """Keep the claim while writing (it lasts ``claim_seconds``); another replica took it: stop."""
        held = self.cache.get(claim)
        if held == token:
            self.cache.touch(claim, self.claim_seconds)
        elif held is None:
            if not self.cache.add(claim, token, expire=self.claim_seconds):
                raise PublishingElsewhere(f"{claim}: another bidder took the claim")
        else:
            raise PublishingElsewhere(f"{claim}: another bidder took the claim")

    def _write(self, entity: str, version: str, tables: RunTables, blob: dict, claim: str, token: str) -> None:
        """Rows, then the pinned blob (in chunks), then the marker: a reader that sees the marker finds the
        rest. The claim is renewed between batches, so a publisher that stops loses it soon."""
        rows = [(row_key(entity, version, k), repr(v)) for k, v in tables.bids.items()]
        for i in range(0, len(rows), WRITE_BATCH):
            self.cache.set_many(dict(rows[i : i + WRITE_BATCH]))
            self._renew(claim, token)
        text = json.dumps(blob)
        chunks = [text[i : i + PINNED_CHUNK] for i in range(0, len(text), PINNED_CHUNK)] or [""]
        self.cache.set_many({pinned_chunk_key(entity, version, i): c for i, c in enumerate(chunks)})
        self.cache.set_many({pinned_key(entity, version): json.dumps({"chunks": len(chunks)})})
        self.cache.set_many({marker_key(entity, version): str(blob["rows"])})
        self.published_versions += 1
        log.info("bidder: published %s (%d rows) to %s", version, blob["rows"], self.cache.url)

    def _tables(self, entity: str, run: PlannedRun, version: str, blob: dict) -> RunTables:
        features = tuple(f for f, _ in run.features)
        if tuple(blob["features"]) != features:
            raise ValueError(f"{version}: the shared tier's features {blob['features']} are not the run's {features}")
        pinned = {k: float(v) for k, v in blob["pinned"].items()}
        default = KEY_SEPARATOR.join([WILDCARD] * len(features))
        if default not in pinned:
            raise ValueError(f"run {run.run_id}: bid table has no entity default row")
        self.pinned_bytes[version] = sum(ENTRY_BYTES + sys.getsizeof(k) for k in pinned)
        bids = TieredBids(entity, version, pinned, self.near, self.fetcher, int(blob["rows"]))
        return RunTables(
            run_id=run.run_id,
            features=features,
            readers=tuple(feature_reader(f, field) for f, field in run.features),
            bids=bids,  # type: ignore[arg-type]
            multipliers={k: float(v) for k, v in blob["multipliers"].items()},
            max_bid_cpm=run.max_bid_cpm,
            min_bid_cpm=run.min_bid_cpm,
            checksum=blob["checksum"],
            pinned=pinned,
        )

    # -- keeping the shared tier filled ------------------------------------------------------------

    def missing(self, servings: Iterable[EntityServing]) -> set[str]:
        """Versions of the served runs whose marker is gone from the shared tier (a memcached that
        restarted empty, or evicted them); empty when it cannot be reached (nothing to do then)."""
        markers = {
            marker_key(s.entity_code, t.bids.version): t.bids.version
            for s in servings
            for t in s.runs
            if isinstance(t.bids, TieredBids)
        }
        if not markers:
            return set()
        try:
            found = self.cache.get_many(list(markers))
        except Exception:  # noqa: BLE001 - unreachable: retried on the next refresh
            return set()
        return {v for k, v in markers.items() if k not in found}

    def republish(self, serving: EntityServing, runs: list[PlannedRun], load: Callable[[PlannedRun], RunTables]) -> int:
        """Publish again (every row, the pinned blob, the marker) the runs of ``serving`` whose marker the
        shared tier lost; one replica does, by the claim. Returns how many versions this replica wrote
        (0: none was lost, or other replicas hold their claims)."""
        by_id = {r.run_id: r for r in runs}
        written = 0
        for t in serving.runs:
            if not (isinstance(t.bids, TieredBids) and t.run_id in by_id):
                continue
            entity, version = serving.entity_code, t.bids.version
            if self.cache.get(marker_key(entity, version)) is not None:
                continue
            before = self.published_versions
            try:
                self._publish_or_wait(entity, by_id[t.run_id], version, load, False, t.checksum)
            except PublishingElsewhere:
                log.debug("bidder: %s is being republished by another bidder", version)
                continue
            written += self.published_versions - before
        return written

    def publish_split(self, serving: EntityServing) -> None:
        """``bidopt:<entity>:split`` with each run's version, for readers outside the bidder."""
        self.cache.publish_split(
            serving.entity_code,
            {
                "split_id": serving.split_id,
                "runs": [
                    {"run_id": t.run_id, "traffic_pct": w, "version": getattr(t.bids, "version", None)}
                    for t, w in zip(serving.runs, serving.weights)
                ],
            },
        )

    def stats(self) -> dict:
        return {
            **self.near.stats(),
            "pinned_bytes": sum(self.pinned_bytes.values()),
            "published_versions": self.published_versions,
            "fetcher": self.fetcher.stats(),
        }

    def forget(self, versions_kept: set[str]) -> None:
        """Drop the pinned-size bookkeeping of versions no longer served (their near-cache entries age out)."""
        self.pinned_bytes = {v: b for v, b in self.pinned_bytes.items() if v in versions_kept}

    def close(self) -> None:
        self.fetcher.stop()


def _checked(tables: RunTables, version: str, expected: str | None) -> RunTables:
    """``tables`` if they are the content ``version`` was derived from (the artifacts changed between the
    manifest read and the load otherwise: raised, retried on the next refresh)."""
    if expected is not None and tables.checksum != expected:
        raise ValueError(
            f"{version}: the run's bid table changed while it was read (checksum {tables.checksum[:12]}, "
            f"expected {expected[:12]}); retried on the next refresh"
        )
    return tables


def tiered(tables: RunTables) -> bool:
    return isinstance(tables.bids, TieredBids)


__all__ = [
    "ABSENT",
    "ENTRY_BYTES",
    "Fetcher",
    "NearCache",
    "PublishingElsewhere",
    "TieredBids",
    "Tiers",
    "entry_bytes",
    "is_pinned_key",
    "pinned_blob",
    "run_version",
    "tiered",
]

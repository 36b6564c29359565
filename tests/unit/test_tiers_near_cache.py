"""Bidder tiers (``bidopt.bidder.tiers``): the byte-bounded near cache, pinned back-off rows, publishing
once per run version and the versioned swap, against a real memcached where memcached is needed."""

from __future__ import annotations

import csv
import dataclasses
import io
import threading
import time

import orjson
import pytest

from bidopt.artifacts import write_run_artifacts
from bidopt.bidder.core import BidderState, EntityServing, decide
from bidopt.bidder.loader import PlannedRun, Refresher, load_run_tables
from bidopt.bidder.tiers import (
    ABSENT,
    NearCache,
    TieredBids,
    Tiers,
    claim_key,
    entry_bytes,
    is_pinned_key,
    marker_key,
    pinned_key,
    row_key,
)
from bidopt.cache import InProcessCache, MemcachedCache

FEATURES = (("geo_region_name", "device.geo.region"), ("domain", "site.domain"))
REGIONS = {"CA": "california", "TX": "texas", "NY": "new york"}


def bid_table(base: float, domains: int) -> dict[str, float]:
    """Every region x domain row, the regions' anchor rows and the default; prices in [base, base + 1)."""
    bids = {"*|*": base}
    for i, region in enumerate(REGIONS.values()):
        bids[f"{region}|*"] = base + 0.01 * (i + 1)
        for d in range(domains):
            bids[f"{region}|pub{d:05d}.com"] = round(base + 0.1 + 0.0001 * (d + 1) + 0.3 * i, 4)
    return bids


def write_run(tmp_path, run_id: str, bids: dict[str, float]) -> PlannedRun:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["segment_key", "bid_cpm"])
    w.writerows(bids.items())
    url = f"file://{tmp_path}/runs/{run_id}"
    write_run_artifacts(
        url,
        {"suggested_bids.csv": out.getvalue().encode(), "domain_multipliers.csv": b"domain,multiplier\n"},
        meta={"run_id": run_id},
    )
    return PlannedRun(run_id, 100, url, FEATURES, max_bid_cpm=100.0)


def request(region: str, domain: int, user: str = "u") -> bytes:
    return orjson.dumps(
        {
            "id": "r",
            "imp": [{"id": "1"}],
            "device": {"geo": {"region": region}},
            "site": {"domain": f"pub{domain:05d}.com"},
            "user": {"id": user},
        }
    )


def price(state: BidderState, body: bytes) -> tuple[str, float, str]:
    status, payload, _, _ = decide(state, "e1", body)
    assert status == 200
    bid = orjson.loads(payload)["seatbid"][0]["bid"][0]
    return bid["ext"]["run_id"], bid["price"], bid["ext"]["level"]


def serving(*tables, split_id: int = 1) -> BidderState:
    return BidderState({"e1": EntityServing("e1", split_id, tables, (100,))})


def wait_filled(near: NearCache, key, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while key not in near.data:
        assert time.monotonic() < deadline, f"{key} never filled"
        time.sleep(0.002)


@pytest.fixture
def memcached(memcached_server):
    host, port, proc = memcached_server
    cache = MemcachedCache(f"memcached://{host}:{port}", host, port)
    yield cache, proc
    cache.close()


def test_near_cache_is_bounded_in_bytes_and_evicts_the_least_recently_used():
    one = entry_bytes(("v", "california|pub00001.com"))
    near = NearCache(4 * one)
    keys = [("v", f"california|pub{d:05d}.com") for d in range(10)]
    near.put_many([(k, 1.0) for k in keys[:4]])
    assert near.bytes == 4 * one and len(near.data) == 4
    assert near.get(keys[0]) == 1.0  # used: now the most recent
    near.put_many([(keys[4], 2.0)])
    assert keys[1] not in near.data and keys[0] in near.data and near.evictions == 1
    near.put_many([(k, 3.0) for k in keys[5:]])
    assert near.bytes <= near.max_bytes and len(near.data) == 4 and near.evictions == 6
    assert near.get(keys[1]) is None and near.misses == 1 and near.hits == 1
    empty = NearCache(0)
    empty.put_many([(keys[0], 1.0)])
    assert empty.stats()["entries"] == 0 and empty.bytes == 0 and empty.get(keys[0]) is None  # holds nothing
    with pytest.raises(ValueError, match="near cache bound"):
        NearCache(-1)


def test_pinned_keys_are_the_default_and_the_anchors_rows():
    assert is_pinned_key("*|*|*") and is_pinned_key("california|*|*") and is_pinned_key("california")
    assert not is_pinned_key("california|ios|*") and not is_pinned_key("*|ios|*")


def test_a_table_larger_than_the_near_cache_is_served_exactly(tmp_path, memcached):
    """600 rows through a near cache of 40 entries: after its fill every key bids what the table says,
    the cache never holds more than its bound, and the back-off rows stay pinned through the evictions."""
    cache, _ = memcached
    bids = bid_table(1.0, 200)
    run = write_run(tmp_path, "run_a", bids)
    tiers = Tiers(cache, 40 * entry_bytes(("run_a.0123456789ab", "new york|pub00000.com")))
    try:
        tables = tiers.run_tables("e1", run, load_run_tables)
        assert isinstance(tables.bids, TieredBids) and len(tables.bids) == len(bids)
        assert tables.pinned == {k: v for k, v in bids.items() if is_pinned_key(k)}
        state = serving(tables)
        for code, region in REGIONS.items():
            for d in range(200):
                key = f"{region}|pub{d:05d}.com"
                # first sight: a miss, answered from the anchor's pinned row, and queued
                assert price(state, request(code, d)) == ("run_a", bids[f"{region}|*"], "anchor")
                wait_filled(tiers.near, (tables.bids.version, key))
                assert price(state, request(code, d)) == ("run_a", bids[key], "segment")
                assert tiers.near.bytes <= tiers.near.max_bytes
        assert tiers.near.evictions >= 600 - 40
        # a key the table does not have is cached as absent and answered from the back-off, as in memory
        assert price(state, request("CA", 999)) == ("run_a", bids["california|*"], "anchor")
        wait_filled(tiers.near, (tables.bids.version, "california|pub00999.com"))
        assert tiers.near.data[(tables.bids.version, "california|pub00999.com")] is ABSENT
        misses = tiers.near.misses
        assert price(state, request("ZZ", 1)) == ("run_a", bids["*|*"], "default")
        assert tiers.near.misses == misses + 1  # the full key only: back-off rows never go to the near cache
    finally:
        tiers.close()


def test_fetch_mode_reads_a_miss_on_the_request_path(tmp_path, memcached):
    cache, _ = memcached
    bids = bid_table(1.0, 50)
    run = write_run(tmp_path, "run_a", bids)
    tiers = Tiers(cache, 1 << 20, miss="fetch")
    try:
        state = serving(tiers.run_tables("e1", run, load_run_tables))
        for d in range(50):
            assert price(state, request("TX", d)) == ("run_a", bids[f"texas|pub{d:05d}.com"], "segment")
        assert tiers.near.misses == 50 and tiers.fetcher.batches == 50
    finally:
        tiers.close()


def test_a_run_version_is_published_once_and_other_replicas_read_only_its_pinned_rows(tmp_path, memcached):
    cache, _ = memcached
    run = write_run(tmp_path, "run_a", bid_table(1.0, 20))
    loads = []

    def load(r):
        loads.append(r.run_id)
        return load_run_tables(r)

    replicas = [Tiers(cache, 1 << 20, owner=f"replica-{i}") for i in range(3)]
    try:
        tables = [t.run_tables("e1", run, load) for t in replicas]
        assert loads == ["run_a"]  # one replica read the artifact store; the others the pinned blob
        assert [t.published_versions for t in replicas] == [1, 0, 0]
        assert all(t.pinned == tables[0].pinned and t.bids == tables[0].bids for t in tables)
        # another replica holds the claim and has not published: a replica waits, then publishes itself
        # when the claim goes away (its holder died)
        other = write_run(tmp_path, "run_b", bid_table(2.0, 20))
        version = replicas[0].run_tables("e1", other, load).bids.version
        cache.delete(pinned_key("e1", version))
        cache.delete(f"bidopt:e1:{version}:claim")
        late = Tiers(cache, 1 << 20, wait_seconds=0.3)
        try:
            cache.add(f"bidopt:e1:{version}:claim", "dead-replica", expire=1)
            with pytest.raises(TimeoutError, match="not published"):
                late.run_tables("e1", other, load)
            time.sleep(1.1)
            late.run_tables("e1", other, load)
            assert late.published_versions == 1
        finally:
            late.close()
    finally:
        for t in replicas:
            t.close()


def test_memcached_down_still_bids_from_the_pinned_back_off_rows(tmp_path, memcached):
    cache, proc = memcached
    bids_a, bids_b = bid_table(1.0, 30), bid_table(2.0, 30)
    run_a, run_b = write_run(tmp_path, "run_a", bids_a), write_run(tmp_path, "run_b", bids_b)
    tiers = Tiers(cache, 1 << 20)
    try:
        state = serving(tiers.run_tables("e1", run_a, load_run_tables))
        assert price(state, request("CA", 1))[2] == "anchor"
        proc.kill()
        proc.wait()
        for d in range(30):  # never fetched: answered from the anchor's row, memcached or not
            assert price(state, request("NY", d)) == ("run_a", bids_a["new york|*"], "anchor")
        assert price(state, request("ZZ", 1)) == ("run_a", bids_a["*|*"], "default")
        deadline = time.monotonic() + 5
        while tiers.fetcher.errors == 0:  # the fetcher met the dead memcached and keeps going
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert tiers.fetcher.running
        # a new run while memcached is down: read from the artifact store, its pinned rows kept
        tables_b = tiers.run_tables("e1", run_b, load_run_tables)
        assert tables_b.pinned == {k: v for k, v in bids_b.items() if is_pinned_key(k)}
        assert price(serving(tables_b), request("TX", 3)) == ("run_b", bids_b["texas|*"], "anchor")
    finally:
        tiers.close()


def test_a_reader_during_split_changes_sees_only_whole_runs(tmp_path, memcached):
    """Two runs with the same keys and disjoint prices ([1, 2) and [2, 3)); while one thread swaps the
    split between them and the fetcher fills the near cache with both, every answer's price is the
    one its run's table (or that run's back-off row) gives: a request never reads another run's row."""
    cache, _ = memcached
    bids = {"run_a": bid_table(1.0, 40), "run_b": bid_table(2.0, 40)}
    tiers = Tiers(cache, 1 << 20)
    try:
        tables = {r: tiers.run_tables("e1", write_run(tmp_path, r, b), load_run_tables) for r, b in bids.items()}
        states = [serving(tables["run_a"], split_id=1), serving(tables["run_b"], split_id=2)]
        holder = {"state": states[0]}
        stop = threading.Event()

        def swap() -> None:
            i = 0
            while not stop.is_set():
                i += 1
                holder["state"] = states[i % 2]  # the refresher's one assignment
                time.sleep(0.0005)

        swapper = threading.Thread(target=swap)
        swapper.start()
        seen: dict[tuple[str, str], int] = {}
        try:
            deadline = time.monotonic() + 2.0
            n = 0
            while time.monotonic() < deadline:
                n += 1
                code, d = "CA" if n % 2 else "TX", n % 40
                region = REGIONS[code]
                run_id, p, level = price(holder["state"], request(code, d, f"user-{n}"))
                table = bids[run_id]
                expected = table[f"{region}|pub{d:05d}.com"] if level == "segment" else table[f"{region}|*"]
                assert p == expected, f"{run_id} answered {p} at level {level}: another run's row"
                seen[(run_id, level)] = seen.get((run_id, level), 0) + 1
        finally:
            stop.set()
            swapper.join()
        # both runs answered, from the near cache too (not only from the pinned rows)
        assert {("run_a", "segment"), ("run_b", "segment")} <= set(seen)
    finally:
        tiers.close()


def test_the_in_process_cache_supports_claims_and_multi_gets():
    cache = InProcessCache()
    assert cache.add("k", "a", expire=1) and not cache.add("k", "b")
    cache.set_many({"x": "1"})
    assert cache.get_many(["k", "x", "nope"]) == {"k": "a", "x": "1"}
    cache.delete("k")
    assert cache.add("k", "c")


def test_set_many_clears_an_earlier_add_expiry_as_memcached_set_does():
    cache = InProcessCache()
    assert cache.add("k", "a", expire=1)
    cache.set_many({"k": "b"})
    assert "k" not in cache._expires and cache.get("k") == "b"


def test_an_absent_entry_is_fetched_again_after_its_lifetime():
    near = NearCache(1 << 20)
    near.absent_seconds = 0.05
    near.put_many([(("v", "california|pub00001.com"), ABSENT), (("v", "california|pub00002.com"), 1.5)])
    assert near.get(("v", "california|pub00001.com")) is ABSENT and near.stats()["absent_fills"] == 1
    time.sleep(0.06)
    # a row memcached evicted while its marker stayed: gone from the near cache, so fetched again
    assert near.get(("v", "california|pub00001.com")) is None
    assert near.get(("v", "california|pub00002.com")) == 1.5  # a found row stays
    assert len(near.data) == 1 and near.bytes == entry_bytes(("v", "california|pub00002.com"))


def test_a_lost_marker_is_republished_with_every_row(tmp_path, memcached):
    """memcached evicted the marker (and some rows) but kept the pinned blob: the refresher's
    ``missing`` flags it and ``republish`` writes the whole version again, marker last."""
    cache, _ = memcached
    bids = bid_table(1.0, 20)
    run = write_run(tmp_path, "run_a", bids)
    tiers = Tiers(cache, 1 << 20, start=False)
    try:
        tables = tiers.run_tables("e1", run, load_run_tables)
        entity = EntityServing("e1", 1, (tables,), (100,))
        version = tables.bids.version
        cache.delete(marker_key("e1", version))
        cache.delete(row_key("e1", version, "texas|pub00003.com"))
        assert tiers.missing([entity]) == {version}
        assert tiers.republish(entity, [run], load_run_tables) == 1
        assert tiers.missing([entity]) == set()
        assert cache.get(row_key("e1", version, "texas|pub00003.com")) == repr(bids["texas|pub00003.com"])
        assert tiers.republish(entity, [run], load_run_tables) == 0  # nothing lost: nothing written
    finally:
        tiers.close()


def test_republishing_held_by_another_replica_is_not_a_failure(tmp_path, memcached, caplog):
    """Another replica holds the claim of the lost version: this one writes nothing, says so, logs no
    failure, and still writes the split key."""
    cache, _ = memcached
    run = write_run(tmp_path, "run_a", bid_table(1.0, 5))
    tiers = Tiers(cache, 1 << 20, start=False)
    try:
        tables = tiers.run_tables("e1", run, load_run_tables)
        entity = EntityServing("e1", 7, (tables,), (100,))
        cache.delete(marker_key("e1", tables.bids.version))
        cache.delete("bidopt:e1:split")
        assert cache.add(claim_key("e1", tables.bids.version), "other-replica", expire=30)
        refresher = Refresher("sqlite://", cache, tiers=tiers)
        with caplog.at_level("WARNING", logger="bidopt.bidder"):
            assert refresher._publish(entity, [run]) is False
        assert not [r for r in caplog.records if r.levelname == "WARNING"]
        assert cache.get_json("e1", "split")["split_id"] == 7
    finally:
        tiers.close()


def test_a_pinned_blob_over_memcached_item_limit_is_written_in_chunks(tmp_path, memcached):
    """A one-feature run is all pinned rows; with 60k domain multipliers its blob is over 1 MB, which one
    memcached item cannot hold: it goes in chunks, and another replica reads it whole."""
    cache, _ = memcached
    features = (("geo_region_name", "device.geo.region"),)
    bids = {"*": 1.0, **{r: 1.5 for r in REGIONS.values()}}
    mults = "domain,multiplier\n" + "".join(f"publisher-{d:06d}.example.com,0.9{d % 10}\n" for d in range(60_000))
    url = f"file://{tmp_path}/runs/run_big"
    body = "segment_key,bid_cpm\n" + "".join(f"{k},{v}\n" for k, v in bids.items())
    write_run_artifacts(
        url,
        {"suggested_bids.csv": body.encode(), "domain_multipliers.csv": mults.encode()},
        meta={"run_id": "run_big"},
    )
    run = PlannedRun("run_big", 100, url, features, max_bid_cpm=100.0)
    writer, reader = Tiers(cache, 1 << 20, start=False), Tiers(cache, 1 << 20, start=False)
    try:
        written = writer.run_tables("e1", run, load_run_tables)
        assert len(orjson.dumps(written.multipliers)) > 1 << 20
        read = reader.run_tables("e1", run, lambda r: pytest.fail("read the artifact store"))
        assert read.multipliers == written.multipliers and read.pinned == bids
        assert writer.published_versions == 1 and reader.published_versions == 0
    finally:
        writer.close()
        reader.close()


def test_a_run_whose_table_changed_since_its_version_was_read_is_refused(tmp_path):
    cache = InProcessCache()
    run = write_run(tmp_path, "run_a", bid_table(1.0, 5))
    tiers = Tiers(cache, 1 << 20, start=False)

    def changed(r):
        return dataclasses.replace(load_run_tables(r), checksum="0" * 64)

    try:
        with pytest.raises(ValueError, match="changed while it was read"):
            tiers.run_tables("e1", run, changed)
        assert not [k for k in cache._data if k.startswith("bidopt:e1:")]  # nothing written, claim released
        tiers.run_tables("e1", run, load_run_tables)  # the next refresh
        assert tiers.published_versions == 1
    finally:
        tiers.close()


def test_the_publisher_renews_its_claim_and_waiters_share_one_deadline(tmp_path, monkeypatch):
    import bidopt.bidder.tiers as tiers_module

    monkeypatch.setattr(tiers_module, "WRITE_BATCH", 10)
    touched = []

    class Recording(InProcessCache):
        def touch(self, key, expire):
            touched.append((key, self.get(key), expire))
            return super().touch(key, expire)

    cache = Recording()
    run = write_run(tmp_path, "run_a", bid_table(1.0, 10))  # 34 rows: 4 batches
    tiers = Tiers(cache, 1 << 20, owner="me", claim_seconds=5, start=False)
    try:
        version = tiers.run_tables("e1", run, load_run_tables).bids.version
        claim = claim_key("e1", version)
        assert len(touched) == 4 and all(k == claim and v.startswith("me:") and e == 5 for k, v, e in touched)
        assert cache.get(claim) is None  # released once published
        # a claim another (paused) replica holds: the wait ends at the refresh's deadline, not wait_seconds
        other = write_run(tmp_path, "run_b", bid_table(2.0, 3))
        waiter = Tiers(cache, 1 << 20, wait_seconds=30, start=False)
        manifest_version = tiers_module.run_version(
            "run_b", orjson.loads((tmp_path / "runs/run_b/manifest.json").read_bytes())
        )
        cache.add(claim_key("e1", manifest_version), "paused", expire=60)
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="not published"):
            waiter.run_tables("e1", other, load_run_tables, deadline=time.monotonic() + 0.2)
        assert time.monotonic() - started < 10
        waiter.close()
    finally:
        tiers.close()

"""Bidder tiers against real optimizer runs and a real memcached: replicas publish each run once, answer
as the all-in-memory bidder does once their near caches are filled, and refill a restarted memcached."""

import time

import orjson
import pytest

from bidopt.bidder.app import BidderCore
from bidopt.bidder.core import decide
from bidopt.bidder.loader import Refresher
from bidopt.bidder.tiers import TieredBids, Tiers
from bidopt.cache import MemcachedCache
from bidopt.db import queries as q
from bidopt.db.engine import session_scope
from bidopt.jobs.optimize import run_optimizer
from bidopt.settings import get_settings, reset_settings_cache

FAST = {"xgb_num_rounds": 30, "min_segment_bids": 100, "min_domain_bids": 300}
REGIONS = ["CA", "TX", "NY", "FL", "IL", "OH", "GA", "WA", "ZZ"]
OSES = ["iOS", "Android", "Windows", "Mac OS X"]


def bodies() -> list[bytes]:
    return [
        orjson.dumps(
            {
                "id": f"r{i}",
                "imp": [{"id": "1"}],
                "device": {"geo": {"region": REGIONS[i % 9]}, "os": OSES[i % 4]},
                "site": {"domain": f"pub{i % 40 + 1:05d}.com"},
                "user": {"id": f"u{i}", "ext": {"npi_matched": i % 3 == 0}},
            }
        )
        for i in range(300)
    ]


@pytest.fixture
def two_runs(platform):
    with session_scope(platform) as s:
        ids = [q.create_run(s, "drugs_hcp", FAST | {"target_win_rate": t}, triggered_by="t").run_id for t in (0.3, 0.6)]
    assert {r["status"] for r in run_optimizer(once=True, use_ray=False).processed} == {"completed"}
    return platform, ids


def _split(engine, split):
    with session_scope(engine) as s:
        q.replace_traffic_split(s, "drugs_hcp", split, deployed_by="t")


def _answers(state, requests):
    out = []
    for body in requests:
        status, payload, decisions, _ = decide(state, "drugs_hcp", body, now=0.0)
        out.append((status, [(d.run_id, d.segment_key, d.level, d.price) for d in decisions]))
    return out


def _fill(refresher: Refresher, requests) -> None:
    """Ask every key once, then wait until the fetcher has filled them all."""
    _answers(refresher.state, requests)
    deadline = time.monotonic() + 10
    while refresher.tiers.fetcher.stats()["pending"]:
        assert time.monotonic() < deadline
        time.sleep(0.01)


# the tiers read the plan as the all-in-memory bidder does (tested on both databases in
# test_bidder_refresh); here SQLite only, for the suite's time
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_tiered_replicas_publish_once_and_answer_as_the_in_memory_bidder(two_runs, memcached_server):
    engine, (a, b) = two_runs
    host, port, proc = memcached_server
    url = f"memcached://{host}:{port}"
    db = get_settings().database_url
    memory = Refresher(db)
    replicas = [
        Refresher(db, cache := MemcachedCache(url, host, port), tiers=Tiers(cache, 1 << 20, owner=f"r{i}"))
        for i in range(2)
    ]
    requests = bodies()
    try:
        for split in ({a: 100}, {a: 50, b: 50}, {b: 100}):
            _split(engine, split)
            assert memory.refresh_once() == {"drugs_hcp": "loaded"}
            for r in replicas:
                assert r.refresh_once() == {"drugs_hcp": "loaded"}
                assert all(isinstance(t.bids, TieredBids) for t in r.state.entities["drugs_hcp"].runs)
                _fill(r, requests)
                assert _answers(r.state, requests) == _answers(memory.state, requests)
        # each run version was written to memcached by one replica only
        assert sum(r.tiers.published_versions for r in replicas) == 2
        # memcached restarts empty: one replica republishes, the other finds it done
        proc.kill()
        proc.wait()
        from servers import start_memcached

        restarted = start_memcached(port)
        try:
            deadline = time.monotonic() + 10
            while (outcome := replicas[0].refresh_once()) == {"drugs_hcp": "kept"}:  # a pooled connection died
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert outcome == {"drugs_hcp": "kept, republished"}
            for _ in range(3):  # the other replica finds the versions back (after its own dead connections)
                assert replicas[1].refresh_once() == {"drugs_hcp": "kept"}
            replicas[1].tiers.near.clear()
            _fill(replicas[1], requests)
            assert _answers(replicas[1].state, requests) == _answers(memory.state, requests)
            assert sum(r.tiers.published_versions for r in replicas) == 3
        finally:
            restarted.kill()
            restarted.wait()
    finally:
        for r in replicas:
            r.stop()


# the tiers read the plan as the all-in-memory bidder does (tested on both databases in
# test_bidder_refresh); here SQLite only, for the suite's time
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_bidder_core_with_memcached_reads_through_its_near_cache(two_runs, memcached_server, monkeypatch):
    """``BIDOPT_CACHE_URL=memcached://`` turns the tiers on; ``memory://`` keeps every table in memory."""
    engine, (a, _) = two_runs
    host, port, _ = memcached_server
    _split(engine, {a: 100})
    monkeypatch.setenv("BIDOPT_CACHE_URL", f"memcached://{host}:{port}")
    monkeypatch.setenv("BIDOPT_BIDDER_NEAR_CACHE_BYTES", "4096")
    reset_settings_cache()
    core = BidderCore()
    try:
        assert core.refresher.tiers is not None and core.refresher.tiers.near.max_bytes == 4096
        assert isinstance(core.refresher.state.entities["drugs_hcp"].runs[0].bids, TieredBids)
        for body in bodies()[:50]:
            assert core.handle("drugs_hcp", body)[0] in (200, 204)
        counters = core.counters()["near_cache"]
        assert counters["max_bytes"] == 4096 and counters["bytes"] <= 4096 and counters["misses"] > 0
        core.check_health()
    finally:
        core.close()
    monkeypatch.setenv("BIDOPT_CACHE_URL", "memory://")
    reset_settings_cache()
    core = BidderCore(start=False)
    assert core.refresher.tiers is None and "near_cache" not in core.counters()
    core.close()

"""The bidder's refresh against real optimizer runs: loading, swapping, failures, caches."""

import json
import time
from contextlib import contextmanager

import orjson
import pytest
from sqlalchemy import event

from bidopt.artifacts import open_artifact_store
from bidopt.bidder.app import BidderCore
from bidopt.bidder.core import decide
from bidopt.bidder.loader import Refresher
from bidopt.cache import InProcessCache, MemcachedCache, cache_key
from bidopt.db import queries as q
from bidopt.db.engine import get_engine, session_scope
from bidopt.jobs.optimize import run_optimizer
from bidopt.settings import get_settings

FAST = {"xgb_num_rounds": 30, "min_segment_bids": 100, "min_domain_bids": 300}
REQ = {
    "id": "r",
    "imp": [{"id": "1"}],
    "device": {"geo": {"region": "CA"}, "os": "Android"},
    "site": {"domain": "pub00001.com"},
}


@pytest.fixture
def runs(platform):
    with session_scope(platform) as s:
        ids = [
            q.create_run(s, "drugs_hcp", FAST | {"target_win_rate": t}, triggered_by="t").run_id
            for t in (0.3, 0.6, 0.5)
        ]
    assert {r["status"] for r in run_optimizer(once=True, use_ray=False).processed} == {"completed"}
    return platform, ids


def _split(engine, split):
    with session_scope(engine) as s:
        q.replace_traffic_split(s, "drugs_hcp", split, deployed_by="t")


@contextmanager
def _statements():
    """The SQL statements run on the settings' database inside the block."""
    engine, seen = get_engine(get_settings().database_url), []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _run_of(state, user):
    status, body, _, _ = decide(state, "drugs_hcp", orjson.dumps(REQ | {"user": {"id": user}}))
    assert status == 200
    return json.loads(body)["seatbid"][0]["bid"][0]["ext"]["run_id"]


def test_refresh_loads_splits_and_swaps_atomically(runs):
    engine, (a, b, c) = runs
    cache = InProcessCache()
    r = Refresher(get_settings().database_url, cache)
    assert r.refresh_once() == {} and decide(r.state, "drugs_hcp", orjson.dumps(REQ))[0] == 204
    _split(engine, {a: 80, b: 20})
    assert r.refresh_once() == {"drugs_hcp": "loaded"}
    first = r.state
    seen = {_run_of(first, f"u{i}") for i in range(200)}
    assert seen == {a, b}
    with _statements() as kept_sql:
        assert r.refresh_once() == {"drugs_hcp": "kept"} and r.state.entities == first.entities
    # an unchanged split is not planned again: its runs' features and configs are not re-read (with
    # a fleet of entities, re-planning every run took a replica's CPU for a third of each second)
    assert kept_sql and not [sql for sql in kept_sql if "opt_run_configs" in sql or "opt_run_features" in sql]
    # the tables are published, namespaced by entity and run, for other bidders
    run_a = first.entities["drugs_hcp"].runs[0]
    default_key = "|".join(["*"] * len(run_a.features))
    assert cache.get_bid("drugs_hcp", a, default_key) == run_a.bids[default_key]
    assert cache.get_json("drugs_hcp", "split")["runs"] == [
        {"run_id": a, "traffic_pct": 80},
        {"run_id": b, "traffic_pct": 20},
    ]
    _split(engine, {c: 100})
    with _statements() as changed_sql:
        assert r.refresh_once() == {"drugs_hcp": "loaded"}
    assert [sql for sql in changed_sql if "opt_run_configs" in sql]  # a new split is planned
    assert {_run_of(r.state, f"u{i}") for i in range(50)} == {c}
    assert {_run_of(first, f"u{i}") for i in range(200)} == {a, b}  # an in-flight request keeps its state


def test_a_bad_artifact_or_a_dead_database_keeps_the_last_good_split(runs):
    engine, (a, b, c) = runs
    _split(engine, {a: 100})
    r = Refresher(get_settings().database_url)
    r.refresh_once()
    good = r.state
    with session_scope(engine) as s:
        url = q.get_run(s, b).s3_output_path
    open_artifact_store(url).put_bytes("suggested_bids.csv", b"segment_key,bid_cpm\nx,1\n")  # corrupt
    _split(engine, {a: 50, b: 50})
    outcome = r.refresh_once()["drugs_hcp"]
    assert outcome.startswith("failed") and "checksum" in outcome
    assert r.state.entities == good.entities and {_run_of(r.state, f"u{i}") for i in range(50)} == {a}
    open_artifact_store(url).delete("manifest.json")  # missing
    assert "failed" in r.refresh_once()["drugs_hcp"]
    _split(engine, {c: 100})  # a good split again: recovers by itself
    assert r.refresh_once() == {"drugs_hcp": "loaded"}
    recovered = r.state
    r.database_url = "postgresql+psycopg://nobody@127.0.0.1:1/none"  # the database goes away
    assert r.refresh_once()["*"].startswith("failed: database")
    assert r.state is recovered and _run_of(r.state, "u1") == c


def test_memcached_gets_the_tables_and_its_loss_does_not_stop_bidding(runs, memcached_server):
    from pymemcache.client.base import Client

    engine, (a, b, c) = runs
    host, port, proc = memcached_server
    _split(engine, {a: 100})
    r = Refresher(get_settings().database_url, MemcachedCache(f"memcached://{host}:{port}", host, port))
    assert r.refresh_once() == {"drugs_hcp": "loaded"}
    other_bidder = Client((host, port))
    table = r.state.entities["drugs_hcp"].runs[0]
    key = next(k for k in table.bids if not k.startswith("*"))
    assert float(other_bidder.get(cache_key("drugs_hcp", a, "bid", key))) == table.bids[key]
    meta = json.loads(other_bidder.get(cache_key("drugs_hcp", a, "meta")))
    assert meta["features"] == list(table.features) and meta["rows"] == len(table.bids)
    proc.kill()
    proc.wait()
    _split(engine, {b: 100})
    assert r.refresh_once() == {"drugs_hcp": "loaded"}  # publishing failed; the near cache still swaps
    assert _run_of(r.state, "u1") == b
    assert r.refresh_once() == {"drugs_hcp": "kept"}  # memcached still down: keep serving, no error


def test_a_restarted_memcached_is_filled_again(runs, memcached_server):
    """memcached restarts empty: the next refresh notices the missing split and republishes."""
    from pymemcache.exceptions import MemcacheError
    from servers import start_memcached

    engine, (a, b, c) = runs
    host, port, proc = memcached_server
    cache = MemcachedCache(f"memcached://{host}:{port}", host, port)
    _split(engine, {a: 100})
    r = Refresher(get_settings().database_url, cache)
    assert r.refresh_once() == {"drugs_hcp": "loaded"}
    assert r.refresh_once() == {"drugs_hcp": "kept"}
    proc.kill()  # a real restart: the new process starts empty on the same port
    proc.wait()
    restarted = start_memcached(port)
    try:
        deadline = time.time() + 10
        while True:  # the pooled client reconnects on its next call
            try:
                assert cache.get_json("drugs_hcp", "split") is None
                break
            except (ConnectionError, OSError, MemcacheError):  # the pool drops its dead connection
                assert time.time() < deadline
                time.sleep(0.1)
        assert r.refresh_once() == {"drugs_hcp": "kept, republished"}
        assert cache.get_json("drugs_hcp", "split")["runs"] == [{"run_id": a, "traffic_pct": 100}]
        n = len(r.state.entities["drugs_hcp"].runs[0].features)
        assert cache.get_bid("drugs_hcp", a, "|".join(["*"] * n))
    finally:
        restarted.kill()
        restarted.wait()


def test_decisions_and_notices_are_events_and_counters_are_reported(runs):
    """Every impression is a decision event with the request's features; an accepted notice is a notice
    event; the replica reports its counters in its row, and notice_counters sums them."""
    from urllib.parse import parse_qsl, urlsplit

    from bidopt.db import bidder_status
    from bidopt.events.schema import DECISIONS, NOTICES
    from bidopt.events.store import open_event_store

    engine, (a, b, c) = runs
    _split(engine, {a: 60, b: 40})
    core = BidderCore(start=False)
    core.refresher.refresh_once()
    answers = [
        core.handle("drugs_hcp", orjson.dumps(REQ | {"id": f"r{i}", "user": {"id": f"u{i}"}}), base_url="http://b")
        for i in range(30)
    ]
    assert [s for s, _, _ in answers] == [200] * 30
    assert core.handle("drugs_hcp", b"{")[0] == 400
    assert core.handle("auto_intenders", orjson.dumps(REQ))[0] == 204  # no split: a no-bid row
    nurl = urlsplit(json.loads(answers[0][1])["seatbid"][0]["bid"][0]["nurl"].replace("${AUCTION_PRICE}", "0.01"))
    params = parse_qsl(nurl.query)
    assert core.handle_notice("win", "drugs_hcp", params)[0] == 200
    assert core.handle_notice("win", "drugs_hcp", params)[0] == 409
    core.refresher.report()
    with session_scope(engine) as s:
        (row,) = bidder_status.list_replicas(s)
        assert json.loads(row.counters)["accepted"] == {"win": 1}
        assert bidder_status.notice_counters(s) == {"accepted": {"win": 1}, "rejected": {"duplicate": 1}}
    core.close()
    store = open_event_store(get_settings().events_url)
    decisions = store.read(DECISIONS, "drugs_hcp").to_pylist()
    assert len(decisions) == 30 and {d["run_id"] for d in decisions} == {a, b}
    assert all(d["bid"] and d["bid_cpm"] > 0 and d["segment_key"] and d["split_id"] for d in decisions)
    # features from the request: the run's pinned readers, the ADX macros for the rest
    assert {(d["geo_region_name"], d["os_code"], d["domain"]) for d in decisions} == {
        ("california", "android", "pub00001.com")
    }
    (no_split,) = store.read(DECISIONS, "auto_intenders").to_pylist()
    assert (no_split["bid"], no_split["no_bid_reason"]) == (False, "no active split for auto_intenders")
    (win,) = store.read(NOTICES, "drugs_hcp").to_pylist()
    assert (win["request_id"], win["kind"], win["price_cpm"]) == ("r0", "win", 0.01)


def test_notice_counters_sum_the_replicas_that_are_not_gone(platform_db):
    from datetime import timedelta

    from bidopt.db import bidder_status
    from bidopt.db.models import OptBidderReplica

    def report(replica_id, counters):
        status = {
            "replica_id": replica_id,
            "hostname": "h",
            "pid": 1,
            "refresh_seconds": 5,
            "ready": True,
            "serving": {},
            "last_error": None,
            "counters": counters,
        }
        with session_scope(platform_db) as s:
            bidder_status.report_replica(s, status, started_at=time.time())

    report("a", {"accepted": {"win": 2}, "rejected": {"bad_signature": 1}, "events": {"written": 9}})
    report("b", {"accepted": {"win": 1, "click": 1}, "rejected": {"bad_signature": 2, "expired": 1}})
    report("gone", {"accepted": {"win": 100}, "rejected": {"duplicate": 100}})
    with session_scope(platform_db) as s:
        s.get(OptBidderReplica, "gone").reported_at -= bidder_status.GONE_AFTER + timedelta(seconds=1)
    with session_scope(platform_db) as s:
        assert bidder_status.notice_counters(s) == {
            "accepted": {"win": 3, "click": 1},
            "rejected": {"bad_signature": 3, "expired": 1},
        }


def test_a_run_keeps_the_request_fields_it_was_trained_with(runs):
    """An operator repoints a macro after the run completed: the run's keys are still built from
    the request field it was trained with (pinned on the run), not the macro's new one."""
    from bidopt.db.models import OptFeatureMacro

    engine, (a, b, c) = runs
    _split(engine, {a: 100})
    with session_scope(engine) as s:
        anchor = q.get_run_features_with_macros(s, a)[0]
        assert (anchor.feature_name, anchor.request_field) == ("geo_region_name", "device.geo.region")
        s.get(OptFeatureMacro, anchor.macro_id).request_field = "device.geo.metro"
    with session_scope(engine) as s:
        assert q.get_run_features_with_macros(s, a)[0].request_field == "device.geo.region"
    r = Refresher(get_settings().database_url)
    assert r.refresh_once() == {"drugs_hcp": "loaded"}
    status, _, decisions, _ = decide(r.state, "drugs_hcp", orjson.dumps(REQ | {"user": {"id": "u1"}}))
    assert status == 200 and decisions[0].segment_key.split("|")[0] == "california"
    with session_scope(engine) as s:  # the run's price bounds come along too
        bounds = q.get_run_configs(s, a)
    tables = r.state.entities["drugs_hcp"].runs[0]
    assert (tables.min_bid_cpm, tables.max_bid_cpm) == (bounds["min_bid_cpm"], bounds["max_bid_cpm"]) != (0.0, 1e9)


def test_a_new_replica_serves_the_active_split_from_its_first_request(runs):
    """BidderCore loads the active splits before it returns (Serve's readiness), reports itself in
    opt_bidder_replicas, answers GET /openrtb2/_status, and removes its row on a clean stop."""
    from bidopt.db import bidder_status

    engine, (a, b, c) = runs
    _split(engine, {a: 100})
    core = BidderCore()
    try:
        status, body, _ = core.handle("drugs_hcp", orjson.dumps(REQ | {"user": {"id": "u1"}}))
        assert status == 200 and json.loads(body)["seatbid"][0]["bid"][0]["ext"]["run_id"] == a
        core.check_health()
        report = core.status()
        assert report["ready"] and report["last_error"] is None
        assert report["serving"]["drugs_hcp"]["runs"] == [{"run_id": a, "traffic_pct": 100}]
        with session_scope(engine) as s:
            rows = bidder_status.list_replicas(s)
            assert [(r.replica_id, r.ready) for r in rows] == [(core.replica_id, True)]
            assert json.loads(rows[0].serving) == report["serving"]
    finally:
        core.close()
    with session_scope(engine) as s:
        assert bidder_status.list_replicas(s) == []


def test_a_replica_retries_its_first_load_and_fails_if_the_database_stays_away(runs, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from bidopt.bidder import loader
    from bidopt.bidder.loader import BidderNotReady
    from bidopt.settings import reset_settings_cache

    engine, (a, b, c) = runs
    _split(engine, {a: 100})
    real_read_plan, calls = loader.read_plan, []

    def database_back_on_the_third_try(url, known=None):
        calls.append(url)
        if len(calls) < 3:
            raise OperationalError("SELECT", {}, Exception("connection refused"))
        return real_read_plan(url, known)

    monkeypatch.setattr(loader, "read_plan", database_back_on_the_third_try)
    monkeypatch.setenv("BIDOPT_BIDDER_REFRESH_SECONDS", "0.05")
    reset_settings_cache()
    core = BidderCore()
    try:
        assert len(calls) == 3 and core.handle("drugs_hcp", orjson.dumps(REQ))[0] == 200
    finally:
        core.close()
    monkeypatch.setattr(loader, "read_plan", real_read_plan)
    monkeypatch.setenv("BIDOPT_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("BIDOPT_BIDDER_READY_TIMEOUT_SECONDS", "0.2")
    reset_settings_cache()
    with pytest.raises(BidderNotReady, match=r"could not read the active splits within 0.2 s: database: "):
        BidderCore()


def test_health_fails_when_the_refresh_hangs_but_not_when_the_database_is_down(platform_db, monkeypatch):
    """A refresh that never returns in a replica that serves nothing: Serve must replace it. A database
    that is down is different: refreshes end (failing), the replica keeps serving, health stays good."""
    import threading

    from sqlalchemy.exc import OperationalError

    from bidopt.bidder import loader
    from bidopt.settings import reset_settings_cache

    monkeypatch.setenv("BIDOPT_BIDDER_REFRESH_SECONDS", "0.01")
    reset_settings_cache()
    core = BidderCore()  # first load against the (empty) database, then the refresh thread
    entered, release = threading.Event(), threading.Event()

    def hanging_read_plan(url, known=None):
        entered.set()
        release.wait()
        raise OperationalError("SELECT", {}, Exception("server closed the connection"))

    try:
        core.check_health()
        monkeypatch.setattr(loader, "read_plan", hanging_read_plan)
        assert entered.wait(timeout=30)
        core.refresher.attempted_at -= loader.STUCK_AFTER_MIN_SECONDS + 1  # as if it had hung that long
        with pytest.raises(RuntimeError, match="bidder refresh has not ended for .* serves nothing"):
            core.check_health()
        attempted = core.refresher.attempted_at
        release.set()  # the call returns with an error: a database that is down, not a hang
        while core.refresher.attempted_at == attempted:
            time.sleep(0.01)
        core.check_health()
        assert core.refresher.errors[loader.DATABASE].startswith("database: ")
    finally:
        release.set()
        core.close()


def test_a_replica_with_tables_stays_healthy_while_its_refresh_hangs(platform_db, monkeypatch):
    """A database or store that hangs hangs every replica's refresh at once: failing health would make
    Serve stop them all, while each can still bid from its last good split. It stays healthy (and
    stops reporting, so the split view shows it lagging)."""
    import threading

    from servable_runs import complete_servable

    from bidopt.bidder import loader
    from bidopt.settings import reset_settings_cache

    with session_scope(platform_db) as s:
        run_id = q.create_run(s, "drugs_hcp", {}, triggered_by="t").run_id
    complete_servable(platform_db, run_id)
    _split(platform_db, {run_id: 100})
    monkeypatch.setenv("BIDOPT_BIDDER_REFRESH_SECONDS", "0.01")
    reset_settings_cache()
    core = BidderCore()
    entered, release = threading.Event(), threading.Event()

    def hanging_read_plan(url, known=None):
        entered.set()
        release.wait()
        return {}

    try:
        monkeypatch.setattr(loader, "read_plan", hanging_read_plan)
        assert entered.wait(timeout=30)
        core.refresher.attempted_at -= loader.STUCK_AFTER_MIN_SECONDS + 1
        assert core.refresher.stuck_for() is not None
        core.check_health()  # serves drugs_hcp: stays up
        status, _, _ = core.handle("drugs_hcp", orjson.dumps(REQ | {"user": {"id": "u1"}}))
        assert status == 200
    finally:
        release.set()
        core.close()

import json
import threading
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from bidopt.db import queries as q
from bidopt.db.engine import session_scope
from bidopt.db.models import OptDeployment, OptRun, OptRunConfig, OptRunMetric
from bidopt.errors import Conflict, InvalidConfig, NotFound

T0 = datetime(2026, 2, 3, 15, 0, 0)


def _create(engine, entity="drugs_hcp", now=T0, **configs):
    with session_scope(engine) as s:
        return q.create_run(s, entity, configs, triggered_by="alice", now=now).run_id


def _complete(engine, run_id, validation="passed"):
    with session_scope(engine) as s:
        s.execute(OptRun.__table__.update().where(OptRun.run_id == run_id).values(status="running", worker_id="w"))
        q.mark_run_completed(s, run_id, q.RunStats(10, 2.0, 1.0, 3.0, f"file:///x/{run_id}", validation, []))


def test_entity_lookup_and_static_configs(engine):
    with session_scope(engine) as s:
        entity = q.get_entity_by_code(s, "drugs_hcp")
        assert q.get_entity_configs(s, entity.entity_id) == {
            "floor_available": False,
            "npi_enabled": True,
            "domain_enabled": True,
            # guardrail keys are not seeded: their defaults
            "guardrail_enabled": True,
            "guardrail_min_bids": 1000,
            "guardrail_min_wins": 20,
            "guardrail_max_win_rate_gap": 0.15,
            "guardrail_max_no_bid_share": 0.8,
        }
        assert [e.entity_code for e in q.list_entities(s)] == ["auto_intenders", "drugs_hcp"]
        with pytest.raises(NotFound, match="unknown entity: nope"):
            q.get_entity_by_code(s, "nope")
        macros = q.list_active_feature_macros(s, entity.master_id)
        assert {m.feature_name: m.macro_template for m in macros}["geo_region_name"] == "[ADX_GEO_STATE]"


def test_create_run_stores_configs_by_section_with_defaults(engine):
    run_id = _create(engine, target_win_rate="0.4", max_bid_cpm=12, aggressive_exploration="yes")
    assert run_id == "20260203_150000"
    with session_scope(engine) as s:
        run = q.get_run(s, run_id)
        assert (run.status, run.triggered_by, run.attempts) == ("pending", "alice", 0)
        by_section = q.get_run_configs_by_section(s, run_id)
        assert by_section["business"]["target_win_rate"] == 0.4
        assert by_section["business"]["max_bid_cpm"] == 12.0
        assert by_section["business"]["aggressive_exploration"] is True
        assert by_section["technical"]["lookback_days"] == 28  # default written too


def test_run_ids_stay_unique_within_one_second(engine):
    ids = [_create(engine) for _ in range(3)]
    assert ids == ["20260203_150000", "20260203_150000_01", "20260203_150000_02"]


def test_concurrent_creates_in_one_second_get_distinct_ids(engine):
    ids, errors = [], []

    def worker():
        try:
            ids.append(_create(engine))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []
    assert len(set(ids)) == 6


@pytest.mark.parametrize(
    "configs,message",
    [
        ({"target_win_rate": "1.0"}, "target_win_rate must be < 1.0"),
        ({"target_win_rate": "0"}, "target_win_rate must be > 0.0"),
        ({"max_bid_cpm": "-1"}, "max_bid_cpm must be > 0.0"),
        ({"max_bid_cpm": "ten"}, "max_bid_cpm must be a number"),
        ({"exploration_mode": "wild"}, "exploration_mode must be one of"),
        ({"aggressive_exploration": "maybe"}, "aggressive_exploration must be a boolean"),
        ({"lookback_days": "2.5"}, "lookback_days must be a whole number"),
        ({"min_bid_cpm": "5", "max_bid_cpm": "4"}, "min_bid_cpm .* must be below max_bid_cpm"),
        ({"nonsense": "1"}, "unknown config key: nonsense"),
    ],
)
def test_invalid_run_configs_are_rejected_and_write_nothing(engine, configs, message):
    with pytest.raises(InvalidConfig, match=message):
        _create(engine, **configs)
    with session_scope(engine) as s:
        assert s.scalar(select(func.count()).select_from(OptRun)) == 0
        assert s.scalar(select(func.count()).select_from(OptRunConfig)) == 0


@pytest.mark.parametrize(
    "configs,message",
    [
        ({"min_bid_cpm": 0}, "min_bid_cpm must be > 0.0"),  # a geomspace from 0 failed the run late
        ({"min_bid_cpm": "-0.0"}, "min_bid_cpm must be > 0.0"),
        ({"max_bid_cpm": 10**400}, "max_bid_cpm must be a finite number"),  # was an OverflowError (a 500)
        ({"max_bid_cpm": "1" * 400}, "max_bid_cpm is 400 characters long"),
        ({"max_bid_cpm": 10**5000}, "max_bid_cpm must be a finite number, got an integer of about 5001 digits"),
        ({"lookback_days": 10**400}, "lookback_days must be <= 365, got an integer of about 401 digits"),
        ({"lookback_days": -(10**5000)}, "lookback_days must be >= 1, got an integer of about"),
        ({"lookback_days": 1e300}, "lookback_days must be <= 365"),
        ({"lookback_days": float("inf")}, "lookback_days must be a whole number"),
        ({"max_bid_cpm": "1e400"}, "max_bid_cpm must be a finite number"),
        ({"max_bid_cpm": float("nan")}, "max_bid_cpm must be a finite number"),
        ({"max_bid_cpm": "NaN"}, "max_bid_cpm must be a number"),
        ({"max_bid_cpm": "inf"}, "max_bid_cpm must be a number"),
        ({"max_bid_cpm": "\uff11\uff10"}, "max_bid_cpm must be a number"),  # full-width digits are not ASCII
        ({"lookback_days": "1_000"}, "lookback_days must be a whole number"),
        ({"max_bid_cpm": None}, "max_bid_cpm must be a number, got None"),
        ({"exploration_mode": "x" * 1_000_000}, "exploration_mode is 1000000 characters long"),
        ({"min_bid_cpm": "2.00001", "max_bid_cpm": "2.00009"}, "leave no bid with 4 decimals between them"),
    ],
)
def test_absurd_config_values_are_refused_up_front_with_the_reason(engine, configs, message):
    with pytest.raises(InvalidConfig) as caught:
        _create(engine, **configs)
    assert message in str(caught.value) and len(str(caught.value)) < 200
    with session_scope(engine) as s:
        assert s.scalar(select(func.count()).select_from(OptRun)) == 0


def test_config_bounds_that_round_to_a_shared_bid_are_accepted(engine):
    run_id = _create(engine, min_bid_cpm="2.00001", max_bid_cpm="2.0001", exploration_uplift="-0.0")
    with session_scope(engine) as s:
        technical = q.get_run_configs_by_section(s, run_id)["technical"]
        assert technical["exploration_uplift"] == 0.0 and str(technical["exploration_uplift"]) == "0.0"


@pytest.mark.parametrize(
    "raw,message",
    [
        ("maybe", "npi_enabled must be a boolean"),
        ("y" * 10_000, "npi_enabled is 10000 characters long"),
        (10**400, "npi_enabled must be a boolean"),
        (float("nan"), "npi_enabled must be a boolean"),
        (None, "npi_enabled must be a boolean"),
    ],
)
def test_absurd_entity_config_values_are_refused_and_keep_the_old_value(engine, raw, message):
    with session_scope(engine) as s:
        entity = q.get_entity_by_code(s, "drugs_hcp")
        with pytest.raises(InvalidConfig, match=message):
            q.set_entity_config(s, entity.entity_id, "npi_enabled", raw)
        assert q.get_entity_configs(s, entity.entity_id)["npi_enabled"] is True


def test_claim_takes_oldest_pending_and_marks_it_running(engine):
    newer = _create(engine, now=T0 + timedelta(minutes=5))
    older = _create(engine, now=T0)
    with session_scope(engine) as s:
        run = q.claim_next_pending_run(s, "worker-1", now=T0 + timedelta(minutes=10))
        assert run.run_id == older
        assert (run.status, run.worker_id, run.attempts) == ("running", "worker-1", 1)
        assert run.started_at == T0 + timedelta(minutes=10)
    with session_scope(engine) as s:
        assert q.claim_next_pending_run(s, "worker-2").run_id == newer
    with session_scope(engine) as s:
        assert q.claim_next_pending_run(s, "worker-3") is None


def test_concurrent_claims_take_each_run_exactly_once(engine):
    expected = {_create(engine, now=T0 + timedelta(seconds=i)) for i in range(20)}
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name):
        while True:
            with session_scope(engine) as s:
                run = q.claim_next_pending_run(s, name)
                if run is None:
                    return
                with lock:
                    claimed.append(run.run_id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(claimed) == sorted(expected)


def test_complete_and_fail_only_from_the_right_state(engine):
    a, b = _create(engine), _create(engine)
    stats = q.RunStats(12, 2.5, 0.5, 9.0, "file:///tmp/x", "passed", ["ok"])
    with session_scope(engine) as s:
        with pytest.raises(Conflict, match="is not running"):
            q.mark_run_completed(s, a, stats)
    with session_scope(engine) as s:
        q.claim_next_pending_run(s, "w1")
    with session_scope(engine) as s:
        with pytest.raises(Conflict):
            q.mark_run_completed(s, a, stats, worker_id="someone-else")
        q.mark_run_completed(s, a, stats, worker_id="w1")
    with session_scope(engine) as s:
        run = q.get_run(s, a)
        assert (run.status, run.segments_count, run.bid_median, run.validation_status) == (
            "completed",
            12,
            2.5,
            "passed",
        )
        assert json.loads(run.validation_details) == ["ok"]
        with pytest.raises(Conflict):
            q.mark_run_failed(s, a, "boom")
        q.mark_run_failed(s, b, "warehouse unreachable")
    with session_scope(engine) as s:
        run = q.get_run(s, b)
        assert (run.status, run.error_message) == ("failed", "warehouse unreachable")


def test_features_with_macros_in_feature_order(engine):
    run_id = _create(engine)
    with session_scope(engine) as s:
        macros = {
            m.feature_name: m for m in q.list_active_feature_macros(s, q.get_entity_by_code(s, "drugs_hcp").master_id)
        }
        q.record_run_features(
            s,
            run_id,
            [
                q.FeatureRecord("os_code", 2, False, 41.5, macros["os_code"].macro_id, "device.os"),
                q.FeatureRecord(
                    "geo_region_name", 1, True, None, macros["geo_region_name"].macro_id, "device.geo.region"
                ),
                q.FeatureRecord("floor_bucket", 3, False, 10.0, None, None),
            ],
        )
    with session_scope(engine) as s:  # a macro edited after the run: the run keeps its field
        macros["os_code"] = s.merge(macros["os_code"])
        macros["os_code"].request_field = "device.osv"
    with session_scope(engine) as s:
        feats = q.get_run_features_with_macros(s, run_id)
    assert [(f.feature_name, f.macro_template, f.request_field) for f in feats] == [
        ("geo_region_name", "[ADX_GEO_STATE]", "device.geo.region"),
        ("os_code", "[ADX_USER_OS]", "device.os"),
        ("floor_bucket", None, None),
    ]
    assert feats[0].is_anchor and feats[0].signal_score is None


def test_metrics_by_section_and_rewrite(engine):
    run_id = _create(engine)
    with session_scope(engine) as s:
        q.record_run_metrics(
            s, run_id, {"win_rate_model": {"auc": 0.7, "ece": float("nan")}, "global_stats": {"win_rate": 0.3}}
        )
        q.record_run_metrics(s, run_id, {"win_rate_model": {"auc": 0.71}})
    with session_scope(engine) as s:
        assert q.get_run_metrics(s, run_id) == {
            "global_stats": {"win_rate": 0.3},
            "win_rate_model": {"auc": 0.71, "ece": None},
        }
        assert s.scalar(select(func.count()).select_from(OptRunMetric)) == 3


def test_list_completed_passed_runs(engine):
    a, b, c = _create(engine), _create(engine), _create(engine)
    _complete(engine, a)
    _complete(engine, b, validation="failed")
    with session_scope(engine) as s:
        assert [r.run_id for r in q.list_completed_passed_runs(s, "drugs_hcp")] == [a]
        assert [r.run_id for r in q.list_runs(s, status="pending")] == [c]


def _active(engine, entity="drugs_hcp"):
    with session_scope(engine) as s:
        return sorted((d.run_id, d.traffic_pct) for d in q.get_current_traffic_split(s, entity))


def test_replace_traffic_split_deactivates_the_old_set(engine):
    a, b = _create(engine), _create(engine)
    _complete(engine, a)
    _complete(engine, b)
    with session_scope(engine) as s:
        q.replace_traffic_split(s, "drugs_hcp", {a: 100}, deployed_by="bob")
    with session_scope(engine) as s:
        q.replace_traffic_split(s, "drugs_hcp", {a: 80, b: 20}, deployed_by="carol")
    assert _active(engine) == sorted([(a, 80), (b, 20)])
    with session_scope(engine) as s:
        history = q.get_traffic_split_history(s, "drugs_hcp")
        assert [(d.split_id, d.run_id, d.is_active) for d in history] == [(2, a, True), (2, b, True), (1, a, False)]
        assert history[-1].deactivated_at is not None and history[0].deployed_by == "carol"
        deployed = q.list_active_deployments(s)
        assert {(d.entity_code, d.run_id, d.traffic_pct) for d in deployed} == {
            ("drugs_hcp", a, 80),
            ("drugs_hcp", b, 20),
        }
        assert all(d.s3_output_path.endswith(d.run_id) for d in deployed)


@pytest.mark.parametrize(
    "case",
    ["sum", "zero", "duplicate", "fraction", "pending", "failed_validation", "other_entity", "unknown_run", "empty"],
)
def test_invalid_splits_are_rejected_and_keep_the_active_set(engine, case):
    a, b = _create(engine), _create(engine)
    pending = _create(engine)
    other = _create(engine, entity="auto_intenders")
    bad = _create(engine)
    for run_id in (a, b, other):
        _complete(engine, run_id)
    _complete(engine, bad, validation="failed")
    with session_scope(engine) as s:
        q.replace_traffic_split(s, "drugs_hcp", {a: 100}, deployed_by="bob")
    split, error = {
        "sum": ({a: 80, b: 30}, "add up to 100, got 110"),
        "zero": ({a: 100, b: 0}, "between 1 and 100"),
        "duplicate": ([(a, 50), (a, 50)], "appears twice"),
        "fraction": ({a: 50.5, b: 49.5}, "whole number"),
        "pending": ({a: 50, pending: 50}, "is pending, not completed"),
        "failed_validation": ({a: 50, bad: 50}, "did not pass validation"),
        "other_entity": ({a: 50, other: 50}, "belongs to another entity"),
        "unknown_run": ({a: 50, "19990101_000000": 50}, "unknown run"),
        "empty": ({}, "at least one run"),
    }[case]
    with pytest.raises((InvalidConfig, Conflict, NotFound), match=error):
        with session_scope(engine) as s:
            q.replace_traffic_split(s, "drugs_hcp", split, deployed_by="mallory")
    assert _active(engine) == [(a, 100)]
    with session_scope(engine) as s:
        assert s.scalar(select(func.count()).select_from(OptDeployment)) == 1


def test_concurrent_split_replacements_leave_one_active_set(engine):
    a, b = _create(engine), _create(engine)
    _complete(engine, a)
    _complete(engine, b)
    errors = []

    def worker(i):
        try:
            with session_scope(engine) as s:
                q.replace_traffic_split(s, "drugs_hcp", {a: 100 - (i + 1), b: i + 1}, deployed_by=f"u{i}")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(10)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []
    with session_scope(engine) as s:
        active = q.get_current_traffic_split(s, "drugs_hcp")
        assert len(active) == 2 and sum(d.traffic_pct for d in active) == 100
        assert len({d.split_id for d in active}) == 1
        assert s.scalar(select(func.count(func.distinct(OptDeployment.split_id)))) == 10


def test_stale_running_runs_are_requeued_then_failed(engine):
    run_id = _create(engine)
    with session_scope(engine) as s:
        q.claim_next_pending_run(s, "w1", now=T0)
    with session_scope(engine) as s:
        assert q.heartbeat_run(s, run_id, "w1", now=T0 + timedelta(seconds=30))
        assert not q.heartbeat_run(s, run_id, "intruder")
        # not stale yet
        assert (
            q.requeue_stale_runs(
                s, heartbeat_timeout=timedelta(minutes=2), max_attempts=2, now=T0 + timedelta(minutes=1)
            )
            == []
        )
        assert q.requeue_stale_runs(
            s, heartbeat_timeout=timedelta(minutes=2), max_attempts=2, now=T0 + timedelta(minutes=5)
        ) == [(run_id, "pending")]
    with session_scope(engine) as s:
        assert "stopped heartbeating" in q.get_run(s, run_id).error_message
        assert q.claim_next_pending_run(s, "w2", now=T0 + timedelta(minutes=6)).attempts == 2
    with session_scope(engine) as s:
        assert q.requeue_stale_runs(
            s, heartbeat_timeout=timedelta(minutes=2), max_attempts=2, now=T0 + timedelta(minutes=20)
        ) == [(run_id, "failed")]
        assert q.get_run(s, run_id).status == "failed"


def test_a_postgresql_server_that_never_answers_fails_the_connection_instead_of_hanging():
    """A listener that accepts TCP and then says nothing (a stuck server, a half-open route): the
    engine's connect timeout turns it into an error, so a bidder's refresh or an optimizer's
    heartbeat fails and is retried instead of hanging for the kernel's TCP timeout."""
    import socket

    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from bidopt.db.engine import make_engine

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes handshakes; nothing ever answers
    port = silent.getsockname()[1]
    outcome: list = []

    def connect() -> None:
        try:
            with make_engine(f"postgresql+psycopg://u@127.0.0.1:{port}/db").connect() as conn:
                conn.execute(text("SELECT 1"))
        except OperationalError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=connect, daemon=True)
    try:
        worker.start()
        worker.join(timeout=120)  # liveness, not speed: without a timeout this never returns
        assert not worker.is_alive(), "connecting to a silent server hangs"
        assert outcome and "timeout" in str(outcome[0]).lower()
    finally:
        silent.close()

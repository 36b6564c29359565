"""The closed loop end to end, through Ray Serve (HAProxy ingress), against the exchange simulator.

Two runs (targets 0.4 and 0.65) in a 50/50 split take 20,000 requests from ``bidopt.exchange``,
which runs the auctions with each request's true competing bid and fires win, billing, loss and
click notices (some late, some duplicated, some forged). The A/B readout must count exactly what
the exchange counted, per arm, and call the difference significant. A third run that underbids
(a tiny ``max_bid_cpm``) joins the split and trips its guardrail; the control loop drops it, and
the bidders follow. The first split's events are compacted into the warehouse before that, and a
new run trains on them alone and passes validation.
"""

from __future__ import annotations

import socket
import time
from datetime import timedelta

import pytest

from bidopt import service
from bidopt.db import queries as q
from bidopt.db.engine import session_scope
from bidopt.db.models import utcnow
from bidopt.jobs.optimize import run_optimizer
from bidopt.serve.apps import SERVE_MODE_ENV
from bidopt.simulator import MarketSpec

pytestmark = pytest.mark.slow

REQUESTS = 20_000
# the market the platform fixture generated drugs_hcp's logs from (tests/conftest.py)
MARKET = MarketSpec("drugs_hcp", seed=5, n_domains=200, npi_enabled=True)
FORGE_KINDS = ("bad_signature", "price_above_bid", "win_for_lost")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, seconds: float, what: str):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {seconds:g} s waiting for {what}")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_closed_loop_through_serve(platform, monkeypatch):
    ray = pytest.importorskip("ray")
    from ray import serve

    from bidopt.exchange import simulate_exchange
    from bidopt.serve.apps import run_apps

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    for key, value in SERVE_MODE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("BIDOPT_BIDDER_REFRESH_SECONDS", "0.5")
    monkeypatch.setenv("BIDOPT_EVENTS_FLUSH_SECONDS", "0.5")
    monkeypatch.setenv("BIDOPT_CONTROL_LOOP_SECONDS", "2")
    monkeypatch.setenv("BIDOPT_NOTICE_SECRET", "closed-loop-test-secret")
    from bidopt.settings import reset_settings_cache

    reset_settings_cache()
    t0 = time.time()
    with session_scope(platform) as s:
        small = {"xgb_num_rounds": 30}
        run_a = q.create_run(s, "drugs_hcp", {**small, "target_win_rate": 0.4}, triggered_by="t").run_id
        run_b = q.create_run(s, "drugs_hcp", {**small, "target_win_rate": 0.65}, triggered_by="t").run_id
        run_c = q.create_run(
            s,
            "drugs_hcp",
            {**small, "target_win_rate": 0.4, "min_bid_cpm": 0.01, "max_bid_cpm": 0.05},
            triggered_by="t",
        ).run_id
        service.set_entity_configs(
            s,
            "drugs_hcp",
            {"guardrail_min_bids": 300, "guardrail_min_wins": 20, "guardrail_max_win_rate_gap": 0.15},
        )
    run_optimizer(once=True, use_ray=False)
    with session_scope(platform) as s:
        for run_id in (run_a, run_b, run_c):
            run = q.get_run(s, run_id)
            assert run.status == "completed" and run.validation_status == "passed", (run_id, run.error_message)
        first = service.set_traffic_split(s, "drugs_hcp", {run_a: 50, run_b: 50}, deployed_by="operator")
    try:
        url = run_apps(port=_free_port())
        bid_url = url + "openrtb2/drugs_hcp"

        def live(split_id):
            with session_scope(platform) as s:
                return (
                    service.split_view(s, "drugs_hcp")["bidders"]["live"]
                    and service.split_view(s, "drugs_hcp")["split_id"] == split_id
                )

        _wait(lambda: live(first["split_id"]), 60, "the 50/50 split to be live on every replica")
        print(f"closed loop: trained 3 runs and started Serve at {time.time() - t0:.0f} s")

        # --- 20,000 requests of a 50/50 split: the readout counts what the exchange counted
        seen = simulate_exchange(
            MARKET,
            bid_url,
            REQUESTS,
            concurrency=32,
            seed=11,
            late_fraction=0.02,
            late_seconds=1.0,
            duplicate_fraction=0.03,
            forged_fraction=0.01,
            forge_kinds=FORGE_KINDS,
            test_fraction=0.01,
        ).as_dict()
        assert seen["answers"].get("200", 0) > 0.9 * REQUESTS, seen["answers"]
        assert not [s for s in seen["answers"] if s.startswith("5") or s == "transport_error"], seen["answers"]
        forged = seen["notices"]["forged"]
        assert forged["sent"] > 0 and forged["rejected_4xx"] >= forged["sent"] - forged["by_kind"].get(
            "win_for_lost", {}
        ).get("sent", 0), forged
        time.sleep(3)  # two flush intervals: every replica has written its events

        with session_scope(platform) as s:
            report = service.split_report(s, "drugs_hcp", first["split_id"])
        arms = {a["run_id"]: a for a in report["arms"]}
        truth = {a["run_id"]: a for a in seen["arms"]}
        assert set(arms) == set(truth) == {run_a, run_b}
        for run_id in (run_a, run_b):
            mine, theirs = arms[run_id], truth[run_id]
            # nothing lost, nothing counted twice: replays, late and forged notices included
            assert (mine["bids"], mine["wins"], mine["clicks"]) == (theirs["bids"], theirs["wins"], theirs["clicks"])
            assert mine["spend"]["value"] == pytest.approx(theirs["spend"], rel=1e-6)
            exchange_rate = theirs["wins"] / theirs["bids"]
            assert mine["win_rate"]["low"] <= exchange_rate <= mine["win_rate"]["high"]
            # and the market's own truth: the mean true P(win) of the prices bid is inside the interval too
            assert mine["win_rate"]["low"] - 0.01 <= theirs["true_win_probability"] <= mine["win_rate"]["high"] + 0.01
        assert arms[run_a]["win_rate"]["value"] < arms[run_b]["win_rate"]["value"]
        win_test = [c for c in report["comparisons"] if c["metric"] == "win_rate"]
        assert len(win_test) == 1 and win_test[0]["significant"] and win_test[0]["p_value"] < 1e-6
        assert report["test_requests_excluded"] == seen["test_requests"] > 0
        duplicates = seen["notices"]["duplicates"]
        # a replay is refused at the replica that took the original (409) or dropped by the readout
        assert duplicates["answers"].get("409", 0) + report["duplicates_dropped"] >= duplicates["sent"] > 0
        assert sum(report["notices_rejected"].values()) >= forged["rejected_4xx"]
        assert report["hourly"] and {h["run_id"] for h in report["hourly"]} == {run_a, run_b}

        print(f"closed loop: 50/50 split done at {time.time() - t0:.0f} s ({seen['seconds']:.0f} s of traffic)")
        # --- back into training: compact the events, then a new run trains on them alone
        with session_scope(platform) as s:
            # --until past the attribution window, as an operator would do to compact early; the
            # hours stay open and are compacted again once the window has passed for real
            until = (utcnow() + timedelta(hours=2)).isoformat()
            compacted = service.compact_events(s, "drugs_hcp", until=until, compacted_by="t")
            again = service.compact_events(s, "drugs_hcp", until=until, compacted_by="t")
        assert compacted["rows_loaded"] >= sum(a["bids"] for a in seen["arms"])
        assert again["rows_loaded"] == compacted["rows_loaded"]  # the same rows, replaced, not added
        from bidopt.data import get_warehouse

        with get_warehouse() as wh:
            sources = wh.traffic_sources("drugs_hcp")
        assert sources["platform"] == compacted["rows_loaded"]
        with session_scope(platform) as s:
            retrain = q.create_run(s, "drugs_hcp", {**small, "target_win_rate": 0.5}, triggered_by="t").run_id
        run_optimizer(once=True, use_ray=False)
        with session_scope(platform) as s:
            run = q.get_run(s, retrain)
            assert run.status == "completed", run.error_message
            assert run.validation_status == "passed", run.validation_details
            stats = q.get_run_metrics(s, retrain)["global_stats"]
        # it trained on the platform's own rows only (they are the newest; the simulated logs are months older)
        assert 0 < stats["bids"] <= sources["platform"]
        print(f"closed loop: retrained at {time.time() - t0:.0f} s")
        # --- an underbidding third run: its guardrail trips after the minimum sample; bidders follow
        with session_scope(platform) as s:
            trial = service.set_traffic_split(s, "drugs_hcp", {run_a: 40, run_b: 40, run_c: 20}, deployed_by="operator")
        _wait(lambda: live(trial["split_id"]), 30, "the three-arm split to be live")
        simulate_exchange(MARKET, bid_url, 3_000, concurrency=16, seed=12)

        def rolled_back():
            with session_scope(platform) as s:
                newest = service.split_history(s, "drugs_hcp")[0]
            return newest if newest["split_id"] != trial["split_id"] else None

        rollback = _wait(rolled_back, 30, "the guardrail to replace the three-arm split")
        assert rollback["deployed_by"] == "guardrail" and rollback["is_active"]
        assert run_c in rollback["reason"] and "win rate" in rollback["reason"]
        assert {r["run_id"]: r["traffic_pct"] for r in rollback["runs"]} == {run_a: 50, run_b: 50}
        _wait(lambda: live(rollback["split_id"]), 30, "the bidders to serve the guardrail's split")
        after = simulate_exchange(MARKET, bid_url, 300, concurrency=8, seed=13).as_dict()
        assert {a["run_id"] for a in after["arms"]} <= {run_a, run_b}
        print(f"closed loop: guardrail rollback followed at {time.time() - t0:.0f} s")

    finally:
        serve.shutdown()
        ray.shutdown()

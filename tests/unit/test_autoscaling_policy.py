"""The bidder's load signals and its autoscaling policy, without Ray (bidopt.bidder.load,
bidopt.serve.autoscaling); test_autoscaling.py checks them through Serve."""

from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace

import pytest

from bidopt.bidder.load import LoadMeter
from bidopt.serve.autoscaling import BidderLoadPolicy, desired_replicas


class FakeClocks:
    def __init__(self) -> None:
        self.wall = 100.0
        self.cpu = 5.0


def test_sample_reports_cpu_share_request_rate_and_lag_since_the_previous_sample():
    clocks = FakeClocks()
    meter = LoadMeter(clock=lambda: clocks.wall, cpu_clock=lambda: clocks.cpu)
    clocks.wall += 2.0
    clocks.cpu += 1.5
    for _ in range(300):
        meter.note_request()
    meter.record_lag(0.004)
    meter.record_lag(0.012)
    meter.record_lag(-0.001)  # a timer can fire a hair early: no negative lag
    first = meter.sample()
    assert first["cpu"] == pytest.approx(0.75)
    assert first["requests_per_s"] == pytest.approx(150)
    assert first["loop_lag_ms"] == pytest.approx((4 + 12 + 0) / 3)
    assert first["loop_lag_max_ms"] == pytest.approx(12)

    clocks.wall += 4.0  # idle since: everything starts anew
    second = meter.sample()
    assert second == {"cpu": 0.0, "requests_per_s": 0.0, "loop_lag_ms": 0.0, "loop_lag_max_ms": 0.0}


def test_sample_in_the_same_clock_tick_reports_nothing_rather_than_dividing_by_zero():
    clocks = FakeClocks()
    meter = LoadMeter(clock=lambda: clocks.wall, cpu_clock=lambda: clocks.cpu)
    clocks.cpu += 0.5
    meter.note_request()
    signals = meter.sample()
    assert signals["cpu"] == 0.0 and signals["requests_per_s"] == 0.0
    assert all(math.isfinite(v) for v in signals.values())


def test_lag_probe_measures_a_blocked_event_loop():
    async def scenario():
        meter = LoadMeter(probe_seconds=0.01)
        meter.ensure_watching()
        meter.ensure_watching()  # once: a second call does not start a second probe
        await asyncio.sleep(0.05)
        meter.sample()  # forget the quiet start
        import time

        time.sleep(0.2)  # a handler that blocks the loop for 200 ms
        await asyncio.sleep(0.05)
        blocked = meter.sample()
        meter._watcher.cancel()
        return blocked

    blocked = asyncio.run(scenario())
    assert blocked["loop_lag_max_ms"] >= 150
    assert blocked["loop_lag_ms"] > 10


def test_policy_scales_to_the_cpu_in_use_over_the_target():
    kw = {"target_cpu": 0.6, "max_loop_lag_ms": 10.0}
    assert desired_replicas(2, {"a": 0.9, "b": 0.9}, {"a": 1, "b": 1}, **kw) == 3  # 1.8 cores / 0.6
    assert desired_replicas(2, {"a": 0.6, "b": 0.6}, {}, **kw) == 2  # on target: stay
    assert desired_replicas(4, {"a": 0.05, "b": 0.05, "c": 0.05, "d": 0.05}, {}, **kw) == 1  # Serve bounds it
    # a replica without a report yet counts as the mean of the others
    assert desired_replicas(3, {"a": 0.9, "b": 0.9}, {}, **kw) == math.ceil(0.9 * 3 / 0.6)


def test_policy_adds_a_replica_while_the_loop_lags_and_keeps_them_until_it_recovers():
    kw = {"target_cpu": 0.6, "max_loop_lag_ms": 10.0}
    # CPU capped by a shared core (0.5 each: "on target" by CPU) but requests wait 20 ms: one more
    assert desired_replicas(3, {"a": 0.5, "b": 0.5, "c": 0.5}, {"a": 20, "b": 20, "c": 20}, **kw) == 4
    # fewer by CPU, but the lag is still over half the threshold: keep the count
    assert desired_replicas(4, {"a": 0.1, "b": 0.1, "c": 0.1, "d": 0.1}, {"a": 6, "b": 6}, **kw) == 4
    assert desired_replicas(4, {"a": 0.1, "b": 0.1, "c": 0.1, "d": 0.1}, {"a": 1, "b": 1}, **kw) == 1


def test_policy_holds_without_reports_and_ignores_values_that_are_not_numbers():
    kw = {"target_cpu": 0.6, "max_loop_lag_ms": 10.0}
    assert desired_replicas(2, {}, {}, **kw) == 2
    assert desired_replicas(2, {"a": float("nan"), "b": float("inf")}, {}, **kw) == 2
    assert desired_replicas(2, {"a": 1.2, "b": float("nan")}, {"a": float("inf")}, **kw) == 4


def _ctx(current, metrics, running=None):
    return SimpleNamespace(
        current_num_replicas=current,
        running_replicas=list(metrics.get("cpu", {})) if running is None else running,
        aggregated_metrics=metrics,
        policy_state={"serve-internal": 1},
    )


def test_policy_object_reads_the_running_replicas_reports_only():
    policy = BidderLoadPolicy(target_cpu=0.5, max_loop_lag_ms=10)
    busy = {"cpu": {"r1": 0.9, "r2": 0.9}, "loop_lag_ms": {"r1": 1.0, "r2": 1.0}}
    assert policy(_ctx(2, busy)) == (4.0, {})
    # r2 has stopped; its last (busy) report no longer counts
    stopped = {"cpu": {"r1": 0.1, "r2": 0.9}, "loop_lag_ms": {"r1": 1.0, "r2": 50.0}}
    assert policy(_ctx(1, stopped, running=["r1"]))[0] == 1.0
    assert policy(_ctx(2, {}))[0] == 2.0  # no metrics yet
    assert policy(SimpleNamespace(current_num_replicas=2, running_replicas=[], aggregated_metrics=None))[0] == 2.0


@pytest.mark.parametrize(
    "kwargs", [{"target_cpu": 0}, {"target_cpu": 1.5}, {"max_loop_lag_ms": 0}, {"target_cpu": "x"}]
)
def test_policy_refuses_targets_out_of_range(kwargs):
    with pytest.raises(ValueError):
        BidderLoadPolicy(**kwargs)


def test_policy_module_imports_nothing_of_bidopt():
    """Serve pickles the policy's module by value into its controller, which may not have bidopt."""
    import ast
    from pathlib import Path

    import bidopt.serve.autoscaling as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {name for name in imported if name.split(".")[0] in ("bidopt", "ray")}

"""The bidder's load signals and its autoscaling policy, without Ray (bidopt.bidder.load,
bidopt.serve.autoscaling); test_autoscaling.py checks them through Serve."""

from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace

import pytest

from bidopt.bidder import load
from bidopt.bidder.load import LoadMeter
from bidopt.serve.autoscaling import BidderLoadPolicy, check_policy_kwargs, desired_replicas


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


def test_a_sample_shorter_than_a_second_reports_nothing_and_the_next_covers_it():
    """Serve takes the first sample right after the replica starts: over milliseconds, a little
    start-up CPU would read as many cores."""
    clocks = FakeClocks()
    meter = LoadMeter(clock=lambda: clocks.wall, cpu_clock=lambda: clocks.cpu)
    clocks.wall += 0.005
    clocks.cpu += 0.004
    assert meter.sample() == {}
    clocks.wall += 1.995
    clocks.cpu += 0.196
    assert meter.sample()["cpu"] == pytest.approx(0.1)  # 0.2 CPU seconds over the 2 s since the start


def test_lag_probe_measures_a_blocked_event_loop(monkeypatch):
    monkeypatch.setattr(load, "MIN_SAMPLE_SECONDS", 0.0)  # samples of 50 ms here

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


KW = {"target_cpu": 0.6, "max_loop_lag_ms": 10.0}


def _want(running, target, cpu, lag=None, state=None):
    return desired_replicas(running, target, cpu, lag or {}, state, **KW)


def _same(value, n):
    return {f"r{i}": value for i in range(n)}


def test_policy_scales_to_the_cpu_in_use_over_the_target():
    assert _want(2, 2, _same(0.9, 2), _same(1, 2))[0] == 3  # 1.8 cores / 0.6
    assert _want(2, 2, _same(0.6, 2))[0] == 2  # on target: stay
    assert _want(4, 4, _same(0.05, 4))[0] == 1  # Serve's bounds make it min_replicas
    # a running replica without a report yet counts as the mean of the others
    assert _want(3, 3, {"a": 0.9, "b": 0.9})[0] == math.ceil(0.9 * 3 / 0.6)


def test_policy_scales_down_only_below_a_band_under_the_target():
    # 3 replicas at 0.38 each: 1.14 cores, 1.9 replicas' worth at 0.6: but 2 would run at 0.57,
    # within 10% of the target, so it keeps 3 (no flapping on the edge)
    assert _want(3, 3, _same(0.38, 3))[0] == 3
    assert _want(3, 3, _same(0.30, 3))[0] == 2  # 0.45 each at 2: clearly under


def test_policy_adds_a_replica_while_the_loop_lags_and_does_not_flap_back():
    # CPU capped by a shared core (0.5 each: "on target") but requests wait 20 ms: one more
    desired, state = _want(2, 2, _same(0.5, 2), _same(20, 2))
    assert desired == 3 and state["floor"] == 3
    # at 3 the lag is gone and the CPU alone would say 2 (1.0 / 0.6): the floor keeps 3
    desired, state = _want(3, 3, _same(1.0 / 3, 3), _same(1, 3), state)
    assert desired == 3 and state["floor"] == 3
    # the load falls under 70% of what it was when the lag asked: the floor goes, and so do replicas
    desired, state = _want(3, 3, _same(0.2, 3), _same(1, 3), state)
    assert desired == 2 and "floor" not in state


def test_a_lag_that_did_not_last_the_upscale_delay_leaves_no_floor():
    _, state = _want(2, 2, _same(0.5, 2), _same(20, 2))
    assert state["floor"] == 3
    desired, state = _want(2, 2, _same(0.5, 2), _same(1, 2), state)  # Serve never scaled: target still 2
    assert desired == 2 and "floor" not in state


def test_policy_keeps_replicas_while_requests_still_wait():
    assert _want(4, 4, _same(0.1, 4), {"a": 6, "b": 6})[0] == 4  # lag over half the threshold
    assert _want(4, 4, _same(0.1, 4), {"a": 1, "b": 1})[0] == 1


def test_policy_holds_the_target_not_the_running_count():
    """While a replica starts (running 2, target 3), keeping the count means keeping 3: answering 2
    would read as a scale-down to Serve and cancel the starting replica."""
    assert _want(2, 3, {})[0] == 3  # no reports
    assert _want(2, 3, _same(0.6, 2))[0] == 3  # on target by CPU
    assert _want(2, 3, _same(0.5, 2), _same(20, 2))[0] == 3  # lagging: running + 1 is what is coming


def test_policy_holds_without_reports_and_ignores_values_that_are_not_numbers():
    assert _want(2, 2, {})[0] == 2
    assert _want(0, 2, _same(0.9, 2))[0] == 2
    assert _want(2, 2, {"a": float("nan"), "b": float("inf"), "c": True})[0] == 2
    assert _want(2, 2, {"a": 1.2, "b": float("nan")}, {"a": float("inf")})[0] == 4


def _ctx(current, metrics, running=None, target=None, state=None):
    return SimpleNamespace(
        current_num_replicas=current,
        target_num_replicas=current if target is None else target,
        running_replicas=list(metrics.get("cpu", {})) if running is None else running,
        aggregated_metrics=metrics,
        policy_state={"serve-internal": 1, **(state or {})},
    )


def test_policy_object_reads_the_running_replicas_reports_only():
    policy = BidderLoadPolicy(target_cpu=0.5, max_loop_lag_ms=10)
    busy = {"cpu": {"r1": 0.9, "r2": 0.9}, "loop_lag_ms": {"r1": 1.0, "r2": 1.0}}
    assert policy(_ctx(2, busy)) == (4, {})
    # r2 has stopped; its last (busy) report no longer counts
    stopped = {"cpu": {"r1": 0.1, "r2": 0.9}, "loop_lag_ms": {"r1": 1.0, "r2": 50.0}}
    assert policy(_ctx(1, stopped, running=["r1"]))[0] == 1
    assert policy(_ctx(2, {}))[0] == 2  # no metrics yet
    empty = SimpleNamespace(
        current_num_replicas=2, target_num_replicas=2, running_replicas=[], aggregated_metrics=None, policy_state=None
    )
    assert policy(empty)[0] == 2
    # its own state comes back through Serve's policy_state; Serve's keys are not its business
    lagging = {"cpu": {"r1": 0.5, "r2": 0.5}, "loop_lag_ms": {"r1": 20.0, "r2": 20.0}}
    desired, state = BidderLoadPolicy(target_cpu=0.6)(_ctx(2, lagging))
    assert desired == 3 and set(state) == {"floor", "cpu_at_floor"}


@pytest.mark.parametrize(
    "kwargs",
    [{"target_cpu": 0}, {"target_cpu": 1.5}, {"max_loop_lag_ms": 0}, {"target_cpu": "0.6"}, {"target_cpu": True}],
)
def test_bad_policy_kwargs_are_refused_by_the_check_and_logged_by_the_policy(kwargs, caplog):
    with pytest.raises(ValueError):
        check_policy_kwargs(kwargs)
    policy = BidderLoadPolicy(**kwargs)  # in Serve's controller: never raise, use the defaults
    assert (policy.target_cpu, policy.max_loop_lag_ms) == (0.6, 10.0)
    assert "bidopt autoscaling policy" in caplog.text


def test_a_misspelt_policy_kwarg_is_refused_too():
    with pytest.raises(ValueError, match="unknown policy_kwargs: target_cpus"):
        check_policy_kwargs({"target_cpus": 0.5})
    assert BidderLoadPolicy(target_cpus=0.5).target_cpu == 0.6


def test_policy_module_imports_nothing_of_bidopt():
    """Serve pickles the policy's module by value into its controller, which may not have bidopt."""
    import ast
    from pathlib import Path

    import bidopt.serve.autoscaling as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {name for name in imported if name.split(".")[0] in ("bidopt", "ray")}

"""The bidder's autoscaling policy: replicas by CPU utilisation, plus one more while the event loop lags.

Serve's default policy divides the requests replicas are executing by ``target_ongoing_requests``.
For this bidder that count is always zero when sampled (``bidopt.bidder.load`` says why), so the
default policy never leaves ``min_replicas``. This policy reads what the replicas record instead
(``Bidder.record_autoscaling_stats``), averaged by Serve over about ``look_back_period_s``:

* ``cpu`` (cores a replica's process uses): the replicas needed are the cores in use across the
  deployment divided by ``target_cpu``, the share of a core one replica should run at. Proportional,
  like Kubernetes' CPU target: at 2 replicas each at 0.9 of a core and a target of 0.6, 3 replicas.
* ``loop_lag_ms``: when the mean lag across replicas passes ``max_loop_lag_ms``, requests are
  queueing although the CPU figure may not say so (a core shared with other processes caps what a
  replica can use), so at least one replica more than are running.

Against flapping at a steady load: fewer replicas only when they would each run under
``DOWN_BAND`` (90%) of the target; never while the lag is over half its threshold; and never below
the count a lag-driven scale-up reached (its "floor", kept in the policy state) until the CPU in use
has fallen under ``FLOOR_RELEASE`` (70%) of what it was then: the CPU figure cannot say that the
replicas the lag asked for are no longer needed, only that the load has gone down.

A decision that keeps the count keeps Serve's *target* (``ctx.target_num_replicas``), not the running
count: while a replica is starting, answering "running" would read as a scale-down to Serve.

Serve wraps the policy (``_apply_autoscaling_config``): ``upscale_delay_s`` and ``downscale_delay_s``,
the replica bounds and scaling factors still apply. Without a report from any running replica
(just started, or metrics not pushed yet) the policy keeps the target. ``min_replicas`` must stay
at 1 or more: behind HAProxy no Serve handle counts requests, so nothing would scale up from zero.

``serve.run`` pickles this module by value into Serve's controller; ``serve deploy`` imports it
there, so the head node needs bidopt installed (cluster.yaml installs it). Either way it imports
nothing of bidopt (a test checks). Bad ``policy_kwargs`` (a misspelt key, a string for a number)
are logged by the controller and the defaults used: an exception there would stop the controller
from reconciling every application; ``check_policy_kwargs`` is the strict check tests apply to
serve_config.yaml.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

POLICY_IMPORT_PATH = "bidopt.serve.autoscaling:BidderLoadPolicy"
DEFAULT_TARGET_CPU = 0.6
DEFAULT_MAX_LOOP_LAG_MS = 10.0
DOWN_BAND = 0.9
FLOOR_RELEASE = 0.7

log = logging.getLogger("ray.serve")


def _mean(values: Iterable[float]) -> float | None:
    finite = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def check_policy_kwargs(kwargs: Mapping[str, Any]) -> dict[str, float]:
    """The policy's keyword arguments, checked: known keys, numbers (not booleans) in range."""
    unknown = sorted(set(kwargs) - {"target_cpu", "max_loop_lag_ms"})
    if unknown:
        raise ValueError(f"unknown policy_kwargs: {', '.join(map(str, unknown))} (known: target_cpu, max_loop_lag_ms)")
    out = {"target_cpu": DEFAULT_TARGET_CPU, "max_loop_lag_ms": DEFAULT_MAX_LOOP_LAG_MS}
    for key, value in kwargs.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{key} must be a number, got {value!r}")
        out[key] = float(value)
    if not 0 < out["target_cpu"] <= 1:
        raise ValueError(f"target_cpu must be in (0, 1], got {out['target_cpu']}")
    if not out["max_loop_lag_ms"] > 0:
        raise ValueError(f"max_loop_lag_ms must be positive, got {out['max_loop_lag_ms']}")
    return out


def desired_replicas(
    running: int,
    target: int,
    cpu_by_replica: Mapping[Any, float],
    lag_ms_by_replica: Mapping[Any, float],
    state: Mapping[str, Any] | None = None,
    *,
    target_cpu: float,
    max_loop_lag_ms: float,
) -> tuple[int, dict[str, Any]]:
    """The replica count the signals ask for (before Serve's delays and bounds) and the policy state
    to keep. ``running``: replicas running (and reporting); ``target``: Serve's current target. A
    running replica without a report counts as the mean of those with one; no report keeps ``target``."""
    state = dict(state or {})
    mean_cpu = _mean(cpu_by_replica.values())
    if mean_cpu is None or running <= 0:
        return target, state
    total = mean_cpu * running
    mean_lag = _mean(lag_ms_by_replica.values()) or 0.0
    lagging = mean_lag > max_loop_lag_ms
    floor, cpu_at_floor = state.get("floor"), float(state.get("cpu_at_floor") or 0.0)
    if floor is not None and (total < FLOOR_RELEASE * cpu_at_floor or (not lagging and target < floor)):
        # the load that made the lag ask for these replicas has gone, or they never came (the lag
        # did not last the upscale delay)
        floor, cpu_at_floor = None, 0.0
    need = math.ceil(round(total / target_cpu, 6))
    if lagging:
        need = max(need, running + 1)
        floor, cpu_at_floor = max(need, floor or 0), max(total, cpu_at_floor)
    if need >= target:
        desired = need
    elif mean_lag > max_loop_lag_ms / 2:
        desired = target  # fewer by CPU, but requests still wait: keep them
    else:
        # fewer only if each would run under the band below the target: no flapping on the edge
        desired = min(target, max(need, math.ceil(round(total / (DOWN_BAND * target_cpu), 6))))
    if floor is not None:
        desired = max(desired, min(floor, target))  # the floor holds what is there; it scales nothing up
        state.update(floor=floor, cpu_at_floor=cpu_at_floor)
    else:
        state.pop("floor", None)
        state.pop("cpu_at_floor", None)
    return max(desired, 1), state


class BidderLoadPolicy:
    """``AutoscalingConfig.policy``: ``{"policy_function": POLICY_IMPORT_PATH, "policy_kwargs":
    {"target_cpu": ..., "max_loop_lag_ms": ...}}``. Serve makes one instance per deployment and
    calls it every control-loop tick with an ``AutoscalingContext``."""

    def __init__(self, **kwargs: Any) -> None:
        try:
            checked = check_policy_kwargs(kwargs)
        except ValueError as exc:  # in the controller: log it, never stop its reconciling
            log.error(
                "bidopt autoscaling policy: %s; using target_cpu %s, max_loop_lag_ms %s",
                exc,
                DEFAULT_TARGET_CPU,
                DEFAULT_MAX_LOOP_LAG_MS,
            )
            checked = check_policy_kwargs({})
        self.target_cpu = checked["target_cpu"]
        self.max_loop_lag_ms = checked["max_loop_lag_ms"]

    def __call__(self, ctx) -> tuple[int, dict]:
        metrics = ctx.aggregated_metrics or {}
        running = set(ctx.running_replicas)

        def of_running(name: str) -> dict:  # a stopped replica's last report no longer counts
            return {r: v for r, v in (metrics.get(name) or {}).items() if r in running}

        own = {k: v for k, v in (ctx.policy_state or {}).items() if k in ("floor", "cpu_at_floor")}
        return desired_replicas(
            ctx.current_num_replicas,
            ctx.target_num_replicas,
            of_running("cpu"),
            of_running("loop_lag_ms"),
            own,
            target_cpu=self.target_cpu,
            max_loop_lag_ms=self.max_loop_lag_ms,
        )

"""The bidder's autoscaling policy: replicas by CPU utilisation, plus one more while the event loop lags.

Serve's default policy divides the requests replicas are executing by ``target_ongoing_requests``.
For this bidder that count is always zero when sampled (``bidopt.bidder.load`` says why), so the
default policy never leaves ``min_replicas``. This policy reads what the replicas record instead
(``Bidder.record_autoscaling_stats``), averaged by Serve over ``look_back_period_s``:

* ``cpu`` (cores a replica's process uses): the replicas needed are the cores in use across the
  deployment divided by ``target_cpu``, the share of a core one replica should run at. Proportional,
  like Kubernetes' CPU target: at 2 replicas each at 0.9 of a core and a target of 0.6, 3 replicas.
* ``loop_lag_ms``: when the mean lag across replicas passes ``max_loop_lag_ms``, requests are
  queueing although the CPU figure may not say so (a core shared with other processes caps what a
  replica can use), so at least one replica more. Scaling down also needs the lag under half the
  threshold, so that a CPU-capped replica is not removed while requests wait.

Serve wraps the policy (``_apply_autoscaling_config``): ``upscale_delay_s`` and ``downscale_delay_s``,
the replica bounds and scaling factors still apply. Without a report from any replica (just started,
or metrics not pushed yet) the policy keeps the current count.

The class is pickled by value into Serve's controller (``AutoscalingPolicy.serialize_policy``), so
this module imports nothing of bidopt: the controller does not need the package installed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

POLICY_IMPORT_PATH = "bidopt.serve.autoscaling:BidderLoadPolicy"
DEFAULT_TARGET_CPU = 0.6
DEFAULT_MAX_LOOP_LAG_MS = 10.0


def _mean(values: Iterable[float]) -> float | None:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def desired_replicas(
    current: int,
    cpu_by_replica: Mapping[Any, float],
    lag_ms_by_replica: Mapping[Any, float],
    *,
    target_cpu: float,
    max_loop_lag_ms: float,
) -> float:
    """The replica count the signals ask for (before Serve's delays and bounds). A replica without a
    report counts as the mean of those with one; no report at all keeps ``current``."""
    mean_cpu = _mean(cpu_by_replica.values())
    if mean_cpu is None or current <= 0:
        return float(current)
    by_cpu = mean_cpu * current / target_cpu
    mean_lag = _mean(lag_ms_by_replica.values()) or 0.0
    if mean_lag > max_loop_lag_ms:
        return float(max(math.ceil(by_cpu), current + 1))
    if math.ceil(by_cpu) < current and mean_lag > max_loop_lag_ms / 2:
        return float(current)  # fewer replicas by CPU, but requests still wait: keep them
    # ceil: 2.1 replicas' worth of CPU needs 3; Serve applies ceil too, this keeps the float honest
    return float(math.ceil(round(by_cpu, 6)))


class BidderLoadPolicy:
    """``AutoscalingConfig.policy``: ``{"policy_function": POLICY_IMPORT_PATH, "policy_kwargs":
    {"target_cpu": ..., "max_loop_lag_ms": ...}}``. Serve makes one instance per deployment and
    calls it every control-loop tick with an ``AutoscalingContext``."""

    def __init__(self, target_cpu: float = DEFAULT_TARGET_CPU, max_loop_lag_ms: float = DEFAULT_MAX_LOOP_LAG_MS):
        if not (isinstance(target_cpu, (int, float)) and 0 < target_cpu <= 1):
            raise ValueError(f"target_cpu must be in (0, 1], got {target_cpu!r}")
        if not (isinstance(max_loop_lag_ms, (int, float)) and 0 < max_loop_lag_ms < math.inf):
            raise ValueError(f"max_loop_lag_ms must be a positive number, got {max_loop_lag_ms!r}")
        self.target_cpu = float(target_cpu)
        self.max_loop_lag_ms = float(max_loop_lag_ms)

    def __call__(self, ctx) -> tuple[float, dict]:
        metrics = ctx.aggregated_metrics or {}
        running = set(ctx.running_replicas)

        def of_running(name: str) -> dict:  # a stopped replica's last report no longer counts
            return {r: v for r, v in (metrics.get(name) or {}).items() if r in running}

        desired = desired_replicas(
            ctx.current_num_replicas,
            of_running("cpu"),
            of_running("loop_lag_ms"),
            target_cpu=self.target_cpu,
            max_loop_lag_ms=self.max_loop_lag_ms,
        )
        return desired, {}  # no state of its own: Serve keeps its delay counters itself

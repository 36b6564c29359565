"""The optimizer's application metrics, recorded by the job driver (``bidopt.jobs.optimize``).

The driver records at the edges, where it learns of each event: a run claimed, a run that
completed or failed (the result its task returns), a run requeued (its task died or timed out, or
its worker stopped heartbeating), and per finished attempt the seconds of each stage
(``bidopt.optimizer.pipeline.STAGES``, measured by the pipeline's ``StageClock`` inside the task and
returned with its result) and the bid-log rows its window aggregated. The optimizer itself stays
Ray-free: it only fills a ``StageClock``.

Export: under Ray (the driver after ``ray.init``) every record goes to ``ray.util.metrics`` as it
happens, and Ray's metrics agent serves it to Prometheus as ``PROMETHEUS_PREFIX`` + name. Outside
Ray (``--no-ray``, unit tests) nothing is recorded and Ray is not imported: ``ray.util.metrics``
would accept the calls and drop them (it does not start Ray), but importing Ray costs seconds.
``OptimizerMetrics(metrics_module)`` exports to any module with ``Counter`` and ``Histogram`` like
``ray.util.metrics``'s instead (tests).

Labels are bounded: ``event`` one of ``RUN_EVENTS``, ``stage`` one of ``STAGES``, ``entity`` an
entity code from the catalogue (the run's own), ``error_class`` one of ``ERROR_CLASSES``: the
exception's class name for bidopt's own errors (the nearest known base class for a subclass), the
driver's ``task_died``, ``timed_out`` and ``stale_heartbeat`` for attempts that never answered,
else ``other``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from bidopt.errors import (
    BidoptError,
    Conflict,
    DatabaseUnavailable,
    InvalidConfig,
    NotFound,
    SchemaMissing,
    ServiceUnavailable,
)
from bidopt.metrics import PROMETHEUS_PREFIX, MetricSpec, under_ray
from bidopt.optimizer.pipeline import STAGES
from bidopt.settings import InvalidSettings

log = logging.getLogger("bidopt.optimizer")

RUNS = "bidopt_optimizer_runs_total"
FAILURES = "bidopt_optimizer_failures_total"
STAGE_SECONDS = "bidopt_optimizer_stage_seconds"
ROWS_AGGREGATED = "bidopt_optimizer_rows_aggregated_total"

RUN_EVENTS = ("claimed", "completed", "failed", "requeued")
TASK_DIED, TIMED_OUT, STALE_HEARTBEAT, OTHER = "task_died", "timed_out", "stale_heartbeat", "other"
# Most specific first: error_class takes the first of these in the exception's MRO.
KNOWN_ERRORS = (
    DatabaseUnavailable,
    SchemaMissing,
    ServiceUnavailable,
    InvalidSettings,
    InvalidConfig,
    NotFound,
    Conflict,
    BidoptError,
)
ERROR_CLASSES = (*(c.__name__ for c in KNOWN_ERRORS), TASK_DIED, TIMED_OUT, STALE_HEARTBEAT, OTHER)
# Seconds: a stage of a small run takes well under a second; a big run's training, many minutes.
STAGE_BOUNDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

OPTIMIZER_METRICS: dict[str, MetricSpec] = {
    RUNS: MetricSpec("counter", ("event",), "Optimizer runs claimed, completed, failed and requeued, by event"),
    FAILURES: MetricSpec("counter", ("error_class",), "Optimizer runs failed, by error class"),
    STAGE_SECONDS: MetricSpec(
        "histogram", ("stage",), "Seconds per stage of each finished optimizer attempt", bounds=STAGE_BOUNDS
    ),
    ROWS_AGGREGATED: MetricSpec("counter", ("entity",), "Bid-log rows in the windows of completed runs"),
}


def exported_names(metrics: Mapping[str, MetricSpec]) -> set[str]:
    """The series names Prometheus sees for ``metrics``: the prefix, and a histogram's three series."""
    names = set()
    for name, spec in metrics.items():
        full = PROMETHEUS_PREFIX + name
        names |= {f"{full}_bucket", f"{full}_count", f"{full}_sum"} if spec.kind == "histogram" else {full}
    return names


def error_class(exc: BaseException) -> str:
    """The bounded ``error_class`` label of a run's exception."""
    for cls in type(exc).__mro__:
        if cls in KNOWN_ERRORS:
            return cls.__name__
    return OTHER


class OptimizerMetrics:
    """The driver's recorder (see the module docstring). Every method is safe to call outside Ray."""

    def __init__(self, metrics_module=None) -> None:
        self._module = metrics_module
        self._objects: dict | None = None

    def _export(self) -> dict | None:
        """The metric objects, made on first use; None (record nothing) outside Ray."""
        if self._objects is not None:
            return self._objects
        module = self._module
        if module is None:
            if not under_ray():
                return None
            from ray.util import metrics as module
        objects = {}
        for name, spec in OPTIMIZER_METRICS.items():
            if spec.kind == "histogram":
                objects[name] = module.Histogram(
                    name, spec.description, boundaries=list(spec.bounds), tag_keys=spec.labels
                )
            else:
                objects[name] = module.Counter(name, spec.description, tag_keys=spec.labels)
        self._objects = objects
        return objects

    def _record(self, fn) -> None:
        try:
            objects = self._export()
            if objects is not None:
                fn(objects)
        except Exception:  # noqa: BLE001 - metrics are for operators: a failure never stops a run
            log.exception("optimizer: recording a metric failed")

    def run_event(self, event: str) -> None:
        assert event in RUN_EVENTS, event
        self._record(lambda o: o[RUNS].inc(1, tags={"event": event}))

    def failed(self, error_class_: str) -> None:
        """A run that ended failed: ``runs{event="failed"}`` and ``failures{error_class}``."""
        label = error_class_ if error_class_ in ERROR_CLASSES else OTHER
        self.run_event("failed")
        self._record(lambda o: o[FAILURES].inc(1, tags={"error_class": label}))

    def stages(self, seconds: Mapping[str, float]) -> None:
        """One attempt's seconds per stage (a ``StageClock``'s ``seconds``)."""
        for stage, value in seconds.items():
            if stage in STAGES:
                self._record(lambda o, s=stage, v=value: o[STAGE_SECONDS].observe(float(v), tags={"stage": s}))

    def rows_aggregated(self, entity_code: str, rows: int) -> None:
        if rows > 0:
            self._record(lambda o: o[ROWS_AGGREGATED].inc(rows, tags={"entity": entity_code}))

    def requeued_stale(self, new_status: str) -> None:
        """A run another worker held, released by the stale check: requeued, or failed after its attempts."""
        if new_status == "pending":
            self.run_event("requeued")
        elif new_status == "failed":
            self.failed(STALE_HEARTBEAT)

    def finished(self, result: dict) -> None:
        """What the driver learnt of one attempt (``run_optimizer``'s results)."""
        status = result.get("status")
        if status == "completed":
            self.run_event("completed")
            if result.get("entity_code") and result.get("rows_aggregated") is not None:
                self.rows_aggregated(result["entity_code"], int(result["rows_aggregated"]))
        elif status == "failed":
            self.failed(result.get("error_class") or OTHER)
        elif status == "requeued":
            self.run_event("requeued")
        # abandoned: the lease was lost, and whoever took the run records what became of it
        if result.get("stage_seconds"):
            self.stages(result["stage_seconds"])

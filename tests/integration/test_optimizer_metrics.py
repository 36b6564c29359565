"""The optimizer's metrics (``bidopt.jobs.optimizer_metrics``), read back after known runs.

Two ways, for two different claims:

* in-process on SQLite and PostgreSQL, the recorder exporting to a stand-in for ``ray.util.metrics``
  that keeps every call: exact counts per event and error class, and every stage's duration, for
  a mix of outcomes (completed, failed, requeued by the stale check) that a real Ray would make
  slow and flaky to stage. It checks what the driver records, label by label, with Ray's own
  tag-key rules.
* one run on a local Ray started with ``_metrics_export_port``, read from the metrics agent's
  Prometheus endpoint: the names Prometheus really sees (Ray's ``ray_`` prefix, a counter's
  ``_total`` kept as it is, a histogram's ``_bucket``/``_count``/``_sum``) are the names the
  dashboard and the README use (``exported_names``).
"""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from datetime import timedelta

import pytest
from sqlalchemy import update

from bidopt.data import generate_into_warehouse, get_warehouse
from bidopt.db import queries as q
from bidopt.db.engine import database_now, session_scope
from bidopt.db.models import OptRun
from bidopt.jobs.optimize import run_optimizer
from bidopt.jobs.optimizer_metrics import (
    FAILURES,
    OPTIMIZER_METRICS,
    ROWS_AGGREGATED,
    RUNS,
    STAGE_SECONDS,
    OptimizerMetrics,
    exported_names,
)
from bidopt.metrics import PROMETHEUS_PREFIX
from bidopt.optimizer.pipeline import STAGES
from bidopt.simulator import MarketSpec

FAST = {"xgb_num_rounds": "40", "min_segment_bids": "100", "min_domain_bids": "300"}


class FakeMetrics:
    """``ray.util.metrics``' Counter and Histogram, keeping every call as ``(name, value, tags)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, dict]] = []
        fake = self

        class _Metric:
            def __init__(self, name, description="", tag_keys=(), boundaries=None) -> None:
                assert isinstance(tag_keys, tuple)  # as Ray requires
                self.name, self.tag_keys, self.boundaries = name, tag_keys, boundaries

            def _keep(self, value, tags) -> None:
                assert set(tags) == set(self.tag_keys), (self.name, tags)  # every label, and only those
                assert all(isinstance(v, str) for v in tags.values()), tags
                fake.calls.append((self.name, value, dict(tags)))

        class Counter(_Metric):
            def inc(self, value=1.0, tags=None) -> None:
                assert value > 0
                self._keep(value, tags or {})

        class Histogram(_Metric):
            def observe(self, value, tags=None) -> None:
                self._keep(value, tags or {})

        self.Counter, self.Histogram = Counter, Histogram

    def total(self, name: str, **tags) -> float:
        return sum(v for n, v, t in self.calls if n == name and all(t.get(k) == x for k, x in tags.items()))

    def observations(self, name: str, **tags) -> list[float]:
        return [v for n, v, t in self.calls if n == name and all(t.get(k) == x for k, x in tags.items())]


def _create(engine, entity="drugs_hcp", **configs) -> str:
    with session_scope(engine) as s:
        return q.create_run(s, entity, FAST | configs, triggered_by="test").run_id


def _window_rows(engine, run_id) -> int:
    with session_scope(engine) as s:
        return int(q.get_run_metrics(s, run_id)["global_stats"]["bids"])


def test_counts_per_event_and_error_class_and_a_duration_for_every_stage(platform_db):
    """A run left by a dead worker (requeued by the stale check, then completed), a run that
    completes, and one that fails (its entity has no bid logs: ``InvalidConfig``)."""
    with get_warehouse() as wh:  # bid logs for drugs_hcp only
        generate_into_warehouse(wh, MarketSpec("drugs_hcp", rows=60_000, seed=5, n_domains=200, npi_enabled=True))
    stale = _create(platform_db)
    with session_scope(platform_db) as s:  # claimed by a worker that died an hour ago
        assert q.claim_next_pending_run(s, "gone:1:dead00").run_id == stale
        s.execute(
            update(OptRun).where(OptRun.run_id == stale).values(heartbeat_at=database_now(s) - timedelta(hours=1))
        )
    time.sleep(1.1)  # run ids are the creation second
    completes = _create(platform_db)
    time.sleep(1.1)
    fails = _create(platform_db, "auto_intenders")

    fake = FakeMetrics()
    report = run_optimizer(once=True, use_ray=False, metrics=OptimizerMetrics(fake))
    outcome = {r["run_id"]: r["status"] for r in report.processed}
    assert outcome == {stale: "completed", completes: "completed", fails: "failed"}

    assert {e: fake.total(RUNS, event=e) for e in ("claimed", "completed", "failed", "requeued")} == {
        "claimed": 3,
        "completed": 2,
        "failed": 1,
        "requeued": 1,
    }
    assert [(v, t) for n, v, t in fake.calls if n == FAILURES] == [(1, {"error_class": "InvalidConfig"})]
    # every stage of each completed attempt; the failed one stopped in its first stage, reading
    for stage in STAGES:
        seconds = fake.observations(STAGE_SECONDS, stage=stage)
        assert len(seconds) == (3 if stage == "read" else 2), (stage, seconds)
        assert all(s > 0 for s in seconds), (stage, seconds)
    for r in report.processed:  # counted exclusively: the stages add up to no more than the attempt took
        if r["status"] == "completed":
            assert set(r["stage_seconds"]) == set(STAGES)
            assert sum(r["stage_seconds"].values()) <= r["ended"] - r["began"]
    rows = [_window_rows(platform_db, stale), _window_rows(platform_db, completes)]  # in the order they ran
    assert min(rows) > 0
    assert [(v, t) for n, v, t in fake.calls if n == ROWS_AGGREGATED] == [(n, {"entity": "drugs_hcp"}) for n in rows]
    # bounded labels: only the fixed label keys of each metric ever appear
    for name, _, tags in fake.calls:
        assert tuple(tags) == OPTIMIZER_METRICS[name].labels


def test_an_attempt_released_by_the_driver_counts_as_requeued_then_failed_by_its_cause(platform_db, monkeypatch):
    """A task that died (requeued while attempts are left) and one past the time limit on the last
    attempt: the driver's own error classes, not the exception's."""
    from bidopt.jobs import optimize as job
    from bidopt.settings import reset_settings_cache

    monkeypatch.setenv("BIDOPT_MAX_ATTEMPTS", "2")
    reset_settings_cache()
    run_id = _create(platform_db)
    fake = FakeMetrics()
    metrics = OptimizerMetrics(fake)
    first = job._claim("w:1:aaaaaa", metrics)
    metrics.finished(job._release(first, "optimizer task died: WorkerCrashedError", job.TASK_DIED))
    second = job._claim("w:1:aaaaaa", metrics)
    assert (first.run_id, second.run_id, second.attempt) == (run_id, run_id, 2)
    result = job._release(second, "exceeded run time limit of 5 s", job.TIMED_OUT)
    metrics.finished(result)
    assert (result["status"], result["error_class"]) == ("failed", "timed_out")
    assert [(t["event"], v) for n, v, t in fake.calls if n == RUNS] == [
        ("claimed", 1),
        ("requeued", 1),
        ("claimed", 1),
        ("failed", 1),
    ]
    assert [t for n, _, t in fake.calls if n == FAILURES] == [{"error_class": "timed_out"}]


def test_without_ray_the_default_recorder_records_nothing_and_the_run_still_completes(platform):
    """``--no-ray``: no ``ray.init``, so the default recorder makes no metric object at all."""
    import ray

    assert not ray.is_initialized()
    _create(platform)
    metrics = OptimizerMetrics()
    report = run_optimizer(once=True, use_ray=False, metrics=metrics)
    assert [r["status"] for r in report.processed] == ["completed"]
    assert metrics._objects is None and not ray.is_initialized()


# --------------------------------------------------------------------------- on a local Ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict[str, float]:
    """``{"name{label=value,...}": value}`` for the bidopt series the metrics agent serves, with
    only the metric's own labels (Ray adds Component, WorkerId, ... to each)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    ours = {label for spec in OPTIMIZER_METRICS.values() for label in (*spec.labels, "le")}
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^(ray_bidopt_optimizer_\w+)(?:\{(.*)\})? (\S+)$", line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        key = ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k in ours)
        name = f"{m.group(1)}{{{key}}}"
        out[name] = out.get(name, 0.0) + float(m.group(3))
    return out


@pytest.fixture
def ray_with_metrics(monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # a private, loopback-only test cluster
    port = _free_port()
    ray.init(
        address="local",
        num_cpus=1,
        include_dashboard=False,
        configure_logging=False,
        _metrics_export_port=port,
        _system_config={"metrics_report_interval_ms": 500},  # default 10 s: the test would wait for it
    )
    yield port
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_metrics_agent_serves_them_under_the_names_the_dashboard_uses(platform, ray_with_metrics):
    run_id = _create(platform)
    report = run_optimizer(once=True, parallel=1)  # the default recorder: ray.util.metrics
    assert [r["status"] for r in report.processed] == ["completed"]
    rows = _window_rows(platform, run_id)

    prefix = PROMETHEUS_PREFIX + "bidopt_optimizer_"
    expected = {
        f"{PROMETHEUS_PREFIX}{RUNS}{{event=claimed}}": 1.0,
        f"{PROMETHEUS_PREFIX}{RUNS}{{event=completed}}": 1.0,
        f"{PROMETHEUS_PREFIX}{ROWS_AGGREGATED}{{entity=drugs_hcp}}": float(rows),
        **{f"{PROMETHEUS_PREFIX}{STAGE_SECONDS}_count{{stage={stage}}}": 1.0 for stage in STAGES},
    }
    deadline, got = time.monotonic() + 60, {}
    while time.monotonic() < deadline:
        got = _scrape(ray_with_metrics)
        if all(got.get(k) == v for k, v in expected.items()):
            break
        time.sleep(0.5)
    assert {k: got.get(k) for k in expected} == expected
    assert not any(k.startswith(f"{prefix}runs_total{{event=failed") for k in got)
    # every series served is one the code names (so the dashboard's names are real ones)
    assert {k.split("{")[0] for k in got} <= exported_names(OPTIMIZER_METRICS)
    assert {k.split("{")[0] for k in got} >= {
        f"{PROMETHEUS_PREFIX}{RUNS}",
        f"{PROMETHEUS_PREFIX}{ROWS_AGGREGATED}",
        f"{PROMETHEUS_PREFIX}{STAGE_SECONDS}_bucket",
        f"{PROMETHEUS_PREFIX}{STAGE_SECONDS}_sum",
        f"{PROMETHEUS_PREFIX}{STAGE_SECONDS}_count",
    }

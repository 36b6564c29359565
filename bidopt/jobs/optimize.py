"""The optimizer job: claim pending runs, optimise each as a Ray task, record the results.

Entry points: ``bidopt optimizer run`` and, for ``ray job submit``,
``python -m bidopt.jobs.optimize [--once]``. The driver claims runs oldest
first (``claim_next_pending_run``: atomic, so two optimizers never take the
same run), starts one named Ray task per run (``optimize <entity> <run_id>``
in the dashboard), heartbeats the runs it holds while they work, and with
``--once`` exits when the queue is empty. Runs of different entities (and of
the same entity) train in parallel up to ``--parallel``.

A task reads the run's inputs from the database, runs
``bidopt.optimizer.pipeline.optimize`` against the warehouse, writes the
artifacts (manifest last) and then, in one transaction, the features, metrics
and ``completed`` status. Any exception marks the run ``failed`` with the
error, removes a manifest it may have written, and the job goes on.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import pandas as pd

from bidopt.artifacts import MANIFEST, open_artifact_store, run_output_url, write_run_artifacts
from bidopt.db import queries as q
from bidopt.db.engine import get_engine, session_scope
from bidopt.optimizer.pipeline import RunResult, RunSpec, optimize
from bidopt.settings import get_settings
from bidopt.warehouse import open_warehouse



def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def load_run_spec(session, run_id: str) -> tuple[RunSpec, str]:
    """The run's inputs (entity, static configs, run configs, active macros with their request
    fields, version thresholds) and the URL its artifacts go to. The request fields are read here,
    once, and recorded with the run's features: a macro edited later changes no finished run."""
    run = q.get_run(session, run_id)
    entity, version = run.entity, run.version
    macros = q.list_active_feature_macros(session, entity.master_id)
    spec = RunSpec(
        run_id=run.run_id, entity_code=entity.entity_code, anchor_feature=version.anchor_feature,
        macro_ids={m.feature_name: m.macro_id for m in macros},
        request_fields={m.feature_name: m.request_field for m in macros},
        static=q.get_entity_configs(session, entity.entity_id),
        configs=q.get_run_configs(session, run.run_id),
        thresholds={"min_win_auc": version.min_win_auc, "max_win_ece": version.max_win_ece,
                    "min_bid_coverage": version.min_bid_coverage},
    )
    return spec, run_output_url(get_settings().artifact_url, entity.base_path, run.run_id)


def _csv(df: pd.DataFrame) -> bytes:
    buf = io.StringIO()
    df.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue().encode()


def feature_records(spec: RunSpec, result: RunResult) -> list[q.FeatureRecord]:
    """The run's features in key order with their macros and the request fields the run was trained
    with, for opt_run_features and features.json."""
    return [q.FeatureRecord(c.name, i + 1, c.is_anchor, c.signal_score, spec.macro_ids.get(c.name),
                            spec.request_fields.get(c.name))
            for i, c in enumerate(result.features)]


def artifact_files(spec: RunSpec, result: RunResult) -> dict[str, bytes]:
    multipliers = result.multipliers if result.multipliers is not None else pd.DataFrame(
        columns=["domain", "multiplier"])
    features = [dataclasses.asdict(f) for f in feature_records(spec, result)]
    files = {
        "suggested_bids.csv": _csv(result.bids),
        "domain_multipliers.csv": _csv(multipliers),
        "win_model.ubj": result.win_model,
        "metrics.json": json.dumps(result.metrics, indent=2, sort_keys=True, default=float).encode(),
        "win_curves.json": json.dumps(result.curves).encode(),
        "features.json": json.dumps({"features": features, "candidates_scored": result.feature_scores,
                                     "validation": result.validation_reasons}, indent=2).encode(),
    }
    if result.ctr_model is not None:
        files["ctr_model.ubj"] = result.ctr_model
    return files


def process_run(run_id: str, worker_id: str, progress: Callable[[str], None] | None = None) -> dict:
    """Optimise one claimed (running) run end to end; never raises for a run's own failure."""
    settings = get_settings()
    engine = get_engine(settings.database_url)
    say = progress or (lambda text: print(f"{run_id}: {text}", flush=True))
    output_url = None
    began = time.time()
    try:
        with session_scope(engine) as s:
            spec, output_url = load_run_spec(s, run_id)
        say(f"optimising {spec.entity_code}")
        with open_warehouse(settings.warehouse_url) as wh:
            result = optimize(wh, spec, progress=say)
        say(f"writing artifacts to {output_url}")
        write_run_artifacts(output_url, artifact_files(spec, result), meta={
            "run_id": run_id, "entity_code": spec.entity_code,
            "features": [c.name for c in result.features],
            "window": [result.window.start.isoformat(), result.window.end.isoformat()],
            "validation_status": result.validation_status})
        seg = result.segment_bids
        stats = q.RunStats(
            segments_count=int(len(seg)), bid_median=float(seg.median()), bid_min=float(seg.min()),
            bid_max=float(seg.max()), s3_output_path=output_url, validation_status=result.validation_status,
            validation_details=result.validation_reasons)
        with session_scope(engine) as s:
            q.record_run_features(s, run_id, feature_records(spec, result))
            q.record_run_metrics(s, run_id, result.metrics)
            q.mark_run_completed(s, run_id, stats, worker_id=worker_id)
        say(f"completed: {stats.segments_count} segments, median bid {stats.bid_median:.2f}, "
            f"validation {stats.validation_status}")
        return {"run_id": run_id, "status": "completed", "validation_status": stats.validation_status,
                "segments_count": stats.segments_count, "bid_median": stats.bid_median,
                "pid": os.getpid(), "began": began, "ended": time.time()}
    except Exception as exc:  # noqa: BLE001 - every failure of a run is recorded on the run
        error = f"{type(exc).__name__}: {exc}"
        say(f"failed: {error}")
        _remove_manifest(output_url)
        mark_failed(run_id, error, worker_id, detail=traceback.format_exc())
        return {"run_id": run_id, "status": "failed", "error": error}


def _remove_manifest(output_url: str | None) -> None:
    if output_url is None:
        return
    try:
        open_artifact_store(output_url).delete(MANIFEST)
    except Exception:  # noqa: BLE001 - nothing was written, or the store is down: no manifest either way
        pass


def mark_failed(run_id: str, error: str, worker_id: str | None, *, detail: str = "") -> None:
    from bidopt.errors import Conflict

    engine = get_engine(get_settings().database_url)
    try:
        with session_scope(engine) as s:
            q.mark_run_failed(s, run_id, error, worker_id=worker_id)
    except Conflict:
        pass  # the run already ended or was requeued by another worker: leave it as it is
    if detail:
        print(detail, file=sys.stderr, flush=True)


@dataclass
class JobReport:
    processed: list[dict]

    @property
    def failed(self) -> int:
        return sum(1 for r in self.processed if r["status"] == "failed")


def _claim(worker_id: str) -> tuple[str, str] | None:
    """Requeue runs whose worker died (no heartbeat for ``stale_after_seconds``), then claim the oldest."""
    settings = get_settings()
    engine = get_engine(settings.database_url)
    with session_scope(engine) as s:
        for run_id, status in q.requeue_stale_runs(s, heartbeat_timeout=timedelta(seconds=settings.stale_after_seconds),
                                                   max_attempts=settings.max_attempts):
            print(f"run {run_id}: its worker stopped heartbeating; now {status}", flush=True)
    with session_scope(engine) as s:
        run = q.claim_next_pending_run(s, worker_id)
        return (run.run_id, run.entity.entity_code) if run else None


def _heartbeat(run_ids: list[str], worker_id: str) -> None:
    engine = get_engine(get_settings().database_url)
    with session_scope(engine) as s:
        for run_id in run_ids:
            q.heartbeat_run(s, run_id, worker_id)


class Heartbeat:
    """Heartbeats the runs this driver holds from a thread, whatever the main loop is doing
    (an in-process run can take longer than the stale timeout)."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id, self.run_ids = worker_id, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(get_settings().heartbeat_seconds):
            if self.run_ids:
                try:
                    _heartbeat(sorted(self.run_ids), self.worker_id)
                except Exception as exc:  # noqa: BLE001 - a missed beat is retried; the timeout is generous
                    print(f"heartbeat failed: {exc}".splitlines()[0], file=sys.stderr, flush=True)


def run_optimizer(*, once: bool, poll_seconds: float = 10.0, parallel: int = 2, use_ray: bool = True,
                  on_result: Callable[[dict], None] | None = None, max_runs: int | None = None) -> JobReport:
    """Drain (``once``) or keep polling the pending queue. Returns what was processed."""
    worker_id = new_worker_id()
    report = JobReport([])

    def done(result: dict) -> None:
        report.processed.append(result)
        if on_result:
            on_result(result)

    def budget_left() -> bool:
        return max_runs is None or len(report.processed) + len(in_flight) < max_runs

    in_flight: dict = {}
    if not use_ray:
        with Heartbeat(worker_id) as beat:
            while budget_left():
                claimed = _claim(worker_id)
                if claimed is None:
                    if once:
                        break
                    time.sleep(poll_seconds)
                    continue
                beat.run_ids.add(claimed[0])
                try:
                    done(process_run(claimed[0], worker_id))
                finally:
                    beat.run_ids.discard(claimed[0])
        return report

    import ray

    from bidopt.jobs.ray_runtime import ensure_ray

    ensure_ray()
    task = ray.remote(num_cpus=1, max_retries=0)(process_run)
    with Heartbeat(worker_id) as beat:
        while True:
            while len(in_flight) < parallel and budget_left():
                claimed = _claim(worker_id)
                if claimed is None:
                    break
                run_id, entity_code = claimed
                ref = task.options(name=f"optimize {entity_code} {run_id}").remote(run_id, worker_id)
                in_flight[ref] = run_id
                beat.run_ids.add(run_id)
            if not in_flight:
                if once or not budget_left():
                    return report
                time.sleep(poll_seconds)
                continue
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=get_settings().heartbeat_seconds)
            for ref in ready:
                run_id = in_flight.pop(ref)
                beat.run_ids.discard(run_id)
                try:
                    done(ray.get(ref))
                except Exception as exc:  # noqa: BLE001 - the task's worker died: record it on the run
                    error = f"optimizer task died: {type(exc).__name__}: {exc}".splitlines()[0]
                    mark_failed(run_id, error, worker_id)
                    done({"run_id": run_id, "status": "failed", "error": error})


def main(argv: list[str] | None = None) -> None:
    """``python -m bidopt.jobs.optimize``: the Ray Jobs entrypoint (same options as ``bidopt optimizer run``)."""
    from bidopt.cli.main import cli

    cli.main(args=["optimizer", "run", *(argv if argv is not None else sys.argv[1:])],
             prog_name="python -m bidopt.jobs.optimize")


if __name__ == "__main__":
    main()

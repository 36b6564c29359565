"""The optimizer job: claim pending runs, optimise each as a Ray task, record the results.

Entry points: ``bidopt optimizer run`` (``python -m bidopt optimizer run`` under
``ray job submit``) and the plain script ``python -m bidopt.jobs.optimize [--once]``. The driver claims runs oldest
first (``claim_next_pending_run``: atomic, so two optimizers never take the
same run), starts one named Ray task per run (``optimize <entity> <run_id>``
in the dashboard), heartbeats the runs it holds while they work, and with
``--once`` exits when the queue is empty. Runs of different entities (and of
the same entity) train in parallel up to ``--parallel``. Progress and trouble go to
the ``bidopt.optimizer`` logger (INFO, WARNING and above); entry points print them
with ``bidopt.logs.configure_logging``, and each Ray task configures it for itself.

A claim is a lease: the worker id and the attempt number (``opt_runs.attempts``
after the claim). Every write for the run -- heartbeat, completion, failure --
names both, so once a run was requeued (and maybe re-claimed, even by this same
driver) the old attempt can change nothing. Each attempt writes its artifacts to
its own folder, ``runs/<run_id>/attempt-<n>/`` (manifest last), and the completing
attempt records that folder on the run; a worker only ever removes files it wrote
itself, so a late worker never touches a completed run's artifacts.

A task reads the run's inputs, runs ``bidopt.optimizer.pipeline.optimize``
against the warehouse, writes its artifacts and then, in one transaction, the
features, metrics and ``completed`` status. It re-reads its lease after loading,
before writing artifacts and right before the manifest, and stops ("abandoned",
nothing recorded, its own files removed) once the run is no longer its own.
An exception of the run's own marks it ``failed`` with the error (after
removing the attempt's files), and the job goes on.

The driver's heartbeat thread learns when a lease is lost (``heartbeat_run``
returns False): in ``--no-ray`` mode it tells the in-process run to stop at its
next step; under Ray the driver cancels that task and records nothing for it.
Under Ray, a task whose worker dies (SIGKILL, OOM, node lost) or that runs past
``BIDOPT_RUN_TIMEOUT_SECONDS`` (counted from when the driver starts it; the
driver then force-cancels it) has its attempt released like a crashed driver's:
back to pending while ``attempts < BIDOPT_MAX_ATTEMPTS``, else failed with
"gave up after N attempts: <reason>". The time limit is enforced only under
Ray: in ``--no-ray`` mode nothing can interrupt a hung step in-process, so a
hung run holds its lease until its process is stopped, and is then requeued
once its heartbeat is ``BIDOPT_STALE_AFTER_SECONDS`` old.

The driver records what it learns in ``bidopt.jobs.optimizer_metrics`` (runs claimed, completed,
failed by error class and requeued; per finished attempt the seconds of each stage, timed by the
pipeline's ``StageClock`` in the task and returned with its result, and the rows aggregated):
exported to Ray's metrics agent under Ray, nothing outside it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
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
from sqlalchemy.exc import DBAPIError

from bidopt.artifacts import attempt_output_url, remove_run_artifacts, run_output_url, write_run_artifacts
from bidopt.db import queries as q
from bidopt.db.engine import get_engine, session_scope
from bidopt.errors import Conflict, DatabaseUnavailable
from bidopt.jobs.optimizer_metrics import TASK_DIED, TIMED_OUT, OptimizerMetrics, error_class
from bidopt.logs import configure_logging
from bidopt.optimizer.pipeline import RunResult, RunSpec, StageClock, optimize
from bidopt.optimizer.replay import WIN_ENCODER, win_encoder_json
from bidopt.settings import get_settings
from bidopt.warehouse import open_warehouse

log = logging.getLogger("bidopt.optimizer")


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else text


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
        run_id=run.run_id,
        entity_code=entity.entity_code,
        anchor_feature=version.anchor_feature,
        macro_ids={m.feature_name: m.macro_id for m in macros},
        request_fields={m.feature_name: m.request_field for m in macros},
        static=q.get_entity_configs(session, entity.entity_id),
        configs=q.get_run_configs(session, run.run_id),
        thresholds={
            "min_win_auc": version.min_win_auc,
            "max_win_ece": version.max_win_ece,
            "min_bid_coverage": version.min_bid_coverage,
        },
    )
    return spec, run_output_url(get_settings().artifact_url, entity.base_path, run.run_id)


def _csv(df: pd.DataFrame) -> bytes:
    buf = io.StringIO()
    df.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue().encode()


def feature_records(spec: RunSpec, result: RunResult) -> list[q.FeatureRecord]:
    """The run's features in key order with their macros and the request fields the run was trained
    with, for opt_run_features and features.json."""
    return [
        q.FeatureRecord(
            c.name, i + 1, c.is_anchor, c.signal_score, spec.macro_ids.get(c.name), spec.request_fields.get(c.name)
        )
        for i, c in enumerate(result.features)
    ]


def artifact_files(spec: RunSpec, result: RunResult) -> dict[str, bytes]:
    multipliers = (
        result.multipliers if result.multipliers is not None else pd.DataFrame(columns=["domain", "multiplier"])
    )
    features = [dataclasses.asdict(f) for f in feature_records(spec, result)]
    files = {
        "suggested_bids.csv": _csv(result.bids),
        "domain_multipliers.csv": _csv(multipliers),
        "win_model.ubj": result.win_model,
        "metrics.json": json.dumps(result.metrics, indent=2, sort_keys=True, default=float).encode(),
        "win_curves.json": json.dumps(result.curves).encode(),
        "features.json": json.dumps(
            {"features": features, "candidates_scored": result.feature_scores, "validation": result.validation_reasons},
            indent=2,
        ).encode(),
    }
    if result.ctr_model is not None:
        files["ctr_model.ubj"] = result.ctr_model
    if result.model is not None:  # the win model's category codes: replaying it needs them (bidopt.optimizer.replay)
        files[WIN_ENCODER] = win_encoder_json(result.model)
    return files


@dataclass(frozen=True)
class Lease:
    """A claim on a run: the worker and the attempt number it was claimed as."""

    run_id: str
    worker_id: str
    attempt: int
    entity_code: str


class LeaseLost(Exception):
    """This attempt no longer holds its run (it was requeued, and maybe re-claimed): stop, record nothing."""


def process_run(
    run_id: str,
    worker_id: str,
    attempt: int,
    progress: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> dict:
    """Optimise one run claimed as attempt ``attempt`` by ``worker_id`` end to end; never raises
    for a run's own failure.

    Returns a dict whose ``status`` is ``completed``, ``failed`` (recorded on the run, with its
    ``error_class``) or ``abandoned`` (the lease was lost; nothing recorded). Completed and failed
    results carry ``stage_seconds`` (the stages entered, ``StageClock``); completed ones also the
    ``entity_code`` and ``rows_aggregated`` (the bid-log rows of the run's window). ``stop`` --
    set by the driver's heartbeat thread when the lease is lost -- is checked at every progress
    step; the lease itself is read from the database after loading, before writing artifacts and
    right before the manifest. The run time limit is not enforced here (see the module docstring).
    """
    say = progress or (lambda text: log.info("%s: %s", run_id, text))
    engine, completing = None, False
    output_url, written = None, []
    began = time.time()
    clock = StageClock()

    def lost(when: str) -> LeaseLost:
        return LeaseLost(f"run {run_id} is no longer held by attempt {attempt} of {worker_id} ({when})")

    def step(text: str) -> None:
        if stop is not None and stop.is_set():
            raise lost(f"its heartbeat was refused; stopped before {text!r}")
        say(text)

    def check_lease(when: str) -> None:
        if stop is not None and stop.is_set():
            raise lost(f"its heartbeat was refused; stopped {when}")
        with session_scope(engine) as s:
            if not q.holds_run_lease(s, run_id, worker_id, attempt):
                raise lost(when)

    try:
        settings = get_settings()
        engine = get_engine(settings.database_url)
        check_lease("before starting")
        with clock("read"), session_scope(engine) as s:
            spec, run_url = load_run_spec(s, run_id)
        output_url = attempt_output_url(run_url, attempt)
        step(f"optimising {spec.entity_code}")
        with open_warehouse(settings.warehouse_url) as wh:
            result = optimize(wh, spec, progress=step, clock=clock)
        with clock("artifacts"):
            files = artifact_files(spec, result)
        check_lease("before writing artifacts")
        step(f"writing artifacts to {output_url}")
        written = list(files)  # before the first byte: a write that fails half-way is cleaned up too
        with clock("artifacts"):
            write_run_artifacts(
                output_url,
                files,
                before_manifest=lambda: check_lease("before the manifest"),
                meta={
                    "run_id": run_id,
                    "attempt": attempt,
                    "entity_code": spec.entity_code,
                    "features": [c.name for c in result.features],
                    "window": [result.window.start.isoformat(), result.window.end.isoformat()],
                    "holdout_from": _iso_or_none(result.holdout_from),
                    "validation_status": result.validation_status,
                },
            )
        seg = result.segment_bids
        stats = q.RunStats(
            segments_count=int(len(seg)),
            bid_median=float(seg.median()),
            bid_min=float(seg.min()),
            bid_max=float(seg.max()),
            s3_output_path=output_url,
            validation_status=result.validation_status,
            validation_details=result.validation_reasons,
        )
        completing = True  # from here a lost connection may hide a commit that went through
        try:
            with session_scope(engine) as s:
                q.record_run_features(s, run_id, feature_records(spec, result))
                q.record_run_metrics(s, run_id, result.metrics)
                q.mark_run_completed(s, run_id, stats, worker_id=worker_id, attempt=attempt)
        except Conflict as exc:  # lost between the manifest check and here; the transaction rolled back
            raise lost(f"completion refused: {exc}") from None
    except LeaseLost as exc:
        say(f"abandoned: {exc}")
        _remove_own_artifacts(engine, run_id, output_url, written)
        return {"run_id": run_id, "attempt": attempt, "status": "abandoned", "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - every failure of a run is recorded on the run
        error = f"{type(exc).__name__}: {exc}"
        say(f"failed: {error}")
        if not (completing and isinstance(exc, DatabaseUnavailable)):
            # A connection lost during the completion's own transaction (at COMMIT, say) does not
            # tell whether the commit went through, and the run may become visible as completed
            # from this folder only later: then its files stay. Unreferenced leftovers are never read.
            _remove_own_artifacts(engine, run_id, output_url, written)
        if not mark_failed(run_id, error, worker_id, attempt, detail=traceback.format_exc()):
            error = f"{error} (not recorded: the run is no longer held by attempt {attempt} of {worker_id})"
            return {"run_id": run_id, "attempt": attempt, "status": "abandoned", "error": error}
        return {
            "run_id": run_id,
            "attempt": attempt,
            "status": "failed",
            "error": error,
            "error_class": error_class(exc),
            "stage_seconds": dict(clock.seconds),
        }
    # Outside the try: once the completion is committed, nothing may remove these files.
    say(
        f"completed: {stats.segments_count} segments, median bid {stats.bid_median:.2f}, "
        f"validation {stats.validation_status}"
    )
    return {
        "run_id": run_id,
        "attempt": attempt,
        "status": "completed",
        "validation_status": stats.validation_status,
        "segments_count": stats.segments_count,
        "bid_median": stats.bid_median,
        "pid": os.getpid(),
        "began": began,
        "ended": time.time(),
        "entity_code": spec.entity_code,
        # after the completion's commit: nothing here may raise (a raise would read as a dead task)
        "rows_aggregated": _rows_aggregated(result),
        "stage_seconds": dict(clock.seconds),
    }


def _process_run_task(run_id: str, worker_id: str, attempt: int) -> dict:
    """``process_run`` as a Ray task: a worker process has no logging of its own, and what it prints
    reaches the driver's console (``log_to_driver``), prefixed with the task's name."""
    configure_logging()
    return process_run(run_id, worker_id, attempt)


def _remove_own_artifacts(engine, run_id: str, output_url: str | None, names: list[str]) -> None:
    """Remove the files this attempt wrote to its own folder, manifest first -- unless the run is
    recorded as completed from that very folder (the completion committed but its answer was lost)
    or the database cannot say: then the files stay."""
    if output_url is None or not names:
        return
    try:
        with session_scope(engine) as s:
            run = q.get_run(s, run_id)
            if run.status == "completed" and run.s3_output_path == output_url:
                return
        remove_run_artifacts(output_url, names)
    except Exception as exc:  # noqa: BLE001 - leftovers without a recorded run are never read
        log.warning(_first_line(f"run {run_id}: left {output_url} in place: {exc}"))


def mark_failed(run_id: str, error: str, worker_id: str, attempt: int, *, detail: str = "") -> bool:
    """Record this attempt's failure on the run if the run is still its own; whether it was."""
    if detail:
        log.error(detail.rstrip("\n"))
    engine = get_engine(get_settings().database_url)
    try:
        with session_scope(engine) as s:
            q.mark_run_failed(s, run_id, error, worker_id=worker_id, attempt=attempt)
        return True
    except Conflict:
        return False  # the run already ended or was requeued by another worker: leave it as it is
    except Exception as exc:  # noqa: BLE001 - away, deadlocked, read-only in a failover: the lease goes stale
        log.warning(_first_line(f"run {run_id}: could not record its failure: {exc}"))
        return False


@dataclass
class JobReport:
    """One entry per attempt this driver finished: ``status`` completed, failed, requeued
    (its task died or timed out; the run went back to pending) or abandoned (lease lost)."""

    processed: list[dict]

    @property
    def failed(self) -> int:
        return sum(1 for r in self.processed if r["status"] == "failed")


def _iso_or_none(value) -> str | None:
    return value.isoformat() if hasattr(value, "isoformat") else None


def _rows_aggregated(result: RunResult) -> int | None:
    """The bid-log rows of the run's window, for the metrics; None if the result does not say."""
    try:
        return int(result.metrics["global_stats"]["bids"])
    except (KeyError, TypeError, ValueError, OverflowError):
        return None


def _claim(worker_id: str, metrics: OptimizerMetrics | None = None) -> Lease | None:
    """Requeue runs whose worker died (no heartbeat for ``stale_after_seconds``), then claim the oldest.

    A database that is away is retried every few seconds for up to ``stale_after_seconds`` (a
    failover must not end the driver and cost every run it holds an attempt); then it raises."""
    started = time.monotonic()
    while True:
        try:
            return _requeue_and_claim(worker_id, metrics)
        except (DatabaseUnavailable, DBAPIError) as exc:  # away, or a deadlock / read-only failover
            waited = time.monotonic() - started
            if waited > get_settings().stale_after_seconds:
                raise
            log.warning(_first_line(f"claiming failed ({exc}); retrying"))
            time.sleep(min(5.0, get_settings().heartbeat_seconds))


def _requeue_and_claim(worker_id: str, metrics: OptimizerMetrics | None = None) -> Lease | None:
    metrics = metrics if metrics is not None else OptimizerMetrics()
    settings = get_settings()
    engine = get_engine(settings.database_url)
    with session_scope(engine) as s:
        changed = q.requeue_stale_runs(
            s, heartbeat_timeout=timedelta(seconds=settings.stale_after_seconds), max_attempts=settings.max_attempts
        )
    for run_id, status in changed:  # counted once committed
        log.info("run %s: its worker stopped heartbeating; now %s", run_id, status)
        metrics.requeued_stale(status)
    with session_scope(engine) as s:
        run = q.claim_next_pending_run(s, worker_id)
        lease = Lease(run.run_id, worker_id, run.attempts, run.entity.entity_code) if run else None
    if lease is not None:
        metrics.run_event("claimed")
    return lease


def _heartbeat(leases: list[Lease]) -> list[Lease]:
    """Heartbeat ``leases``; returns those the database refused (no longer held)."""
    engine = get_engine(get_settings().database_url)
    with session_scope(engine) as s:
        return [
            lease for lease in leases if not q.heartbeat_run(s, lease.run_id, lease.worker_id, attempt=lease.attempt)
        ]


class Heartbeat:
    """Heartbeats the leases this driver holds from a thread, whatever the main loop is doing
    (an in-process run can take longer than the stale timeout). When the database refuses a
    beat, the lease's event (from ``hold``) is set: its holder must stop and record nothing."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self._held: dict[Lease, threading.Event] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def hold(self, lease: Lease) -> threading.Event:
        """Start heartbeating ``lease``; the returned event is set once the lease is lost."""
        lost = threading.Event()
        with self._lock:
            self._held[lease] = lost
        return lost

    def drop(self, lease: Lease) -> None:
        with self._lock:
            self._held.pop(lease, None)

    def _loop(self) -> None:
        while not self._stop.wait(get_settings().heartbeat_seconds):
            with self._lock:
                held = dict(self._held)
            if not held:
                continue
            try:
                refused = _heartbeat(sorted(held, key=lambda lease: (lease.run_id, lease.attempt)))
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; stale_after allows 3+
                log.warning(_first_line(f"heartbeat failed: {exc}"))
                continue
            for lease in refused:
                # also the benign race of a task that completed its run just before this beat, before
                # the main loop collected its answer (which then counts: finish or _outcome_from_db)
                log.warning(
                    "run %s: attempt %s is no longer this worker's (completed just now, or taken over); "
                    "stopping it if it still runs",
                    lease.run_id,
                    lease.attempt,
                )
                held[lease].set()


def _release(lease: Lease, reason: str, cause: str) -> dict:
    """Release a lease whose task died or timed out: requeue or fail the run (``release_run_lease``).
    ``cause``: the ``error_class`` of a run that fails so (``TASK_DIED`` or ``TIMED_OUT``)."""
    settings = get_settings()
    try:
        with session_scope(get_engine(settings.database_url)) as s:
            status = q.release_run_lease(
                s,
                lease.run_id,
                worker_id=lease.worker_id,
                attempt=lease.attempt,
                reason=reason,
                max_attempts=settings.max_attempts,
            )
    except Exception as exc:  # noqa: BLE001 - no longer heartbeated: the stale check requeues it later
        return {
            "run_id": lease.run_id,
            "attempt": lease.attempt,
            "status": "abandoned",
            "error": f"{reason}; could not record it ({exc}); requeued once its heartbeat is stale".splitlines()[0],
        }
    if status == "pending":
        return {"run_id": lease.run_id, "attempt": lease.attempt, "status": "requeued", "error": reason}
    if status == "failed":
        return {
            "run_id": lease.run_id,
            "attempt": lease.attempt,
            "status": "failed",
            "error": f"gave up after {lease.attempt} attempts: {reason}",
            "error_class": cause,
        }
    return _outcome_from_db(lease, reason)


def _outcome_from_db(lease: Lease, note: str) -> dict:
    """What became of a lease whose task was cancelled or released just as it may have finished."""
    try:
        with session_scope(get_engine(get_settings().database_url)) as s:
            run = q.get_run(s, lease.run_id)
            if run.status == "completed" and run.worker_id == lease.worker_id and run.attempts == lease.attempt:
                return {
                    "run_id": run.run_id,
                    "attempt": lease.attempt,
                    "status": "completed",
                    "validation_status": run.validation_status,
                    "segments_count": run.segments_count,
                    "bid_median": run.bid_median,
                }
            return {
                "run_id": run.run_id,
                "attempt": lease.attempt,
                "status": "abandoned",
                "error": f"{note}; the run is now {run.status} (attempt {run.attempts})",
            }
    except Exception as exc:  # noqa: BLE001 - the database is away or failing: the lease goes stale, then requeued
        return {
            "run_id": lease.run_id,
            "attempt": lease.attempt,
            "status": "abandoned",
            "error": f"{note}; its outcome could not be read: {exc}".splitlines()[0],
        }


@dataclass
class _Flight:
    lease: Lease
    lost: threading.Event
    deadline: float  # time.monotonic() after which the task is cancelled


def run_optimizer(
    *,
    once: bool,
    poll_seconds: float = 10.0,
    parallel: int = 2,
    use_ray: bool = True,
    on_result: Callable[[dict], None] | None = None,
    max_runs: int | None = None,
    metrics: OptimizerMetrics | None = None,
) -> JobReport:
    """Drain (``once``) or keep polling the pending queue. Returns what was processed (one entry
    per attempt; a requeued run may appear again). Invalid settings raise ``InvalidSettings``
    before anything is claimed. ``metrics``: the recorder (default: Ray's metrics under Ray, else none)."""
    settings = get_settings()
    worker_id = new_worker_id()
    report = JobReport([])
    metrics = metrics if metrics is not None else OptimizerMetrics()

    def done(result: dict) -> None:
        report.processed.append(result)
        try:
            metrics.finished(result)
        except Exception:  # noqa: BLE001 - counting must never change what became of a run
            log.exception("optimizer: recording the metrics of run %s failed", result.get("run_id"))
        if on_result:
            on_result(result)

    def budget_left() -> bool:
        return max_runs is None or len(report.processed) + len(in_flight) < max_runs

    in_flight: dict = {}
    if not use_ray:
        with Heartbeat(worker_id) as beat:
            while budget_left():
                lease = _claim(worker_id, metrics)
                if lease is None:
                    if once:
                        break
                    time.sleep(poll_seconds)
                    continue
                lost = beat.hold(lease)
                try:
                    done(process_run(lease.run_id, worker_id, lease.attempt, stop=lost))
                finally:
                    beat.drop(lease)
        return report

    import ray

    from bidopt.jobs.ray_runtime import ensure_ray, optimizer_task_options

    ensure_ray()
    # max_retries=0: Ray must never run an attempt twice; a dead task's run is requeued as a new attempt.
    task = ray.remote(max_retries=0)(_process_run_task)
    limit = settings.run_timeout_seconds

    def finish(ref) -> None:
        flight = in_flight.pop(ref)
        beat.drop(flight.lease)
        try:
            done(ray.get(ref))
        except Exception as exc:  # noqa: BLE001 - the task's worker died (killed, OOM, node lost)
            done(_release(flight.lease, f"optimizer task died: {type(exc).__name__}: {exc}".splitlines()[0], TASK_DIED))

    def cancel(ref) -> _Flight:
        ray.cancel(ref, force=True)  # force: a hung or lease-less task gets no say
        flight = in_flight.pop(ref)
        beat.drop(flight.lease)
        return flight

    with Heartbeat(worker_id) as beat:
        while True:
            while len(in_flight) < parallel and budget_left():
                lease = _claim(worker_id, metrics)
                if lease is None:
                    break
                # Asked per task: optimizer nodes may have joined or left the cluster since the last one.
                ref = task.options(
                    **optimizer_task_options(), name=f"optimize {lease.entity_code} {lease.run_id}"
                ).remote(lease.run_id, worker_id, lease.attempt)
                in_flight[ref] = _Flight(lease, beat.hold(lease), time.monotonic() + limit)
            if not in_flight:
                if once or not budget_left():
                    return report
                time.sleep(poll_seconds)
                continue
            next_deadline = min(f.deadline for f in in_flight.values())
            wait = max(0.0, min(settings.heartbeat_seconds, next_deadline - time.monotonic()))
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=wait)
            for ref in ready:
                finish(ref)
            for ref, flight in list(in_flight.items()):
                if not (flight.lost.is_set() or time.monotonic() >= flight.deadline):
                    continue
                if ray.wait([ref], timeout=0)[0]:
                    finish(ref)  # it finished meanwhile: its own answer counts
                elif flight.lost.is_set():
                    cancel(ref)
                    done(
                        _outcome_from_db(
                            flight.lease,
                            "the heartbeat found the run no longer held by this attempt; its task was cancelled",
                        )
                    )
                else:
                    cancel(ref)
                    done(_release(flight.lease, f"exceeded run time limit of {limit:g} s", TIMED_OUT))


def describe_result(result: dict) -> str:
    """The line ``bidopt optimizer run`` prints for a finished run (``on_result``)."""
    if result["status"] == "completed":
        return (
            f"run {result['run_id']} completed: {result['segments_count']} segments, "
            f"median bid {result['bid_median']:.2f}, validation {result['validation_status']}"
        )
    # failed, requeued (its task died or timed out) or abandoned (its lease was lost)
    return f"run {result['run_id']} {result['status']}: {result['error']}"


def main(argv: list[str] | None = None) -> None:
    """``python -m bidopt.jobs.optimize``: the job as a plain script, with the options of
    ``bidopt optimizer run`` (which ``bidopt optimizer submit`` runs as ``python -m bidopt optimizer run``).
    The library never imports the CLI, so this parses its own options."""
    import argparse

    from bidopt.errors import BidoptError

    parser = argparse.ArgumentParser(
        prog="python -m bidopt.jobs.optimize",
        description="Claim pending runs oldest first and optimise them, one Ray task per run. "
        "Exits non-zero with --once when any run failed.",
    )
    parser.add_argument("--once", action="store_true", help="Drain the pending queue and exit (default: keep polling).")
    parser.add_argument(
        "--poll-seconds", type=float, default=10.0, help="Wait between polls of an empty queue (default: 10)."
    )
    parser.add_argument(
        "--parallel", type=int, default=2, help="Runs optimised at the same time (Ray tasks; default: 2)."
    )
    parser.add_argument("--max-runs", type=int, default=None, help="Stop after this many runs.")
    parser.add_argument("--no-ray", action="store_true", help="Run in this process, one run at a time, without Ray.")
    args = parser.parse_args(argv)
    configure_logging()  # progress lines on the console, as `bidopt optimizer run` shows them
    try:
        report = run_optimizer(
            once=args.once,
            poll_seconds=args.poll_seconds,
            parallel=max(args.parallel, 1),
            use_ray=not args.no_ray,
            max_runs=args.max_runs,
            on_result=lambda result: print(describe_result(result), flush=True),
        )
    except BidoptError as exc:  # one line and exit 1, as the CLI does
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    if not report.processed:
        print("no pending runs", flush=True)
    if args.once and report.failed:
        sys.exit(1)


if __name__ == "__main__":
    main()

"""Optimizer tasks that die, hang or lose their run on a local Ray.

A task whose worker dies is requeued like a crashed driver's run; a task past the run time
limit is cancelled and its attempt failed with the reason; a task whose lease the driver's
heartbeat finds lost is cancelled and nothing is recorded for it."""

import os
import signal
import threading
import time
from datetime import timedelta

import pytest
from long_runs import shorten_run

from bidopt.artifacts import MANIFEST, attempt_output_url, open_artifact_store, run_output_url
from bidopt.db import queries as q
from bidopt.db.engine import session_scope
from bidopt.db.models import utcnow
from bidopt.jobs.optimize import run_optimizer
from bidopt.settings import get_settings, reset_settings_cache

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]

# Many boosting rounds on the platform's 80k rows: a run that is still working while the test
# reaches for its task (seconds, against the 2 s time limit and a poll of 0.2 s).
LONG = {"xgb_num_rounds": 5000}


@pytest.fixture
def local_ray(platform, monkeypatch):
    """A private Ray started after ``platform`` set BIDOPT_* (its workers inherit them); with the
    dashboard, which the state API (task states, worker PIDs) goes through."""
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # a private, loopback-only test cluster
    ray.init(address="local", num_cpus=2, include_dashboard=True, configure_logging=False)
    yield ray
    ray.shutdown()


def _create(engine, **configs):
    with session_scope(engine) as s:
        return q.create_run(s, "drugs_hcp", configs, triggered_by="t").run_id


def _run(engine, run_id):
    with session_scope(engine) as s:
        run = q.get_run(s, run_id)
        run.entity  # loaded here, for use after the session
        return run


def _wait_for(predicate, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


def _running_task_pid(run_id: str) -> int | None:
    """The PID of the worker process running the optimizer task of ``run_id``, once it runs."""
    import ray
    from ray.util.state import list_tasks

    # Our own cluster's address: other Ray clusters may run on this machine.
    tasks = list_tasks(
        address=ray.get_runtime_context().gcs_address,
        filters=[("name", "=", f"optimize drugs_hcp {run_id}")],
        detail=True,
        limit=100,
    )
    for task in tasks:
        if task.state == "RUNNING" and task.worker_pid:
            return task.worker_pid
    return None


def _training(run_id: str, pid: int) -> bool:
    """Whether the task in worker ``pid`` has printed that it is training ``run_id``'s win model (its
    progress lines go to the worker's stdout, a file of the session's logs): it is then past its
    first lease check and has read its run's configs (which ``shorten_run`` relies on). A task Ray
    shows as RUNNING may still be importing, before either."""
    import glob

    import ray

    node = ray._private.worker.global_worker.node
    assert node.should_redirect_logs(), "worker output is not written to log files (RAY_LOG_TO_STDERR?)"
    for path in glob.glob(os.path.join(node.get_logs_dir_path(), f"worker-*-{pid}.*")):
        with open(path, errors="replace") as f:
            if f"{run_id}: training the win-rate model" in f.read():
                return True
    return False


def _training_task_pid(run_id: str) -> int:
    """The PID of the worker of ``run_id``'s optimizer task, once that task is training."""
    pid = _wait_for(lambda: _running_task_pid(run_id))
    _wait_for(lambda: _training(run_id, pid))
    return pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a killed child the raylet has not reaped yet is a zombie
        return f.read().split(") ")[-1][0] != "Z"


def _in_background(**kwargs):
    results = []
    thread = threading.Thread(target=lambda: results.append(run_optimizer(once=True, parallel=1, **kwargs)))
    thread.start()
    return thread, results


def test_a_task_whose_worker_is_killed_is_requeued_and_completed_on_attempt_2(platform, local_ray):
    run_id = _create(platform, **LONG)
    thread, results = _in_background()
    pid = _training_task_pid(run_id)
    shorten_run(platform, run_id)  # attempt 1 is training its 5000 rounds; attempt 2 need not
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=900)
    (report,) = results
    assert [(r["status"], r["attempt"]) for r in report.processed] == [("requeued", 1), ("completed", 2)]
    assert report.processed[0]["error"].startswith("optimizer task died: ")
    run = _run(platform, run_id)
    assert (run.status, run.attempts) == ("completed", 2)
    assert run.s3_output_path.endswith(f"/runs/{run_id}/attempt-2")


def test_a_task_past_the_run_time_limit_is_cancelled_and_its_run_shows_why(platform, local_ray, monkeypatch):
    monkeypatch.setenv("BIDOPT_RUN_TIMEOUT_SECONDS", "2")
    monkeypatch.setenv("BIDOPT_MAX_ATTEMPTS", "1")  # read by the driver, which releases the attempt
    reset_settings_cache()
    run_id = _create(platform, **LONG)
    pids = []
    thread, results = _in_background()
    pids.append(_wait_for(lambda: _running_task_pid(run_id)))
    thread.join(timeout=600)
    (report,) = results
    reason = "gave up after 1 attempts: exceeded run time limit of 2 s"
    assert [(r["status"], r["error"]) for r in report.processed] == [("failed", reason)]
    run = _run(platform, run_id)
    assert (run.status, run.error_message) == ("failed", reason)
    _wait_for(lambda: not _alive(pids[0]), timeout=60)  # cancelled with force: its worker is gone


def test_the_driver_cancels_a_task_whose_run_it_lost_and_records_nothing(platform, local_ray, monkeypatch):
    monkeypatch.setenv("BIDOPT_HEARTBEAT_SECONDS", "0.2")
    reset_settings_cache()
    run_id = _create(platform, **LONG)
    thread, results = _in_background()
    pid = _training_task_pid(run_id)  # past the task's own first lease check: the driver must notice
    with session_scope(platform) as s:  # the driver was out of touch past the limit; B took the run
        assert q.requeue_stale_runs(
            s, heartbeat_timeout=timedelta(seconds=1), max_attempts=3, now=utcnow() + timedelta(hours=1)
        ) == [(run_id, "pending")]
    with session_scope(platform) as s:
        assert q.claim_next_pending_run(s, "host-b:2:bbbbbb").attempts == 2
    thread.join(timeout=600)
    (report,) = results
    assert [(r["status"], r["attempt"]) for r in report.processed] == [("abandoned", 1)]
    assert "its task was cancelled" in report.processed[0]["error"]
    _wait_for(lambda: not _alive(pid), timeout=60)
    run = _run(platform, run_id)
    assert (run.status, run.worker_id, run.attempts, run.error_message) == ("running", "host-b:2:bbbbbb", 2, None)
    run_url = run_output_url(get_settings().artifact_url, run.entity.base_path, run_id)
    assert not open_artifact_store(attempt_output_url(run_url, 1)).exists(MANIFEST)

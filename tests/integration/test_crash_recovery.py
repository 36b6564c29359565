"""Optimizer crash recovery: heartbeats, stale runs requeued, killed runs never complete half-way."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from long_runs import shorten_run

from bidopt.artifacts import MANIFEST, attempt_output_url, open_artifact_store, run_output_url
from bidopt.db import queries as q
from bidopt.db.engine import session_scope
from bidopt.jobs.optimize import run_optimizer
from bidopt.settings import get_settings, reset_settings_cache

pytestmark = pytest.mark.slow


def _status(engine, run_id):
    with session_scope(engine) as s:
        run = q.get_run(s, run_id)
        return run.status, run.attempts, run.worker_id, run.entity.base_path


def _wait_for(predicate, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_a_killed_optimizer_leaves_no_manifest_and_its_run_is_finished_by_another(platform, monkeypatch):
    with session_scope(platform) as s:
        run_id = q.create_run(s, "drugs_hcp", {"xgb_num_rounds": 3000}, triggered_by="t").run_id
    proc = subprocess.Popen(
        [sys.executable, "-m", "bidopt.jobs.optimize", "--once", "--no-ray"],
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    first_line = proc.stdout.readline()  # "<run>: optimising drugs_hcp"
    assert run_id in first_line, first_line
    _wait_for(lambda: _status(platform, run_id)[0] == "running")
    time.sleep(1.5)  # mid-run: selecting features or training
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    status, attempts, dead_worker, base_path = _status(platform, run_id)
    assert (status, attempts) == ("running", 1)  # nobody told the database
    run_url = run_output_url(get_settings().artifact_url, base_path, run_id)
    assert not open_artifact_store(attempt_output_url(run_url, 1)).exists(MANIFEST)

    shorten_run(platform, run_id)  # the attempt that finishes the run need not train 3000 rounds
    monkeypatch.setenv("BIDOPT_STALE_AFTER_SECONDS", "1")
    monkeypatch.setenv("BIDOPT_HEARTBEAT_SECONDS", "0.2")  # stale_after must cover 3 heartbeats
    reset_settings_cache()
    time.sleep(1.2)
    report = run_optimizer(once=True, use_ray=False)
    assert [(r["run_id"], r["status"]) for r in report.processed] == [(run_id, "completed")]
    status, attempts, worker, _ = _status(platform, run_id)
    assert (status, attempts) == ("completed", 2) and worker != dead_worker
    assert open_artifact_store(attempt_output_url(run_url, 2)).exists(MANIFEST)
    assert not open_artifact_store(attempt_output_url(run_url, 1)).exists(MANIFEST)
    with session_scope(platform) as s:
        assert q.get_run(s, run_id).s3_output_path == attempt_output_url(run_url, 2)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_heartbeats_keep_a_long_run_from_being_taken_over(platform, monkeypatch):
    monkeypatch.setenv("BIDOPT_STALE_AFTER_SECONDS", "1.5")
    monkeypatch.setenv("BIDOPT_HEARTBEAT_SECONDS", "0.2")
    reset_settings_cache()
    with session_scope(platform) as s:
        # ~10 s of training on 2 cores: still running after the 3 s below, or the assert says so
        run_id = q.create_run(s, "drugs_hcp", {"xgb_num_rounds": 2500}, triggered_by="t").run_id
    results = {}
    first = threading.Thread(target=lambda: results.setdefault("a", run_optimizer(once=True, use_ray=False)))
    first.start()
    _wait_for(lambda: _status(platform, run_id)[0] == "running")
    time.sleep(3)  # twice the stale timeout: only heartbeats keep the run its own
    assert _status(platform, run_id)[0] == "running"
    assert run_optimizer(once=True, use_ray=False).processed == []  # a second optimizer finds nothing stale
    first.join()
    assert results["a"].processed[0]["status"] == "completed"
    assert _status(platform, run_id)[:2] == ("completed", 1)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_four_optimizer_processes_process_fifty_runs_exactly_once(platform):
    quick = {"xgb_num_rounds": 10, "max_features": 1, "min_domain_bids": 100_000}
    with session_scope(platform) as s:
        ids = {
            q.create_run(s, "drugs_hcp" if i % 2 else "auto_intenders", quick, triggered_by="t").run_id
            for i in range(50)
        }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bidopt.jobs.optimize", "--once", "--no-ray"],
            env=os.environ.copy(),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    done = [
        line.split()[1]
        for out in outputs
        for line in out.splitlines()
        if line.startswith("run ") and " completed: " in line
    ]
    assert sorted(done) == sorted(ids)  # each run reported by exactly one process
    assert sum(1 for out in outputs if any(line.startswith("run ") for line in out.splitlines())) >= 2
    with session_scope(platform) as s:
        runs = [q.get_run(s, run_id) for run_id in ids]
        assert {(r.status, r.attempts) for r in runs} == {("completed", 1)}
        assert len({r.worker_id for r in runs}) >= 2

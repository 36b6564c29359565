"""A claim is a lease (worker, attempt): a worker that lost its run never touches the winner's
artifacts, stops when its heartbeat is refused, and settings cannot make heartbeats outlive staleness.

No Ray here: the sequences are driven step by step in one process."""

import time
from datetime import timedelta

import pytest
from click.testing import CliRunner

from bidopt.artifacts import MANIFEST, attempt_output_url, open_artifact_store, read_run_artifacts, run_output_url
from bidopt.cli.main import cli
from bidopt.db import queries as q
from bidopt.db.engine import session_scope
from bidopt.db.models import utcnow
from bidopt.errors import Conflict
from bidopt.jobs import optimize as job
from bidopt.settings import InvalidSettings, Settings, get_settings, reset_settings_cache

FAST = {"xgb_num_rounds": "40", "min_segment_bids": "100", "min_domain_bids": "300"}
WORKER_A, WORKER_B = "host-a:111:aaaaaa", "host-b:222:bbbbbb"
STATS = q.RunStats(10, 2.0, 1.0, 3.0, "file:///x", "passed", [])


def _create(engine, **configs):
    with session_scope(engine) as s:
        return q.create_run(s, "drugs_hcp", FAST | configs, triggered_by="test").run_id


def _claim(engine, worker_id):
    with session_scope(engine) as s:
        return q.claim_next_pending_run(s, worker_id).attempts


def _requeue_as_stale(engine):
    """What any optimizer does before claiming, once the holder's heartbeats are older than the limit."""
    with session_scope(engine) as s:
        return q.requeue_stale_runs(
            s,
            heartbeat_timeout=timedelta(seconds=get_settings().stale_after_seconds),
            max_attempts=3,
            now=utcnow() + timedelta(hours=1),
        )


def _run_folder(engine, run_id):
    with session_scope(engine) as s:
        return run_output_url(get_settings().artifact_url, q.get_run(s, run_id).entity.base_path, run_id)


# --------------------------------------------------------------------------- the lease in the database


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_heartbeats_are_aged_by_the_database_clock_not_the_hosts(engine, monkeypatch):
    """An optimizer host whose clock runs ten minutes ahead (skew between hosts) must not requeue
    a run whose worker (on a host with the right time) beat a moment ago: claim, beat and staleness
    all use PostgreSQL's clock."""
    from bidopt.db import engine as engine_module

    with session_scope(engine) as s:
        run_id = q.create_run(s, "drugs_hcp", {}, triggered_by="t").run_id
    assert _claim(engine, WORKER_A) == 1
    with session_scope(engine) as s:
        assert q.heartbeat_run(s, run_id, WORKER_A, attempt=1)
    skewed = lambda: utcnow() + timedelta(minutes=10)  # noqa: E731 - the other host's clock
    monkeypatch.setattr(engine_module, "utcnow", skewed)
    monkeypatch.setattr(q, "utcnow", skewed)
    with session_scope(engine) as s:
        assert q.requeue_stale_runs(s, heartbeat_timeout=timedelta(minutes=5), max_attempts=3) == []
    with session_scope(engine) as s:
        assert q.get_run(s, run_id).status == "running"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_old_attempt_of_the_same_worker_can_change_nothing(engine):
    """A driver whose run was requeued and that re-claimed it itself: attempt 1's writes are refused."""
    with session_scope(engine) as s:
        run_id = q.create_run(s, "drugs_hcp", {}, triggered_by="t").run_id
    assert _claim(engine, WORKER_A) == 1
    assert _requeue_as_stale(engine) == [(run_id, "pending")]
    assert _claim(engine, WORKER_A) == 2  # same worker id, new attempt
    with session_scope(engine) as s:
        assert not q.holds_run_lease(s, run_id, WORKER_A, 1)
        assert not q.heartbeat_run(s, run_id, WORKER_A, attempt=1)
        with pytest.raises(Conflict, match="attempt 1"):
            q.mark_run_completed(s, run_id, STATS, worker_id=WORKER_A, attempt=1)
        with pytest.raises(Conflict, match="attempt 1"):
            q.mark_run_failed(s, run_id, "late", worker_id=WORKER_A, attempt=1)
        assert q.release_run_lease(s, run_id, worker_id=WORKER_A, attempt=1, reason="late", max_attempts=3) is None
        assert q.holds_run_lease(s, run_id, WORKER_A, 2) and q.heartbeat_run(s, run_id, WORKER_A, attempt=2)
    with session_scope(engine) as s:
        q.mark_run_completed(s, run_id, STATS, worker_id=WORKER_A, attempt=2)
    with session_scope(engine) as s:
        assert q.get_run(s, run_id).status == "completed"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_releasing_a_lease_requeues_until_max_attempts_then_fails_with_the_reason(engine):
    with session_scope(engine) as s:
        run_id = q.create_run(s, "drugs_hcp", {}, triggered_by="t").run_id
    _claim(engine, WORKER_A)
    with session_scope(engine) as s:
        assert (
            q.release_run_lease(
                s, run_id, worker_id=WORKER_A, attempt=1, reason="optimizer task died: OOM", max_attempts=2
            )
            == "pending"
        )
    with session_scope(engine) as s:
        run = q.get_run(s, run_id)
        assert (run.status, run.worker_id) == ("pending", None)
        assert run.error_message == "requeued after attempt 1: optimizer task died: OOM"
    _claim(engine, WORKER_B)
    with session_scope(engine) as s:
        assert (
            q.release_run_lease(
                s, run_id, worker_id=WORKER_B, attempt=2, reason="exceeded run time limit of 5 s", max_attempts=2
            )
            == "failed"
        )
    with session_scope(engine) as s:
        run = q.get_run(s, run_id)
        assert run.status == "failed"
        assert run.error_message == "gave up after 2 attempts: exceeded run time limit of 5 s"


# --------------------------------------------------------------------------- item 1: the late worker


def _take_over_and_deploy(engine, run_id):
    """B's side of the sequence, while A is paused: A's heartbeats are stale, the run is requeued,
    B claims and completes it, an operator deploys it at 100%."""
    assert _requeue_as_stale(engine) == [(run_id, "pending")]
    attempt = _claim(engine, WORKER_B)
    assert attempt == 2
    assert job.process_run(run_id, WORKER_B, attempt, progress=lambda _: None)["status"] == "completed"
    with session_scope(engine) as s:
        q.replace_traffic_split(s, "drugs_hcp", {run_id: 100}, deployed_by="operator")


@pytest.mark.parametrize("paused_at", ["optimising", "writing artifacts", "completing"])
def test_a_late_worker_never_touches_the_completed_runs_artifacts(platform, monkeypatch, paused_at):
    """Worker A claims a run and pauses (at ``paused_at``) past the stale limit; B takes the run over,
    completes it and it is deployed; then A resumes and finishes its path. B's manifest stays intact,
    the deployed run loads, and A leaves no manifest of its own."""
    run_id = _create(platform)
    assert _claim(platform, WORKER_A) == 1
    paused = []

    def pause_once():
        if not paused:
            paused.append(True)
            _take_over_and_deploy(platform, run_id)

    def a_progress(text):
        if text.startswith(paused_at):
            pause_once()

    real_write = job.write_run_artifacts

    def write_then_maybe_pause(url, files, **kwargs):
        manifest = real_write(url, files, **kwargs)
        if paused_at == "completing":
            pause_once()  # the first write is A's: its files and manifest are written, its completion is next
        return manifest

    monkeypatch.setattr(job, "write_run_artifacts", write_then_maybe_pause)
    late = job.process_run(run_id, WORKER_A, 1, progress=a_progress)
    assert paused, "A never reached the point where it pauses"

    with session_scope(platform) as s:
        run = q.get_run(s, run_id)
        assert (run.status, run.worker_id, run.attempts) == ("completed", WORKER_B, 2)
        assert [d.run_id for d in q.get_current_traffic_split(s, "drugs_hcp")] == [run_id]
    names = ["suggested_bids.csv", "domain_multipliers.csv", "win_model.ubj", "features.json"]
    manifest, files = read_run_artifacts(run.s3_output_path, names)  # what a restarting bidder reads
    assert manifest["attempt"] == 2 and set(files) == set(names)
    run_url = _run_folder(platform, run_id)
    assert run.s3_output_path == attempt_output_url(run_url, 2)
    assert late["status"] == "abandoned" and "no longer held by attempt 1" in late["error"]
    mine = open_artifact_store(attempt_output_url(run_url, 1))
    assert not mine.exists(MANIFEST) and not mine.exists("suggested_bids.csv")  # A removed what it wrote


def test_a_heartbeat_refused_stops_the_in_process_run(platform, monkeypatch):
    """--no-ray: when the heartbeat thread finds the run taken over, the run stops at its next step
    (here: inside the optimisation) and records nothing."""
    monkeypatch.setenv("BIDOPT_HEARTBEAT_SECONDS", "0.1")
    reset_settings_cache()
    run_id = _create(platform)
    stopped_inside_optimize = []
    real_optimize = job.optimize

    def optimize_taken_over_midway(warehouse, spec, progress, clock=None):
        # First step: the run is taken over by B while A is still optimising it ...
        assert _requeue_as_stale(platform) == [(run_id, "pending")]
        assert _claim(platform, WORKER_B) == 2
        # ... and A goes on with its steps until its heartbeat thread tells it to stop.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                progress("still optimising")
            except job.LeaseLost:
                stopped_inside_optimize.append(True)
                raise
            time.sleep(0.05)
        return real_optimize(warehouse, spec, progress, clock)

    written = []
    real_write = job.write_run_artifacts
    monkeypatch.setattr(job, "optimize", optimize_taken_over_midway)
    monkeypatch.setattr(job, "write_run_artifacts", lambda *a, **k: written.append(a[0]) or real_write(*a, **k))
    report = job.run_optimizer(once=True, use_ray=False, max_runs=1)
    assert [r["status"] for r in report.processed] == ["abandoned"]
    assert "heartbeat was refused" in report.processed[0]["error"]
    assert stopped_inside_optimize and written == []
    with session_scope(platform) as s:
        run = q.get_run(s, run_id)
        assert (run.status, run.worker_id, run.attempts, run.error_message) == ("running", WORKER_B, 2, None)


# --------------------------------------------------------------------------- settings


def test_settings_refuse_a_stale_limit_shorter_than_three_heartbeats(monkeypatch):
    with pytest.raises(ValueError, match="at least 3 x BIDOPT_HEARTBEAT_SECONDS"):
        Settings(heartbeat_seconds=10, stale_after_seconds=29)
    assert Settings(heartbeat_seconds=10, stale_after_seconds=30).stale_after_seconds == 30
    assert Settings(heartbeat_seconds=0.2, stale_after_seconds=1.5).run_timeout_seconds == 7200  # the tests' values
    monkeypatch.setenv("BIDOPT_STALE_AFTER_SECONDS", "5")
    reset_settings_cache()
    with pytest.raises(InvalidSettings, match=r"^invalid settings: BIDOPT_STALE_AFTER_SECONDS \(5\) must be"):
        get_settings()
    monkeypatch.setenv("BIDOPT_STALE_AFTER_SECONDS", "30")
    monkeypatch.setenv("BIDOPT_RUN_TIMEOUT_SECONDS", "0")
    reset_settings_cache()
    with pytest.raises(InvalidSettings, match="BIDOPT_RUN_TIMEOUT_SECONDS: Input should be greater than 0"):
        get_settings()


@pytest.mark.parametrize("command", [["settings"], ["optimizer", "run", "--once", "--no-ray"]])
def test_the_cli_shows_invalid_settings_as_one_line(monkeypatch, command):
    monkeypatch.setenv("BIDOPT_HEARTBEAT_SECONDS", "60")
    monkeypatch.setenv("BIDOPT_STALE_AFTER_SECONDS", "120")
    reset_settings_cache()
    res = CliRunner().invoke(cli, command)
    assert res.exit_code == 1 and res.exception is not None and not isinstance(res.exception, InvalidSettings)
    assert res.output == (
        "Error: invalid settings: BIDOPT_STALE_AFTER_SECONDS (120) must be at least 3 x "
        "BIDOPT_HEARTBEAT_SECONDS (60), so that a live optimizer's runs are never requeued "
        "between two heartbeats\n"
    )


def test_an_error_after_the_lease_was_lost_is_reported_abandoned_and_recorded_nowhere(platform, monkeypatch):
    """A's own error comes after B took the run: A's failure must not be reported as the run's."""
    run_id = _create(platform)
    assert _claim(platform, WORKER_A) == 1

    def taken_over_then_broken(warehouse, spec, progress, clock=None):
        assert _requeue_as_stale(platform) == [(run_id, "pending")]
        assert _claim(platform, WORKER_B) == 2
        raise RuntimeError("warehouse went away")

    monkeypatch.setattr(job, "optimize", taken_over_then_broken)
    result = job.process_run(run_id, WORKER_A, 1, progress=lambda _: None)
    assert result["status"] == "abandoned" and "warehouse went away" in result["error"]
    with session_scope(platform) as s:
        run = q.get_run(s, run_id)
        assert (run.status, run.worker_id, run.attempts, run.error_message) == ("running", WORKER_B, 2, None)


def test_a_completion_whose_commit_outcome_is_unknown_keeps_its_files(platform, monkeypatch):
    """The connection drops at COMMIT of the completion: the client gets a database error, but the
    commit went through and becomes visible only later (a replica's lag, a slow fsync). The worker
    must not remove its files, or the run ends completed with no manifest."""
    from types import SimpleNamespace

    from sqlalchemy.exc import OperationalError

    run_id = _create(platform)
    assert _claim(platform, WORKER_A) == 1
    real_complete, real_get_run = q.mark_run_completed, q.get_run
    committed = []

    def complete_then_lose_the_answer(session, rid, stats, **kwargs):
        real_complete(session, rid, stats, **kwargs)
        session.commit()  # the commit that goes through ...
        committed.append(stats.s3_output_path)
        raise OperationalError(
            "COMMIT", {}, Exception("server closed the connection unexpectedly"), connection_invalidated=True
        )  # as SQLAlchemy reports a connection lost

    def not_yet_visible(session, rid):  # ... but is not visible to this worker's next read yet
        run = real_get_run(session, rid)
        return SimpleNamespace(status="running", s3_output_path=None) if committed else run

    monkeypatch.setattr(q, "mark_run_completed", complete_then_lose_the_answer)
    monkeypatch.setattr(q, "get_run", not_yet_visible)
    result = job.process_run(run_id, WORKER_A, 1)
    monkeypatch.setattr(q, "get_run", real_get_run)
    assert committed and result["status"] == "abandoned"  # its failure was refused: the run is completed
    with session_scope(platform) as s:
        run = q.get_run(s, run_id)
        assert run.status == "completed" and run.s3_output_path == committed[0]
    read_run_artifacts(run.s3_output_path, ["suggested_bids.csv", "domain_multipliers.csv"])  # still loads


def test_claiming_retries_a_database_that_is_away_then_gives_up(monkeypatch):
    """A failover while claiming must not end the driver (its in-flight runs would each lose an
    attempt); a database that stays away past the stale limit does end it."""
    from sqlalchemy.exc import OperationalError

    from bidopt.db.engine import get_engine
    from bidopt.errors import DatabaseUnavailable

    monkeypatch.setenv("BIDOPT_HEARTBEAT_SECONDS", "0.01")
    monkeypatch.setenv("BIDOPT_STALE_AFTER_SECONDS", "0.5")
    reset_settings_cache()
    calls = []

    def connection_lost():  # as SQLAlchemy reports it, through session_scope (which translates it)
        with session_scope(get_engine(get_settings().database_url)):
            raise OperationalError("SELECT", {}, Exception("connection refused"), connection_invalidated=True)

    def away_twice(worker_id, _metrics=None):
        calls.append(worker_id)
        if len(calls) <= 2:
            connection_lost()
        return None

    monkeypatch.setattr(job, "_requeue_and_claim", away_twice)
    assert job._claim(WORKER_A) is None and len(calls) == 3

    def away(worker_id, _metrics=None):
        connection_lost()

    monkeypatch.setattr(job, "_requeue_and_claim", away)
    with pytest.raises(DatabaseUnavailable) as raised:
        job._claim(WORKER_A)
    assert isinstance(raised.value.__cause__, OperationalError)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_untranslated_database_errors_never_crash_the_driver(platform_db, monkeypatch):
    """Errors session_scope leaves as they are (a deadlock, a read-only transaction during a
    failover): claiming retries them, and recording a failure or reading an outcome swallows them
    (the lease goes stale and the run is requeued) instead of ending the driver."""
    from sqlalchemy.exc import OperationalError

    monkeypatch.setenv("BIDOPT_HEARTBEAT_SECONDS", "0.01")
    reset_settings_cache()

    def deadlock(*_args, **_kwargs):
        raise OperationalError("UPDATE opt_runs", {}, Exception("deadlock detected"))

    calls = []

    def deadlocked_once(worker_id, _metrics=None):
        calls.append(worker_id)
        if len(calls) == 1:
            deadlock()
        return None

    monkeypatch.setattr(job, "_requeue_and_claim", deadlocked_once)
    assert job._claim(WORKER_A) is None and len(calls) == 2

    run_id = _create(platform_db)  # no bid logs: the run fails
    assert _claim(platform_db, WORKER_A) == 1
    monkeypatch.setattr(q, "mark_run_failed", deadlock)
    result = job.process_run(run_id, WORKER_A, 1)
    assert result["status"] == "abandoned" and "not recorded" in result["error"]
    monkeypatch.setattr(q, "get_run", deadlock)
    outcome = job._outcome_from_db(job.Lease(run_id, WORKER_A, 1, "drugs_hcp"), "cancelled")
    assert outcome["status"] == "abandoned" and "could not be read" in outcome["error"]

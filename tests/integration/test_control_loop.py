"""The control loop (bidopt.serve.control.ControlLoop) in-process, without Ray: it creates due
scheduled runs and applies guardrails on its own, and survives a database outage. Its Serve
deployment runs in tests/integration/test_serve_app.py."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from bidopt import service
from bidopt.db.engine import session_scope
from bidopt.db.models import OptRun
from bidopt.errors import DatabaseUnavailable
from bidopt.serve.control import ControlLoop

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def scheduled_runs(engine):
    with session_scope(engine) as s:
        return list(s.scalars(select(OptRun.run_id).where(OptRun.trigger_type == "scheduled")))


def test_the_loop_creates_due_runs_and_survives_an_outage(platform_db, monkeypatch):
    with session_scope(platform_db) as s:
        service.set_schedule(s, "drugs_hcp", 24, {}, created_by="olivia")  # due now
    real_check = service.check_guardrails
    failures = {"left": 3}

    def flaky_check(session, entity_code=None, **kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise DatabaseUnavailable("cannot reach the metadata database: connection refused")
        return real_check(session, entity_code, **kwargs)

    monkeypatch.setattr(service, "check_guardrails", flaky_check)
    loop = ControlLoop(interval=0.05)
    loop.start()
    try:
        assert wait_for(lambda: scheduled_runs(platform_db)) and len(scheduled_runs(platform_db)) == 1
        wait_for(lambda: failures["left"] == 0 and loop.last_error is None)  # retried, then fine
        assert loop.is_alive() and loop.ticks >= 4
        loop.check_health()
        status = loop.status()
        assert status["alive"] and status["interval_seconds"] == 0.05 and status["last_tick_at"]
    finally:
        loop.stop()
    assert not loop.is_alive()
    with pytest.raises(RuntimeError, match="not running"):
        loop.check_health()
    assert len(scheduled_runs(platform_db)) == 1  # dozens of ticks, one run for the slot


def test_one_tick_reports_errors_instead_of_raising(platform_db, monkeypatch):
    def broken(session, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(service, "create_due_scheduled_runs", broken)
    out = ControlLoop(interval=60).tick()
    assert out["guardrails"] == [] and out["scheduled_runs"] == []
    assert out["errors"] == ["schedules: RuntimeError: boom"]


def test_an_unreachable_database_is_an_error_of_the_tick(platform_db):
    loop = ControlLoop(database_url="postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=1", interval=60)
    out = loop.tick()
    assert len(out["errors"]) == 2 and all("cannot reach the metadata database" in e for e in out["errors"])
    assert loop.last_error == out["errors"][-1]

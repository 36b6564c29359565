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


def test_the_first_tick_and_then_one_an_hour_sweep_the_mixed_event_parts_left(platform_db, monkeypatch):
    import bidopt.events.writer as writer_module
    import bidopt.serve.control as control
    from bidopt.events.schema import DECISIONS
    from bidopt.events.store import open_event_store
    from bidopt.events.writer import EventWriter
    from bidopt.settings import get_settings

    store = open_event_store(get_settings().events_url)
    killed = EventWriter(store, "host:9:dead", split_seconds=3600, start=False)  # never splits
    old = 1767261600.0  # 2026-01-01T10:00Z: long ended, but not when this writer flushed
    monkeypatch.setattr(writer_module, "wall_clock", lambda: old + 60)
    killed.add(DECISIONS, "drugs_hcp", old, no_bid_row(old, "r1"))
    assert killed.flush() == 1 and store.store.list_keys("decisions/mixed/")
    clock = {"now": 1000.0}
    monkeypatch.setattr(control.time, "monotonic", lambda: clock["now"])
    loop = ControlLoop(interval=60)
    first = loop.tick()
    assert first["swept"]["decisions"]["mixed_parts_deleted"] == 1 and not first["errors"]
    assert not store.store.list_keys("decisions/mixed/")
    assert store.read(DECISIONS, "drugs_hcp")["request_id"].to_pylist() == ["r1"]
    clock["now"] += 60
    assert "swept" not in loop.tick()
    clock["now"] += control.SWEEP_EVERY_SECONDS
    assert loop.tick()["swept"]["decisions"]["mixed_parts_deleted"] == 0


def no_bid_row(ts: float, request_id: str) -> dict:
    from datetime import datetime, timezone

    at = datetime.fromtimestamp(ts, timezone.utc).replace(tzinfo=None)
    return {"event_time": at, "entity_code": "drugs_hcp", "request_id": request_id, "imp_id": "1"} | {
        "test": False,
        "bid": False,
        "npi_matched": False,
    }

"""Optimizer schedules (bidopt.db.schedules via bidopt.service): set, due and not due, catch-up,
concurrent schedulers on SQLite and PostgreSQL, the API routes and the CLI."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from bidopt import service
from bidopt.cli.main import cli
from bidopt.db import access
from bidopt.db import queries as q
from bidopt.db import schedules as sched
from bidopt.db.engine import session_scope
from bidopt.db.models import OptRun, OptSchedule
from bidopt.errors import InvalidConfig, NotFound
from bidopt.serve.api import create_app

ENTITY = "drugs_hcp"
T0 = datetime(2026, 2, 3, 6, 0, 0)


def set_daily(engine, start=T0, every=24, configs=None):
    with session_scope(engine) as s:
        return service.set_schedule(
            s, ENTITY, every, configs or {"target_win_rate": "0.45"}, created_by="olivia", start_at=start
        )


def tick(engine, now):
    with session_scope(engine) as s:
        return service.create_due_scheduled_runs(s, now=now)


def runs_count(engine):
    with session_scope(engine) as s:
        return s.scalar(select(func.count()).select_from(OptRun))


def test_next_slot_after_keeps_the_phase():
    every = timedelta(hours=24)
    assert sched.next_slot_after(T0, every, T0) == (T0, T0 + every)
    assert sched.next_slot_after(T0, every, T0 + timedelta(hours=23)) == (T0, T0 + every)
    assert sched.next_slot_after(T0, every, T0 + timedelta(days=7, hours=1)) == (
        T0 + timedelta(days=7),
        T0 + timedelta(days=8),
    )
    assert sched.next_slot_after(T0, every, T0 - timedelta(hours=1)) == (T0, T0)


def test_a_schedule_creates_a_run_when_due_and_not_before(platform_db):
    view = set_daily(platform_db)
    assert view["next_due_at"] == "2026-02-03T06:00:00Z" and view["configs"] == {"target_win_rate": 0.45}
    assert tick(platform_db, T0 - timedelta(seconds=1)) == []
    [run_id] = tick(platform_db, T0 + timedelta(minutes=1))
    with session_scope(platform_db) as s:
        run = q.get_run(s, run_id)
        assert (run.status, run.trigger_type, run.triggered_by) == ("pending", "scheduled", "scheduler")
        assert run.scheduled_for == T0
        assert q.get_run_configs(s, run_id)["target_win_rate"] == 0.45
        assert q.get_run_configs(s, run_id)["max_bid_cpm"] == 25.0  # defaults filled, like any run
        shown = service.get_schedule(s, ENTITY)
    assert shown["next_due_at"] == "2026-02-04T06:00:00Z" and shown["last_run_id"] == run_id
    assert tick(platform_db, T0 + timedelta(hours=23)) == []  # the same slot never again
    # the next slot while the first scheduled run is still pending: skipped, not queued behind it
    assert tick(platform_db, T0 + timedelta(hours=24)) == []
    with session_scope(platform_db) as s:
        s.execute(update(OptRun).where(OptRun.run_id == run_id).values(status="completed"))
    assert len(tick(platform_db, T0 + timedelta(hours=48))) == 1


def test_a_scheduler_down_for_a_week_creates_one_run_not_168(platform_db):
    set_daily(platform_db, every=1)
    now = T0 + timedelta(days=7, minutes=30)
    [run_id] = tick(platform_db, now)
    with session_scope(platform_db) as s:
        assert q.get_run(s, run_id).scheduled_for == T0 + timedelta(days=7)  # the latest slot that came due
        assert service.get_schedule(s, ENTITY)["next_due_at"] == "2026-02-10T07:00:00Z"
    assert tick(platform_db, now) == [] and runs_count(platform_db) == 1


def test_configs_that_no_longer_validate_skip_the_slot_and_move_on(platform_db, caplog):
    set_daily(platform_db)
    with session_scope(platform_db) as s:
        s.execute(update(OptSchedule).values(configs=json.dumps({"colour": "red"})))
    assert tick(platform_db, T0) == []
    assert "unknown config key: colour" in caplog.text
    with session_scope(platform_db) as s:
        assert service.get_schedule(s, ENTITY)["next_due_at"] == "2026-02-04T06:00:00Z"
    assert runs_count(platform_db) == 0


@pytest.mark.parametrize(
    "every,configs,message",
    [
        (0, {}, "every_hours must be >="),
        ("1e400", {}, "finite"),
        (1e400, {}, "finite"),
        (10**400, {}, "finite"),
        (float("nan"), {}, "finite"),
        ("nan", {}, "must be a number"),
        (10_000, {}, "every_hours must be <="),
        (24, {"colour": "red"}, "unknown config key"),
        (24, {"target_win_rate": "2"}, "target_win_rate must be <"),
        (24, {"min_bid_cpm": 5, "max_bid_cpm": 4}, "must be below max_bid_cpm"),
        (24, ["target_win_rate"], "configs must be an object"),
    ],
)
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_invalid_schedules_are_refused_and_write_nothing(platform_db, every, configs, message):
    with pytest.raises(InvalidConfig, match=message):
        with session_scope(platform_db) as s:
            service.set_schedule(s, ENTITY, every, configs, created_by="olivia")
    with session_scope(platform_db) as s:
        assert service.list_schedules(s) == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_set_replaces_and_remove_deletes(platform_db):
    set_daily(platform_db)
    set_daily(platform_db, start=T0 + timedelta(hours=2), every=12, configs={"max_bid_cpm": 9})
    with session_scope(platform_db) as s:
        [view] = service.list_schedules(s)
        assert (view["every_hours"], view["configs"], view["next_due_at"]) == (
            12,
            {"max_bid_cpm": 9.0},
            "2026-02-03T08:00:00Z",
        )
        service.remove_schedule(s, ENTITY)
        assert service.list_schedules(s) == []
    with pytest.raises(NotFound):
        with session_scope(platform_db) as s:
            service.remove_schedule(s, ENTITY)
    with pytest.raises(NotFound):
        with session_scope(platform_db) as s:
            service.set_schedule(s, "nope", 24, {}, created_by="olivia")


def test_the_slot_index_is_the_backstop(platform_db):
    """Two creators of the same slot at once (the compare-and-set bypassed): one run."""
    results, barrier = [], threading.Barrier(4)

    def create():
        barrier.wait()
        try:
            with session_scope(platform_db) as s:
                results.append(q.create_run(s, ENTITY, {}, triggered_by="scheduler", scheduled_for=T0).run_id)
        except q.SlotTaken as exc:
            results.append(exc)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len([r for r in results if isinstance(r, str)]) == 1, results
    assert all("already has run" in str(r) for r in results if not isinstance(r, str))
    assert runs_count(platform_db) == 1


def test_concurrent_schedulers_create_each_run_once(platform_db, monkeypatch):
    """Schedulers ticking at the same moment: the compare-and-set on next_due_at lets exactly one of
    them take each slot; the others do not even try to create the run."""
    with session_scope(platform_db) as s:
        for code in (ENTITY, "auto_intenders"):
            service.set_schedule(s, code, 1, {}, created_by="olivia", start_at=T0)
    attempts, lock = [], threading.Lock()
    real_create_run = q.create_run

    def counting_create_run(*args, **kwargs):
        with lock:
            attempts.append(args[1])
        return real_create_run(*args, **kwargs)

    monkeypatch.setattr(q, "create_run", counting_create_run)
    created, errors, barrier = [], [], threading.Barrier(6)

    def scheduler():
        barrier.wait()
        try:
            created.extend(tick(platform_db, T0 + timedelta(minutes=5)))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=scheduler) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(created) == len(set(created)) == 2 and sorted(attempts) == ["auto_intenders", ENTITY]
    assert runs_count(platform_db) == 2


@pytest.fixture
def client(platform_db):
    with session_scope(platform_db) as s:
        access.create_user(s, "olivia", "operator")
        access.create_user(s, "victor", "viewer")
        operator, viewer = access.create_api_token(s, "olivia")[1], access.create_api_token(s, "victor")[1]
    c = TestClient(create_app(), raise_server_exceptions=False)
    c.as_operator = {"Authorization": f"Bearer {operator}"}
    c.as_viewer = {"Authorization": f"Bearer {viewer}"}
    return c


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_schedule_routes(client):
    url = f"/api/entities/{ENTITY}/schedule"
    assert client.get(url).status_code == 401
    res = client.get(url, headers=client.as_viewer)
    assert res.status_code == 404 and res.json() == {"error": f"{ENTITY} has no optimizer schedule"}
    body = {"every_hours": 24, "configs": {"target_win_rate": 0.4}, "start": "2026-02-03T08:00:00+02:00"}
    assert client.put(url, headers=client.as_viewer, json=body).status_code == 403
    for bad, status in [
        ({**body, "every_hours": -1}, 422),
        ({**body, "created_by": "mallory"}, 422),
        ({**body, "configs": {"colour": "red"}}, 422),
        ({**body, "start": "tomorrow"}, 422),
        ({**body, "start": "0001-01-01T00:00:00+05:00"}, 422),
        ({"configs": {}}, 422),
    ]:
        res = client.put(url, headers=client.as_operator, json=bad)
        assert res.status_code == status and "error" in res.json(), (bad, res.text)
    for raw in ('{"every_hours": 1e400}', '{"every_hours": NaN}', '{"every_hours": ' + "9" * 400 + "}"):
        res = client.put(url, headers={**client.as_operator, "content-type": "application/json"}, content=raw)
        assert res.status_code == 422 and "error" in res.json(), (raw[:30], res.text)
    assert client.get(url, headers=client.as_viewer).status_code == 404  # nothing was written
    res = client.put(url, headers=client.as_operator, json=body)
    assert res.status_code == 200, res.text
    view = res.json()
    assert view["created_by"] == "olivia" and view["next_due_at"] == "2026-02-03T06:00:00Z"
    assert client.get(url, headers=client.as_viewer).json() == view
    assert client.delete(url, headers=client.as_viewer).status_code == 403
    assert client.delete(url, headers=client.as_operator).json() == {"entity_code": ENTITY, "removed": True}
    assert client.delete(url, headers=client.as_operator).status_code == 404
    assert client.put("/api/entities/nope/schedule", headers=client.as_operator, json=body).status_code == 404


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_schedules_cli(platform_db):
    runner = CliRunner()

    def run(*args):
        return runner.invoke(cli, list(args), catch_exceptions=False)

    res = run("schedules", "set", ENTITY, "--every-hours", "24", "-c", "target_win_rate=0.4", "--by", "carla")
    assert res.exit_code == 0 and f"{ENTITY}: a run every 24 h, next due" in res.output, res.output
    for args, message in [
        (("schedules", "set", ENTITY, "--every-hours", "0"), "every_hours must be >="),
        (("schedules", "set", ENTITY, "--every-hours", "1e400"), "finite"),
        (("schedules", "set", ENTITY, "--every-hours", "24", "-c", "colour=red"), "unknown config key: colour"),
        (("schedules", "set", ENTITY, "--every-hours", "24", "--start", "soon"), "start must be an ISO 8601"),
        (("schedules", "remove", "auto_intenders"), "auto_intenders has no optimizer schedule"),
    ]:
        res = run(*args)
        assert res.exit_code == 1 and res.output.startswith("Error: ") and message in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1
    listed = run("schedules", "list").output
    assert ENTITY in listed and "target_win_rate=0.4" in listed and "carla" in listed
    res = run("schedules", "tick", "--json")  # due now: set without --start
    [run_id] = json.loads(res.output)
    assert "no schedule is due" in run("schedules", "tick").output
    shown = json.loads(run("runs", "show", run_id, "--json").output)
    assert shown["trigger_type"] == "scheduled" and shown["triggered_by"] == "scheduler"
    assert run("schedules", "remove", ENTITY).output.strip() == f"{ENTITY}: schedule removed"
    assert run("schedules", "list").output.strip() == "(none)"

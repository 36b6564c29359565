"""The guardrail check (service.check_guardrails) on a real metadata DB, with the A/B report faked
(its numbers are the report's business, tested with it), promotion, and their API routes and CLI."""

from __future__ import annotations

import json
import math
import shutil
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from servable_runs import complete_servable

from bidopt import service
from bidopt.cli.main import cli
from bidopt.db import access
from bidopt.db import queries as q
from bidopt.db.engine import session_scope
from bidopt.errors import Conflict, InvalidConfig, NotFound
from bidopt.serve.api import create_app
from bidopt.settings import get_settings

ENTITY = "drugs_hcp"
T0 = datetime(2026, 2, 3, 12, 0, 0)


def wilson(successes: int, n: int, z: float = 1.96) -> dict:
    if n == 0:
        return {"value": None, "low": None, "high": None}
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"value": p, "low": centre - half, "high": centre + half}


class FakeReports:
    """``service.split_report`` for the active split, from per-run (bids, wins) counts; runs with no
    counts have seen nothing yet. ``during`` runs inside the call (a change made while judging)."""

    def __init__(self, counts: dict[str, tuple[int, int]] | None = None) -> None:
        self.counts = counts or {}
        self.during = None
        self.calls = 0

    def __call__(self, session, entity_code, split_id=None):
        self.calls += 1
        rows = q.get_current_traffic_split(session, entity_code)
        judged = rows[0].split_id if rows else None
        if self.during:
            self.during(session)
        arms = []
        for i, row in enumerate(rows):
            bids, wins = self.counts.get(row.run_id, (0, 0))
            arms.append(
                {
                    "arm": i,
                    "run_id": row.run_id,
                    "traffic_pct": row.traffic_pct,
                    "target_win_rate": 0.4,
                    "requests": bids,
                    "impressions": bids,
                    "bids": bids,
                    "wins": wins,
                    "win_rate": wilson(wins, bids),
                    "no_bid_share": wilson(0, bids),
                }
            )
        return {"entity_code": entity_code, "split_id": judged, "is_active": True, "arms": arms}


@pytest.fixture
def runs(platform_db, monkeypatch):
    """Five completed, servable runs of drugs_hcp: A, B, C, D, E -> run ids."""
    ids = {}
    with session_scope(platform_db) as s:
        for i, name in enumerate("ABCDE"):
            ids[name] = q.create_run(s, ENTITY, {}, triggered_by="t", now=T0 + timedelta(seconds=i)).run_id
    for run_id in ids.values():
        complete_servable(platform_db, run_id)
    return ids


@pytest.fixture
def reports(monkeypatch):
    fake = FakeReports()
    monkeypatch.setattr(service, "split_report", fake, raising=False)
    return fake


def deploy(engine, pairs, by="olivia"):
    with session_scope(engine) as s:
        return service.set_traffic_split(s, ENTITY, pairs, deployed_by=by)["split_id"]


def check(engine, entity=None):
    with session_scope(engine) as s:
        return service.check_guardrails(s, entity)


def active(engine):
    with session_scope(engine) as s:
        return service.split_view(s, ENTITY)


def test_a_breaching_arm_is_dropped_by_the_guardrail_with_its_reason(platform_db, runs, reports):
    a, b = runs["A"], runs["B"]
    judged = deploy(platform_db, [(a, 50), (b, 50)])
    reports.counts = {a: (500, 5), b: (500, 5)}  # far below target, but under the 1000-bid minimum
    [entry] = check(platform_db)
    assert entry["action"] == "none" and entry["new_split_id"] is None
    assert [arm["status"] for arm in entry["arms"]] == ["waiting", "waiting"]

    reports.counts = {a: (2000, 800), b: (2000, 40)}  # A on target, B at 2%
    [entry] = check(platform_db)
    assert entry["action"] == "drop_arms" and entry["split_id"] == judged
    assert [arm["status"] for arm in entry["arms"]] == ["ok", "breach"]
    assert entry["arms"][1]["breaches"][0]["metric"] == "win_rate"
    view = active(platform_db)
    assert view["split_id"] == entry["new_split_id"] == judged + 1
    assert view["runs"] == [{"run_id": a, "traffic_pct": 100}]
    assert view["deployed_by"] == "guardrail" and f"run {b} (arm 1)" in view["reason"]
    with session_scope(platform_db) as s:
        history = service.split_history(s, ENTITY)
    assert [(h["split_id"], h["deployed_by"], h["reason"] is not None) for h in history] == [
        (judged + 1, "guardrail", True),
        (judged, "olivia", False),
    ]
    # the new split has its own report (fresh users); with nothing seen yet nothing happens
    reports.counts = {}
    assert check(platform_db)[0]["action"] == "none"


def test_every_arm_breaching_restores_the_previous_split(platform_db, runs, reports):
    first = deploy(platform_db, [(runs["A"], 100)])
    judged = deploy(platform_db, [(runs["B"], 60), (runs["C"], 40)])
    reports.counts = {runs["B"]: (3000, 30), runs["C"]: (3000, 2900)}  # one too low, one too high
    [entry] = check(platform_db)
    assert entry["action"] == "restore_previous", entry
    view = active(platform_db)
    assert view["split_id"] == judged + 1 and view["runs"] == [{"run_id": runs["A"], "traffic_pct": 100}]
    assert f"restored split {first}" in view["reason"] and view["deployed_by"] == "guardrail"


def test_nothing_safe_to_restore_leaves_the_split(platform_db, runs, reports):
    deploy(platform_db, [(runs["A"], 100)])
    judged = deploy(platform_db, [(runs["B"], 100)])
    # A's artifacts are gone: bidders could not load it, so split 1 is no longer safe
    shutil.rmtree(urlsplit(get_settings().artifact_url).path + f"/test-runs/{runs['A']}")
    reports.counts = {runs["B"]: (3000, 30)}
    [entry] = check(platform_db)
    assert entry["action"] == "no_safe_split" and entry["new_split_id"] is None
    assert "left as it is" in entry["reason"]
    assert active(platform_db)["split_id"] == judged


def test_disabled_guardrail_and_a_report_that_fails(platform_db, runs, reports):
    deploy(platform_db, [(runs["A"], 100)])
    reports.counts = {runs["A"]: (3000, 30)}
    with session_scope(platform_db) as s:
        q.set_entity_config(s, q.get_entity_by_code(s, ENTITY).entity_id, "guardrail_enabled", "false")
    assert [e["action"] for e in check(platform_db)] == ["disabled"]
    assert reports.calls == 0

    def broken(session, entity_code, split_id=None):
        raise OSError("events store unreachable")

    service.split_report = broken  # monkeypatched by the fixture: restored afterwards
    with session_scope(platform_db) as s:
        q.set_entity_config(s, q.get_entity_by_code(s, ENTITY).entity_id, "guardrail_enabled", "true")
    [entry] = check(platform_db)
    assert entry["action"] == "error" and "events store unreachable" in entry["reason"]


def test_an_operator_change_while_judging_wins(platform_db, runs, reports, db_url):
    judged = deploy(platform_db, [(runs["A"], 50), (runs["B"], 50)])
    reports.counts = {runs["A"]: (2000, 800), runs["B"]: (2000, 40)}

    def operator_changes_the_split(guardrail_session):
        if db_url.startswith("postgresql"):  # a real concurrent transaction, committed meanwhile
            deploy(platform_db, [(runs["C"], 100)])
        else:  # SQLite serialises transactions: the change can only be seen inside this one
            service.set_traffic_split(guardrail_session, ENTITY, [(runs["C"], 100)], deployed_by="olivia")

    reports.during = operator_changes_the_split
    [entry] = check(platform_db)
    assert entry["action"] == "conflict" and entry["split_id"] == judged
    assert "changed meanwhile" in entry["reason"] and entry["new_split_id"] is None
    view = active(platform_db)
    assert view["split_id"] == judged + 1 and view["deployed_by"] == "olivia"
    assert view["runs"] == [{"run_id": runs["C"], "traffic_pct": 100}]


def test_replace_traffic_split_compare_and_set(platform_db, runs):
    judged = deploy(platform_db, [(runs["A"], 100)])
    with session_scope(platform_db) as s:
        with pytest.raises(Conflict, match="now 1, not 7"):
            q.replace_traffic_split(s, ENTITY, [(runs["B"], 100)], deployed_by="g", expected_split_id=7)
        with pytest.raises(Conflict, match="now 1, not none"):
            q.replace_traffic_split(s, ENTITY, [(runs["B"], 100)], deployed_by="g", expected_split_id=None)
        rows = q.replace_traffic_split(
            s, ENTITY, [(runs["B"], 100)], deployed_by="g", reason="why", expected_split_id=judged
        )
        assert rows[0].reason == "why"
    assert active(platform_db)["split_id"] == judged + 1


def test_promote(platform_db, runs):
    deploy(platform_db, [(runs["A"], 50), (runs["B"], 50)])
    with session_scope(platform_db) as s:
        view = service.promote_run(s, ENTITY, runs["B"], deployed_by="olivia")
    assert view["runs"] == [{"run_id": runs["B"], "traffic_pct": 100}] and view["reason"] == "promoted"
    with session_scope(platform_db) as s:  # promoting it again changes nothing
        assert service.promote_run(s, ENTITY, runs["B"], deployed_by="olivia")["split_id"] == view["split_id"]
    with session_scope(platform_db) as s:
        pending = q.create_run(s, ENTITY, {}, triggered_by="t", now=T0 + timedelta(minutes=5)).run_id
        other = q.create_run(s, "auto_intenders", {}, triggered_by="t", now=T0 + timedelta(minutes=6)).run_id
    complete_servable(platform_db, other)
    for run_id, error in [
        (pending, Conflict),
        (other, InvalidConfig),
        ("20990101_000000", NotFound),
        ("", InvalidConfig),
        (None, InvalidConfig),
    ]:
        with pytest.raises(error):
            with session_scope(platform_db) as s:
                service.promote_run(s, ENTITY, run_id, deployed_by="olivia")
    assert active(platform_db)["split_id"] == view["split_id"]


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
def test_api_promote_and_guardrail_check(client, platform_db, runs, reports):
    deploy(platform_db, [(runs["B"], 100)])
    deploy(platform_db, [(runs["A"], 50), (runs["B"], 50)])
    url = f"/api/entities/{ENTITY}/promote"
    assert client.post(url, json={"run_id": runs["A"]}).status_code == 401
    assert client.post(url, headers=client.as_viewer, json={"run_id": runs["A"]}).status_code == 403
    for body, status in [({}, 422), ({"run_id": 5}, 422), ({"run_id": runs["A"], "deployed_by": "x"}, 422)]:
        res = client.post(url, headers=client.as_operator, json=body)
        assert res.status_code == status and "error" in res.json(), (body, res.text)
    assert (
        client.post("/api/entities/nope/promote", headers=client.as_operator, json={"run_id": "x"}).status_code == 404
    )
    res = client.post(url, headers=client.as_operator, json={"run_id": runs["A"]})
    assert res.status_code == 200, res.text
    assert res.json()["deployed_by"] == "olivia" and res.json()["reason"] == "promoted"

    assert client.post("/api/guardrails/check", headers=client.as_viewer).status_code == 403
    reports.counts = {runs["A"]: (5000, 50)}
    res = client.post("/api/guardrails/check", headers=client.as_operator)
    assert res.status_code == 200 and [e["action"] for e in res.json()] == ["restore_previous"]
    assert client.get(f"/api/entities/{ENTITY}/split", headers=client.as_viewer).json()["deployed_by"] == "guardrail"
    history = client.get(f"/api/entities/{ENTITY}/split/history", headers=client.as_viewer).json()
    assert [h["reason"] is not None for h in history] == [True, True, False, False]
    assert (
        history[0]["runs"] == [{"run_id": runs["B"], "traffic_pct": 100}] and "restored split 1" in history[0]["reason"]
    )
    res = client.post("/api/guardrails/check?entity=nope", headers=client.as_operator)
    assert res.status_code == 404


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_promote_and_guard_once(platform_db, runs, reports):
    runner = CliRunner()
    deploy(platform_db, [(runs["A"], 100)])
    deploy(platform_db, [(runs["A"], 50), (runs["B"], 50)])
    res = runner.invoke(cli, ["deploy", "promote", ENTITY, runs["B"], "--by", "carla"])
    assert res.exit_code == 0, res.output
    assert "by carla" in res.output and "reason: promoted" in res.output and runs["B"] in res.output
    res = runner.invoke(cli, ["deploy", "promote", ENTITY, "20990101_000000"])
    assert res.exit_code == 1 and res.output.strip() == "Error: unknown run: 20990101_000000"

    reports.counts = {runs["B"]: (500, 5)}
    res = runner.invoke(cli, ["deploy", "guard", "--once"])
    assert res.exit_code == 0, res.output
    assert f"{ENTITY} split 3: none" in res.output and "waits for 1000 bids" in res.output
    reports.counts = {runs["B"]: (5000, 50)}
    res = runner.invoke(cli, ["deploy", "guard", "--once", "--entity", ENTITY, "--json"])
    assert res.exit_code == 0, res.output
    [entry] = json.loads(res.output)
    assert entry["action"] == "restore_previous" and entry["new_split_id"] == 4
    res = runner.invoke(cli, ["deploy", "history", ENTITY])
    assert "guardrail" in res.output and "restored split 1" in res.output


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_guardrail_settings_are_set_all_or_nothing(platform_db):
    with session_scope(platform_db) as s:
        view = service.set_entity_configs(s, ENTITY, {"guardrail_min_bids": "50", "guardrail_max_win_rate_gap": 0.2})
    assert view["static_configs"]["guardrail_min_bids"] == 50
    for bad in ({"guardrail_min_wins": "10", "guardrail_min_bids": "1e400"}, {"colour": "red"}, {}):
        with pytest.raises(InvalidConfig):
            with session_scope(platform_db) as s:
                service.set_entity_configs(s, ENTITY, bad)
    with session_scope(platform_db) as s:
        static = service.get_entity(s, ENTITY)["static_configs"]
    assert (static["guardrail_min_bids"], static["guardrail_min_wins"]) == (50, 20)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_control_loop_reads_events_outside_any_transaction(platform_db, runs, reports, monkeypatch):
    """On SQLite every transaction holds the write lock: while the loop builds its reports from the
    events (seconds, at volume), bidders, optimizers and operators must still be able to write."""
    import sqlite3

    from bidopt.serve.control import ControlLoop

    a, b = runs["A"], runs["B"]
    deploy(platform_db, [(a, 50), (b, 50)])
    reports.counts = {a: (2000, 800), b: (2000, 40)}
    writes = []

    def build(inputs):
        other = sqlite3.connect(platform_db.url.database, timeout=0.5, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # fails with "database is locked" if a transaction is open
            other.execute("ROLLBACK")
            writes.append("ok")
        finally:
            other.close()
        with session_scope(platform_db) as s:
            return reports(s, inputs.entity_code, None)

    monkeypatch.setattr(service, "build_split_report", build)
    out = ControlLoop(database_url=str(platform_db.url), interval=60).tick()
    assert out["errors"] == [] and writes == ["ok"]
    assert [e["action"] for e in out["guardrails"]] == ["drop_arms"]

"""``bidopt status`` (bidopt.status.status, the CLI and GET /api/status) on SQLite and PostgreSQL,
from bidder replica rows written here the way replicas report them (``report_replica``, with the
``counters["traffic"]`` window of bidopt.metrics): the active split, what each replica serves, and
rates summed over the reporting replicas, each over its own window."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from servable_runs import complete_servable
from sqlalchemy import update

from bidopt.cli.main import cli
from bidopt.db import access, bidder_status
from bidopt.db import queries as q
from bidopt.db.engine import database_now, session_scope
from bidopt.db.models import OptBidderReplica
from bidopt.serve.api import create_app
from bidopt.status import status


def _traffic(window, requests, bids, **no_bids):
    return {"window_seconds": window, "requests": requests, "bids": bids, "no_bids": no_bids}


def _report(engine, replica_id, *, serving, traffic, age_seconds=0.0, refresh_seconds=5.0, last_error=None):
    """A replica's status row as ``Refresher.report`` writes it, ``age_seconds`` old."""
    row = {
        "replica_id": replica_id,
        "hostname": f"host-{replica_id}",
        "pid": 100 + len(replica_id),
        "ready": True,
        "refresh_seconds": refresh_seconds,
        "serving": serving,
        "last_error": last_error,
        "counters": {"accepted": {}, "rejected": {}, "events": {}, "traffic": traffic},
    }
    with session_scope(engine) as s:
        bidder_status.report_replica(s, row, started_at=time.time() - 600)
    if age_seconds:
        with session_scope(engine) as s:
            s.execute(
                update(OptBidderReplica)
                .where(OptBidderReplica.replica_id == replica_id)
                .values(reported_at=database_now(s) - timedelta(seconds=age_seconds))
            )


@pytest.fixture
def replicas(platform_db):
    """drugs_hcp split 60/40 over two servable runs, auto_intenders without a split; four replicas:
    ``r1`` live for five minutes, ``r2`` started a minute ago and still on the old split (lagging),
    ``r3`` silent (no report for 60 s at a 5 s refresh), ``r4`` gone (10 minutes)."""
    ids = []
    for _ in range(2):
        with session_scope(platform_db) as s:
            ids.append(q.create_run(s, "drugs_hcp", {}, triggered_by="t").run_id)
        complete_servable(platform_db, ids[-1])
        time.sleep(1.05)  # run ids are the creation second
    with session_scope(platform_db) as s:
        q.replace_traffic_split(s, "drugs_hcp", {ids[0]: 100}, deployed_by="olivia")  # split 1
    with session_scope(platform_db) as s:
        rows = q.replace_traffic_split(s, "drugs_hcp", {ids[0]: 60, ids[1]: 40}, deployed_by="olivia")
        split_id, old_split = rows[0].split_id, rows[0].split_id - 1

    def serves(split):
        return {"split_id": split, "loaded_at": "2026-01-31T12:00:00Z", "runs": []}

    bad_auto = {"split_id": None, "loaded_at": None, "runs": [], "error": "run x: manifest missing"}
    _report(
        platform_db,
        "r1",
        serving={"drugs_hcp": serves(split_id)},
        traffic={
            "drugs_hcp": _traffic(300, 600, 900, floor=300),
            "unknown": _traffic(300, 30, 0, no_split=30),
        },
    )
    _report(
        platform_db,
        "r2",
        serving={"drugs_hcp": serves(old_split), "auto_intenders": bad_auto},
        traffic={
            "drugs_hcp": _traffic(60, 120, 60, floor=60, tmax=6),
            "auto_intenders": _traffic(60, 12, 0, no_split=12),
        },
    )
    _report(
        platform_db,
        "r3",
        serving={"drugs_hcp": serves(split_id)},
        traffic={"drugs_hcp": _traffic(300, 3000, 3000)},
        age_seconds=60,
    )
    _report(
        platform_db,
        "r4",
        serving={"drugs_hcp": serves(split_id)},
        traffic={"drugs_hcp": _traffic(300, 9000, 9000)},
        age_seconds=600,
    )
    return {"engine": platform_db, "runs": ids, "split_id": split_id, "old_split": old_split}


def test_status_sums_the_reporting_replicas_rates_each_over_its_own_window(replicas):
    with session_scope(replicas["engine"]) as s:
        view = status(s)
    assert view["replicas_counted"] == 2  # r1 and r2: r3 is silent, r4 gone
    by_code = {e["entity_code"]: e for e in view["entities"]}
    assert set(by_code) == {"drugs_hcp", "auto_intenders"}

    drugs = by_code["drugs_hcp"]
    a, b = replicas["runs"]
    assert drugs["split"]["split_id"] == replicas["split_id"]
    assert drugs["split"]["runs"] == [{"run_id": a, "traffic_pct": 60}, {"run_id": b, "traffic_pct": 40}]
    assert drugs["split"]["deployed_by"] == "olivia"
    assert drugs["bidders"]["live"] is False and drugs["bidders"]["summary"] == "2 of 3 bidder replicas lag (1 gone)"
    states = {r["replica_id"]: (r["state"], r["split_id"]) for r in drugs["replicas"]}
    assert states == {
        "r1": ("live", replicas["split_id"]),
        "r2": ("lagging", replicas["old_split"]),
        "r3": ("silent", replicas["split_id"]),
    }
    r1 = next(r for r in drugs["replicas"] if r["replica_id"] == "r1")
    assert r1["loaded_at"] == "2026-01-31T12:00:00Z" and r1["reported_at"] and r1["error"] is None

    t = drugs["traffic"]
    # r1: 600 requests, 900 bids, 300 floor over 300 s; r2: 120, 60, 60 floor + 6 tmax over 60 s
    assert (t["replicas"], t["window_seconds"]) == (2, 300)
    assert (t["requests"], t["bids"], t["no_bids"]) == (720, 960, 366)
    assert t["no_bids_by_reason"] == {"floor": 360, "tmax": 6}
    assert t["requests_per_second"] == pytest.approx(600 / 300 + 120 / 60)
    assert t["bids_per_second"] == pytest.approx(900 / 300 + 60 / 60)
    assert t["no_bids_per_second"] == pytest.approx(300 / 300 + 66 / 60)
    assert t["no_bids_per_second_by_reason"] == {"floor": pytest.approx(2.0), "tmax": pytest.approx(0.1)}
    assert t["bid_share"] == pytest.approx(960 / (960 + 366), abs=1e-4)

    auto = by_code["auto_intenders"]
    assert auto["split"] is None
    r2 = next(r for r in auto["replicas"] if r["replica_id"] == "r2")
    assert r2["error"] == "run x: manifest missing" and r2["state"] == "live"  # it serves none, as it should
    assert auto["traffic"]["no_bids_by_reason"] == {"no_split": 12}
    assert auto["traffic"]["no_bids_per_second"] == pytest.approx(0.2)

    assert list(view["other_traffic"]) == ["unknown"]  # requests for an entity no replica knows
    assert view["other_traffic"]["unknown"]["requests_per_second"] == pytest.approx(0.1)
    assert view["other_traffic"]["unknown"]["no_bids_by_reason"] == {"no_split": 30}


def test_replicas_without_a_traffic_window_and_an_entity_without_replicas(platform_db):
    """An older bidder (no ``traffic`` in its counters) and none at all: no rates, no error."""
    with session_scope(platform_db) as s:
        view = status(s, "drugs_hcp")
    assert [e["entity_code"] for e in view["entities"]] == ["drugs_hcp"]
    (drugs,) = view["entities"]
    assert drugs["split"] is None and drugs["replicas"] == []
    assert drugs["bidders"]["summary"] == "no bidder replica is reporting"
    assert drugs["traffic"]["replicas"] == 0 and drugs["traffic"]["requests_per_second"] == 0
    with session_scope(platform_db) as s:
        bidder_status.report_replica(
            s,
            {
                "replica_id": "old",
                "hostname": "h",
                "pid": 1,
                "ready": True,
                "refresh_seconds": 5,
                "serving": {},
                "last_error": None,
                "counters": {"accepted": {"win": 3}},
            },
            started_at=time.time(),
        )
    with session_scope(platform_db) as s:
        view = status(s)
    assert view["replicas_counted"] == 1
    assert all(e["traffic"]["replicas"] == 0 for e in view["entities"]) and view["other_traffic"] == {}


def test_the_cli_prints_the_same_view_and_a_readable_summary(replicas):
    runner = CliRunner()
    res = runner.invoke(cli, ["status", "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    with session_scope(replicas["engine"]) as s:
        want = status(s)
    assert {**got, "generated_at": None, "entities": None} == {**want, "generated_at": None, "entities": None}
    assert [e["traffic"] for e in got["entities"]] == [e["traffic"] for e in want["entities"]]

    res = runner.invoke(cli, ["status", "--entity", "drugs_hcp"])
    assert res.exit_code == 0, res.output
    out = res.output
    a, b = replicas["runs"]
    assert out.splitlines()[0] == "drugs_hcp"
    assert f"split: {replicas['split_id']} ({a}=60%, {b}=40%), by olivia at " in out
    assert "bidders: 2 of 3 bidder replicas lag (1 gone)" in out
    assert "traffic over the last 300 s (2 replicas): 4 requests/s, 4 bids/s, 2.1 no-bids/s" in out
    assert "no-bids by reason: floor 360 (2/s), tmax 6 (0.1/s)" in out
    assert "r3" in out and "silent" in out and "r4" not in out
    assert "auto_intenders" not in out

    res = runner.invoke(cli, ["status"])
    assert res.exit_code == 0 and "auto_intenders" in res.output and "split: none" in res.output
    assert "unknown (not an active entity)" in res.output

    res = runner.invoke(cli, ["status", "--entity", "nope"])
    assert res.exit_code == 1 and "unknown entity: nope" in res.output


def test_the_api_serves_it_to_any_caller_with_a_token(replicas):
    with session_scope(replicas["engine"]) as s:
        access.create_user(s, "victor", "viewer")
        token = access.create_api_token(s, "victor")[1]
    client = TestClient(create_app(), raise_server_exceptions=False)
    assert client.get("/api/status").status_code == 401
    res = client.get("/api/status", headers={"Authorization": f"Bearer {token}"})
    assert res.status_code == 200, res.text
    assert {e["entity_code"] for e in res.json()["entities"]} == {"drugs_hcp", "auto_intenders"}
    one = client.get("/api/status?entity=drugs_hcp", headers={"Authorization": f"Bearer {token}"}).json()
    assert [e["entity_code"] for e in one["entities"]] == ["drugs_hcp"]
    assert one["entities"][0]["traffic"]["bids_per_second"] == pytest.approx(4.0)
    missing = client.get("/api/status?entity=nope", headers={"Authorization": f"Bearer {token}"})
    assert missing.status_code == 404 and missing.json() == {"error": "unknown entity: nope"}

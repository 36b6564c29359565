"""The management API (FastAPI app, in-process): auth, runs, bid tables, splits, errors."""

import threading
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from servable_runs import complete_servable
from sqlalchemy import func, select

from bidopt.db import access
from bidopt.db import queries as q
from bidopt.db.engine import session_scope
from bidopt.db.models import OptDeployment, OptRun, OptRunConfig
from bidopt.jobs.optimize import run_optimizer
from bidopt.serve.api import create_app

FAST = {"xgb_num_rounds": 30, "min_segment_bids": 100, "min_domain_bids": 300}


@pytest.fixture
def tokens(platform_db):
    with session_scope(platform_db) as s:
        access.create_user(s, "olivia", "operator")
        access.create_user(s, "victor", "viewer")
        return {"operator": access.create_api_token(s, "olivia")[1], "viewer": access.create_api_token(s, "victor")[1]}


@pytest.fixture
def client(tokens):
    c = TestClient(create_app(), raise_server_exceptions=False)
    c.as_operator = {"Authorization": f"Bearer {tokens['operator']}"}
    c.as_viewer = {"Authorization": f"Bearer {tokens['viewer']}"}
    return c


def _complete(engine, run_id, validation="passed"):
    """Completed with small real artifacts: a split only switches to runs bidders can load."""
    complete_servable(engine, run_id, validation)


def _count(engine, model):
    with session_scope(engine) as s:
        return s.scalar(select(func.count()).select_from(model))


def test_entities_and_caller(client):
    assert client.get("/api/entities").status_code == 401
    me = client.get("/api/me", headers=client.as_viewer).json()
    assert me == {"username": "victor", "role": "viewer", "can_write": False, "can_admin": False}
    entities = client.get("/api/entities", headers=client.as_viewer).json()
    assert {e["entity_code"] for e in entities} == {"drugs_hcp", "auto_intenders"}
    drugs = client.get("/api/entities/drugs_hcp", headers=client.as_viewer).json()
    static = {k: v for k, v in drugs["static_configs"].items() if not k.startswith("guardrail_")}
    assert static == {"floor_available": False, "npi_enabled": True, "domain_enabled": True}
    assert drugs["static_configs"]["guardrail_enabled"] is True
    assert drugs["current_version"] == "v1"
    missing = client.get("/api/entities/nope", headers=client.as_viewer)
    assert missing.status_code == 404 and missing.json() == {"error": "unknown entity: nope"}


def test_create_run_records_the_caller_not_the_body(client, platform_db):
    res = client.post(
        "/api/entities/drugs_hcp/runs",
        headers=client.as_operator,
        json={"configs": {"target_win_rate": "0.45", "max_bid_cpm": 12}},
    )
    assert res.status_code == 201, res.text
    run = res.json()
    assert (run["status"], run["triggered_by"], run["trigger_type"]) == ("pending", "olivia", "api")
    assert run["configs"]["business"]["target_win_rate"] == 0.45
    spoof = client.post(
        "/api/entities/drugs_hcp/runs", headers=client.as_operator, json={"configs": {}, "triggered_by": "someone_else"}
    )
    assert spoof.status_code == 422 and "triggered_by" in spoof.json()["error"]
    listed = client.get("/api/runs?entity=drugs_hcp&status=pending", headers=client.as_viewer).json()
    assert [r["run_id"] for r in listed] == [run["run_id"]]


@pytest.mark.parametrize(
    "body,status,message",
    [
        ({"configs": {"target_win_rate": 1.5}}, 422, "target_win_rate must be < 1.0"),
        ({"configs": {"colour": "red"}}, 422, "unknown config key: colour"),
        ({"configs": {"max_bid_cpm": "lots"}}, 422, "max_bid_cpm must be a number"),
        ({"configs": "target_win_rate=0.4"}, 422, "configs"),
        ({}, 201, None),
    ],
)
def test_run_configs_are_validated_like_the_cli(client, platform_db, body, status, message):
    res = client.post("/api/entities/drugs_hcp/runs", headers=client.as_operator, json=body)
    assert res.status_code == status, res.text
    if message:
        assert message in res.json()["error"]
        assert _count(platform_db, OptRun) == 0 and _count(platform_db, OptRunConfig) == 0


@pytest.mark.parametrize(
    "configs_json,message",
    [
        (b'{"max_bid_cpm": 1' + b"0" * 400 + b"}", "max_bid_cpm must be a finite number"),  # was a 500
        (b'{"lookback_days": 1' + b"0" * 400 + b"}", "lookback_days must be <= 365"),
        (b'{"min_bid_cpm": 0}', "min_bid_cpm must be > 0.0"),
        (b'{"max_bid_cpm": "1e999"}', "max_bid_cpm must be a finite number"),
        (b'{"max_bid_cpm": "' + b"9" * 5000 + b'"}', "max_bid_cpm is 5000 characters long"),
    ],
)
def test_absurd_config_values_get_422_with_the_reason(client, platform_db, configs_json, message):
    res = client.post(
        "/api/entities/drugs_hcp/runs",
        headers=client.as_operator | {"Content-Type": "application/json"},
        content=b'{"configs": ' + configs_json + b"}",
    )
    assert res.status_code == 422, res.text
    assert message in res.json()["error"] and len(res.text) < 300
    assert _count(platform_db, OptRun) == 0 and _count(platform_db, OptRunConfig) == 0


def test_viewers_and_strangers_change_nothing(client, platform_db):
    a = client.post("/api/entities/drugs_hcp/runs", headers=client.as_operator, json={}).json()["run_id"]
    _complete(platform_db, a)
    for headers, status in ((client.as_viewer, 403), ({}, 401), ({"Authorization": "Bearer bo_forged"}, 401)):
        assert client.post("/api/entities/drugs_hcp/runs", headers=headers, json={}).status_code == status
        assert (
            client.put("/api/entities/drugs_hcp/split", headers=headers, json={"split": {a: 100}}).status_code == status
        )
    assert _count(platform_db, OptRun) == 1 and _count(platform_db, OptDeployment) == 0
    with session_scope(platform_db) as s:  # a revoked token is a stranger too
        token_row, token = access.create_api_token(s, "olivia", "short-lived")
        access.revoke_api_token(s, token_row.token_id)
    assert client.get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_split_rules_history_and_who_deployed(client, platform_db):
    ids = [
        client.post("/api/entities/drugs_hcp/runs", headers=client.as_operator, json={}).json()["run_id"]
        for _ in range(4)
    ]
    a, b, pending, failed = ids
    _complete(platform_db, a)
    _complete(platform_db, b)
    _complete(platform_db, failed, validation="failed")
    deployable = client.get("/api/entities/drugs_hcp/deployable-runs", headers=client.as_viewer).json()
    assert {r["run_id"] for r in deployable} == {a, b}
    put = client.put("/api/entities/drugs_hcp/split", headers=client.as_operator, json={"split": {a: 80, b: 20}})
    assert put.status_code == 200, put.text
    assert put.json()["runs"] == [{"run_id": a, "traffic_pct": 80}, {"run_id": b, "traffic_pct": 20}]
    assert put.json()["deployed_by"] == "olivia"
    for split, status, message in [
        ({a: 70, b: 20}, 422, "add up to 100, got 90"),
        ({a: 50, pending: 50}, 409, "is pending, not completed"),
        ({a: 50, failed: 50}, 409, "did not pass validation"),
        ({a: 50.5, b: 49.5}, 422, "whole number"),
        ([{"run_id": a, "traffic_pct": 50}, {"run_id": a, "traffic_pct": 50}], 422, "appears twice"),
        ({"20990101_000000": 100}, 404, "unknown run"),
    ]:
        res = client.put("/api/entities/drugs_hcp/split", headers=client.as_operator, json={"split": split})
        assert res.status_code == status and message in res.json()["error"], (split, res.text)
    current = client.get("/api/entities/drugs_hcp/split", headers=client.as_viewer).json()
    assert current["total_pct"] == 100 and len(current["runs"]) == 2  # the failed attempts changed nothing
    client.put("/api/entities/drugs_hcp/split", headers=client.as_operator, json={"split": {b: 100}})
    history = client.get("/api/entities/drugs_hcp/split/history", headers=client.as_viewer).json()
    assert [(h["is_active"], len(h["runs"])) for h in history] == [(True, 1), (False, 2)]
    assert history[1]["deactivated_at"] is not None


def test_concurrent_split_replacements_through_the_api(client, platform_db):
    a = client.post("/api/entities/drugs_hcp/runs", headers=client.as_operator, json={}).json()["run_id"]
    b = client.post("/api/entities/drugs_hcp/runs", headers=client.as_operator, json={}).json()["run_id"]
    _complete(platform_db, a)
    _complete(platform_db, b)
    codes = []

    def put(i):
        r = client.put("/api/entities/drugs_hcp/split", headers=client.as_operator, json={"split": {a: 100 - i, b: i}})
        codes.append(r.status_code)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(1, 21)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert codes == [200] * 20
    current = client.get("/api/entities/drugs_hcp/split", headers=client.as_viewer).json()
    assert current["total_pct"] == 100 and len(current["runs"]) == 2


def test_run_detail_bid_table_and_curves_of_a_real_run(client, platform):
    run_id = client.post("/api/entities/drugs_hcp/runs", headers=client.as_operator, json={"configs": FAST}).json()[
        "run_id"
    ]
    pending_bids = client.get(f"/api/runs/{run_id}/bids", headers=client.as_viewer)
    assert pending_bids.status_code == 409 and "no artifacts" in pending_bids.json()["error"]
    run_optimizer(once=True, use_ray=False)
    run = client.get(f"/api/runs/{run_id}", headers=client.as_viewer).json()
    assert run["status"] == "completed" and run["features"][0]["is_anchor"]
    assert set(run["metrics"]) >= {"win_rate_model", "ctr_model", "bid_landscape", "global_stats"}
    page = client.get(f"/api/runs/{run_id}/bids?offset=10&limit=25", headers=client.as_viewer).json()
    assert page["total"] > 100 and len(page["rows"]) == 25 and page["offset"] == 10
    assert isinstance(page["rows"][0]["bid_cpm"], float)
    defaults = client.get(f"/api/runs/{run_id}/bids?level=default", headers=client.as_viewer).json()
    assert defaults["total"] == 1 and defaults["rows"][0]["segment_key"].startswith("*")
    assert client.get(f"/api/runs/{run_id}/bids?limit=5000", headers=client.as_viewer).status_code == 422
    curves = client.get(f"/api/runs/{run_id}/curves", headers=client.as_viewer).json()
    assert len(curves["segments"]) == 8


def test_openapi_schema_and_ui_are_served(client):
    schema = client.get("/openapi.json").json()
    assert "/api/entities/{entity_code}/split" in schema["paths"]
    assert "put" in schema["paths"]["/api/entities/{entity_code}/split"]
    page = client.get("/")
    assert page.status_code == 200 and "/ui/app.js" in page.text
    assert "function abPage" in client.get("/ui/app.js").text
    assert client.get("/ui/../../etc/passwd").status_code == 404
    not_json = client.post(
        "/api/entities/drugs_hcp/runs",
        headers=client.as_operator,
        content=b"\x00{",
    )
    assert not_json.status_code in (400, 422) and "error" in not_json.json()
    assert client.get("/api/nowhere").json() == {"error": "Not Found"}


def test_a_split_bidders_cannot_load_is_refused_and_changes_nothing(client, platform_db):
    """409 naming the run and the reason, checked by the bidder's own loading code; nothing written."""
    from bidopt.artifacts import open_artifact_store

    ids = [
        client.post("/api/entities/drugs_hcp/runs", headers=client.as_operator, json={}).json()["run_id"]
        for _ in range(4)
    ]
    good, no_manifest, corrupt, no_default = ids
    _complete(platform_db, good)
    open_artifact_store(complete_servable(platform_db, no_manifest)).delete("manifest.json")
    open_artifact_store(complete_servable(platform_db, corrupt)).put_bytes(
        "suggested_bids.csv", b"segment_key,bid_cpm\n*,9\n"
    )
    complete_servable(platform_db, no_default, bids_csv=b"segment_key,bid_cpm\ncalifornia,2.5\n")
    assert (
        client.put("/api/entities/drugs_hcp/split", headers=client.as_operator, json={"split": {good: 100}}).status_code
        == 200
    )
    before = _count(platform_db, OptDeployment)
    for bad, reason in ((no_manifest, "NotFound"), (corrupt, "checksum"), (no_default, "no entity default row")):
        res = client.put(
            "/api/entities/drugs_hcp/split", headers=client.as_operator, json={"split": {good: 50, bad: 50}}
        )
        assert res.status_code == 409, res.text
        message = res.json()["error"]
        assert f"run {bad} cannot be served" in message and reason in message and "not changed" in message
    assert _count(platform_db, OptDeployment) == before
    current = client.get("/api/entities/drugs_hcp/split", headers=client.as_viewer).json()
    assert current["runs"] == [{"run_id": good, "traffic_pct": 100}]


def test_split_view_says_which_bidder_replicas_serve_it_and_why_others_lag(client, platform_db):
    """Replicas report after each refresh; the split view compares what they serve with the active
    split: live, lagging (with the replica's reason) or gone (no report for 3 intervals)."""
    from bidopt.artifacts import open_artifact_store
    from bidopt.bidder.loader import Refresher
    from bidopt.db.models import OptBidderReplica
    from bidopt.settings import get_settings

    a, b, c = [
        client.post("/api/entities/drugs_hcp/runs", headers=client.as_operator, json={}).json()["run_id"]
        for _ in range(3)
    ]
    for run_id in (a, b, c):
        _complete(platform_db, run_id)
    url = get_settings().database_url
    view = client.get("/api/entities/drugs_hcp/split", headers=client.as_viewer).json()
    assert view["bidders"] == {"live": False, "summary": "no bidder replica is reporting", "replicas": []}

    first, second, third = (Refresher(url, interval=60, replica_id=f"host:{i}:r") for i in (1, 2, 3))
    client.put("/api/entities/drugs_hcp/split", headers=client.as_operator, json={"split": {a: 100}})
    for r in (first, second, third):
        r.first_load(timeout=5)
    view = client.get("/api/entities/drugs_hcp/split", headers=client.as_viewer).json()
    assert view["bidders"]["live"] and view["bidders"]["summary"] == "live on all 3 bidder replicas"

    split = client.put("/api/entities/drugs_hcp/split", headers=client.as_operator, json={"split": {b: 100}}).json()
    first.refresh_once()
    with session_scope(platform_db) as s:  # the third stops reporting (killed) long ago
        row = s.get(OptBidderReplica, "host:3:r")
        row.reported_at -= timedelta(seconds=200)
    bidders = client.get("/api/entities/drugs_hcp/split", headers=client.as_viewer).json()["bidders"]
    states = {r["replica_id"]: r for r in bidders["replicas"]}
    assert not bidders["live"] and bidders["summary"] == "1 of 2 bidder replicas lag (1 gone)"
    assert states["host:1:r"]["state"] == "live" and states["host:1:r"]["split_id"] == split["split_id"]
    assert states["host:2:r"]["state"] == "lagging" and states["host:2:r"]["split_id"] == split["split_id"] - 1
    assert "has not refreshed since the change" in states["host:2:r"]["reason"]
    assert states["host:3:r"]["state"] == "gone" and "stopped without saying so" in states["host:3:r"]["reason"]
    with session_scope(platform_db) as s:  # silent for a while, not yet gone: its refresh may hang while
        row = s.get(OptBidderReplica, "host:3:r")  # it answers from an old split, so it counts as lagging
        row.reported_at += timedelta(seconds=120)
        row.refresh_seconds = 5
    bidders = client.get("/api/entities/drugs_hcp/split", headers=client.as_viewer).json()["bidders"]
    states = {r["replica_id"]: r for r in bidders["replicas"]}
    assert not bidders["live"] and bidders["summary"] == "2 of 3 bidder replicas lag"
    assert states["host:3:r"]["state"] == "silent" and "refresh hangs" in states["host:3:r"]["reason"]

    # a split whose run a replica then cannot load (its manifest removed after the switch): the reason
    client.put("/api/entities/drugs_hcp/split", headers=client.as_operator, json={"split": {c: 100}})
    first.refresh_once()
    with session_scope(platform_db) as s:
        output = q.get_run(s, c).s3_output_path
    open_artifact_store(output).delete("manifest.json")
    second.refresh_once()
    states = {
        r["replica_id"]: r
        for r in client.get("/api/entities/drugs_hcp/split", headers=client.as_viewer).json()["bidders"]["replicas"]
    }
    assert states["host:1:r"]["state"] == "live"
    assert (
        states["host:2:r"]["state"] == "lagging"
        and f"drugs_hcp split {split['split_id'] + 1}: NotFound" in states["host:2:r"]["reason"]
    )
    with session_scope(platform_db) as s:  # the silent third is gone for good by now
        s.get(OptBidderReplica, "host:3:r").reported_at -= timedelta(seconds=300)
    second.stop()  # a clean stop removes the replica's row: it is not lagging, it is not there
    bidders = client.get("/api/entities/drugs_hcp/split", headers=client.as_viewer).json()["bidders"]
    assert bidders["live"] and {r["replica_id"] for r in bidders["replicas"]} == {"host:1:r", "host:3:r"}

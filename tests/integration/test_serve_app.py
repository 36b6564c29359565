"""The Ray Serve apps (local Ray, HAProxy ingress), reached over HTTP on loopback."""

import json
import socket

import httpx
import pytest

from bidopt.db import queries as q
from bidopt.db.engine import session_scope
from bidopt.jobs.optimize import run_optimizer
from bidopt.serve.apps import BIDDER_AUTOSCALING, SERVE_MODE_ENV

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_autoscaling_config_has_no_misspelt_fields():
    """Serve ignores unknown autoscaling fields without a word, so check them against its model."""
    from ray.serve.config import AutoscalingConfig, AutoscalingPolicy

    assert set(BIDDER_AUTOSCALING) <= set(AutoscalingConfig.model_fields)
    assert set(BIDDER_AUTOSCALING["policy"]) <= set(AutoscalingPolicy.model_fields)
    config = AutoscalingConfig(**BIDDER_AUTOSCALING)
    assert (config.min_replicas, config.max_replicas) == (2, 4)
    assert config.policy.policy_function == "bidopt.serve.autoscaling:BidderLoadPolicy"
    assert config.look_back_period_s > config.metrics_interval_s  # else Serve warns, and will refuse
    policy = config.policy.get_policy()(**config.policy.policy_kwargs)  # what Serve's controller does
    assert (policy.target_cpu, policy.max_loop_lag_ms) == (0.6, 10.0)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_bidopt_serve_deploys_management_and_bidder(platform, monkeypatch):
    ray = pytest.importorskip("ray")
    from ray import serve
    from ray.serve.context import _get_global_client

    from bidopt.serve.apps import ensure_local_operator_token, run_apps

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    for key, value in SERVE_MODE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("BIDOPT_BIDDER_REFRESH_SECONDS", "0.5")
    monkeypatch.setenv("BIDOPT_CONTROL_LOOP_SECONDS", "0.5")
    from bidopt import service

    with session_scope(platform) as s:
        service.set_schedule(s, "auto_intenders", 24, {}, created_by="t")  # due now: the control loop makes its run
        token = ensure_local_operator_token(s)
        assert token.startswith("bo_")
        assert ensure_local_operator_token(s) is None  # printed once: a second start makes none
        ids = [q.create_run(s, "drugs_hcp", {"xgb_num_rounds": 20}, triggered_by="t").run_id for _ in range(2)]
    run_optimizer(once=True, use_ray=False)
    try:
        url = run_apps(port=_free_port())
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.get(url + "api/me", headers=headers, timeout=30).json()["role"] == "operator"
        assert httpx.get(url + "api/entities", timeout=30).status_code == 401
        assert "/ui/app.js" in httpx.get(url, timeout=30).text

        bid_request = {
            "id": "q1",
            "imp": [{"id": "1"}],
            "device": {"geo": {"region": "TX"}, "os": "Android"},
            "user": {"id": "someone"},
        }
        assert httpx.post(url + "openrtb2/drugs_hcp", json=bid_request, timeout=30).status_code == 204  # no split
        split = httpx.put(
            url + "api/entities/drugs_hcp/split", headers=headers, timeout=30, json={"split": {ids[0]: 80, ids[1]: 20}}
        )
        assert split.status_code == 200, split.text
        import time

        deadline, answer = time.time() + 30, None
        while time.time() < deadline:  # the replicas notice the new split on their own refresh
            answer = httpx.post(url + "openrtb2/drugs_hcp", json=bid_request, timeout=30)
            if answer.status_code == 200:
                break
            time.sleep(0.5)
        assert answer.status_code == 200, answer.headers
        bid = answer.json()["seatbid"][0]["bid"][0]
        assert answer.json()["id"] == "q1" and bid["ext"]["run_id"] in ids
        bad = httpx.post(url + "openrtb2/drugs_hcp", content=b'{"id": 1}', timeout=30)
        assert bad.status_code == 400 and "id must be" in bad.json()["error"]

        details = _get_global_client().get_serve_details()
        deployment = details["applications"]["bidder"]["deployments"]["bidder"]
        live = deployment["deployment_config"]
        assert live["max_ongoing_requests"] == 100
        scaling = live["autoscaling_config"]
        assert {k: scaling[k] for k in BIDDER_AUTOSCALING if k != "policy"} == {
            k: v for k, v in BIDDER_AUTOSCALING.items() if k != "policy"
        }
        assert {k: scaling["policy"][k] for k in ("policy_function", "policy_kwargs")} == BIDDER_AUTOSCALING["policy"]
        assert live["ray_actor_options"]["num_cpus"] == 0.25
        assert json.dumps(details["applications"]["management"]["status"]) == '"RUNNING"'
        # the management app keeps its one replica, whatever the bidder's load
        management = details["applications"]["management"]["deployments"]["management"]
        assert management["target_num_replicas"] == 1
        assert management["deployment_config"].get("autoscaling_config") is None
        # the control loop: its own app, no route, one replica ticking; it created the scheduled run
        assert details["applications"]["control"]["status"] == "RUNNING"
        assert details["applications"]["control"]["route_prefix"] is None
        # the first call through a new handle waits for the controller to tell the router about the
        # replica: on a loaded 2-core host that once took over 30 s (seen with other work beside
        # the suite), so the call is retried until a deadline like the waits above
        deadline, loop = time.time() + 90, None
        while loop is None:
            try:
                loop = serve.get_app_handle("control").status.remote().result(timeout_s=15)
            except TimeoutError:
                if time.time() > deadline:
                    raise
        assert loop["alive"] and loop["interval_seconds"] == 0.5

        def scheduled_runs():
            with session_scope(platform) as s:
                return [r for r in q.list_runs(s, entity_code="auto_intenders") if r.trigger_type == "scheduled"]

        deadline = time.time() + 30
        while time.time() < deadline and not scheduled_runs():
            time.sleep(0.5)
        scheduled = scheduled_runs()
        assert len(scheduled) == 1 and scheduled[0].triggered_by == "scheduler"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_bidder_replicas_take_traffic_only_after_loading_the_active_split(platform, monkeypatch):
    """Serve marks a replica ready when its constructor returns, and BidderCore loads the active
    split before that: the very first request after the deploy gets a bid, not a 204. Each replica
    reports what it serves (GET /openrtb2/_status and opt_bidder_replicas) and removes its row
    when Serve stops it."""
    ray = pytest.importorskip("ray")
    from ray import serve

    from bidopt.db import bidder_status
    from bidopt.serve.apps import run_apps

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    # Serve's default proxy: readiness is the replica's business whatever the ingress, and HAProxy
    # binds fixed stats ports, so a second Serve on the same host (a parallel test) cannot start it
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")
    monkeypatch.setenv("BIDOPT_BIDDER_MIN_REPLICAS", "2")
    with session_scope(platform) as s:
        run_id = q.create_run(s, "drugs_hcp", {"xgb_num_rounds": 20}, triggered_by="t").run_id
    run_optimizer(once=True, use_ray=False)
    with session_scope(platform) as s:
        split_id = q.replace_traffic_split(s, "drugs_hcp", {run_id: 100}, deployed_by="t")[0].split_id
    try:
        url = run_apps(port=_free_port())  # returns once the deployments are running
        bid_request = {
            "id": "q1",
            "imp": [{"id": "1"}],
            "device": {"geo": {"region": "TX"}, "os": "Android"},
            "user": {"id": "someone"},
        }
        first = httpx.post(url + "openrtb2/drugs_hcp", json=bid_request, timeout=30)
        assert first.status_code == 200, first.headers
        assert first.json()["ext"]["split_id"] == split_id
        status = httpx.get(url + "openrtb2/_status", timeout=30).json()
        assert status["ready"] and status["serving"]["drugs_hcp"]["split_id"] == split_id
        with session_scope(platform) as s:
            rows = bidder_status.list_replicas(s)
            live = bidder_status.split_liveness(s, "drugs_hcp", split_id)
        assert len(rows) == 2 and all(r.ready for r in rows) and status["replica_id"] in {r.replica_id for r in rows}
        assert live["live"] and live["summary"] == "live on all 2 bidder replicas"
        serve.delete("bidder")  # a clean stop: each replica's __del__ removes its row
        with session_scope(platform) as s:
            assert bidder_status.list_replicas(s) == []
    finally:
        serve.shutdown()
        ray.shutdown()

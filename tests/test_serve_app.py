"""The management app on Ray Serve (local Ray), reached over HTTP on loopback."""

import socket

import httpx
import pytest

from bidopt.db.engine import session_scope

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_bidopt_serve_deploys_the_management_app(platform_db, monkeypatch):
    ray = pytest.importorskip("ray")
    from ray import serve

    from bidopt.serve.apps import ensure_local_operator_token, run_apps

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with session_scope(platform_db) as s:
        token = ensure_local_operator_token(s)
        assert token.startswith("bo_")
        assert ensure_local_operator_token(s) is None  # printed once: a second start makes none
    try:
        url = run_apps(port=_free_port())
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.get(url + "api/me", headers=headers, timeout=30).json()["role"] == "operator"
        assert httpx.get(url + "api/entities", timeout=30).status_code == 401
        created = httpx.post(url + "api/entities/drugs_hcp/runs", headers=headers, json={}, timeout=30)
        assert created.status_code == 201 and created.json()["triggered_by"] == "local"
        assert "/ui/app.js" in httpx.get(url, timeout=30).text
        status = serve.status().applications["management"]
        assert status.status == "RUNNING"
    finally:
        serve.shutdown()
        ray.shutdown()

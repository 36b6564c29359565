"""The optimizer job on a local Ray: one named task per run, runs of different entities in parallel."""

import pytest

from bidopt.data import generate_into_warehouse, get_warehouse
from bidopt.db import queries as q
from bidopt.db.engine import session_scope
from bidopt.jobs.optimize import run_optimizer
from bidopt.simulator import MarketSpec

pytestmark = pytest.mark.slow


@pytest.fixture
def local_ray(monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # a private, loopback-only test cluster
    ray.init(address="local", num_cpus=2, include_dashboard=True, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_runs_of_two_entities_train_in_parallel_as_named_tasks(platform_db, local_ray):
    with get_warehouse() as wh:
        for code in ("drugs_hcp", "auto_intenders"):
            generate_into_warehouse(wh, MarketSpec(code, rows=150_000, seed=9))
    ids = {}
    with session_scope(platform_db) as s:
        for code in ("drugs_hcp", "auto_intenders"):
            ids[code] = q.create_run(s, code, {"xgb_num_rounds": 150}, triggered_by="t").run_id
    report = run_optimizer(once=True, parallel=2)
    results = {r["run_id"]: r for r in report.processed}
    assert {r["status"] for r in results.values()} == {"completed"}
    a, b = results[ids["drugs_hcp"]], results[ids["auto_intenders"]]
    assert a["pid"] != b["pid"]  # two worker processes
    assert a["began"] < b["ended"] and b["began"] < a["ended"]  # their work overlapped in time

    from ray.util.state import list_tasks

    names = {t.name for t in list_tasks(filters=[("name", "!=", "")], limit=1000)}
    assert {f"optimize drugs_hcp {ids['drugs_hcp']}", f"optimize auto_intenders {ids['auto_intenders']}"} <= names

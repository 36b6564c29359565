"""Cluster definitions, the optimizer on two nodes, and job submission through the Ray Jobs API."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner

from bidopt.cli.main import cli
from bidopt.db import queries as q
from bidopt.db.engine import session_scope

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_is_a_valid_ray_cluster_definition():
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)
    validate_config(fillout_defaults(cfg))
    assert cfg["provider"]["type"] == "aws" and cfg["head_node_type"] in cfg["available_node_types"]
    workers = {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}
    assert workers and all(v["max_workers"] >= v["min_workers"] for v in workers.values())
    setup = "\n".join(cfg["setup_commands"])
    assert "pip install" in setup and "~/bidopt" in setup  # installs this package
    for name in ("database_url", "warehouse_url", "artifact_url", "cache_url"):
        assert name in setup  # each BIDOPT_* setting is provided to the nodes
    for cmds in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        assert any("bidopt.env" in c and "ray start" in c for c in cmds)
    assert "RAY_SERVE_ENABLE_HA_PROXY=1" in setup


def test_serve_config_deploys_the_two_apps():
    from ray.serve.schema import ServeDeploySchema

    from bidopt.serve import apps

    config = ServeDeploySchema(**yaml.safe_load((ROOT / "serve_config.yaml").read_text()))
    by_name = {a.name: a for a in config.applications}
    assert set(by_name) == {"management", "bidder"}
    for app in config.applications:
        module, _, attr = app.import_path.partition(":")
        assert module == "bidopt.serve.apps" and hasattr(apps, attr)
    from ray.serve.config import AutoscalingConfig

    autoscaling = by_name["bidder"].deployments[0].autoscaling_config
    assert set(autoscaling) <= set(AutoscalingConfig.model_fields)


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_optimizer_tasks_of_two_entities_land_on_both_nodes(platform, monkeypatch):
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster
    from ray.util.state import list_tasks

    from bidopt.jobs.optimize import run_optimizer

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address)
        with session_scope(platform) as s:
            ids = {code: q.create_run(s, code, {"xgb_num_rounds": 60}, triggered_by="t").run_id
                   for code in ("drugs_hcp", "auto_intenders")}
        report = run_optimizer(once=True, parallel=2)
        assert {r["status"] for r in report.processed} == {"completed"}
        tasks = {t.name: t.node_id for t in list_tasks(filters=[("name", "!=", "")], limit=1000)
                 if t.name.startswith("optimize ")}
        nodes = {tasks[f"optimize {code} {run_id}"] for code, run_id in ids.items()}
        assert len(nodes) == 2  # one CPU per node, one task per run: both nodes worked
    finally:
        ray.shutdown()
        cluster.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_optimizer_submit_runs_the_job_on_a_cluster(platform):
    """A real `ray start --head --block` cluster (stopped by its PID), the Jobs API, followed logs."""
    port, dash = _free_port(), _free_port()
    # its own RAY_TMPDIR: `ray start` records itself as the host's current cluster there, and that
    # record outlives a cluster stopped by PID
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": str(ray_tmp),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                             f"--port={port}", f"--dashboard-port={dash}", "--num-cpus=2",
                             "--include-dashboard=true", "--dashboard-host=127.0.0.1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        address = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 90
        while True:
            try:
                if httpx.get(address + "/api/version", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline and head.poll() is None, "the Ray head did not come up"
            time.sleep(1)
        with session_scope(platform) as s:
            run_id = q.create_run(s, "drugs_hcp", {"xgb_num_rounds": 40}, triggered_by="t").run_id
        res = CliRunner().invoke(cli, ["optimizer", "submit", "--address", address, "--python", sys.executable],
                                 env={"RAY_AUTH_MODE": "disabled"})
        assert res.exit_code == 0, res.output
        assert f"run {run_id} completed" in res.output and "SUCCEEDED" in res.output
        with session_scope(platform) as s:
            assert q.get_run(s, run_id).status == "completed"
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # this cluster only; never `ray stop`
        head.wait(timeout=60)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    shared = Path("/tmp/ray/ray_current_cluster")
    assert not shared.exists() or f":{port}" not in shared.read_text()

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

ROOT = Path(__file__).resolve().parents[2]


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
    for name in ("database_url", "warehouse_url", "artifact_url", "cache_url", "events_url", "notice_secret"):
        assert name in setup  # each BIDOPT_* setting is provided to the nodes
    for cmds in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        assert any("bidopt.env" in c and "ray start" in c for c in cmds)
    assert "RAY_SERVE_ENABLE_HA_PROXY=1" in setup


def test_serve_config_deploys_the_three_apps():
    from ray.serve.schema import ServeDeploySchema

    from bidopt.serve import apps

    config = ServeDeploySchema(**yaml.safe_load((ROOT / "serve_config.yaml").read_text()))
    by_name = {a.name: a for a in config.applications}
    assert set(by_name) == {"management", "bidder", "control"}
    assert by_name["control"].route_prefix is None  # the control loop has no HTTP route
    for app in config.applications:
        module, _, attr = app.import_path.partition(":")
        assert module == "bidopt.serve.apps" and hasattr(apps, attr)
    from ray.serve.config import AutoscalingConfig

    autoscaling = by_name["bidder"].deployments[0].autoscaling_config
    assert set(autoscaling) <= set(AutoscalingConfig.model_fields)
    # Serve's controller instantiates the policy with these: the class logs bad ones and falls back to
    # its defaults (an exception there would stop the controller), so check them strictly here
    from bidopt.serve.autoscaling import POLICY_IMPORT_PATH, check_policy_kwargs

    assert autoscaling["policy"]["policy_function"] == POLICY_IMPORT_PATH
    kwargs = autoscaling["policy"]["policy_kwargs"]
    assert check_policy_kwargs(kwargs) == kwargs


def test_serve_config_matches_what_bidopt_serve_deploys(monkeypatch):
    """serve_config.yaml (a cluster) and `bidopt serve` (run_apps) deploy the same apps: same import
    paths, route prefixes, max_ongoing_requests and logging; the bidder's autoscaling differs only in
    min/max_replicas (sized for cluster.yaml's bidder nodes there, for one machine in the code)."""
    import importlib

    from ray import serve
    from ray.serve.config import AutoscalingConfig

    from bidopt.jobs import ray_runtime
    from bidopt.serve import apps
    from bidopt.settings import Settings

    deployed = {}  # app name -> (route prefix, the deployment run_apps deploys)
    monkeypatch.setattr(apps, "start_ray", lambda: None)
    monkeypatch.setattr(ray_runtime, "bidder_replica_options", lambda: {"num_cpus": 0.25})
    monkeypatch.setattr(serve, "start", lambda **_: None)
    monkeypatch.setattr(
        serve,
        "run",
        lambda app, *, name, route_prefix: deployed.setdefault(name, (route_prefix, app._bound_deployment)),
    )
    apps.run_apps()

    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    assert config["http_options"]["port"] == 8000  # run_apps' default port
    assert {a["name"] for a in config["applications"]} == set(deployed)
    for app in config["applications"]:
        route_prefix, code = deployed[app["name"]]
        assert app["route_prefix"] == route_prefix, app["name"]
        module, _, attr = app["import_path"].partition(":")
        bound = getattr(importlib.import_module(module), attr)  # the import path resolves ...
        assert isinstance(bound, serve.Application)
        assert bound._bound_deployment.func_or_class is code.func_or_class  # ... to what run_apps deploys
        for options in app.get("deployments", []):
            assert options["name"] == code.name
            assert options.get("max_ongoing_requests", code.max_ongoing_requests) == code.max_ongoing_requests
            logging = code._deployment_config.logging_config
            for key, value in options.get("logging_config", {}).items():
                assert logging[key] == value, key
            yaml_scaling = dict(options.get("autoscaling_config", {}))
            if yaml_scaling:
                code_scaling = code._deployment_config.autoscaling_config
                assert set(yaml_scaling) == set(apps.BIDDER_AUTOSCALING)
                assert set(yaml_scaling) <= set(AutoscalingConfig.model_fields)
                for key in set(yaml_scaling) - {"min_replicas", "max_replicas", "policy"}:
                    assert yaml_scaling[key] == apps.BIDDER_AUTOSCALING[key] == getattr(code_scaling, key), key
                policy = code_scaling.policy
                assert yaml_scaling["policy"] == apps.BIDDER_AUTOSCALING["policy"]
                assert yaml_scaling["policy"] == {
                    "policy_function": policy.policy_function,
                    "policy_kwargs": policy.policy_kwargs,
                }
    bidder_logging = deployed["bidder"][1]._deployment_config.logging_config
    assert bidder_logging["enable_access_log"] is False and bidder_logging["log_level"] == "WARNING"
    # The code's bounds are one machine's: the settings' defaults.
    fields = Settings.model_fields
    assert apps.BIDDER_AUTOSCALING["min_replicas"] == fields["bidder_min_replicas"].default
    assert apps.BIDDER_AUTOSCALING["max_replicas"] == fields["bidder_max_replicas"].default
    assert apps.BIDDER_AUTOSCALING["upscale_delay_s"] == fields["bidder_upscale_delay_seconds"].default
    assert apps.BIDDER_AUTOSCALING["downscale_delay_s"] == fields["bidder_downscale_delay_seconds"].default
    assert apps.BIDDER_AUTOSCALING["policy"]["policy_kwargs"] == {
        "target_cpu": fields["bidder_target_cpu"].default,
        "max_loop_lag_ms": fields["bidder_max_loop_lag_ms"].default,
    }


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
            ids = {
                code: q.create_run(s, code, {"xgb_num_rounds": 60}, triggered_by="t").run_id
                for code in ("drugs_hcp", "auto_intenders")
            }
        report = run_optimizer(once=True, parallel=2)
        assert {r["status"] for r in report.processed} == {"completed"}
        tasks = {
            t.name: t.node_id
            for t in list_tasks(filters=[("name", "!=", "")], limit=1000)
            if t.name.startswith("optimize ")
        }
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
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_TMPDIR": str(ray_tmp),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            f"--dashboard-port={dash}",
            "--num-cpus=2",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
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
        res = CliRunner().invoke(
            cli,
            ["optimizer", "submit", "--address", address, "--python", sys.executable],
            env={"RAY_AUTH_MODE": "disabled"},
        )
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


# ----------------------------------------------------------------------------- node resources


def test_bidder_replicas_request_the_bidder_resource_only_where_a_node_declares_it():
    from bidopt.jobs.ray_runtime import BIDDER_REPLICA_CPUS, bidder_replica_options

    laptop = [{"CPU": 2.0, "memory": 4e9}]
    assert bidder_replica_options(laptop) == {"num_cpus": BIDDER_REPLICA_CPUS}  # `make demo` unchanged
    optimizer_only = [{"CPU": 4.0}, {"CPU": 8.0, "optimizer": 4.0}]
    assert bidder_replica_options(optimizer_only) == {"num_cpus": BIDDER_REPLICA_CPUS}
    both = [{"CPU": 4.0}, {"CPU": 8.0, "optimizer": 4.0}, {"CPU": 4.0, "bidder": 4.0}]
    assert bidder_replica_options(both) == {"num_cpus": BIDDER_REPLICA_CPUS, "resources": {"bidder": 1}}


@pytest.mark.parametrize(
    "bidder_node",
    [{"bidder": 4.0}, {"CPU": 0.1, "bidder": 4.0}, {"CPU": 4.0, "bidder": 0.5}],
    ids=["no-cpus", "too-few-cpus", "too-little-bidder"],
)
def test_a_bidder_replica_no_node_can_host_is_refused_with_the_reason(bidder_node):
    """Deployed anyway, such replicas would stay pending and `serve.run` would wait forever."""
    from bidopt.jobs.ray_runtime import UnplaceableError, bidder_replica_options

    nodes = [{"CPU": 4.0}, {"CPU": 8.0, "optimizer": 4.0}, bidder_node]
    with pytest.raises(UnplaceableError, match=r"no node .* can host a bidder replica, which requests") as err:
        bidder_replica_options(nodes)
    assert "'bidder': 1" in str(err.value) and "bidder_worker" in str(err.value)


def test_cluster_yaml_and_serve_config_request_what_the_node_types_declare(monkeypatch):
    """Each kind of work requests its own node resource, in amounts the node types can hold."""
    from bidopt.jobs import ray_runtime
    from bidopt.jobs.ray_runtime import BIDDER_RESOURCE, OPTIMIZER_RESOURCE

    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    types = cluster["available_node_types"]
    declares = {name: set(t["resources"]) & {OPTIMIZER_RESOURCE, BIDDER_RESOURCE} for name, t in types.items()}
    assert declares[cluster["head_node_type"]] == set()  # the head hosts neither kind
    assert sorted(declares.values(), key=sorted)[1:] == [{BIDDER_RESOURCE}, {OPTIMIZER_RESOURCE}]
    bidder_type = next(t for name, t in types.items() if declares[name] == {BIDDER_RESOURCE})
    optimizer_type = next(t for name, t in types.items() if declares[name] == {OPTIMIZER_RESOURCE})

    # bidder replicas: serve_config.yaml asks exactly what `bidopt serve` asks on such a cluster
    serve_config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    bidder_app = next(a for a in serve_config["applications"] if a["name"] == "bidder")
    deployment = bidder_app["deployments"][0]
    node = {"CPU": 4.0, **{k: float(v) for k, v in bidder_type["resources"].items()}}
    assert deployment["ray_actor_options"] == ray_runtime.bidder_replica_options([{"CPU": 8.0}, node])
    per_replica = deployment["ray_actor_options"]["resources"][BIDDER_RESOURCE]
    replicas_per_node = bidder_type["resources"][BIDDER_RESOURCE] // per_replica
    assert replicas_per_node >= 1
    autoscaling = deployment["autoscaling_config"]
    assert autoscaling["max_replicas"] <= replicas_per_node * bidder_type["max_workers"]
    assert autoscaling["min_replicas"] <= replicas_per_node * bidder_type["min_workers"]

    # optimizer tasks: at least one per optimizer node
    monkeypatch.setattr(ray_runtime, "declared_resources", lambda: {OPTIMIZER_RESOURCE, BIDDER_RESOURCE})
    per_task = ray_runtime.optimizer_task_options()["resources"][OPTIMIZER_RESOURCE]
    assert optimizer_type["resources"][OPTIMIZER_RESOURCE] // per_task >= 1


def test_node_resources_always_requests_both_kinds_with_no_live_node_declaring_them(monkeypatch):
    """A node type that scales from zero has no live node to declare its resource; only a pending
    request for it makes the autoscaler start one. cluster.yaml sets BIDOPT_NODE_RESOURCES=always."""
    from bidopt.jobs import ray_runtime
    from bidopt.jobs.ray_runtime import BIDDER_RESOURCE, OPTIMIZER_RESOURCE
    from bidopt.settings import reset_settings_cache

    head_only = [{"CPU": 4.0}]
    assert "resources" not in ray_runtime.bidder_replica_options(head_only)  # auto: nothing declared
    monkeypatch.setenv("BIDOPT_NODE_RESOURCES", "always")
    reset_settings_cache()
    assert ray_runtime.optimizer_task_options()["resources"] == {OPTIMIZER_RESOURCE: 1}  # no Ray asked
    assert ray_runtime.bidder_replica_options(head_only)["resources"] == {BIDDER_RESOURCE: 1}
    cluster = (ROOT / "cluster.yaml").read_text()
    assert "BIDOPT_NODE_RESOURCES=always" in cluster


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_optimizer_tasks_never_share_a_node_with_bidder_replicas(platform_db, monkeypatch):
    """A head, an optimizer node and a bidder node, 2 CPUs each but the head's 0. Four one-CPU tasks
    at once cannot fit on one node, so without the resource requests they spread over both worker
    nodes, and Serve spreads the replicas too: a task would share a node with a replica."""
    ray = pytest.importorskip("ray")
    from ray import serve
    from ray.cluster_utils import Cluster
    from ray.serve.context import _get_global_client

    from bidopt.jobs.ray_runtime import optimizer_task_options
    from bidopt.serve.apps import SERVE_MODE_ENV, run_apps

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    for key, value in {**SERVE_MODE_ENV, "RAY_SERVE_ENABLE_HA_PROXY": "0"}.items():  # fewer processes
        monkeypatch.setenv(key, value)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    optimizer_node = cluster.add_node(num_cpus=2, resources={"optimizer": 2})
    bidder_node = cluster.add_node(num_cpus=2, resources={"bidder": 4})
    monkeypatch.setenv("BIDOPT_RAY_ADDRESS", cluster.address)
    try:
        run_apps(port=_free_port())
        replicas = _get_global_client().get_serve_details()["applications"]["bidder"]["deployments"]["bidder"]
        assert replicas["deployment_config"]["ray_actor_options"]["resources"] == {"bidder": 1}
        replica_nodes = {r["node_id"] for r in replicas["replicas"]}
        assert len(replicas["replicas"]) == 2

        @ray.remote
        def optimizer_stand_in(seconds: float) -> str:
            time.sleep(seconds)  # long enough that the four overlap
            return ray.get_runtime_context().get_node_id()

        refs = [
            optimizer_stand_in.options(name=f"optimize {i}", **optimizer_task_options()).remote(2.0) for i in range(4)
        ]
        task_nodes = set(ray.get(refs, timeout=300))
        assert not task_nodes & replica_nodes, "an optimizer task ran on a node hosting a bidder replica"
        assert (task_nodes, replica_nodes) == ({optimizer_node.node_id}, {bidder_node.node_id})
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()

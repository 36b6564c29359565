"""Connecting to Ray the same way from every entry point."""

from __future__ import annotations

import os

from bidopt.settings import get_settings


def worker_env() -> dict[str, str]:
    """The driver's resolved settings for Ray workers, which may run elsewhere or in another
    folder: relative defaults (``./.bidopt``) become absolute URLs here."""
    s = get_settings()
    env = {k: v for k, v in os.environ.items() if k.startswith("BIDOPT_") or k.startswith("AWS_")}
    env.update(
        {
            "BIDOPT_HOME": str(s.home),
            "BIDOPT_DATABASE_URL": s.database_url,
            "BIDOPT_WAREHOUSE_URL": s.warehouse_url,
            "BIDOPT_ARTIFACT_URL": s.artifact_url,
            "BIDOPT_CACHE_URL": s.cache_url,
            "BIDOPT_EVENTS_URL": s.events_url,
        }
    )
    return env


def starts_local_ray() -> bool:
    """Whether ``ensure_ray`` in this process starts a Ray of its own (and so must stop it), rather
    than joining a cluster somebody else runs (``BIDOPT_RAY_ADDRESS``, or a `ray job submit` driver)."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ and get_settings().ray_address in (None, "", "local")


def ensure_ray(**init_kwargs) -> None:
    """``ray.init`` at ``BIDOPT_RAY_ADDRESS`` (unset: a local Ray), once per process."""
    import ray

    if ray.is_initialized():
        return
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:
        # A driver started by `ray job submit`: the job's runtime env already reaches its tasks,
        # and Ray refuses a second one that names the same variables.
        ray.init(log_to_driver=True, **init_kwargs)
        return
    # Unset means a new local Ray ("local"), never whatever cluster /tmp/ray/ray_current_cluster
    # names: that file outlives a cluster stopped by PID, and ray.init() would wait on it forever.
    ray.init(
        address=get_settings().ray_address or "local",
        runtime_env={"env_vars": worker_env()},
        log_to_driver=True,
        **init_kwargs,
    )


# Custom node resources that cluster.yaml declares on its node types. Optimizer tasks and bidder
# replicas each request their own kind, so that where both kinds of node exist an optimizer task
# never lands on a bidder node (and the reverse). A cluster that declares neither (a laptop, a
# single `ray start --head`) requests nothing extra, so `make demo` works unchanged.
# With BIDOPT_NODE_RESOURCES=always (cluster.yaml sets it) both are requested whatever is live now:
# a node type that scales from zero has no live node to declare its resource, and only a pending
# request for it makes the autoscaler start one.
#
# Amounts, kept coherent with cluster.yaml (tests/integration/test_cluster.py checks them):
# * an optimizer task takes 1 CPU and 1 `optimizer`; optimizer_worker (m6i.2xlarge, 8 vCPUs)
#   declares `optimizer: 4`, so 4 runs share a node and XGBoost gets about 2 cores each.
# * a bidder replica takes 0.25 CPU (a logical share, so that replicas fit next to the optimizer on a
#   one-machine Ray) and 1 `bidder`; bidder_worker (c6i.xlarge, 4 vCPUs) declares `bidder: 4`: one
#   replica per core, since a replica's event loop uses one core at most. serve_config.yaml requests
#   the same amounts explicitly.
OPTIMIZER_RESOURCE = "optimizer"
BIDDER_RESOURCE = "bidder"
BIDDER_REPLICA_CPUS = 0.25
BIDDER_REPLICA_RESOURCES = {BIDDER_RESOURCE: 1}


class UnplaceableError(RuntimeError):
    """No live node of the cluster could ever host what a deployment asks for: deploying anyway
    would leave it pending (and ``serve.run`` waiting) forever."""


def live_node_resources() -> list[dict[str, float]]:
    """The total resources of each live node of the connected cluster (call after ``ensure_ray``)."""
    import ray

    return [dict(node["Resources"]) for node in ray.nodes() if node["Alive"]]


def declared_resources(nodes: list[dict[str, float]] | None = None) -> set[str]:
    """Which of the two kinds of node the connected cluster declares (call after ``ensure_ray``),
    or the given live nodes' totals declare; both under ``BIDOPT_NODE_RESOURCES=always``."""
    if get_settings().node_resources == "always":
        return {OPTIMIZER_RESOURCE, BIDDER_RESOURCE}
    if nodes is None:
        import ray

        totals = ray.cluster_resources()
    else:
        totals = {name: sum(node.get(name, 0) for node in nodes) for name in (OPTIMIZER_RESOURCE, BIDDER_RESOURCE)}
    return {name for name in (OPTIMIZER_RESOURCE, BIDDER_RESOURCE) if totals.get(name)}


def optimizer_task_options() -> dict:
    """``.options(...)`` of one optimizer task: one CPU, and an optimizer node where there are any."""
    options: dict = {"num_cpus": 1}
    if OPTIMIZER_RESOURCE in declared_resources():
        options["resources"] = {OPTIMIZER_RESOURCE: 1}
    return options


def actor_request(ray_actor_options: dict) -> dict[str, float]:
    """The resources one actor with these ``ray_actor_options`` holds, named as a node reports them."""
    request = {"CPU": ray_actor_options.get("num_cpus", 1), **ray_actor_options.get("resources", {})}
    if ray_actor_options.get("num_gpus"):
        request["GPU"] = ray_actor_options["num_gpus"]
    return {name: amount for name, amount in request.items() if amount}


def bidder_replica_options(nodes: list[dict[str, float]] | None = None) -> dict:
    """``ray_actor_options`` of one bidder replica, decided at deploy time: 0.25 CPU, and the
    ``bidder`` resource where the cluster declares bidder nodes (``nodes``: the live nodes' total
    resources, read from the connected cluster when not given).

    Raises ``UnplaceableError`` when the cluster declares bidder nodes (``BIDOPT_NODE_RESOURCES=auto``)
    but no live node has all that a replica requests (a bidder node with no CPUs, say), rather than
    deploying replicas that would wait forever."""
    nodes = live_node_resources() if nodes is None else nodes
    options: dict = {"num_cpus": BIDDER_REPLICA_CPUS}
    if BIDDER_RESOURCE not in declared_resources(nodes):
        return options
    options["resources"] = dict(BIDDER_REPLICA_RESOURCES)
    if get_settings().node_resources == "always":
        return options  # bidder nodes may still be starting: the autoscaler places the replicas
    request = actor_request(options)
    if not any(all(node.get(name, 0) >= amount for name, amount in request.items()) for node in nodes):
        offered = [{name: node.get(name, 0) for name in request} for node in nodes if node.get(BIDDER_RESOURCE)]
        raise UnplaceableError(
            f"no node of this Ray cluster can host a bidder replica, which requests {request}; the nodes "
            f"that declare {BIDDER_RESOURCE!r} have {offered}. Give the bidder nodes at least that much "
            f"(cluster.yaml: bidder_worker), or drop the {BIDDER_RESOURCE!r} resource from every node to "
            f"let replicas go anywhere."
        )
    return options

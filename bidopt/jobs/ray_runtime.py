"""Connecting to Ray the same way from every entry point."""

from __future__ import annotations

import os

from bidopt.settings import get_settings


def worker_env() -> dict[str, str]:
    """The driver's resolved settings for Ray workers, which may run elsewhere or in another
    folder: relative defaults (``./.bidopt``) become absolute URLs here."""
    s = get_settings()
    env = {k: v for k, v in os.environ.items() if k.startswith("BIDOPT_") or k.startswith("AWS_")}
    env.update({"BIDOPT_HOME": str(s.home), "BIDOPT_DATABASE_URL": s.database_url,
                "BIDOPT_WAREHOUSE_URL": s.warehouse_url, "BIDOPT_ARTIFACT_URL": s.artifact_url,
                "BIDOPT_CACHE_URL": s.cache_url, "BIDOPT_DECISION_LOG_DIR": s.decision_log_dir})
    return env


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
    ray.init(address=get_settings().ray_address or "local", runtime_env={"env_vars": worker_env()},
             log_to_driver=True, **init_kwargs)


# Custom node resources that cluster.yaml declares on its node types. Optimizer tasks and bidder
# replicas each request their own kind, so that where both kinds of node exist an optimizer task
# never lands on a bidder node (and the reverse). A cluster that declares neither (a laptop, a
# single `ray start --head`) requests nothing extra, so `make demo` works unchanged.
OPTIMIZER_RESOURCE = "optimizer"
BIDDER_RESOURCE = "bidder"


def declared_resources() -> set[str]:
    """Which of the two kinds of node the connected cluster declares (call after ``ensure_ray``)."""
    import ray

    return {name for name in (OPTIMIZER_RESOURCE, BIDDER_RESOURCE) if ray.cluster_resources().get(name)}


def optimizer_task_options() -> dict:
    """``.options(...)`` of one optimizer task: one CPU, and an optimizer node where there are any."""
    options: dict = {"num_cpus": 1}
    if OPTIMIZER_RESOURCE in declared_resources():
        options["resources"] = {OPTIMIZER_RESOURCE: 1}
    return options

"""Submitting the optimizer to a Ray cluster through the Ray Jobs API, and following it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def optimizer_entrypoint(*, once: bool = True, parallel: int = 2, python: str = "python") -> str:
    """The job's shell command: the ``bidopt optimizer run`` command, through ``python -m bidopt``."""
    return f"{python} -m bidopt optimizer run --parallel {parallel}" + (" --once" if once else "")


def submit_optimizer_job(
    address: str, *, once: bool = True, parallel: int = 2, python: str = "python", working_dir: str | None = None
) -> tuple[object, str]:
    """Submit ``python -m bidopt optimizer run`` (``optimizer_entrypoint``) to the cluster whose
    dashboard is ``address`` (``http://head:8265``); returns ``(client, job id)``. BIDOPT_* variables
    set here go along (what is not set comes from the cluster's own environment, see cluster.yaml)."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    entrypoint = optimizer_entrypoint(once=once, parallel=parallel, python=python)
    runtime_env: dict = {"env_vars": {k: v for k, v in os.environ.items() if k.startswith("BIDOPT_")}}
    if working_dir:
        runtime_env["working_dir"] = working_dir
    job_id = client.submit_job(
        entrypoint=entrypoint, runtime_env=runtime_env, metadata={"submitted_by": os.environ.get("BIDOPT_USER", "cli")}
    )
    return client, job_id


def follow_job(client, job_id: str, echo: Callable[[str], None]) -> str:
    """Print the job's logs as they come; return its final status."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            echo(chunk.rstrip("\n"))

    asyncio.run(tail())
    return str(client.get_job_status(job_id)).split(".")[-1]

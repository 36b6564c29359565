"""``bidopt optimizer``: run the optimizer job here, or submit it to a Ray cluster."""

from __future__ import annotations

import sys

import click


@click.group("optimizer")
def optimizer() -> None:
    """The optimizer job that turns pending runs into bid tables."""


@optimizer.command("run")
@click.option("--once", is_flag=True, help="Drain the pending queue and exit (default: keep polling).")
@click.option("--poll-seconds", default=10.0, show_default=True, help="Wait between polls of an empty queue.")
@click.option("--parallel", default=2, show_default=True, help="Runs optimised at the same time (Ray tasks).")
@click.option("--max-runs", type=int, default=None, help="Stop after this many runs.")
@click.option("--no-ray", is_flag=True, help="Run in this process, one run at a time, without Ray.")
def optimizer_run(once: bool, poll_seconds: float, parallel: int, max_runs: int | None, no_ray: bool) -> None:
    """Claim pending runs oldest first and optimise them, one Ray task per run.

    Progress lines name the run and its step; each finished run prints a summary.
    Exits non-zero with --once when any run failed.
    """
    from bidopt.jobs.optimize import describe_result, run_optimizer
    from bidopt.logs import configure_logging

    configure_logging()  # the job's progress lines (logger bidopt.optimizer) on the console
    report = run_optimizer(
        once=once,
        poll_seconds=poll_seconds,
        parallel=max(parallel, 1),
        use_ray=not no_ray,
        on_result=lambda result: click.echo(describe_result(result)),
        max_runs=max_runs,
    )
    if not report.processed:
        click.echo("no pending runs")
    if once and report.failed:
        sys.exit(1)


@optimizer.command("submit")
@click.option(
    "--address",
    envvar="BIDOPT_RAY_JOBS_ADDRESS",
    required=True,
    help="The cluster's dashboard / Jobs API, e.g. http://head:8265 (or $BIDOPT_RAY_JOBS_ADDRESS).",
)
@click.option("--once/--forever", default=True, show_default=True, help="Drain the queue and exit, or keep polling.")
@click.option("--parallel", default=2, show_default=True, help="Runs optimised at the same time.")
@click.option("--python", default="python", show_default=True, help="Python on the cluster's nodes.")
@click.option("--working-dir", default=None, help="Ship this folder with the job (default: the nodes' install).")
@click.option("--follow/--no-follow", default=True, show_default=True, help="Print the job's logs until it ends.")
def optimizer_submit(
    address: str, once: bool, parallel: int, python: str, working_dir: str | None, follow: bool
) -> None:
    """Submit the optimizer job to a Ray cluster (Ray Jobs API) and follow its logs.

    Exits non-zero when the job fails.
    """
    from bidopt.jobs.submit import follow_job, submit_optimizer_job

    client, job_id = submit_optimizer_job(address, once=once, parallel=parallel, python=python, working_dir=working_dir)
    click.echo(f"submitted job {job_id} to {address}")
    if follow:
        status = follow_job(client, job_id, click.echo)
        click.echo(f"job {job_id}: {status}")
        if status != "SUCCEEDED":
            sys.exit(1)

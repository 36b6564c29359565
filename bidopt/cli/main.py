"""``bidopt``: thin commands that parse, call a library function and print."""

from __future__ import annotations

import getpass
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import click
from sqlalchemy.exc import OperationalError, ProgrammingError

from bidopt.cli.output import print_json, print_mapping, print_table
from bidopt.configs import RUN_CONFIG_SPECS, parse_key_value_pairs
from bidopt.db import access
from bidopt.db import queries as q
from bidopt.db.engine import get_engine, session_scope
from bidopt.db.migrate import upgrade_database
from bidopt.db.seed import seed_demo_catalogue
from bidopt.errors import BidoptError
from bidopt.settings import get_settings, redact_url
from bidopt.views import entity_view, run_detail_view, run_row_view

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


class BidoptGroup(click.Group):
    """Turns expected errors into a one-line message and a non-zero exit."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BidoptError as exc:
            raise click.ClickException(str(exc)) from None
        except (OperationalError, ProgrammingError) as exc:
            text = str(exc.orig) if getattr(exc, "orig", None) else str(exc)
            if "no such table" in text or "does not exist" in text:
                raise click.ClickException(
                    "the metadata database has no schema yet: run `bidopt db upgrade`") from None
            raise click.ClickException(f"database error: {text.splitlines()[0]}") from None


def _session():
    return session_scope(get_engine(get_settings().database_url))


@contextmanager
def _optional_session():
    """A session when the metadata database has its schema, else None (data commands work without it)."""
    try:
        with _session() as s:
            q.list_entities(s)
            yield s
            return
    except (OperationalError, ProgrammingError):
        pass
    yield None


def _default_user() -> str:
    try:
        return os.environ.get("BIDOPT_USER") or getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "cli"


@click.group(cls=BidoptGroup)
@click.version_option(package_name="bidopt")
def cli() -> None:
    """bidopt: bid optimisation on Ray.

    Backends are chosen by the BIDOPT_* environment variables (see `bidopt settings`);
    by default everything is embedded under ./.bidopt/.
    """


@cli.command("settings")
@json_option
def settings_cmd(as_json: bool) -> None:
    """Show the settings in force, with passwords hidden."""
    values = get_settings().redacted()
    print_json(values) if as_json else print_mapping(values)


# ----------------------------------------------------------------------------- db


@cli.group()
def db() -> None:
    """The metadata database."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema to the latest revision."""
    url = get_settings().database_url
    upgrade_database(url)
    click.echo("database is at the latest revision")


@db.command("seed-demo")
def db_seed_demo() -> None:
    """Add the demo catalogue (ADX exchange, version v1, drugs_hcp and auto_intenders)."""
    with _session() as s:
        added = seed_demo_catalogue(s)
    click.echo("added: " + ", ".join(added) if added else "demo catalogue already present")


# ----------------------------------------------------------------------------- entities


@cli.group()
def entities() -> None:
    """Advertiser lines the optimizer buys for."""


@entities.command("list")
@json_option
def entities_list(as_json: bool) -> None:
    """List entities with their static settings."""
    with _session() as s:
        rows = [entity_view(s, e) for e in q.list_entities(s)]
    if as_json:
        print_json(rows)
        return
    flat = [{**{k: v for k, v in r.items() if k != "static_configs"}, **r["static_configs"]} for r in rows]
    print_table(flat, ["entity_code", "name", "supply_source", "current_version",
                       "floor_available", "npi_enabled", "domain_enabled"])


@entities.command("show")
@click.argument("entity_code")
@json_option
def entities_show(entity_code: str, as_json: bool) -> None:
    """Show one entity, its static settings and its latest runs."""
    with _session() as s:
        view = entity_view(s, q.get_entity_by_code(s, entity_code))
        runs = [run_row_view(r) for r in q.list_runs(s, entity_code=entity_code, limit=10)]
    if as_json:
        print_json({**view, "latest_runs": runs})
        return
    print_mapping(view)
    click.echo("\nlatest runs:")
    print_table(runs, ["run_id", "status", "validation_status", "segments_count", "bid_median"])


# ----------------------------------------------------------------------------- runs


@cli.group()
def runs() -> None:
    """Optimizer runs."""


def _config_help() -> str:
    lines = [f"{k} ({s.section}, {s.value_type}, default {s.default})" for k, s in RUN_CONFIG_SPECS.items()]
    return "Run config as key=value, repeatable. Keys: " + "; ".join(lines)


@runs.command("create")
@click.argument("entity_code")
@click.option("--config", "-c", "config_pairs", multiple=True, metavar="KEY=VALUE", help=_config_help())
@click.option("--by", "triggered_by", default=None, help="Who asks for the run (default: $BIDOPT_USER or login).")
@json_option
def runs_create(entity_code: str, config_pairs: tuple[str, ...], triggered_by: str | None, as_json: bool) -> None:
    """Create a pending run for ENTITY_CODE; the optimizer picks it up."""
    configs = parse_key_value_pairs(config_pairs)
    with _session() as s:
        run = q.create_run(s, entity_code, configs, triggered_by=triggered_by or _default_user(),
                           trigger_type="manual")
        view = run_detail_view(s, run)
    if as_json:
        print_json(view)
    else:
        click.echo(f"created pending run {view['run_id']} for {entity_code}")


@runs.command("list")
@click.option("--entity", "entity_code", default=None, help="Only this entity's runs.")
@click.option("--status", default=None, help="pending, running, completed or failed.")
@click.option("--limit", default=50, show_default=True)
@json_option
def runs_list(entity_code: str | None, status: str | None, limit: int, as_json: bool) -> None:
    """List runs, newest first."""
    with _session() as s:
        rows = [run_row_view(r) for r in q.list_runs(s, entity_code=entity_code, status=status, limit=limit)]
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ["run_id", "entity_code", "status", "validation_status", "triggered_by",
                           "segments_count", "bid_median", "bid_min", "bid_max"])


@runs.command("show")
@click.argument("run_id", required=False)
@click.option("--entity", "entity_code", default=None, help="Without RUN_ID: show this entity's newest run.")
@json_option
def runs_show(run_id: str | None, entity_code: str | None, as_json: bool) -> None:
    """Show a run: configs by section, features, metrics and summary stats."""
    with _session() as s:
        if run_id is None:
            if entity_code is None:
                raise click.UsageError("give a RUN_ID, or --entity for the entity's newest run")
            newest = q.list_runs(s, entity_code=entity_code, limit=1)
            if not newest:
                raise BidoptError(f"{entity_code} has no runs")
            run_id = newest[0].run_id
        view = run_detail_view(s, q.get_run(s, run_id))
    if as_json:
        print_json(view)
        return
    summary = {k: v for k, v in view.items() if k not in ("configs", "metrics", "features", "validation_details")}
    print_mapping(summary)
    if view["validation_details"]:
        click.echo("validation:")
        for line in view["validation_details"]:
            click.echo(f"  - {line}")
    click.echo("configs:")
    print_mapping(view["configs"], indent=2)
    if view["features"]:
        click.echo("features:")
        print_table(view["features"], ["feature_order", "feature_name", "is_anchor", "signal_score",
                                       "macro_template"])
    if view["metrics"]:
        click.echo("metrics:")
        print_mapping(view["metrics"], indent=2)


# ----------------------------------------------------------------------------- data


@cli.group()
def data() -> None:
    """Bid logs in the warehouse (BIDOPT_WAREHOUSE_URL): simulate, import, summarise."""


@data.command("generate")
@click.argument("entity_codes", nargs=-1, required=True)
@click.option("--rows", default=1_000_000, show_default=True, help="Bids to simulate per entity.")
@click.option("--days", default=28, show_default=True, help="Days the logs span, ending at --end.")
@click.option("--end", "end_time", type=click.DateTime(), default="2026-01-31", show_default=True,
              help="End of the simulated window (UTC).")
@click.option("--seed", default=7, show_default=True, help="Random seed; the same seed gives the same rows.")
@click.option("--auction", "auction_type", type=click.Choice(["first_price", "second_price"]), default=None,
              help="Auction type (default: the entity's supply source, else first_price).")
@click.option("--floors/--no-floors", "floor_available", default=None,
              help="Simulate floors (default: the entity's floor_available).")
@click.option("--npi/--no-npi", "npi_enabled", default=None,
              help="Simulate NPI matches (default: the entity's npi_enabled).")
@click.option("--parquet-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write standalone Parquet files with the truth_* columns here.")
def data_generate(entity_codes, rows, days, end_time, seed, auction_type, floor_available, npi_enabled,
                  parquet_dir) -> None:
    """Simulate bid logs with known ground truth for ENTITY_CODES into the warehouse.

    Entities present in the catalogue take their auction type and static settings
    from it; the options override.
    """
    from bidopt.data import generate_into_warehouse, get_warehouse, market_spec_for_entity

    with get_warehouse() as wh:
        for i, code in enumerate(entity_codes):
            with _optional_session() as s:
                spec = market_spec_for_entity(
                    s, code, rows=rows, days=days, end_time=end_time, seed=seed + i,
                    auction_type=auction_type, floor_available=floor_available, npi_enabled=npi_enabled)
            with click.progressbar(length=rows, label=f"{code}: simulating {rows:,} bids",
                                   file=sys.stderr) as bar:
                written = generate_into_warehouse(wh, spec, parquet_dir=parquet_dir,
                                                  on_chunk=lambda done, total: bar.update(done - bar.pos))
            click.echo(f"{code}: {written:,} bids ({spec.auction_type}, floors "
                       f"{'on' if spec.floor_available else 'off'}, npi {'on' if spec.npi_enabled else 'off'}) "
                       f"in {redact_url(wh.url)}")


@data.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--entity", "entity_code", default=None, help="Set entity_code of every row.")
def data_import(path: Path, entity_code: str | None) -> None:
    """Load a CSV or Parquet file in the bid-log layout (see README) into the warehouse."""
    from bidopt.data import get_warehouse
    from bidopt.warehouse.imports import read_bid_log_file

    table = read_bid_log_file(path, entity_code=entity_code)
    with get_warehouse() as wh:
        n = wh.load_bid_logs(table)
    click.echo(f"loaded {n:,} bids from {path.name}")


@data.command("import-ipinyou")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--entity", "entity_code", default="ipinyou_2259", show_default=True)
@click.option("--split", "splits", type=click.Choice(["train", "test"]), multiple=True,
              default=("train", "test"), show_default=True)
def data_import_ipinyou(folder: Path, entity_code: str, splits: tuple[str, ...]) -> None:
    """Load the iPinYou DLF sample (e.g. ../shared/data/ipinyou_2259_DLF) into the warehouse.

    Prices become CNY CPM; the train file lands in the week of 2013-10-21, the test
    file in the week of 2013-10-28 (DLF keeps weekday and hour only).
    """
    from bidopt.data import get_warehouse
    from bidopt.warehouse.imports import read_ipinyou_dlf

    with get_warehouse() as wh:
        for split in splits:
            n = wh.load_bid_logs(read_ipinyou_dlf(folder, split, entity_code=entity_code))
            click.echo(f"{entity_code}: loaded {n:,} {split} bids")


@data.command("summary")
@click.argument("entity_code")
@json_option
def data_summary(entity_code: str, as_json: bool) -> None:
    """Bids and time range of an entity's logs in the warehouse."""
    from bidopt.data import get_warehouse

    with get_warehouse() as wh:
        summary = wh.summary(entity_code)
    print_json(summary) if as_json else print_mapping(summary)


# ----------------------------------------------------------------------------- optimizer


@cli.group()
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
    from bidopt.jobs.optimize import run_optimizer

    def show(result: dict) -> None:
        if result["status"] == "completed":
            click.echo(f"run {result['run_id']} completed: {result['segments_count']} segments, "
                       f"median bid {result['bid_median']:.2f}, validation {result['validation_status']}")
        else:  # failed, requeued (its task died or timed out) or abandoned (its lease was lost)
            click.echo(f"run {result['run_id']} {result['status']}: {result['error']}")

    report = run_optimizer(once=once, poll_seconds=poll_seconds, parallel=max(parallel, 1),
                           use_ray=not no_ray, on_result=show, max_runs=max_runs)
    if not report.processed:
        click.echo("no pending runs")
    if once and report.failed:
        sys.exit(1)


@optimizer.command("submit")
@click.option("--address", envvar="BIDOPT_RAY_JOBS_ADDRESS", required=True,
              help="The cluster's dashboard / Jobs API, e.g. http://head:8265 (or $BIDOPT_RAY_JOBS_ADDRESS).")
@click.option("--once/--forever", default=True, show_default=True, help="Drain the queue and exit, or keep polling.")
@click.option("--parallel", default=2, show_default=True, help="Runs optimised at the same time.")
@click.option("--python", default="python", show_default=True, help="Python on the cluster's nodes.")
@click.option("--working-dir", default=None, help="Ship this folder with the job (default: the nodes' install).")
@click.option("--follow/--no-follow", default=True, show_default=True, help="Print the job's logs until it ends.")
def optimizer_submit(address: str, once: bool, parallel: int, python: str, working_dir: str | None,
                     follow: bool) -> None:
    """Submit the optimizer job to a Ray cluster (Ray Jobs API) and follow its logs.

    Exits non-zero when the job fails.
    """
    from bidopt.jobs.submit import follow_job, submit_optimizer_job

    client, job_id = submit_optimizer_job(address, once=once, parallel=parallel, python=python,
                                          working_dir=working_dir)
    click.echo(f"submitted job {job_id} to {address}")
    if follow:
        status = follow_job(client, job_id, click.echo)
        click.echo(f"job {job_id}: {status}")
        if status != "SUCCEEDED":
            sys.exit(1)


# ----------------------------------------------------------------------------- deploy


@cli.group()
def deploy() -> None:
    """A/B traffic splits of an entity across completed, validated runs."""


@deploy.command("set")
@click.argument("entity_code")
@click.argument("split", nargs=-1, required=True, metavar="RUN_ID=PERCENT...")
@click.option("--by", "deployed_by", default=None, help="Who deploys (default: $BIDOPT_USER or login).")
@json_option
def deploy_set(entity_code: str, split: tuple[str, ...], deployed_by: str | None, as_json: bool) -> None:
    """Replace ENTITY_CODE's active split, e.g. `bidopt deploy set drugs_hcp RUN_A=80 RUN_B=20`.

    Percentages are whole numbers adding up to 100; every run must be a completed run of
    this entity that passed validation. The old split is deactivated in the same transaction.
    """
    from bidopt import service

    pairs = service.parse_split_args(split)
    with _session() as s:
        view = service.set_traffic_split(s, entity_code, pairs, deployed_by=deployed_by or _default_user())
    print_json(view) if as_json else _print_split(view)


def _print_split(view: dict) -> None:
    if not view["runs"]:
        click.echo(f"{view['entity_code']}: no active split")
        return
    click.echo(f"{view['entity_code']}: split {view['split_id']} by {view['deployed_by']} at {view['deployed_at']}")
    print_table(view["runs"], ["run_id", "traffic_pct"])


@deploy.command("show")
@click.argument("entity_code")
@json_option
def deploy_show(entity_code: str, as_json: bool) -> None:
    """Show ENTITY_CODE's active split and whether every bidder replica serves it.

    Bidder replicas report what they serve after each refresh. A replica that serves another
    split is listed as lagging with its reason (its load error, or that it has not refreshed
    since the change); one that has not reported for more than three refresh intervals is gone.
    """
    from bidopt import service

    with _session() as s:
        view = service.split_view(s, entity_code)
    if as_json:
        print_json(view)
        return
    _print_split(view)
    bidders = view["bidders"]
    click.echo(f"bidders: {bidders['summary']}")
    not_live = [r for r in bidders["replicas"] if r["state"] != "live"]
    if not_live:
        print_table(not_live, ["replica_id", "state", "split_id", "seconds_since_report", "reason"])


@deploy.command("history")
@click.argument("entity_code")
@json_option
def deploy_history(entity_code: str, as_json: bool) -> None:
    """Every split ENTITY_CODE had, newest first."""
    from bidopt import service

    with _session() as s:
        history = service.split_history(s, entity_code)
    if as_json:
        print_json(history)
        return
    rows = [{**h, "runs": ", ".join(f"{r['run_id']}={r['traffic_pct']}" for r in h["runs"])} for h in history]
    print_table(rows, ["split_id", "is_active", "runs", "deployed_by", "deployed_at", "deactivated_at"])


# ----------------------------------------------------------------------------- users and tokens


@cli.group()
def users() -> None:
    """People and services that may call the management API."""


@users.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice(["viewer", "operator"]), required=True,
              help="viewer: read only; operator: also create runs and change splits.")
def users_add(username: str, role: str) -> None:
    """Add a user."""
    with _session() as s:
        access.create_user(s, username, role)
    click.echo(f"added {role} {username}; give them a token with `bidopt tokens create {username}`")


@users.command("list")
@json_option
def users_list(as_json: bool) -> None:
    """List users."""
    with _session() as s:
        rows = [{"username": u.username, "role": u.role, "is_active": u.is_active,
                 "created_at": u.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")} for u in access.list_users(s)]
    print_json(rows) if as_json else print_table(rows, ["username", "role", "is_active", "created_at"])


@cli.group()
def tokens() -> None:
    """API tokens (only their hashes are stored; a token is shown once)."""


@tokens.command("create")
@click.argument("username")
@click.option("--name", default="default", help="A label to tell tokens apart.")
def tokens_create(username: str, name: str) -> None:
    """Create an API token for USERNAME and print it (this is the only time it is shown)."""
    with _session() as s:
        row, token = access.create_api_token(s, username, name)
        token_id = row.token_id
    click.echo(f"token {token_id} for {username} (shown once): {token}")


@tokens.command("list")
@json_option
def tokens_list(as_json: bool) -> None:
    """List tokens (without their values)."""
    with _session() as s:
        rows = [{"token_id": t.token_id, "username": t.user.username, "role": t.user.role, "name": t.name,
                 "created_at": t.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                 "revoked": t.revoked_at is not None} for t in access.list_api_tokens(s)]
    print_json(rows) if as_json else print_table(rows, ["token_id", "username", "role", "name", "created_at",
                                                        "revoked"])


@tokens.command("revoke")
@click.argument("token_id", type=int)
def tokens_revoke(token_id: int) -> None:
    """Revoke a token: it stops working at once."""
    with _session() as s:
        access.revoke_api_token(s, token_id)
    click.echo(f"revoked token {token_id}")


# ----------------------------------------------------------------------------- serve


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the HTTP proxy listens on.")
@click.option("--port", default=8000, show_default=True)
@click.option("--new-token", is_flag=True, help="Create a fresh operator token for the local user and print it.")
def serve_cmd(host: str, port: int, new_token: bool) -> None:
    """Start the Ray Serve apps (management API + web UI, bidder) on BIDOPT_RAY_ADDRESS or a local Ray.

    With no API token in the database yet, creates the operator `local` and prints its
    token once. Runs until SIGINT (Ctrl-C) or SIGTERM, then stops and exits 0: on the
    local Ray it started, it shuts Serve and that Ray down and waits until their
    processes are gone; on a cluster given by BIDOPT_RAY_ADDRESS it only disconnects,
    and the apps keep running there. A second signal does not cut the stop short.
    """
    from bidopt.serve.apps import ServeLifetime, ensure_local_operator_token

    with _session() as s:
        token = ensure_local_operator_token(s, force_new=new_token)

    def announce(url: str) -> None:
        click.echo(f"management API and UI: {url}  (OpenAPI: {url}docs)")
        if token:
            click.echo(f"operator token for user local (shown once): {token}")
        else:
            click.echo("use an existing API token, or `bidopt tokens create USER`")

    click.echo(ServeLifetime(click.echo).run(host=host, port=port, on_ready=announce))


if __name__ == "__main__":
    cli()

"""``bidopt runs``: create, list and show optimizer runs."""

from __future__ import annotations

import click

from bidopt import service
from bidopt.cli.common import default_user, json_option, session
from bidopt.cli.output import print_json, print_mapping, print_table
from bidopt.configs import RUN_CONFIG_SPECS, parse_key_value_pairs


@click.group("runs")
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
    with session() as s:
        view = service.create_run(
            s, entity_code, configs, triggered_by=triggered_by or default_user(), trigger_type="manual"
        )
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
    with session() as s:
        rows = service.list_runs(s, entity_code=entity_code, status=status, limit=limit, with_metrics=False)
    if as_json:
        print_json(rows)
    else:
        print_table(
            rows,
            [
                "run_id",
                "entity_code",
                "status",
                "validation_status",
                "triggered_by",
                "segments_count",
                "bid_median",
                "bid_min",
                "bid_max",
            ],
        )


@runs.command("show")
@click.argument("run_id", required=False)
@click.option("--entity", "entity_code", default=None, help="Without RUN_ID: show this entity's newest run.")
@json_option
def runs_show(run_id: str | None, entity_code: str | None, as_json: bool) -> None:
    """Show a run: configs by section, features, metrics and summary stats."""
    if run_id is None and entity_code is None:
        raise click.UsageError("give a RUN_ID, or --entity for the entity's newest run")
    with session() as s:
        view = service.get_run(s, run_id) if run_id is not None else service.get_newest_run(s, entity_code)
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
        print_table(view["features"], ["feature_order", "feature_name", "is_anchor", "signal_score", "macro_template"])
    if view["metrics"]:
        click.echo("metrics:")
        print_mapping(view["metrics"], indent=2)

"""``bidopt schedules``: per-entity optimizer schedules, and creating the runs that have come due."""

from __future__ import annotations

import click

from bidopt import service
from bidopt.cli.common import default_user, json_option, session
from bidopt.cli.output import print_json, print_table
from bidopt.configs import parse_key_value_pairs

_COLUMNS = ["entity_code", "every_hours", "next_due_at", "last_run_id", "created_by", "configs"]


@click.group("schedules")
def schedules() -> None:
    """Optimizer schedules: a pending run per entity every N hours (trigger_type scheduled).

    The control loop of `bidopt serve` creates the runs when they come due; `bidopt schedules
    tick` does it once from here. Two schedulers at once never create the same run twice.
    """


def _rows(views: list[dict]) -> list[dict]:
    return [{**v, "configs": ", ".join(f"{k}={x}" for k, x in v["configs"].items()) or "-"} for v in views]


@schedules.command("set")
@click.argument("entity_code")
@click.option("--every-hours", "every_hours", required=True, help="Hours between two runs (1/60 to 8784).")
@click.option("--config", "-c", "config_pairs", multiple=True, metavar="KEY=VALUE", help="Run config, repeatable.")
@click.option("--start", default=None, help="First run's time, ISO 8601 (UTC unless it says); default now.")
@click.option("--by", "created_by", default=None, help="Who sets it (default: $BIDOPT_USER or login).")
@json_option
def schedules_set(
    entity_code: str,
    every_hours: str,
    config_pairs: tuple[str, ...],
    start: str | None,
    created_by: str | None,
    as_json: bool,
) -> None:
    """Create or replace ENTITY_CODE's schedule, e.g. `bidopt schedules set drugs_hcp --every-hours 24
    -c target_win_rate=0.4`. Configs are validated now and again when each run is created."""
    configs = parse_key_value_pairs(config_pairs)
    with session() as s:
        view = service.set_schedule(
            s, entity_code, every_hours, configs, created_by=created_by or default_user(), start_at=start
        )
    if as_json:
        print_json(view)
    else:
        click.echo(f"{entity_code}: a run every {view['every_hours']:g} h, next due {view['next_due_at']}")


@schedules.command("list")
@json_option
def schedules_list(as_json: bool) -> None:
    """Every entity's schedule."""
    with session() as s:
        views = service.list_schedules(s)
    print_json(views) if as_json else print_table(_rows(views), _COLUMNS)


@schedules.command("remove")
@click.argument("entity_code")
def schedules_remove(entity_code: str) -> None:
    """Remove ENTITY_CODE's schedule; the runs it created stay."""
    with session() as s:
        service.remove_schedule(s, entity_code)
    click.echo(f"{entity_code}: schedule removed")


@schedules.command("tick")
@json_option
def schedules_tick(as_json: bool) -> None:
    """Create the runs of every schedule that has come due, now (one per schedule, however many
    slots were missed); the optimizer then picks them up."""
    with session() as s:
        run_ids = service.create_due_scheduled_runs(s)
    if as_json:
        print_json(run_ids)
    elif run_ids:
        click.echo(f"created pending runs: {', '.join(run_ids)}")
    else:
        click.echo("no schedule is due")

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


REPLAY_COLUMNS = ["run_id", "role", "traffic_pct", "requests", "bids", "floor_no_bids", "bid_share"]
REPLAY_COLUMNS += ["expected_win_rate", "expected_priced_win_rate", "expected_spend", "ecpm", "mean_bid_cpm"]


@runs.command("replay")
@click.argument("run_id")
@click.option(
    "--against", multiple=True, metavar="RUN", help="Compare with this run (repeatable; default: the active split)."
)
@click.option("--since", default=None, help="ISO 8601 UTC start (default: from the run's window).")
@click.option("--until", default=None, help="ISO 8601 UTC end, exclusive (default: from the run's window).")
@click.option(
    "--window",
    "part",
    type=click.Choice(["all", "training", "holdout"]),
    default="all",
    show_default=True,
    help="Which part of the run's own window --since/--until default to.",
)
@click.option("--engine", type=click.Choice(["auto", "local", "ray"]), default="auto", show_default=True)
@click.option(
    "--segments",
    default=10,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Biggest segments to show per run (1-1000).",
)
@json_option
def runs_replay(run_id, against, since, until, part, engine, segments, as_json) -> None:
    """Replay the entity's logged requests through RUN_ID (and the runs it is compared with) as a
    bidder would, and estimate bid share, expected win rate, spend and eCPM per segment and in total."""
    from bidopt.replays import replay_run

    with session() as s:
        view = replay_run(
            s, run_id, against=list(against), since=since, until=until, window=part, engine=engine,
            top_segments=max(1, min(segments, 1000)),
        )  # fmt: skip
    if as_json:
        print_json(view)
        return
    click.echo(
        f"{view['entity_code']}: {view['requests']:,} logged requests {view['since']} .. {view['until']} "
        f"({view['engine']}, {view['seconds']:.1f} s; spend: {view['spend_model']})"
    )
    print_table([{"run_id": r["run_id"], "role": r["role"], "traffic_pct": r["traffic_pct"], **r["total"]}
                 for r in view["runs"]], REPLAY_COLUMNS)  # fmt: skip
    for r in view["runs"]:
        click.echo(f"\n{r['run_id']}: the {min(segments, len(r['segments']))} biggest of {r['segment_count']} keys")
        print_table(r["segments"][:segments], ["segment_key", "level", *REPLAY_COLUMNS[3:]])

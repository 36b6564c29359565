"""``bidopt entities``: the advertiser lines in the catalogue."""

from __future__ import annotations

import click

from bidopt import service
from bidopt.cli.common import json_option, session
from bidopt.cli.output import print_json, print_mapping, print_table


@click.group("entities")
def entities() -> None:
    """Advertiser lines the optimizer buys for."""


@entities.command("list")
@json_option
def entities_list(as_json: bool) -> None:
    """List entities with their static settings."""
    with session() as s:
        rows = service.list_entities(s)
    if as_json:
        print_json(rows)
        return
    flat = [{**{k: v for k, v in r.items() if k != "static_configs"}, **r["static_configs"]} for r in rows]
    print_table(
        flat,
        ["entity_code", "name", "supply_source", "current_version", "floor_available", "npi_enabled", "domain_enabled"],
    )


@entities.command("show")
@click.argument("entity_code")
@json_option
def entities_show(entity_code: str, as_json: bool) -> None:
    """Show one entity, its static settings and its latest runs."""
    with session() as s:
        view = service.get_entity_with_latest_runs(s, entity_code, limit=10)
    if as_json:
        print_json(view)
        return
    runs = view.pop("latest_runs")
    print_mapping(view)
    click.echo("\nlatest runs:")
    print_table(runs, ["run_id", "status", "validation_status", "segments_count", "bid_median"])

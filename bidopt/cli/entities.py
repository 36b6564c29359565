"""``bidopt entities``: the advertiser lines in the catalogue."""

from __future__ import annotations

import json

import click

from bidopt import catalogue, service
from bidopt.cli.common import by_option, default_user, json_option, session
from bidopt.cli.output import print_json, print_mapping, print_table
from bidopt.configs import ENTITY_CONFIG_SPECS, parse_key_value_pairs


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
        [
            "entity_code",
            "name",
            "supply_source",
            "current_version",
            "is_active",
            "floor_available",
            "npi_enabled",
            "domain_enabled",
        ],
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


def _config_help() -> str:
    keys = "; ".join(f"{k} ({s.value_type}, default {s.default})" for k, s in ENTITY_CONFIG_SPECS.items())
    return "Static config as key=value, repeatable. Keys: " + keys


def _echo(verb: str, view: dict, as_json: bool) -> None:
    if as_json:
        print_json(view)
        return
    click.echo(
        f"{verb} entity {view['entity_code']} (source {view['supply_source']}, version {view['current_version']}"
        f"{'' if view['is_active'] else ', inactive'})"
    )


@entities.command("create")
@click.argument("entity_code")
@click.option("--name", required=True, help="Display name.")
@click.option("--source", required=True, help="Its supply source (active).")
@click.option("--version", required=True, help="Its optimizer version; the anchor needs an active macro in --source.")
@click.option("--base-path", default=None, help="Folder of its artifacts (default: the code).")
@click.option("--config", "-c", "config_pairs", multiple=True, metavar="KEY=VALUE", help=_config_help())
@by_option
@json_option
def entities_create(entity_code, name, source, version, base_path, config_pairs, actor, as_json) -> None:
    """Add entity ENTITY_CODE (lower-case letters, digits, _ and -) with its static configs."""
    configs = parse_key_value_pairs(config_pairs)
    with session() as s:
        view = catalogue.create_entity(
            s,
            code=entity_code,
            name=name,
            source=source,
            version=version,
            base_path=base_path,
            configs=configs or None,
            actor=actor or default_user(),
        )
    _echo("created", view, as_json)


@entities.command("update")
@click.argument("entity_code")
@click.option("--name", default=None, help="New display name.")
@click.option("--base-path", default=None, help="New artifact folder.")
@by_option
@json_option
def entities_update(entity_code, name, base_path, actor, as_json) -> None:
    """Change the name or base path of ENTITY_CODE; give at least one option."""
    changes = {k: v for k, v in {"name": name, "base_path": base_path}.items() if v is not None}
    with session() as s:
        view = catalogue.update_entity(s, entity_code, changes, actor=actor or default_user())
    _echo("updated", view, as_json)


@entities.command("deactivate")
@click.argument("entity_code")
@by_option
@json_option
def entities_deactivate(entity_code: str, actor: str | None, as_json: bool) -> None:
    """Deactivate ENTITY_CODE: bidders stop serving it at their next refresh; new runs are refused."""
    with session() as s:
        view = catalogue.deactivate_entity(s, entity_code, actor=actor or default_user())
    _echo("deactivated", view, as_json)


@entities.command("use-version")
@click.argument("entity_code")
@click.argument("version")
@by_option
@json_option
def entities_use_version(entity_code: str, version: str, actor: str | None, as_json: bool) -> None:
    """Make VERSION the current optimizer version of ENTITY_CODE (for its new runs)."""
    with session() as s:
        view = catalogue.use_version(s, entity_code, version, actor=actor or default_user())
    _echo("updated", view, as_json)


@entities.group("config")
def entities_config() -> None:
    """Static configs of an entity."""


@entities_config.command("set")
@click.argument("entity_code")
@click.argument("pairs", nargs=-1, required=True, metavar="KEY=VALUE...")
@by_option
@json_option
def entities_config_set(entity_code: str, pairs: tuple[str, ...], actor: str | None, as_json: bool) -> None:
    """Set static configs of ENTITY_CODE, e.g. `npi_enabled=true guardrail_min_bids=5000`.

    Each value is typed and range-checked like a run config; one bad value and nothing is set.
    """
    configs = parse_key_value_pairs(pairs)
    with session() as s:
        view = catalogue.set_entity_configs(s, entity_code, configs, actor=actor or default_user())
    if as_json:
        print_json(view)
    else:
        click.echo(f"{entity_code}: " + ", ".join(f"{k}={json.dumps(view['static_configs'][k])}" for k in configs))

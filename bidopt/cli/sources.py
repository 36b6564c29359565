"""``bidopt sources``: supply sources (exchanges and SSPs) in the catalogue (``opt_master``)."""

from __future__ import annotations

import click

from bidopt import catalogue
from bidopt.cli.common import by_option, default_user, json_option, session
from bidopt.cli.output import print_json, print_mapping, print_table

COLUMNS = ["source_code", "name", "source_type", "auction_type", "macro_namespace", "is_active", "entities"]
MACRO_COLUMNS = ["feature_name", "macro_template", "request_field", "status", "description"]


def _row(view: dict) -> dict:
    return {**view, "entities": ", ".join(view["entities"]) or "-"}


def _echo(verb: str, view: dict, as_json: bool) -> None:
    if as_json:
        print_json(view)
    else:
        click.echo(
            f"{verb} source {view['source_code']} ({view['source_type']}, {view['auction_type']}, "
            f"namespace {view['macro_namespace']}{'' if view['is_active'] else ', inactive'})"
        )


@click.group("sources")
def sources() -> None:
    """Supply sources: the exchanges and SSPs entities buy on."""


@sources.command("create")
@click.argument("code")
@click.option("--name", required=True, help="Display name, e.g. 'Google Ad Exchange'.")
@click.option("--type", "source_type", required=True, metavar="TYPE", help="exchange or ssp.")
@click.option("--auction", "auction_type", required=True, metavar="AUCTION", help="first_price or second_price.")
@click.option("--namespace", required=True, help="Macro namespace: upper case, e.g. ADX (macros are [ADX_...]).")
@by_option
@json_option
def sources_create(code, name, source_type, auction_type, namespace, actor, as_json) -> None:
    """Add supply source CODE (letters, digits, _ and -)."""
    with session() as s:
        view = catalogue.create_source(
            s,
            code=code,
            name=name,
            source_type=source_type,
            auction_type=auction_type,
            macro_namespace=namespace,
            actor=actor or default_user(),
        )
    _echo("created", view, as_json)


@sources.command("list")
@json_option
def sources_list(as_json: bool) -> None:
    """List supply sources, active and inactive."""
    with session() as s:
        rows = catalogue.list_sources(s)
    print_json(rows) if as_json else print_table([_row(r) for r in rows], COLUMNS)


@sources.command("show")
@click.argument("code")
@json_option
def sources_show(code: str, as_json: bool) -> None:
    """Show supply source CODE, its entities and its feature macros."""
    with session() as s:
        view = catalogue.get_source(s, code)
    if as_json:
        print_json(view)
        return
    macros = view.pop("macros")
    print_mapping(_row(view))
    click.echo("\nmacros:")
    print_table(macros, MACRO_COLUMNS)


@sources.command("update")
@click.argument("code")
@click.option("--name", default=None, help="New display name.")
@click.option("--type", "source_type", default=None, metavar="TYPE", help="exchange or ssp.")
@click.option("--auction", "auction_type", default=None, metavar="AUCTION", help="first_price or second_price.")
@click.option("--namespace", default=None, help="New macro namespace (macros must still start with it).")
@by_option
@json_option
def sources_update(code, name, source_type, auction_type, namespace, actor, as_json) -> None:
    """Change fields of supply source CODE; give at least one option."""
    given = {"name": name, "source_type": source_type, "auction_type": auction_type, "macro_namespace": namespace}
    with session() as s:
        view = catalogue.update_source(
            s, code, {k: v for k, v in given.items() if v is not None}, actor=actor or default_user()
        )
    _echo("updated", view, as_json)


@sources.command("deactivate")
@click.argument("code")
@by_option
@json_option
def sources_deactivate(code: str, actor: str | None, as_json: bool) -> None:
    """Deactivate supply source CODE (refused while an active entity uses it)."""
    with session() as s:
        view = catalogue.deactivate_source(s, code, actor=actor or default_user())
    _echo("deactivated", view, as_json)

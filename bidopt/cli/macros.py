"""``bidopt macros``: how each feature is read from a supply source's bid requests (``opt_feature_macros``)."""

from __future__ import annotations

import click

from bidopt import catalogue
from bidopt.cli.common import by_option, default_user, json_option, session
from bidopt.cli.output import print_json, print_table

COLUMNS = ["source_code", "feature_name", "macro_template", "request_field", "status", "description"]


def _echo(verb: str, view: dict, as_json: bool) -> None:
    if as_json:
        print_json(view)
        return
    click.echo(
        f"{verb} macro {view['macro_template']} of {view['source_code']}: {view['feature_name']} "
        f"from {view['request_field']} ({view['status']})"
    )
    if view.get("note"):
        click.echo(view["note"])


@click.group("macros")
def macros() -> None:
    """Feature macros: the bid-request field each feature is read from, per supply source."""


@macros.command("create")
@click.argument("source")
@click.argument("feature")
@click.option("--template", required=True, help="The macro, [NAMESPACE_...], e.g. [ADX_GEO_STATE].")
@click.option(
    "--field",
    "request_field",
    required=True,
    help="OpenRTB path, e.g. device.geo.region; '|' separates alternatives (site.domain|app.bundle).",
)
@click.option("--description", default=None, help="What the feature is.")
@by_option
@json_option
def macros_create(source, feature, template, request_field, description, actor, as_json) -> None:
    """Add the macro of FEATURE (a bid-log feature column, e.g. geo_region_name) to supply source SOURCE."""
    with session() as s:
        view = catalogue.create_macro(
            s,
            source=source,
            feature=feature,
            template=template,
            request_field=request_field,
            description=description,
            actor=actor or default_user(),
        )
    _echo("created", view, as_json)


@macros.command("list")
@click.option("--source", default=None, help="Only this supply source's macros.")
@json_option
def macros_list(source: str | None, as_json: bool) -> None:
    """List feature macros, active and inactive."""
    with session() as s:
        rows = catalogue.list_macros(s, source=source)
    print_json(rows) if as_json else print_table(rows, COLUMNS)


@macros.command("update")
@click.argument("source")
@click.argument("feature")
@click.option("--template", default=None, help="New macro template.")
@click.option("--field", "request_field", default=None, help="New request field path ('|' for alternatives).")
@click.option("--description", default=None, help="New description.")
@click.option("--activate", is_flag=True, help="Make an inactive macro active again.")
@by_option
@json_option
def macros_update(source, feature, template, request_field, description, activate, actor, as_json) -> None:
    """Change the macro of FEATURE in SOURCE; give at least one option.

    Runs keep the request fields they were made with, so a change applies to new runs.
    """
    given = {"template": template, "request_field": request_field, "description": description}
    changes = {k: v for k, v in given.items() if v is not None}
    if activate:
        changes["status"] = "active"
    with session() as s:
        view = catalogue.update_macro(s, source, feature, changes, actor=actor or default_user())
    _echo("updated", view, as_json)


@macros.command("deactivate")
@click.argument("source")
@click.argument("feature")
@by_option
@json_option
def macros_deactivate(source: str, feature: str, actor: str | None, as_json: bool) -> None:
    """Deactivate the macro of FEATURE in SOURCE: new runs no longer use the feature.

    Refused for the anchor feature of an active entity of SOURCE. Runs in active splits keep
    serving: they pin their request fields.
    """
    with session() as s:
        view = catalogue.deactivate_macro(s, source, feature, actor=actor or default_user())
    _echo("deactivated", view, as_json)

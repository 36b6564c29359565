"""``bidopt versions``: optimizer set-ups, an anchor feature and validation thresholds (``opt_versions``)."""

from __future__ import annotations

import click

from bidopt import catalogue
from bidopt.cli.common import by_option, default_user, json_option, session
from bidopt.cli.output import print_json, print_mapping, print_table

COLUMNS = [
    "version_name",
    "anchor_feature",
    "min_win_auc",
    "max_win_ece",
    "min_bid_coverage",
    "runs",
    "entities",
    "created_at",
    "description",
]


def _row(view: dict) -> dict:
    return {**view, "entities": ", ".join(view["entities"]) or "-"}


@click.group("versions")
def versions() -> None:
    """Optimizer versions: anchor feature and validation thresholds.

    Versions never change: to change a threshold, create a new version and
    `bidopt entities use-version` it.
    """


@versions.command("create")
@click.argument("name")
@click.option("--anchor", required=True, help="Anchor feature, e.g. geo_region_name.")
@click.option("--min-win-auc", required=True, help="Lowest win-rate model AUC a run may pass with (0.5 to 1).")
@click.option("--max-ece", "max_win_ece", required=True, help="Highest win-rate model ECE (above 0, at most 1).")
@click.option("--min-bid-coverage", required=True, help="Lowest share of held-out traffic with its own bid (0 to 1).")
@click.option("--description", default=None, help="What this set-up is for.")
@by_option
@json_option
def versions_create(name, anchor, min_win_auc, max_win_ece, min_bid_coverage, description, actor, as_json) -> None:
    """Create optimizer version NAME (letters, digits, _ . and -)."""
    with session() as s:
        view = catalogue.create_version(
            s,
            name=name,
            anchor_feature=anchor,
            min_win_auc=min_win_auc,
            max_win_ece=max_win_ece,
            min_bid_coverage=min_bid_coverage,
            description=description,
            actor=actor or default_user(),
        )
    if as_json:
        print_json(view)
    else:
        click.echo(
            f"created version {view['version_name']}: anchor {view['anchor_feature']}, AUC >= {view['min_win_auc']}, "
            f"ECE <= {view['max_win_ece']}, coverage >= {view['min_bid_coverage']}"
        )


@versions.command("list")
@json_option
def versions_list(as_json: bool) -> None:
    """List optimizer versions with how many runs used each."""
    with session() as s:
        rows = catalogue.list_versions(s)
    print_json(rows) if as_json else print_table([_row(r) for r in rows], COLUMNS)


@versions.command("show")
@click.argument("name")
@json_option
def versions_show(name: str, as_json: bool) -> None:
    """Show optimizer version NAME."""
    with session() as s:
        view = catalogue.get_version(s, name)
    print_json(view) if as_json else print_mapping(_row(view))

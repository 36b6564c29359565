"""``bidopt deploy``: A/B traffic splits of an entity across its runs, and whether bidders serve them."""

from __future__ import annotations

import click

from bidopt import service
from bidopt.cli.common import default_user, json_option, session
from bidopt.cli.output import print_json, print_table


@click.group("deploy")
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
    pairs = service.parse_split_args(split)
    with session() as s:
        view = service.set_traffic_split(s, entity_code, pairs, deployed_by=deployed_by or default_user())
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
    with session() as s:
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
    with session() as s:
        history = service.split_history(s, entity_code)
    if as_json:
        print_json(history)
        return
    rows = [{**h, "runs": ", ".join(f"{r['run_id']}={r['traffic_pct']}" for r in h["runs"])} for h in history]
    print_table(rows, ["split_id", "is_active", "runs", "deployed_by", "deployed_at", "deactivated_at"])

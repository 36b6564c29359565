"""``bidopt status``: per entity, the active split, what each bidder replica serves, and the last
minutes' bid and no-bid rates (``bidopt.status.status``, as ``GET /api/status`` and the UI's status page)."""

from __future__ import annotations

import click

from bidopt.cli.common import json_option, session
from bidopt.cli.output import print_json, print_table
from bidopt.status import status

REPLICA_COLUMNS = ["replica_id", "hostname", "state", "split_id", "loaded_at", "reported_at", "note"]


def _split_text(split: dict | None) -> str:
    if split is None:
        return "none (the bidders answer no-bid: no_split)"
    runs = ", ".join(f"{r['run_id']}={r['traffic_pct']}%" for r in split["runs"])
    return f"{split['split_id']} ({runs}), by {split['deployed_by']} at {split['deployed_at']}"


def _traffic_lines(t: dict) -> list[str]:
    if not t["replicas"]:
        return ["traffic: none counted (no reporting replica has seen a request for it)"]
    replicas = f"{t['replicas']} replica{'s' if t['replicas'] != 1 else ''}"
    lines = [
        f"traffic over the last {t['window_seconds']:g} s ({replicas}): "
        f"{t['requests_per_second']:g} requests/s, {t['bids_per_second']:g} bids/s, "
        f"{t['no_bids_per_second']:g} no-bids/s"
        + (f" (bid share {t['bid_share']:.1%})" if t["bid_share"] is not None else "")
    ]
    if t["no_bids_by_reason"]:
        lines.append(
            "no-bids by reason: "
            + ", ".join(
                f"{reason} {n} ({t['no_bids_per_second_by_reason'].get(reason, 0):g}/s)"
                for reason, n in t["no_bids_by_reason"].items()
            )
        )
    return lines


@click.command("status")
@click.option("--entity", "entity_code", default=None, help="Only this entity (default: every active one).")
@json_option
def status_cmd(entity_code: str | None, as_json: bool) -> None:
    """Per entity: the active split, what each bidder replica serves and when it last reported,
    and bid / no-bid rates over the last minutes (from the replicas' status rows)."""
    with session() as s:
        view = status(s, entity_code)
    if as_json:
        print_json(view)
        return
    if not view["entities"]:
        click.echo("no active entity")
    for i, e in enumerate(view["entities"]):
        if i:
            click.echo("")
        click.echo(f"{e['entity_code']}{'' if e['is_active'] else ' (inactive)'}")
        click.echo(f"split: {_split_text(e['split'])}")
        click.echo(f"bidders: {e['bidders']['summary']}")
        for line in _traffic_lines(e["traffic"]):
            click.echo(line)
        if e["replicas"]:
            print_table([{**r, "note": r["error"] or r["reason"] or ""} for r in e["replicas"]], REPLICA_COLUMNS)
    for label, t in view["other_traffic"].items():
        click.echo("")
        click.echo(f"{label} (not an active entity): " + "; ".join(_traffic_lines(t)))

"""``bidopt events``: the bidders' decision and notice events, compacted into the warehouse for training."""

from __future__ import annotations

import click

from bidopt import service
from bidopt.cli.common import default_user, json_option, session
from bidopt.cli.output import print_json, print_table


@click.group("events")
def events() -> None:
    """Bidder events (decisions and win/loss/billing/click notices) back into training."""


@events.command("compact")
@click.argument("entity_code")
@click.option("--until", default=None, metavar="TIME", help="ISO 8601 UTC (default: now).")
@click.option("--by", "compacted_by", default=None, help="Who compacts (default: $BIDOPT_USER or login).")
@json_option
def events_compact(entity_code: str, until: str | None, compacted_by: str | None, as_json: bool) -> None:
    """Load ENTITY_CODE's bids, joined with their notices, into its warehouse as its own traffic.

    Each whole hour H with H + 1h + BIDOPT_ATTRIBUTION_WINDOW_SECONDS (at least a minute) <= TIME
    is compacted: its bids become bid-log rows (won, clearing price, clicked; test requests left
    out), and its floor no-bids rows of bids lost to their floor at the price the run would have
    bid, replacing that hour's earlier platform rows, so compacting twice adds nothing. An answer
    resent within a minute is one row, even across an hour's end. The next optimizer run trains
    on them.
    """
    with session() as s:
        result = service.compact_events(s, entity_code, until=until, compacted_by=compacted_by or default_user())
    if as_json:
        print_json(result)
        return
    click.echo(
        f"{entity_code}: {len(result['hours'])} hour(s) compacted, {result['rows_loaded']} bid-log rows loaded "
        f"(until {result['until']}; {result['skipped']} final hour(s) already compacted, "
        f"{result['waiting']} waiting for their attribution window)"
    )
    if result["hours"]:
        print_table(result["hours"], ["hour", "decisions", "rows_loaded", "wins", "clicks"])


@events.command("sweep")
@click.option(
    "--older-than-hours",
    default=6.0,
    show_default=True,
    type=float,
    help="Sweep the hours that ended this long ago (at least 6: bidders may still split younger ones).",
)
@json_option
def events_sweep(older_than_hours: float, as_json: bool) -> None:
    """Split and delete the mixed event parts bidders left behind.

    A bidder writes one mixed part per kind and hour holding every entity, and splits them into
    per-entity parts every minute. One killed before its split, or a split given up, leaves mixed
    parts that every reader of those hours goes on reading. This writes what they hold as
    per-entity parts and deletes them; readers see each event once throughout. The control loop
    runs it every hour.
    """
    result = service.sweep_event_parts(older_than_hours=older_than_hours)
    if as_json:
        print_json(result)
        return
    from bidopt.events.schema import EVENT_KINDS

    for kind in EVENT_KINDS:
        r = result[kind]
        click.echo(
            f"{kind}: {r['mixed_parts_deleted']} mixed part(s) split and deleted, {r['split_parts_written']} "
            f"per-entity part(s) written, {r['mixed_parts_kept']} kept (tried again next time)"
        )
    click.echo(f"(hours that ended by {result['ended_by']})")


@events.command("show")
@click.argument("entity_code")
@click.option("--limit", default=48, show_default=True, type=click.IntRange(1, 100_000), help="Newest hours shown.")
@json_option
def events_show(entity_code: str, limit: int, as_json: bool) -> None:
    """List ENTITY_CODE's compacted hours, newest first."""
    with session() as s:
        rows = service.list_compactions(s, entity_code, limit=limit)
    if as_json:
        print_json(rows)
    elif not rows:
        click.echo(f"{entity_code}: no compacted hours")
    else:
        print_table(rows, ["hour", "decisions", "rows_loaded", "wins", "clicks", "compacted_at", "compacted_by"])

"""``bidopt deploy``: A/B traffic splits of an entity across its runs, and whether bidders serve them."""

from __future__ import annotations

import time

import click

from bidopt import service
from bidopt.cli.common import default_user, json_option, session
from bidopt.cli.output import print_json, print_table
from bidopt.errors import DatabaseUnavailable
from bidopt.settings import get_settings


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
    if view.get("reason"):
        click.echo(f"reason: {view['reason']}")
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
    print_table(rows, ["split_id", "is_active", "runs", "deployed_by", "deployed_at", "deactivated_at", "reason"])


@deploy.command("promote")
@click.argument("entity_code")
@click.argument("run_id")
@click.option("--by", "deployed_by", default=None, help="Who promotes (default: $BIDOPT_USER or login).")
@json_option
def deploy_promote(entity_code: str, run_id: str, deployed_by: str | None, as_json: bool) -> None:
    """Put RUN_ID at 100% of ENTITY_CODE's traffic (a completed run that passed validation)."""
    with session() as s:
        view = service.promote_run(s, entity_code, run_id, deployed_by=deployed_by or default_user())
    print_json(view) if as_json else _print_split(view)


@deploy.command("guard")
@click.option("--entity", "entity_code", default=None, help="Only this entity (default: every active entity).")
@click.option("--once", is_flag=True, help="Check once and exit (default: every BIDOPT_CONTROL_LOOP_SECONDS).")
@json_option
def deploy_guard(entity_code: str | None, once: bool, as_json: bool) -> None:
    """Judge the active splits against their guardrails and replace a split with a breaching arm
    (`bidopt serve` runs this in its control loop; this is the same check, in-process, without Ray).

    An arm breaches when its whole 95% interval of the priced win rate (floor no-bids counted as
    losses, as the target counts them) is further than guardrail_max_win_rate_gap from its target,
    or of the no-bid share above guardrail_max_no_bid_share, once it has guardrail_min_bids bids
    and floor no-bids (impressions, for the no-bid share) and guardrail_min_wins wins (its own, or
    those it would have on target, whichever is more).
    """
    while True:
        try:
            with session() as s:
                results = service.check_guardrails(s, entity_code)
        except DatabaseUnavailable as exc:
            if once:
                raise
            click.echo(f"guardrail check failed, retrying: {exc}", err=True)
            results = []
        if as_json:
            print_json(results)
        for entry in [] if as_json else results:
            click.echo(f"{entry['entity_code']} split {entry['split_id']}: {entry['action']}")
            if entry["reason"]:
                click.echo(f"  {entry['reason']}")
            for arm in entry["arms"]:
                click.echo(f"  arm {arm['arm']} {arm['run_id']}: {arm['status']} ({arm['note']})")
        if once:
            return
        time.sleep(get_settings().control_loop_seconds)


def _ci_text(ci: dict, digits: int = 3) -> str:
    if ci["value"] is None:
        return "-"
    if ci["low"] is None:
        return f"{ci['value']:.{digits}f}"
    return f"{ci['value']:.{digits}f} [{ci['low']:.{digits}f}, {ci['high']:.{digits}f}]"


def _num_text(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


@deploy.command("report")
@click.argument("entity_code")
@click.option("--split", "split_id", type=int, default=None, help="Split id (default: the active, else the newest).")
@click.option("--hours", default=12, show_default=True, type=click.IntRange(0, 10_000), help="Hourly rows shown.")
@json_option
def deploy_report(entity_code: str, split_id: int | None, hours: int, as_json: bool) -> None:
    """The A/B report of ENTITY_CODE's split: per arm requests, bids, wins, win rate (per bid), floor
    no-bids, the priced win rate (floor no-bids count as losses, as in the target) and its gap to the
    target, spend, eCPM, clicks, CTR and eCPC with 95% intervals, tests between arms, and an hourly
    table of both win rates.

    Events come from the bidders (BIDOPT_EVENTS_URL); test requests and replayed notices are left out.
    """
    with session() as s:
        report = service.split_report(s, entity_code, split_id)
    if as_json:
        print_json(report)
        return
    state = "active" if report["is_active"] else f"ended {report['deactivated_at']}"
    click.echo(
        f"{entity_code}: split {report['split_id']} ({state}) by {report['deployed_by']} at {report['deployed_at']}"
        + (f", reason: {report['reason']}" if report["reason"] else "")
    )
    window = report["window"]
    click.echo(
        f"events {window['start'] or '-'} .. {window['end'] or '-'}; excluded: {report['test_requests_excluded']} test "
        f"requests, {report['duplicates_dropped']} replayed notices, {report['orphan_notices']} orphan notices; "
        f"rejected: {report['notices_rejected'] or 'none'}"
    )
    rows = []
    for a in report["arms"]:
        rows.append(
            {
                "arm": a["arm"],
                "run_id": a["run_id"],
                "pct": a["traffic_pct"],
                "requests": a["requests"],
                "bids": a["bids"],
                "wins": a["wins"],
                "win_rate [95%]": _ci_text(a["win_rate"]),
                "floor_no_bids": a["floor_no_bids"],
                "priced_win_rate [95%]": _ci_text(a["priced_win_rate"]),
                "target": _num_text(a["target_win_rate"]),
                "gap": _num_text(a["win_rate_gap"], 3),
                "no_bid": _ci_text(a["no_bid_share"]),
                "spend": _ci_text(a["spend"], 2),
                "ecpm": _ci_text(a["ecpm"], 3),
                "clicks": a["clicks"],
                "ctr": _ci_text(a["ctr"], 4),
                "ecpc": _ci_text(a["ecpc"], 3),
            }
        )
    names = list(rows[0]) if rows else ["arm"]
    print_table(rows, names[:12])  # counts and rates, then money and clicks: one table would not fit
    print_table(rows, ["arm", "run_id", *names[12:]])
    if report["comparisons"]:
        click.echo("\ncomparisons (b - a):")
        comps = [
            {
                "metric": c["metric"],
                "a": c["run_a"],
                "b": c["run_b"],
                "difference [95%]": _ci_text({"value": c["difference"], "low": c["low"], "high": c["high"]}, 4),
                "p_value": _num_text(c["p_value"], 3),
                "significant": c["significant"],
                "method": c["method"],
            }
            for c in report["comparisons"]
        ]
        print_table(comps, list(comps[0]))
    hourly = report["hourly"][-hours:] if hours else []
    if hourly:
        click.echo("\nhourly:")
        table = [
            {
                **h,
                "win_rate": _ci_text(h["win_rate"]),
                "priced_win_rate": _ci_text(h["priced_win_rate"]),
                "spend": _num_text(h["spend"]),
            }
            for h in hourly
        ]
        columns = ["hour", "arm", "run_id", "requests", "bids", "wins", "win_rate", "floor_no_bids", "priced_win_rate"]
        print_table(table, [*columns, "spend", "clicks"])

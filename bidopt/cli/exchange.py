"""``bidopt exchange``: play an exchange against a bidder (``bidopt.exchange``)."""

from __future__ import annotations

import sys
import time
from urllib.parse import urlsplit

import click

from bidopt.cli.common import json_option, optional_session
from bidopt.cli.output import print_json, print_table

# bidopt.exchange.FORGE_KINDS, spelt out so that `bidopt --help` does not import NumPy and httpx
FORGE_KINDS = ("bad_signature", "price_above_bid", "win_for_lost")
PROGRESS_EVERY_SECONDS = 5.0


@click.group("exchange")
def exchange() -> None:
    """Play an exchange against a bidder: requests from the market simulator, auctions, notices."""


def bid_url(url: str | None, entity_code: str) -> str:
    """The bidder's bid URL: ``--url`` as given, ``/openrtb2/ENTITY`` added to a URL without a path."""
    url = url or "http://127.0.0.1:8000"
    if urlsplit(url).path in ("", "/"):
        url = url.rstrip("/") + f"/openrtb2/{entity_code}"
    return url


class Progress:
    """A progress bar on a terminal, else a line on stderr every few seconds."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label = total, label
        self.bar = click.progressbar(length=total, label=label, file=sys.stderr) if sys.stderr.isatty() else None
        self.started = self.last = time.monotonic()

    def __enter__(self) -> Progress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def __call__(self, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self.bar.pos)
            return
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_SECONDS or done == total:
            self.last = now
            rate = done / (now - self.started) if now > self.started else 0.0
            click.echo(f"{self.label}: {done:,}/{total:,} requests ({rate:,.0f}/s)", err=True)


@exchange.command("simulate")
@click.argument("entity_code")
@click.option(
    "--url",
    default=None,
    help="The bidder's bid URL [default: http://127.0.0.1:8000/openrtb2/ENTITY_CODE; a URL without a "
    "path gets /openrtb2/ENTITY_CODE].",
)
@click.option("--requests", "n_requests", type=click.IntRange(min=1), default=10_000, show_default=True)
@click.option("--qps", type=float, default=None, help="Requests started per second [default: no pacing].")
@click.option("--concurrency", type=click.IntRange(1, 1000), default=8, show_default=True, help="Requests in flight.")
@click.option("--seed", default=1, show_default=True, help="Seed of the traffic: requests, competing bids, faults.")
@click.option(
    "--market-seed",
    default=7,
    show_default=True,
    help="Seed of the market; `bidopt data generate` uses 7 (7+i for its i-th entity).",
)
@click.option(
    "--auction",
    "auction_type",
    type=click.Choice(["first_price", "second_price"]),
    default=None,
    help="Auction type [default: the entity's supply source, else first_price].",
)
@click.option("--late-fraction", type=float, default=0.02, show_default=True, help="Share of notices sent late.")
@click.option("--late-seconds", type=float, default=2.0, show_default=True, help="How late a late notice is.")
@click.option("--duplicate-fraction", type=float, default=0.02, show_default=True, help="Share of notices sent twice.")
@click.option(
    "--forged-fraction", type=float, default=0.01, show_default=True, help="Share of bids with an extra forged notice."
)
@click.option(
    "--forge",
    "forge_kinds",
    type=click.Choice(FORGE_KINDS),
    multiple=True,
    help="Kinds of forgery, repeatable [default: all].",
)
@click.option("--test-fraction", type=float, default=0.01, show_default=True, help='Share of requests with "test": 1.')
@click.option("--tmax", "tmax_ms", type=click.IntRange(1, 60_000), default=500, show_default=True, help="tmax in ms.")
@click.option("--allow-other-hosts", is_flag=True, help="Also call notice URLs on hosts other than --url's.")
@json_option
def simulate(
    entity_code,
    url,
    n_requests,
    qps,
    concurrency,
    seed,
    market_seed,
    auction_type,
    late_fraction,
    late_seconds,
    duplicate_fraction,
    forged_fraction,
    forge_kinds,
    test_fraction,
    tmax_ms,
    allow_other_hosts,
    as_json,
) -> None:
    """Send N bid requests of ENTITY_CODE's simulated market to a bidder, run the auctions and
    fire win, loss, billing and click notices (some late, duplicated or forged); print what the
    exchange saw per run. The market is the one `bidopt data generate` simulates for the entity:
    its catalogue entry's auction type and floors, --market-seed."""
    from bidopt.data import market_spec_for_entity
    from bidopt.exchange import simulate_exchange

    with optional_session() as s:
        spec = market_spec_for_entity(s, entity_code, seed=market_seed, auction_type=auction_type)
    url = bid_url(url, entity_code)
    with Progress(n_requests, f"{entity_code}: exchange") as progress:
        report = simulate_exchange(
            spec,
            url,
            n_requests,
            qps=qps,
            concurrency=concurrency,
            seed=seed,
            late_fraction=late_fraction,
            late_seconds=late_seconds,
            duplicate_fraction=duplicate_fraction,
            forged_fraction=forged_fraction,
            forge_kinds=forge_kinds or FORGE_KINDS,
            test_fraction=test_fraction,
            tmax_ms=tmax_ms,
            allow_other_hosts=allow_other_hosts,
            on_progress=progress,
        )
    result = report.as_dict()
    print_json(result) if as_json else print_report(result)


def _statuses(answers: dict) -> str:
    return ", ".join(f"{status}: {n:,}" for status, n in sorted(answers.items())) or "-"


def print_report(r: dict) -> None:
    rate = r["requests_per_second"] or 0.0
    click.echo(
        f"{r['entity_code']}: {r['requests']:,} requests ({r['test_requests']:,} test) to {r['url']} "
        f"in {r['seconds']:.1f} s ({rate:,.0f}/s), {r['auction_type']} auction"
    )
    click.echo(f"bid answers: {_statuses(r['answers'])}; no bid: {r['no_bids']:,}; invalid bids: {r['invalid_bids']:,}")
    rows = []
    for arm in r["arms"]:
        wr, ctr = arm["win_rate"], arm["ctr"]
        rows.append(
            {
                "run_id": arm["run_id"],
                "requests": arm["requests"],
                "bids": arm["bids"],
                "wins": arm["wins"],
                "win_rate": wr["value"],
                "95% interval": "-" if wr["low"] is None else f"{wr['low']:.4f}-{wr['high']:.4f}",
                "true_p_win": arm["true_win_probability"],
                "spend": arm["spend"],
                "ecpm": arm["ecpm"],
                "clicks": arm["clicks"],
                "ctr": ctr["value"],
            }
        )
    click.echo("per run (test requests excluded; a request's run is known from its bid):")
    print_table(rows, list(rows[0]) if rows else ["run_id"])
    n = r["notices"]
    click.echo("notices sent: " + (", ".join(f"{k} {v:,}" for k, v in sorted(n["sent"].items())) or "none"))
    for kind, answers in sorted(n["answers"].items()):
        click.echo(f"  {kind} answers: {_statuses(answers)}")
    click.echo(f"late: {n['late']['sent']:,} sent, answers {_statuses(n['late']['answers'])}")
    click.echo(f"duplicates: {n['duplicates']['sent']:,} sent, answers {_statuses(n['duplicates']['answers'])}")
    forged = n["forged"]
    click.echo(f"forged: {forged['sent']:,} sent, {forged['rejected_4xx']:,} rejected with 4xx")
    for kind, f in sorted(forged["by_kind"].items()):
        click.echo(f"  {kind}: {f['sent']:,} sent, answers {_statuses(f['answers'])}")
    if n["missing_url"]:
        click.echo(f"bids without a notice URL, by kind: {_statuses(n['missing_url'])}")
    if n["other_host"]:
        click.echo(f"notice URLs on another host, not called (--allow-other-hosts): {_statuses(n['other_host'])}")

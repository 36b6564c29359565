"""``bidopt data``: bid logs in the warehouse (simulate, import, summarise)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bidopt.cli.common import json_option, optional_session
from bidopt.cli.output import print_json, print_mapping
from bidopt.settings import redact_url


@click.group("data")
def data() -> None:
    """Bid logs in the warehouse (BIDOPT_WAREHOUSE_URL): simulate, import, summarise."""


@data.command("generate")
@click.argument("entity_codes", nargs=-1, required=True)
@click.option("--rows", default=1_000_000, show_default=True, help="Bids to simulate per entity.")
@click.option("--days", default=28, show_default=True, help="Days the logs span, ending at --end.")
@click.option(
    "--end",
    "end_time",
    type=click.DateTime(),
    default="2026-01-31",
    show_default=True,
    help="End of the simulated window (UTC).",
)
@click.option("--seed", default=7, show_default=True, help="Random seed; the same seed gives the same rows.")
@click.option(
    "--auction",
    "auction_type",
    type=click.Choice(["first_price", "second_price"]),
    default=None,
    help="Auction type (default: the entity's supply source, else first_price).",
)
@click.option(
    "--floors/--no-floors",
    "floor_available",
    default=None,
    help="Simulate floors (default: the entity's floor_available).",
)
@click.option(
    "--npi/--no-npi", "npi_enabled", default=None, help="Simulate NPI matches (default: the entity's npi_enabled)."
)
@click.option(
    "--parquet-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write standalone Parquet files with the truth_* columns here.",
)
def data_generate(
    entity_codes, rows, days, end_time, seed, auction_type, floor_available, npi_enabled, parquet_dir
) -> None:
    """Simulate bid logs with known ground truth for ENTITY_CODES into the warehouse.

    Entities present in the catalogue take their auction type and static settings
    from it; the options override.
    """
    from bidopt.data import generate_into_warehouse, get_warehouse, market_spec_for_entity

    with get_warehouse() as wh:
        for i, code in enumerate(entity_codes):
            with optional_session() as s:
                spec = market_spec_for_entity(
                    s,
                    code,
                    rows=rows,
                    days=days,
                    end_time=end_time,
                    seed=seed + i,
                    auction_type=auction_type,
                    floor_available=floor_available,
                    npi_enabled=npi_enabled,
                )
            with click.progressbar(length=rows, label=f"{code}: simulating {rows:,} bids", file=sys.stderr) as bar:
                written = generate_into_warehouse(
                    wh, spec, parquet_dir=parquet_dir, on_chunk=lambda done, total: bar.update(done - bar.pos)
                )
            click.echo(
                f"{code}: {written:,} bids ({spec.auction_type}, floors "
                f"{'on' if spec.floor_available else 'off'}, npi {'on' if spec.npi_enabled else 'off'}) "
                f"in {redact_url(wh.url)}"
            )


@data.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--entity", "entity_code", default=None, help="Set entity_code of every row.")
def data_import(path: Path, entity_code: str | None) -> None:
    """Load a CSV or Parquet file in the bid-log layout (see README) into the warehouse."""
    from bidopt.data import get_warehouse
    from bidopt.warehouse.imports import read_bid_log_file

    table = read_bid_log_file(path, entity_code=entity_code)
    with get_warehouse() as wh:
        n = wh.load_bid_logs(table)
    click.echo(f"loaded {n:,} bids from {path.name}")


@data.command("import-ipinyou")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--entity", "entity_code", default="ipinyou_2259", show_default=True)
@click.option(
    "--split",
    "splits",
    type=click.Choice(["train", "test"]),
    multiple=True,
    default=("train", "test"),
    show_default=True,
)
def data_import_ipinyou(folder: Path, entity_code: str, splits: tuple[str, ...]) -> None:
    """Load the iPinYou DLF sample (e.g. ../shared/data/ipinyou_2259_DLF) into the warehouse.

    Prices become CNY CPM; the train file lands in the week of 2013-10-21, the test
    file in the week of 2013-10-28 (DLF keeps weekday and hour only).
    """
    from bidopt.data import get_warehouse
    from bidopt.warehouse.imports import read_ipinyou_dlf

    with get_warehouse() as wh:
        for split in splits:
            n = wh.load_bid_logs(read_ipinyou_dlf(folder, split, entity_code=entity_code))
            click.echo(f"{entity_code}: loaded {n:,} {split} bids")


@data.command("summary")
@click.argument("entity_code")
@json_option
def data_summary(entity_code: str, as_json: bool) -> None:
    """Rows (bids, those lost to their floor included) and time range of an entity's logs in the warehouse."""
    from bidopt.data import get_warehouse

    with get_warehouse() as wh:
        summary = wh.summary(entity_code)
    print_json(summary) if as_json else print_mapping(summary)

"""Data operations behind ``bidopt data``: simulate into a warehouse, import files, summarise."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
from sqlalchemy.orm import Session

from bidopt.db import queries as q
from bidopt.simulator import MarketSpec, iter_market_chunks
from bidopt.warehouse import BidLogWarehouse, open_warehouse
from bidopt.warehouse.base import check_entity_code


def get_warehouse() -> BidLogWarehouse:
    """The warehouse of the settings in force."""
    from bidopt.settings import get_settings

    return open_warehouse(get_settings().warehouse_url)


def market_spec_for_entity(session: Session | None, entity_code: str, **overrides) -> MarketSpec:
    """A simulator spec that matches the entity's catalogue entry (auction type of its supply
    source, ``floor_available``, ``npi_enabled``) when the entity exists; ``overrides`` win."""
    check_entity_code(entity_code)
    base: dict = {}
    if session is not None:
        entity = q.find_entity_by_code(session, entity_code)
        if entity is not None:
            configs = q.get_entity_configs(session, entity.entity_id)
            base = {
                "auction_type": entity.master.auction_type,
                "floor_available": configs["floor_available"],
                "npi_enabled": configs["npi_enabled"],
            }
    spec = MarketSpec(entity_code=entity_code, **base)
    return replace(spec, **{k: v for k, v in overrides.items() if v is not None})


def generate_into_warehouse(
    warehouse: BidLogWarehouse,
    spec: MarketSpec,
    *,
    parquet_dir: Path | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
) -> int:
    """Simulate ``spec`` chunk by chunk into ``warehouse`` (and, with ``parquet_dir``, also into
    standalone Parquet files that keep the ``truth_*`` columns). Returns rows written."""
    done = 0
    for k, chunk in enumerate(iter_market_chunks(spec)):
        warehouse.load_bid_logs(chunk)
        if parquet_dir is not None:
            out = Path(parquet_dir) / spec.entity_code
            out.mkdir(parents=True, exist_ok=True)
            pq.write_table(chunk, out / f"part-{spec.seed}-{k:05d}.parquet", compression="zstd")
        done += chunk.num_rows
        if on_chunk:
            on_chunk(done, spec.rows)
    return done

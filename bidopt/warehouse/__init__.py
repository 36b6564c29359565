"""Bid-log warehouses, chosen by URL scheme in ``WAREHOUSES`` (see ``contract`` for the table layout).

* ``duckdb:///folder``: DuckDB over Parquet files in a local folder (embedded default);
* ``snowflake://user:pw@account/db/schema?warehouse=WH``: Snowflake.

Implementations are imported when a URL of their scheme is opened (their drivers are heavy).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from bidopt.errors import InvalidConfig
from bidopt.schemes import Backend, open_backend
from bidopt.warehouse.base import BidLogWarehouse, Window

__all__ = ["WAREHOUSES", "BidLogWarehouse", "Window", "open_warehouse"]


def _duckdb(url: str) -> BidLogWarehouse:
    from bidopt.warehouse.duckdb_parquet import DuckDBParquetWarehouse

    path = unquote(urlsplit(url).path)
    if not path:
        raise InvalidConfig(f"duckdb warehouse URL needs a folder: duckdb:///path, got {url}")
    return DuckDBParquetWarehouse(url, Path(path))


def _snowflake(url: str) -> BidLogWarehouse:
    from bidopt.warehouse.snowflake import SnowflakeWarehouse

    return SnowflakeWarehouse(url)


WAREHOUSES: dict[str, Backend[BidLogWarehouse]] = {
    "duckdb": Backend("duckdb:///folder", _duckdb),
    "snowflake": Backend("snowflake://...", _snowflake),
}


def open_warehouse(url: str) -> BidLogWarehouse:
    return open_backend("warehouse", WAREHOUSES, url)

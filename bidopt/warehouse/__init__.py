"""Bid-log warehouses, chosen by URL scheme (see ``contract`` for the table layout).

* ``duckdb:///folder``: DuckDB over Parquet files in a local folder (embedded default);
* ``snowflake://user:pw@account/db/schema?warehouse=WH``: Snowflake.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from bidopt.errors import InvalidConfig
from bidopt.warehouse.base import BidLogWarehouse, Window

__all__ = ["BidLogWarehouse", "Window", "open_warehouse"]


def open_warehouse(url: str) -> BidLogWarehouse:
    scheme = urlsplit(url).scheme
    if scheme == "duckdb":
        from bidopt.warehouse.duckdb_parquet import DuckDBParquetWarehouse

        path = unquote(urlsplit(url).path)
        if not path:
            raise InvalidConfig(f"duckdb warehouse URL needs a folder: duckdb:///path, got {url}")
        return DuckDBParquetWarehouse(url, Path(path))
    if scheme == "snowflake":
        from bidopt.warehouse.snowflake import SnowflakeWarehouse

        return SnowflakeWarehouse(url)
    raise InvalidConfig(f"unknown warehouse URL scheme {scheme!r}: use duckdb:///folder or snowflake://...")

"""The embedded warehouse: DuckDB over a folder of Parquet files.

Layout: ``<folder>/bid_logs/entity_code=<code>/part-<uuid>.parquet`` (Hive
partitioning), each file sorted by ``event_time`` so that DuckDB skips row
groups outside a query's time window. URL: ``duckdb:///absolute/folder``.

The platform's own rows (compacted from bidder events) are one file per hour,
``platform-<YYYYMMDDTHH>.parquet`` in the same folder: replacing an hour is writing a temporary
file and renaming it over the old one (atomic on a local file system), so a reader sees the old
hour or the new one, and compacting an hour twice leaves one copy. Files are read by column name
(``union_by_name``), so files written before ``traffic_source`` existed still read (as null).
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bidopt.warehouse.base import BidLogWarehouse, check_entity_code, check_platform_hour
from bidopt.warehouse.contract import IMPORTED, PLATFORM, conform_bid_logs, with_traffic_source

ROW_GROUP_SIZE = 1_000_000


class DuckDBParquetWarehouse(BidLogWarehouse):
    def __init__(self, url: str, folder: Path) -> None:
        self.url = url
        self.folder = folder
        self._lock = threading.Lock()  # one DuckDB connection, used by one thread at a time
        self._con = duckdb.connect()

    def _entity_dir(self, entity_code: str) -> Path:
        return self.folder / "bid_logs" / f"entity_code={check_entity_code(entity_code)}"

    def _source(self, entity_code: str) -> str | None:
        folder = self._entity_dir(entity_code)
        if not any(folder.glob("*.parquet")):
            return None
        # The file glob goes through DuckDB's relation API as a Python value, never
        # into SQL text; the view name is the validated entity code.
        view = "bid_logs_" + entity_code.replace("-", "_")
        with self._lock:
            rel = self._con.read_parquet(str(folder / "*.parquet"), hive_partitioning=True, union_by_name=True)
            if "traffic_source" not in rel.columns:  # only files from before the column existed
                rel = rel.project("*, CAST(NULL AS VARCHAR) AS traffic_source")
            rel.create_view(view, replace=True)  # re-created per query: new files become visible
        return view

    def _query(self, sql: str, params: Sequence[object]) -> pa.Table:
        with self._lock:
            return self._con.sql(sql, params=list(params)).to_arrow_table()

    def load_bid_logs(self, table: pa.Table) -> int:
        table = conform_bid_logs(table)
        for code in pc.unique(table["entity_code"]).to_pylist():
            part = table.filter(pc.equal(table["entity_code"], code))
            part = with_traffic_source(part.sort_by("event_time"), IMPORTED).drop_columns(["entity_code"])
            self._write_file(code, f"part-{uuid.uuid4().hex}.parquet", part)
        return table.num_rows

    def _write_file(self, entity_code: str, name: str, table: pa.Table) -> None:
        folder = self._entity_dir(entity_code)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.{uuid.uuid4().hex}.tmp"  # not matched by *.parquet until renamed
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_SIZE, compression="zstd")
        os.replace(tmp, folder / name)  # atomic, also over an existing file

    def replace_platform_hour(self, entity_code: str, hour_start: datetime, table: pa.Table) -> int:
        table = check_platform_hour(entity_code, hour_start, table)
        name = f"platform-{hour_start.strftime('%Y%m%dT%H')}.parquet"
        if table.num_rows == 0:
            (self._entity_dir(entity_code) / name).unlink(missing_ok=True)
            return 0
        part = with_traffic_source(table.sort_by("event_time"), PLATFORM).drop_columns(["entity_code"])
        self._write_file(entity_code, name, part)
        return table.num_rows

    def close(self) -> None:
        with self._lock:
            self._con.close()

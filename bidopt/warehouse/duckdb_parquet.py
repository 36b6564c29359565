"""The embedded warehouse: DuckDB over a folder of Parquet files.

Layout: ``<folder>/bid_logs/entity_code=<code>/part-<uuid>.parquet`` (Hive
partitioning), each file sorted by ``event_time`` so that DuckDB skips row
groups outside a query's time window. URL: ``duckdb:///absolute/folder``.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bidopt.warehouse.base import BidLogWarehouse, check_entity_code
from bidopt.warehouse.contract import conform_bid_logs

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
            rel = self._con.read_parquet(str(folder / "*.parquet"), hive_partitioning=True)
            rel.create_view(view, replace=True)  # re-created per query: new files become visible
        return view

    def _query(self, sql: str, params: Sequence[object]) -> pa.Table:
        with self._lock:
            return self._con.sql(sql, params=list(params)).to_arrow_table()

    def load_bid_logs(self, table: pa.Table) -> int:
        table = conform_bid_logs(table)
        for code in pc.unique(table["entity_code"]).to_pylist():
            part = table.filter(pc.equal(table["entity_code"], code))
            part = part.sort_by("event_time").drop_columns(["entity_code"])
            folder = self._entity_dir(code)
            folder.mkdir(parents=True, exist_ok=True)
            final = folder / f"part-{uuid.uuid4().hex}.parquet"
            tmp = folder / f".{final.name}.tmp"  # not matched by *.parquet until renamed
            pq.write_table(part, tmp, row_group_size=ROW_GROUP_SIZE, compression="zstd")
            tmp.rename(final)
        return table.num_rows

    def close(self) -> None:
        with self._lock:
            self._con.close()

"""Snowflake through ``snowflake-connector-python`` (pinned ``>=4,<5``).

URL: ``snowflake://USER:PASSWORD@ACCOUNT/DATABASE/SCHEMA?warehouse=WH&role=R&table=bid_logs``.
The query parameters ``host``, ``port`` and ``protocol`` reach a Snowflake-compatible
endpoint other than ``<account>.snowflakecomputing.com`` (the tests use fakesnow's server).

Queries use server-side binding (``paramstyle="qmark"``); results come back as Arrow.
Loading goes the way Snowflake loads in bulk: Parquet written locally, ``PUT`` to a
temporary stage, ``COPY INTO ... MATCH_BY_COLUMN_NAME``.

The platform's own rows of an hour are replaced in one transaction (``DELETE`` of that hour's
``traffic_source = 'platform'`` rows, then ``COPY INTO``), after the file is staged: a failure
rolls back to the old rows. A table made before ``traffic_source`` existed gets the column
(``ALTER TABLE ... ADD COLUMN IF NOT EXISTS``) on the first load; its old rows read as null.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import threading
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from bidopt.errors import InvalidConfig, ServiceUnavailable
from bidopt.warehouse.base import BidLogWarehouse, check_platform_hour
from bidopt.warehouse.contract import IMPORTED, PLATFORM, conform_bid_logs, with_traffic_source

IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,254}$")

CREATE_TABLE = """CREATE TABLE IF NOT EXISTS {table} (
  event_time TIMESTAMP_NTZ NOT NULL,
  entity_code VARCHAR NOT NULL,
  request_id VARCHAR NOT NULL,
  user_id VARCHAR,
  geo_region_name VARCHAR,
  os_code VARCHAR,
  browser_code VARCHAR,
  device_type VARCHAR,
  domain VARCHAR,
  npi_matched BOOLEAN NOT NULL,
  floor_cpm DOUBLE,
  bid_cpm DOUBLE NOT NULL,
  won BOOLEAN NOT NULL,
  clearing_price_cpm DOUBLE,
  clicked BOOLEAN NOT NULL,
  traffic_source VARCHAR
) CLUSTER BY (entity_code, TO_DATE(event_time))"""


def connect_kwargs_from_url(url: str) -> tuple[dict, str]:
    """``(snowflake.connector.connect kwargs, bid-log table name)`` from a ``snowflake://`` URL."""
    parts = urlsplit(url)
    path = [unquote(p) for p in parts.path.split("/") if p]
    if not parts.hostname or len(path) != 2 or not parts.username:
        raise InvalidConfig("snowflake URL must look like snowflake://USER:PASSWORD@ACCOUNT/DATABASE/SCHEMA")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    table = query.pop("table", "bid_logs")
    for ident in (table, *path):
        if not IDENT_RE.match(ident):
            raise InvalidConfig(f"not a plain Snowflake identifier: {ident!r}")
    kwargs: dict = {
        "user": unquote(parts.username),
        "password": unquote(parts.password or ""),
        "account": parts.hostname,
        "database": path[0],
        "schema": path[1],
        "paramstyle": "qmark",
        "session_parameters": {"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False},
        "login_timeout": 30,
        "network_timeout": 300,
    }
    for key in ("warehouse", "role", "host", "protocol", "authenticator"):
        if key in query:
            kwargs[key] = query.pop(key)
    if "port" in query:
        kwargs["port"] = int(query.pop("port"))
    if query:
        raise InvalidConfig(f"unknown snowflake URL parameter(s): {', '.join(sorted(query))}")
    return kwargs, table


class SnowflakeWarehouse(BidLogWarehouse):
    def __init__(self, url: str) -> None:
        self.url = url
        self._kwargs, self.table = connect_kwargs_from_url(url)
        self._lock = threading.Lock()
        self._conn = None

    def _connection(self):
        if self._conn is None:
            import snowflake.connector

            try:
                self._conn = snowflake.connector.connect(**self._kwargs)
            except snowflake.connector.errors.Error as exc:
                raise ServiceUnavailable(
                    f"cannot connect to Snowflake account {self._kwargs['account']}: {exc}"
                ) from None
        return self._conn

    def _query(self, sql: str, params: Sequence[object]) -> pa.Table:
        with self._lock:
            cur = self._connection().cursor()
            try:
                cur.execute(sql, tuple(params))
                table = cur.fetch_arrow_all()
                if table is None:  # no rows: the connector returns None
                    names = [d[0] for d in cur.description]
                    return pa.table({n: pa.array([], pa.null()) for n in names})
                return table
            finally:
                cur.close()

    def _table_exists(self) -> bool:
        rows = self._query(
            "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
            [self._kwargs["schema"].upper(), self.table.upper()],
        )
        return rows.column(0)[0].as_py() > 0

    def _source(self, entity_code: str) -> str | None:
        return self.table if self._table_exists() else None

    def load_bid_logs(self, table: pa.Table) -> int:
        table = conform_bid_logs(table)
        if table.num_rows == 0:
            return 0
        return self._copy_in(with_traffic_source(table, IMPORTED))

    def replace_platform_hour(self, entity_code: str, hour_start: datetime, table: pa.Table) -> int:
        table = check_platform_hour(entity_code, hour_start, table)
        delete = (
            f"DELETE FROM {self.table} WHERE entity_code = ? AND traffic_source = ? "
            "AND event_time >= CAST(? AS TIMESTAMP) AND event_time < CAST(? AS TIMESTAMP)"
        )
        params = (entity_code, PLATFORM, hour_start, hour_start + timedelta(hours=1))
        return self._copy_in(with_traffic_source(table, PLATFORM), before=(delete, params))

    def _copy_in(self, table: pa.Table, before: tuple[str, tuple] | None = None) -> int:
        """Stage ``table`` and ``COPY INTO`` the bid-log table; with ``before`` (a statement and its
        parameters), run it and the copy in one transaction."""
        stage = "bidopt_load"
        with tempfile.TemporaryDirectory(prefix="bidopt-sf-") as tmp:
            name = f"bid_logs_{uuid.uuid4().hex}.parquet"
            path = Path(tmp) / name
            pq.write_table(table, path)
            with self._lock:
                cur = self._connection().cursor()
                try:
                    cur.execute(CREATE_TABLE.format(table=self.table))
                    cur.execute(f"ALTER TABLE {self.table} ADD COLUMN IF NOT EXISTS traffic_source VARCHAR")
                    cur.execute(f"CREATE TEMPORARY STAGE IF NOT EXISTS {stage} FILE_FORMAT = (TYPE = PARQUET)")
                    # PUT and COPY take no bind parameters; the path is our own temp file
                    # and the names are validated identifiers.
                    cur.execute(f"PUT 'file://{path.as_posix()}' @{stage} AUTO_COMPRESS = FALSE OVERWRITE = TRUE")
                    loaded = 0
                    cur.execute("BEGIN")
                    try:
                        if before is not None:
                            cur.execute(*before)
                        if table.num_rows:
                            cur.execute(
                                f"COPY INTO {self.table} FROM @{stage}/{name} FILE_FORMAT = (TYPE = PARQUET) "
                                "MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE PURGE = TRUE"
                            )
                            loaded = sum(int(r[2]) for r in cur.fetchall() if str(r[1]).upper() == "LOADED")
                        if loaded != table.num_rows:
                            raise ServiceUnavailable(f"Snowflake loaded {loaded} of {table.num_rows} rows")
                        cur.execute("COMMIT")
                    except BaseException:
                        with contextlib.suppress(Exception):  # a dead connection rolls back by itself
                            cur.execute("ROLLBACK")
                        raise
                finally:
                    cur.close()
        return loaded

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

"""The warehouse interface and the SQL both backends share.

The optimizer never pulls raw bid logs into Python: it asks the warehouse for
aggregates (per segment x bid bucket: bids, wins, clicks, spend), which run as
SQL inside the warehouse. Column names in the SQL come from a whitelist (the
contract); every value (entity, time window, bucket width) is a bound parameter.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from bidopt.errors import InvalidConfig
from bidopt.warehouse.contract import (
    BID_LOG_SCHEMA,
    CONTRACT_COLUMNS,
    DERIVED_FEATURES,
    FEATURE_COLUMNS,
    UNKNOWN,
    conform_bid_logs,
    floor_bucket_sql,
)

ENTITY_CODE_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")

# Columns of every aggregate, after the group-by columns. ``cleared_bids`` / ``cleared_bid_sum``: the
# bids that cleared their floor (no floor, a bid at or above it, or a win, which cleared it whatever the
# logged floor says), which a floor-aware win model learns the market from (``bidopt.optimizer.floors``).
AGGREGATE_COLUMNS = ("bid_bucket", "bids", "wins", "clicks", "spend_cpm", "bid_sum", "cleared_bids", "cleared_bid_sum")
FLOAT_AGGREGATES = ("spend_cpm", "bid_sum", "cleared_bid_sum")
CLEARED_SQL = "(won OR floor_cpm IS NULL OR bid_cpm >= floor_cpm)"


def check_entity_code(entity_code: str) -> str:
    """Entity codes name folders and partitions: lower-case letters, digits, ``_`` and ``-``."""
    if not isinstance(entity_code, str) or not ENTITY_CODE_RE.match(entity_code):
        raise InvalidConfig(f"entity code must match {ENTITY_CODE_RE.pattern}, got {entity_code!r}")
    return entity_code


def group_expression(name: str) -> str:
    """The SQL of a group-by feature, from the whitelist only."""
    if name in FEATURE_COLUMNS:
        return name
    if name == "floor_bucket":
        return floor_bucket_sql()
    raise InvalidConfig(f"unknown feature {name!r}: features are {', '.join(FEATURE_COLUMNS + DERIVED_FEATURES)}")


@dataclass(frozen=True)
class Window:
    """``[start, end)`` of event_time, naive UTC."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start >= self.end:
            raise InvalidConfig(f"empty time window: {self.start} .. {self.end}")


def aggregate_sql(source: str, group_by: Sequence[str], *, holdout: bool) -> str:
    """Per (group_by..., [is_holdout], bid bucket): bids, wins, clicks, spend, sum of bids.

    Parameters, in order: [holdout_from], bucket width, entity_code, start, end.
    """
    exprs = [f"{group_expression(g)} AS {g}" for g in group_by]
    if holdout:
        exprs.append("CASE WHEN event_time >= CAST(? AS TIMESTAMP) THEN 1 ELSE 0 END AS is_holdout")
    exprs.append("CAST(FLOOR(bid_cpm / CAST(? AS DOUBLE)) AS BIGINT) AS bid_bucket")
    n_keys = len(exprs)
    return (
        "SELECT " + ", ".join(exprs) + ",\n"
        "  COUNT(*) AS bids,\n"
        "  SUM(CASE WHEN won THEN 1 ELSE 0 END) AS wins,\n"
        "  SUM(CASE WHEN won AND clicked THEN 1 ELSE 0 END) AS clicks,\n"
        "  SUM(CASE WHEN won THEN COALESCE(clearing_price_cpm, 0) ELSE 0 END) AS spend_cpm,\n"
        "  SUM(bid_cpm) AS bid_sum,\n"
        f"  SUM(CASE WHEN {CLEARED_SQL} THEN 1 ELSE 0 END) AS cleared_bids,\n"
        f"  SUM(CASE WHEN {CLEARED_SQL} THEN bid_cpm ELSE 0 END) AS cleared_bid_sum\n"
        f"FROM {source}\n"
        "WHERE entity_code = ? AND event_time >= CAST(? AS TIMESTAMP) AND event_time < CAST(? AS TIMESTAMP)\n"
        "GROUP BY " + ", ".join(str(i) for i in range(1, n_keys + 1))
    )


def floor_sql(source: str, group_by: Sequence[str]) -> str:
    """Per group: median floor and how many bids carried one. Parameters: entity_code, start, end."""
    exprs = [f"{group_expression(g)} AS {g}" for g in group_by]
    select = ", ".join(exprs + ["MEDIAN(floor_cpm) AS typical_floor", "COUNT(floor_cpm) AS floors"])
    group = " GROUP BY " + ", ".join(str(i) for i in range(1, len(exprs) + 1)) if exprs else ""
    return (
        f"SELECT {select} FROM {source} "
        "WHERE entity_code = ? AND event_time >= CAST(? AS TIMESTAMP) AND event_time < CAST(? AS TIMESTAMP)" + group
    )


def floor_histogram_sql(source: str, group_by: Sequence[str], bins: int) -> str:
    """Per (group_by..., floor bin): how many rows. The bin of a floor is
    ``floor((ln(floor_cpm) - ln(lowest)) / width)`` below ``highest``, and ``bins`` at or above it (so
    are a NaN or infinite floor stored before the contract refused them: both compare above every
    number, and the logarithm of neither is taken); NULL for no floor, or one of 0 or less, which
    every bid clears. Parameters: highest, lowest, width, entity_code, start, end."""
    if not isinstance(bins, int) or bins < 1:
        raise InvalidConfig(f"bins must be a positive whole number, got {bins!r}")
    exprs = [f"{group_expression(g)} AS {g}" for g in group_by]
    exprs.append(
        "CASE WHEN floor_cpm IS NULL OR floor_cpm <= 0 THEN NULL "
        f"WHEN floor_cpm >= CAST(? AS DOUBLE) THEN {bins} "
        "ELSE CAST(FLOOR((LN(floor_cpm) - LN(CAST(? AS DOUBLE))) / CAST(? AS DOUBLE)) AS BIGINT) END AS floor_bin"
    )
    return (
        "SELECT " + ", ".join(exprs) + ", COUNT(*) AS n\n"
        f"FROM {source}\n"
        "WHERE entity_code = ? AND event_time >= CAST(? AS TIMESTAMP) AND event_time < CAST(? AS TIMESTAMP)\n"
        "GROUP BY " + ", ".join(str(i) for i in range(1, len(exprs) + 1))
    )


def summary_sql(source: str) -> str:
    """Rows and time range of one entity. Parameter: entity_code."""
    return (
        f"SELECT COUNT(*) AS bids, MIN(event_time) AS first_time, MAX(event_time) AS last_time "
        f"FROM {source} WHERE entity_code = ?"
    )


def time_quantile_sql(source: str, quantile: float) -> str:
    """The ``quantile`` (a checked float, written as a literal: Snowflake's PERCENTILE_DISC takes only a
    constant) of event_time inside a window. Parameters: entity_code, start, end."""
    if not isinstance(quantile, float) or not 0.0 < quantile < 1.0:
        raise InvalidConfig(f"quantile must be a float between 0 and 1, got {quantile!r}")
    return (
        f"SELECT PERCENTILE_DISC({quantile!r}) WITHIN GROUP (ORDER BY event_time) AS q FROM {source} "
        "WHERE entity_code = ? AND event_time >= CAST(? AS TIMESTAMP) AND event_time < CAST(? AS TIMESTAMP)"
    )


def rows_sql(source: str, columns: Sequence[str]) -> str:
    """The raw rows (``columns``, from the contract only) of one entity's window, in time order.
    Parameters: entity_code, start, end."""
    bad = [c for c in columns if c not in CONTRACT_COLUMNS]
    if bad or not columns or len(set(columns)) != len(columns):
        raise InvalidConfig(
            f"columns must be distinct bid-log columns ({', '.join(CONTRACT_COLUMNS)}), got {list(columns)}"
        )
    return (
        f"SELECT {', '.join(columns)} FROM {source} "
        "WHERE entity_code = ? AND event_time >= CAST(? AS TIMESTAMP) AND event_time < CAST(? AS TIMESTAMP) "
        "ORDER BY event_time"
    )


def traffic_source_sql(source: str) -> str:
    """Rows per traffic source of one entity. Parameter: entity_code."""
    return f"SELECT traffic_source, COUNT(*) AS n FROM {source} WHERE entity_code = ? GROUP BY traffic_source"


def check_platform_hour(entity_code: str, hour_start: datetime, table: pa.Table) -> pa.Table:
    """``table`` conformed to the contract, refused unless every row is ``entity_code``'s and in
    ``[hour_start, hour_start + 1h)`` (``hour_start`` a whole hour): what ``replace_platform_hour`` replaces."""
    check_entity_code(entity_code)
    if hour_start != hour_start.replace(minute=0, second=0, microsecond=0) or hour_start.tzinfo is not None:
        raise InvalidConfig(f"hour_start must be a whole hour, naive UTC, got {hour_start}")
    table = conform_bid_logs(table)
    if table.num_rows:
        if not pc.all(pc.equal(table["entity_code"], entity_code)).as_py():
            raise InvalidConfig(f"platform rows of another entity than {entity_code}")
        first, last = pc.min(table["event_time"]).as_py(), pc.max(table["event_time"]).as_py()
        if first < hour_start or last >= hour_start + timedelta(hours=1):
            raise InvalidConfig(f"platform rows from {first} to {last} are not all in the hour {hour_start}")
    return table


def tidy_aggregate(table: pa.Table, group_by: Sequence[str], *, holdout: bool) -> pa.Table:
    """Same names and types from every backend: lower-case names, features as normalised
    strings (``unknown`` for nulls), counts as int64, money as float64."""
    table = table.rename_columns([c.lower() for c in table.column_names])
    cols, fields = [], []
    for name in group_by:
        col = table.column(name)
        if pa.types.is_boolean(col.type):
            col = pc.if_else(col, "true", "false")
        elif not pa.types.is_string(col.type):
            col = col.cast(pa.string())
        col = pc.fill_null(pc.utf8_lower(col.cast(pa.string())), UNKNOWN)
        cols.append(col)
        fields.append(pa.field(name, pa.string()))
    if holdout:
        cols.append(pc.cast(table.column("is_holdout"), pa.bool_()))
        fields.append(pa.field("is_holdout", pa.bool_()))
    for name in AGGREGATE_COLUMNS:
        typ = pa.float64() if name in FLOAT_AGGREGATES else pa.int64()
        cols.append(pc.cast(table.column(name), typ))
        fields.append(pa.field(name, typ))
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))


class BidLogWarehouse(ABC):
    """Where an entity's bid logs live. One implementation per URL scheme."""

    url: str

    @abstractmethod
    def load_bid_logs(self, table: pa.Table) -> int:
        """Append rows in the contract's layout (extra columns are dropped); returns rows loaded."""

    @abstractmethod
    def replace_platform_hour(self, entity_code: str, hour_start: datetime, table: pa.Table) -> int:
        """Make ``table`` (contract rows of ``entity_code`` in the hour from ``hour_start``) the entity's
        platform rows of that hour, atomically: the hour's previous platform rows are gone and these
        are in, or (on failure) nothing changed. Imported rows are never touched. Returns rows loaded."""

    @abstractmethod
    def _query(self, sql: str, params: Sequence[object]) -> pa.Table:
        """Run one parameterised query (``?`` placeholders) and return Arrow."""

    @abstractmethod
    def _source(self, entity_code: str) -> str | None:
        """The FROM clause for an entity's logs, or None when the warehouse has none."""

    def close(self) -> None:  # noqa: B027 - backends without resources need nothing
        """Release connections."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ queries

    def summary(self, entity_code: str) -> dict[str, object]:
        """``{"bids": n, "first_time": t0, "last_time": t1}`` of the entity's logs (zeros/None if none)."""
        source = self._source(check_entity_code(entity_code))
        if source is None:
            return {"bids": 0, "first_time": None, "last_time": None}
        row = self._query(summary_sql(source), [entity_code]).to_pylist()[0]
        row = {k.lower(): v for k, v in row.items()}
        return {"bids": int(row["bids"] or 0), "first_time": row["first_time"], "last_time": row["last_time"]}

    def time_quantile(self, entity_code: str, window: Window, quantile: float) -> datetime | None:
        """The event_time below which ``quantile`` of the window's rows lie (PERCENTILE_DISC: the
        first time whose cumulative share reaches it); None when the window has no rows."""
        source = self._source(check_entity_code(entity_code))
        if source is None:
            return None
        sql = time_quantile_sql(source, float(quantile)).replace("AS q FROM", "AS q, COUNT(*) AS n FROM")
        table = self._query(sql, [entity_code, window.start, window.end])
        table = table.rename_columns([c.lower() for c in table.column_names])
        if not table.num_rows or not table["n"][0].as_py():  # no rows (fakesnow then says 1970, not NULL)
            return None
        # Snowflake answers in nanoseconds; the value is one of our microsecond times
        return pc.cast(table["q"], pa.timestamp("us"), safe=False)[0].as_py()

    def traffic_sources(self, entity_code: str) -> dict[str | None, int]:
        """Rows of the entity per ``traffic_source`` (None: rows stored before the column existed)."""
        source = self._source(check_entity_code(entity_code))
        if source is None:
            return {}
        table = self._query(traffic_source_sql(source), [entity_code])
        rows = table.rename_columns([c.lower() for c in table.column_names]).to_pylist()
        return {r["traffic_source"]: int(r["n"]) for r in rows}

    def aggregate_bids(
        self,
        entity_code: str,
        window: Window,
        group_by: Sequence[str],
        *,
        bid_bucket_cpm: float,
        holdout_from: datetime | None = None,
    ) -> pa.Table:
        """Counts per (group_by..., [is_holdout], bid_bucket) inside ``window``.

        ``bid_bucket`` is ``floor(bid_cpm / bid_bucket_cpm)``; ``bid_sum / bids`` is
        the mean bid of the bucket. With ``holdout_from``, rows at or after it are
        flagged ``is_holdout`` (the time slice the models are evaluated on).
        """
        if not bid_bucket_cpm > 0:
            raise InvalidConfig(f"bid_bucket_cpm must be > 0, got {bid_bucket_cpm}")
        if len(set(group_by)) != len(group_by):
            raise InvalidConfig(f"feature named twice in {list(group_by)}")
        holdout = holdout_from is not None
        source = self._source(check_entity_code(entity_code))
        if source is None:
            return _empty_aggregate(group_by, holdout=holdout)
        params: list[object] = [holdout_from] if holdout else []
        params += [float(bid_bucket_cpm), entity_code, window.start, window.end]
        table = self._query(aggregate_sql(source, group_by, holdout=holdout), params)
        if table.num_rows == 0:
            return _empty_aggregate(group_by, holdout=holdout)
        return tidy_aggregate(table, group_by, holdout=holdout)

    def bid_log_batches(
        self, entity_code: str, window: Window, columns: Sequence[str], *, batch_rows: int = 100_000
    ) -> Iterator[pa.RecordBatch]:
        """The raw rows of the entity's logs inside ``window`` as Arrow record batches of at most
        ``batch_rows`` rows, in time order, ``columns`` (contract columns) with the contract's names
        and types. For the offline replay (``bidopt.jobs.replay``), which needs each request; the
        optimizer itself only ever asks for aggregates. The result is read whole before the first
        batch is yielded (the warehouse's connection is free again while the caller works)."""
        if not isinstance(batch_rows, int) or batch_rows < 1:
            raise InvalidConfig(f"batch_rows must be a positive whole number, got {batch_rows!r}")
        columns = list(columns)
        rows_sql("t", columns)  # refuses bad columns before anything is read
        source = self._source(check_entity_code(entity_code))
        if source is None:
            return iter(())
        table = self._query(rows_sql(source, columns), [entity_code, window.start, window.end])
        return iter(tidy_rows(table, columns).to_batches(max_chunksize=batch_rows))

    def floor_histogram(
        self,
        entity_code: str,
        window: Window,
        group_by: Sequence[str],
        *,
        lowest_cpm: float,
        highest_cpm: float,
        bins: int,
    ) -> pa.Table:
        """Rows per (group_by..., ``floor_bin``) inside ``window``: ``bins`` equal bins of ln(floor)
        from ``lowest_cpm`` to ``highest_cpm``, ``floor_bin`` the bin (int64: below 0 under the lowest,
        ``bins`` at or above the highest; null where the row had no floor), ``n`` the rows. The floors a
        cell's requests carry: how a floor-aware win model turns P(win | cleared) into P(win)
        (``bidopt.optimizer.floors``)."""
        if not (math.isfinite(lowest_cpm) and math.isfinite(highest_cpm) and 0 < lowest_cpm < highest_cpm) or not (
            isinstance(bins, int) and bins >= 1
        ):
            raise InvalidConfig(
                f"floor bins need 0 < lowest_cpm < highest_cpm and bins >= 1, got {lowest_cpm}, {highest_cpm}, {bins}"
            )
        if len(set(group_by)) != len(group_by):
            raise InvalidConfig(f"feature named twice in {list(group_by)}")
        source = self._source(check_entity_code(entity_code))
        names = [*group_by, "floor_bin", "n"]
        empty = pa.table(
            {g: pa.array([], pa.string()) for g in group_by}
            | {"floor_bin": pa.array([], pa.int64()), "n": pa.array([], pa.int64())}
        )
        if source is None:
            return empty
        width = math.log(highest_cpm / lowest_cpm) / bins
        params = [float(highest_cpm), float(lowest_cpm), width, entity_code, window.start, window.end]
        table = self._query(floor_histogram_sql(source, group_by, bins), params)
        if table.num_rows == 0:
            return empty
        table = table.rename_columns([c.lower() for c in table.column_names]).select(names)
        cols = [pc.fill_null(pc.utf8_lower(_as_string(table[g])), UNKNOWN) for g in group_by]
        cols += [table["floor_bin"].cast(pa.int64()), table["n"].cast(pa.int64())]
        return pa.Table.from_arrays(cols, names=names)

    def typical_floors(self, entity_code: str, window: Window, group_by: Sequence[str]) -> pa.Table:
        """Median floor (null where no bid had a floor) and floor count per group."""
        source = self._source(check_entity_code(entity_code))
        names = list(group_by) + ["typical_floor", "floors"]
        if source is None:
            return pa.table(
                {n: pa.array([], pa.string()) for n in group_by}
                | {"typical_floor": pa.array([], pa.float64()), "floors": pa.array([], pa.int64())}
            )
        table = self._query(floor_sql(source, group_by), [entity_code, window.start, window.end])
        table = table.rename_columns([c.lower() for c in table.column_names]).select(names)
        cols = [pc.fill_null(pc.utf8_lower(table[g].cast(pa.string())), UNKNOWN) for g in group_by]
        cols += [table["typical_floor"].cast(pa.float64()), table["floors"].cast(pa.int64())]
        return pa.Table.from_arrays(cols, names=names)


def _as_string(col):
    """A group-by column as strings, booleans as ``true``/``false`` (as ``tidy_aggregate`` makes them)."""
    if pa.types.is_boolean(col.type):
        return pc.if_else(col, "true", "false")
    return col.cast(pa.string())


def tidy_rows(table: pa.Table, columns: Sequence[str]) -> pa.Table:
    """Raw rows from any backend with the contract's lower-case names and types (Snowflake answers
    in upper case, times in nanoseconds, an empty result with null columns)."""
    table = table.rename_columns([c.lower() for c in table.column_names])
    out = []
    for name in columns:
        typ = BID_LOG_SCHEMA.field(name).type
        col = table.column(name)
        if pa.types.is_timestamp(col.type) and col.type.tz is not None:
            col = col.cast(pa.timestamp(col.type.unit))
        out.append(col.cast(typ, safe=False) if col.type != typ else col)
    return pa.Table.from_arrays(out, schema=pa.schema([BID_LOG_SCHEMA.field(c) for c in columns]))


def _empty_aggregate(group_by: Sequence[str], *, holdout: bool) -> pa.Table:
    cols = {g: pa.array([], pa.string()) for g in group_by}
    if holdout:
        cols["is_holdout"] = pa.array([], pa.bool_())
    for name in AGGREGATE_COLUMNS:
        cols[name] = pa.array([], pa.float64() if name in FLOAT_AGGREGATES else pa.int64())
    return pa.table(cols)

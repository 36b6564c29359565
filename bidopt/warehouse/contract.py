"""The bid-log contract: one row per bid, the same layout in every warehouse.

A bid under its floor is a row that lost (``bid_cpm`` below ``floor_cpm``): imported logs of every bid
hold such rows, and the platform's own rows hold its floor no-bids so (``bidopt.events.compact``).

| column               | type            | meaning                                                   |
|----------------------|-----------------|-----------------------------------------------------------|
| `event_time`         | timestamp (UTC) | when the bid was made (microseconds)                      |
| `entity_code`        | string          | the advertiser line that bid                              |
| `request_id`         | string          | the exchange's bid request id                             |
| `user_id`            | string, null    | the exchange user id (or device id)                       |
| `geo_region_name`    | string, null    | region / state of the device                              |
| `os_code`            | string, null    | operating system                                          |
| `browser_code`       | string, null    | browser family                                            |
| `device_type`        | string, null    | mobile, desktop, tablet, ctv, ...                         |
| `domain`             | string, null    | site domain or app bundle                                 |
| `npi_matched`        | boolean         | the user matched the buyer's NPI (prescriber) list        |
| `floor_cpm`          | double, null    | the impression's floor price, if the exchange sent one    |
| `bid_cpm`            | double          | our bid, CPM                                              |
| `won`                | boolean         | whether we won the impression                             |
| `clearing_price_cpm` | double, null    | what we paid, CPM (null when lost)                        |
| `clicked`            | boolean         | the won impression was clicked                            |

Warehouses also store `traffic_source` (string, null): `imported` for rows loaded by
``load_bid_logs`` (every import path), `platform` for rows compacted from the bidder's own events
(``replace_platform_hour``), null in files and tables written before the column existed (they are
still read: DuckDB reads the files by column name, Snowflake adds the column to an old table).
It is not part of what an import must provide (``conform_bid_logs`` returns the columns above).

Feature values are stored normalised (``normalise_feature_value``): lower case,
trimmed, ``|`` replaced (it separates the values of a segment key). The bidder
applies the same function to bid-request fields, so keys built from requests
match keys learnt from logs. ``conform_bid_logs`` normalises every import; empty
or blank values are stored as null, and nulls become ``unknown`` at aggregation,
as an absent request field does in the bidder. Event times finer than
microseconds (pandas writes nanoseconds) are truncated to the microsecond, and
time-zone-aware ones are stored in UTC.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from bidopt.errors import InvalidConfig

BID_LOG_SCHEMA = pa.schema(
    [
        pa.field("event_time", pa.timestamp("us"), nullable=False),
        pa.field("entity_code", pa.string(), nullable=False),
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string()),
        pa.field("geo_region_name", pa.string()),
        pa.field("os_code", pa.string()),
        pa.field("browser_code", pa.string()),
        pa.field("device_type", pa.string()),
        pa.field("domain", pa.string()),
        pa.field("npi_matched", pa.bool_(), nullable=False),
        pa.field("floor_cpm", pa.float64()),
        pa.field("bid_cpm", pa.float64(), nullable=False),
        pa.field("won", pa.bool_(), nullable=False),
        pa.field("clearing_price_cpm", pa.float64()),
        pa.field("clicked", pa.bool_(), nullable=False),
    ]
)

CONTRACT_COLUMNS = tuple(BID_LOG_SCHEMA.names)

# Where stored rows came from (see the module docstring); the warehouse sets it, never the input.
IMPORTED, PLATFORM = "imported", "platform"
TRAFFIC_SOURCES = (IMPORTED, PLATFORM)
STORED_SCHEMA = BID_LOG_SCHEMA.append(pa.field("traffic_source", pa.string()))

# Columns that can be segment features (candidates are the active macros whose
# feature_name is one of these).
FEATURE_COLUMNS = ("geo_region_name", "os_code", "browser_code", "device_type", "domain", "npi_matched")

# Features derived from contract columns inside the warehouse's SQL.
# floor_bucket: the floor price in fixed CPM bands (used when an entity's exchange sends floors).
FLOOR_BUCKET_EDGES = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
DERIVED_FEATURES = ("floor_bucket",)

UNKNOWN = "unknown"

# Segment keys: feature values joined in feature order; back-off keys put WILDCARD where a
# value is left out. The optimizer writes them and the bidder builds them: one definition.
KEY_SEPARATOR = "|"
WILDCARD = "*"


def segment_key(values) -> str:
    """``["california", "ios"]`` -> ``california|ios``."""
    return KEY_SEPARATOR.join(values)


def backoff_key(head, n_features: int) -> str:
    """The key that keeps ``head`` and leaves the rest out: ``backoff_key(["california"], 3)``
    -> ``california|*|*``; ``backoff_key([], 3)`` -> ``*|*|*``, the entity default."""
    head = list(head)
    return segment_key(head + [WILDCARD] * (n_features - len(head)))


def _normalised_text(text: str) -> str:
    return text.strip().lower().replace(KEY_SEPARATOR, "/")


def normalise_feature_value(value: Any) -> str:
    """The one normalisation of feature values, for logs and bid requests alike."""
    if value is None:
        return UNKNOWN
    if isinstance(value, bool):
        return "true" if value else "false"
    return _normalised_text(str(value)) or UNKNOWN


# What str.strip() removes from ASCII text (more than Arrow's ASCII whitespace: also \x1c-\x1f).
_ASCII_WHITESPACE = "".join(c for c in map(chr, range(128)) if c.isspace())


def _normalise_feature_chunk(values: pa.Array) -> pa.Array:
    if not isinstance(values, pa.DictionaryArray):
        values = pc.dictionary_encode(values.cast(pa.string()))
    distinct, indices = values.dictionary.cast(pa.string()), values.indices
    out = pc.replace_substring(pc.utf8_lower(pc.utf8_trim(distinct, _ASCII_WHITESPACE)), KEY_SEPARATOR, "/")
    is_ascii = pc.string_is_ascii(distinct)
    if not pc.all(is_ascii).as_py():
        # Arrow lower-cases some letters unlike Python (e.g. a final sigma, dotted I), so
        # non-ASCII values take the Python path: the bidder's own function, hence the same key.
        python = [
            None if ascii_ else _normalised_text(v) for v, ascii_ in zip(distinct.to_pylist(), is_ascii.to_pylist())
        ]
        out = pc.if_else(is_ascii, out, pa.array(python, pa.string()))
    out = pc.if_else(pc.equal(out, ""), pa.scalar(None, pa.string()), out)
    return pc.take(out, indices)


def normalise_feature_column(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """``normalise_feature_value`` over a column read as strings, vectorised, except that empty or
    blank values become null (aggregation makes them ``unknown``). Each distinct value is normalised
    once (a dictionary-encoded column's dictionary as it is)."""
    return pa.chunked_array([_normalise_feature_chunk(chunk) for chunk in column.chunks], type=pa.string())


def _as_utc_microseconds(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Timestamps in any unit or zone -> naive UTC microseconds, finer units truncated (floored,
    so times before 1970 go back too) instead of refused as a lossy cast."""
    typ = column.type
    if typ.tz is not None:
        column = column.cast(pa.timestamp(typ.unit, tz="UTC"))  # same instants; no DST ambiguity below
    if typ.unit == "ns":
        column = pc.floor_temporal(column, unit="microsecond")
    return column.cast(pa.timestamp("us"))  # from UTC-aware: the UTC wall time


def floor_bucket_label(floor_cpm: float | None) -> str:
    """The band of a floor price: ``none``, ``lt0.5``, ``0.5-1``, ..., ``ge16``."""
    if floor_cpm is None or floor_cpm != floor_cpm or floor_cpm <= 0:
        return "none"
    if floor_cpm < FLOOR_BUCKET_EDGES[0]:
        return f"lt{_num(FLOOR_BUCKET_EDGES[0])}"
    for lo, hi in zip(FLOOR_BUCKET_EDGES, FLOOR_BUCKET_EDGES[1:]):
        if floor_cpm < hi:
            return f"{_num(lo)}-{_num(hi)}"
    return f"ge{_num(FLOOR_BUCKET_EDGES[-1])}"


def _num(x: float) -> str:
    return f"{x:g}"


def floor_bucket_sql(column: str = "floor_cpm") -> str:
    """SQL CASE computing ``floor_bucket_label`` (edges are code constants, not input)."""
    parts = [
        f"WHEN {column} IS NULL OR {column} <= 0 THEN 'none'",
        f"WHEN {column} < {FLOOR_BUCKET_EDGES[0]!r} THEN 'lt{_num(FLOOR_BUCKET_EDGES[0])}'",
    ]
    for lo, hi in zip(FLOOR_BUCKET_EDGES, FLOOR_BUCKET_EDGES[1:]):
        parts.append(f"WHEN {column} < {hi!r} THEN '{_num(lo)}-{_num(hi)}'")
    parts.append(f"ELSE 'ge{_num(FLOOR_BUCKET_EDGES[-1])}'")
    return "CASE " + " ".join(parts) + " END"


def conform_bid_logs(table: pa.Table) -> pa.Table:
    """Check ``table`` against the contract and return it with exactly the contract's columns and types,
    feature values normalised and event times as naive UTC microseconds.

    Extra columns (e.g. the simulator's ``truth_*``) are dropped; a missing column,
    a value that cannot be cast, or a null in a required column raises
    ``InvalidConfig`` naming the column.
    """
    missing = [c for c in CONTRACT_COLUMNS if c not in table.column_names]
    if missing:
        raise InvalidConfig(f"bid logs lack column{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
    twice = [c for c in CONTRACT_COLUMNS if table.column_names.count(c) > 1]
    if twice:  # which one holds the data is anyone's guess: refuse rather than pick
        raise InvalidConfig(f"bid logs have column{'s' if len(twice) > 1 else ''} {', '.join(twice)} more than once")
    columns = []
    for field in BID_LOG_SCHEMA:
        col = table.column(field.name)
        is_feature_text = field.name in FEATURE_COLUMNS and pa.types.is_string(field.type)
        if pa.types.is_dictionary(col.type) and not is_feature_text:
            col = col.cast(col.type.value_type)
        try:
            if is_feature_text:
                col = normalise_feature_column(col)
            elif pa.types.is_timestamp(col.type) and pa.types.is_timestamp(field.type):
                col = _as_utc_microseconds(col).cast(field.type)
            else:
                col = col.cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise InvalidConfig(f"bid-log column {field.name} cannot be read as {field.type}: {exc}") from None
        if not field.nullable and col.null_count:
            raise InvalidConfig(f"bid-log column {field.name} has {col.null_count} empty values")
        columns.append(col)
    out = pa.Table.from_arrays(columns, schema=BID_LOG_SCHEMA)
    if pc.any(pc.less(out["bid_cpm"], 0)).as_py():
        raise InvalidConfig("bid-log column bid_cpm has negative bids")
    # NaN is how a float column says "absent" when it cannot say null: a NaN floor is no floor, a
    # NaN price none paid
    for name in ("floor_cpm", "clearing_price_cpm"):
        col = out[name]
        out = out.set_column(
            out.column_names.index(name), name, pc.if_else(pc.is_nan(col), pa.scalar(None, col.type), col)
        )
    for name in ("bid_cpm", "floor_cpm", "clearing_price_cpm"):
        bad = pc.sum(pc.invert(pc.is_finite(out[name]))).as_py() or 0  # nulls are neither
        if bad:
            raise InvalidConfig(f"bid-log column {name} has {bad} values that are not finite numbers")
    return out


def with_traffic_source(table: pa.Table, source: str) -> pa.Table:
    """A conformed ``table`` (the contract's columns) with ``traffic_source = source`` on every row."""
    if source not in TRAFFIC_SOURCES:
        raise InvalidConfig(f"traffic source must be one of {', '.join(TRAFFIC_SOURCES)}, got {source!r}")
    column = pa.array([source] * table.num_rows, pa.string())
    return table.select(list(CONTRACT_COLUMNS)).append_column(STORED_SCHEMA.field("traffic_source"), column)

"""Columns of the two event kinds. Times are naive UTC microseconds, like the bid logs.

A *decision* row is one impression of one bid request, whether or not it was bid on: it holds
everything the bid-log contract needs to train on it later (the segment feature values read
from the request with the contract's normalisation, domain, floor, our bid) and everything the
A/B readout needs (split, run, arm, the user's hash, whether it was an exchange test request,
and why there was no bid). A *notice* row is one win, loss, billing or click notice that passed
its signature check; ``(entity_code, request_id, imp_id, kind)`` identifies it, and readers keep
the first of a replayed notice (``dedupe_notices``).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

DECISIONS, NOTICES = "decisions", "notices"
EVENT_KINDS = (DECISIONS, NOTICES)
NOTICE_KINDS = ("win", "loss", "billing", "click")
NOTICE_KEY = ("entity_code", "request_id", "imp_id", "kind")
# A decision's no_bid_reason where the run's price did not clear the impression's floor (or the floor
# was above the run's cap). The optimizer's target counts such impressions as losses, so the readout
# does too where it compares a win rate with the target (bidopt.readout, ``priced_win_rate``).
FLOOR_NO_BID_REASON = "no price clears the floor"
# A decision's no_bid_reason where the run's tables gave no positive price (a NaN or a zero: a corrupt
# or hand-edited table). Not the floor's doing, so not a loss on the target's basis.
INVALID_PRICE_REASON = "no valid price in the run's tables"

DECISION_SCHEMA = pa.schema(
    [
        pa.field("event_time", pa.timestamp("us"), nullable=False),  # when the bidder answered
        pa.field("entity_code", pa.string(), nullable=False),
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("imp_id", pa.string(), nullable=False),
        pa.field("split_id", pa.int64()),  # null: no active split
        pa.field("run_id", pa.string()),
        pa.field("arm", pa.int32()),  # the run's position in the split (0-based)
        pa.field("user_hash", pa.string()),  # blake2b of the user key the arm was drawn with
        pa.field("test", pa.bool_(), nullable=False),  # the request had "test": 1: never counted
        pa.field("bid", pa.bool_(), nullable=False),  # an impression we bid on
        pa.field("bid_cpm", pa.float64()),  # the price bid (null when no bid)
        pa.field("no_bid_reason", pa.string()),  # why not (null when bid)
        pa.field("segment_key", pa.string()),
        pa.field("level", pa.string()),  # segment, anchor or default
        pa.field("domain_multiplier", pa.float64()),
        pa.field("floor_cpm", pa.float64()),
        # a floor no-bid's price: what the run would have bid without the floor, under it (null
        # otherwise, and in parts written before the column): compaction logs it as a bid lost to
        # its floor, as an exchange's log of every bid would (bidopt.events.compact)
        pa.field("unfloored_cpm", pa.float64()),
        # the contract's segment features, read from the request and normalised as the logs are
        pa.field("geo_region_name", pa.string()),
        pa.field("os_code", pa.string()),
        pa.field("browser_code", pa.string()),
        pa.field("device_type", pa.string()),
        pa.field("domain", pa.string()),
        pa.field("npi_matched", pa.bool_(), nullable=False),
        pa.field("replica_id", pa.string()),
    ]
)

NOTICE_SCHEMA = pa.schema(
    [
        pa.field("event_time", pa.timestamp("us"), nullable=False),  # when the notice arrived
        pa.field("entity_code", pa.string(), nullable=False),
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("imp_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # win, loss, billing, click
        pa.field("split_id", pa.int64()),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("bid_cpm", pa.float64(), nullable=False),  # our bid, as signed in the URL
        pa.field("bid_time", pa.timestamp("us"), nullable=False),  # when we bid, as signed
        pa.field("price_cpm", pa.float64()),  # ${AUCTION_PRICE}: the clearing price (win, billing)
        pa.field("min_to_win_cpm", pa.float64()),  # ${AUCTION_MIN_TO_WIN}, where the exchange sends it
        pa.field("loss_reason", pa.int32()),  # ${AUCTION_LOSS}: OpenRTB loss reason code
        pa.field("test", pa.bool_(), nullable=False),
        pa.field("replica_id", pa.string()),
    ]
)

SCHEMAS = {DECISIONS: DECISION_SCHEMA, NOTICES: NOTICE_SCHEMA}


def conform_to_schema(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` in ``schema``'s columns and order: a nullable column it lacks (a part written before
    the column was added) is all null. A required column that is missing or holds a null raises
    ``ValueError`` (a corrupt part: ``Table.cast`` refused those too)."""
    columns = []
    for field in schema:
        if field.name in table.column_names:
            column = table[field.name].cast(field.type)
            if not field.nullable and column.null_count:
                raise ValueError(f"event part has {column.null_count} nulls in the required column {field.name}")
            columns.append(column)
        elif field.nullable:
            columns.append(pa.nulls(table.num_rows, field.type))
        else:
            raise ValueError(f"event part lacks the required column {field.name}")
    return pa.Table.from_arrays(columns, schema=schema)


def rows_to_table(kind: str, rows: list[dict]) -> pa.Table:
    """Rows (dicts with the schema's names; missing names are null) as a table of ``kind``'s schema."""
    return pa.Table.from_pylist(rows, schema=SCHEMAS[kind])


def dedupe_notices(notices: pa.Table) -> pa.Table:
    """The first arrival of each ``(entity_code, request_id, imp_id, kind)``: a replayed notice,
    whichever replica took it, counts once."""
    if notices.num_rows == 0:
        return notices
    ordered = notices.sort_by([("event_time", "ascending")])
    index = pa.array(range(ordered.num_rows), pa.int64())
    firsts = ordered.append_column("_i", index).group_by(list(NOTICE_KEY), use_threads=False).aggregate([("_i", "min")])
    first = firsts["_i_min"]
    return ordered.take(pc.take(first, pc.sort_indices(first)))

"""Decisions joined with their notices: what happened to each bid (pure: Arrow and pandas, no I/O).

One function, ``impression_outcomes``, decides for the A/B readout and for compaction alike what a
bid's outcome was, so the readout and the training rows agree (but for the floor no-bids of events
written before ``unfloored_cpm``, which the readout counts and no training row can hold, and an
answer resent more than ``RESEND_SLACK`` after another across an hour's end):

* decisions are deduplicated on ``(request_id, imp_id)`` (an exchange that resends a request is
  answered twice but bought once: the first answer that bid is kept, else the first answer) and
  exchange test requests are dropped;
* notices are deduplicated with ``dedupe_notices`` (a replayed notice counts once) and test
  notices dropped;
* a bid *won* when a ``win`` notice came, or a ``billing`` notice when no win notice did (some
  exchanges send only one of them); its clearing price is the win notice's, else the billing
  notice's (a win whose price is missing or not finite adds no spend);
* an exchange's notices can contradict each other (a win notice after a loss notice for the same
  impression: a forgery made from a genuinely signed ``nurl``, or an exchange bug): the first of
  them to arrive decides, so a win that came after the loss is not counted (the bidder also
  refuses it at the door when the same replica took the loss);
* a *click* counts only on a won impression;
* a notice whose decision is missing, or did not bid, is an *orphan* and is not counted.

``bid_log_rows`` turns one hour of outcomes into rows of the bid-log contract, marked as the
platform's own traffic, for ``BidLogWarehouse.replace_platform_hour``: its bids, and its floor
no-bids as bids lost to their floor at the price the run would have bid (``unfloored_cpm``). An
exchange's log of every bid holds those too, and the optimizer needs them: its target counts them as
losses, and its floor histogram (``floor_aware_win_model``) would otherwise lack every floor above
the logging run's prices and find the share cleared too high.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa

from bidopt.events.schema import FLOOR_NO_BID_REASON, dedupe_notices
from bidopt.warehouse.contract import BID_LOG_SCHEMA, conform_bid_logs

KEY = ["request_id", "imp_id"]
PLATFORM = "platform"
# How far apart two answers to one resent request are taken to be: an exchange resends within the
# request's tmax (milliseconds to seconds on real exchanges; the bidder accepts any tmax, so this is
# a limit, not a guarantee). Compaction reads this much of the neighbouring hours' decisions, so that
# a resend across an hour boundary is deduplicated the same way from both hours; two answers further
# apart across it are two rows (the readout, over the whole split, counts one).
RESEND_SLACK = timedelta(minutes=1)


@dataclass
class Outcomes:
    """Per impression of the non-test decisions: the decision's columns plus ``won``,
    ``price_cpm`` (clearing price, NaN unless won) and ``clicked``; and what was left out."""

    frame: pd.DataFrame
    test_requests_excluded: int  # distinct request ids marked test
    duplicates_dropped: int  # replayed notices removed by dedupe
    duplicate_decisions: int  # repeated (request_id, imp_id) decisions removed
    orphan_notices: int  # notices whose decision is missing or did not bid


def impression_outcomes(decisions: pa.Table, notices: pa.Table) -> Outcomes:
    """Join ``decisions`` (``DECISION_SCHEMA``) with ``notices`` (``NOTICE_SCHEMA``); see the module docstring."""
    dec = decisions.to_pandas()
    is_test = dec["test"].astype(bool)
    test_requests = int(dec.loc[is_test, "request_id"].nunique())
    # a resent request is answered twice (say a 204 "tmax passed", then a bid): the answer that bid
    # is the one notices can belong to, so it is kept, else the first
    dec = dec.loc[~is_test].sort_values(["bid", "event_time"], ascending=[False, True], kind="stable")
    before = len(dec)
    dec = dec.drop_duplicates(KEY, keep="first").sort_values("event_time", kind="stable")
    duplicate_decisions = before - len(dec)

    deduped = dedupe_notices(notices)
    duplicates = notices.num_rows - deduped.num_rows
    notes = deduped.to_pandas()
    notes = notes.loc[~notes["test"].astype(bool)]

    bidding = dec.loc[dec["bid"].astype(bool), KEY]
    matched = notes.merge(bidding.assign(_bid=True), on=KEY, how="left")
    orphans = int(matched["_bid"].isna().sum())

    def of_kind(kind: str, price_name: str | None) -> pd.DataFrame:
        rows = notes.loc[notes["kind"] == kind]
        out = rows[KEY].assign(**{f"has_{kind}": True, f"{kind}_time": rows["event_time"].to_numpy()})
        if price_name:
            out[price_name] = rows["price_cpm"].to_numpy(dtype=float)
        return out

    frame = dec.merge(of_kind("win", "win_price"), on=KEY, how="left")
    frame = frame.merge(of_kind("billing", "billing_price"), on=KEY, how="left")
    frame = frame.merge(of_kind("click", None), on=KEY, how="left")
    frame = frame.merge(of_kind("loss", None), on=KEY, how="left")
    bid = frame["bid"].astype(bool).to_numpy()
    has_win = frame["has_win"].fillna(False).astype(bool).to_numpy()
    has_billing = frame["has_billing"].fillna(False).astype(bool).to_numpy()
    first_win = frame[["win_time", "billing_time"]].min(axis=1)
    lost_first = (frame["loss_time"].notna() & (frame["loss_time"] < first_win)).to_numpy()
    won = bid & (has_win | has_billing) & ~lost_first
    price = np.where(has_win, frame["win_price"].to_numpy(dtype=float), frame["billing_price"].to_numpy(dtype=float))
    price = np.where(won & np.isfinite(price) & (price >= 0), price, np.nan)
    frame["won"] = won
    frame["price_cpm"] = price
    frame["clicked"] = won & frame["has_click"].fillna(False).astype(bool).to_numpy()
    frame = frame.drop(
        columns=["has_win", "has_billing", "has_click", "has_loss", "win_price", "billing_price"]
        + ["win_time", "billing_time", "click_time", "loss_time"]
    )
    return Outcomes(frame.reset_index(drop=True), test_requests, duplicates, duplicate_decisions, orphans)


@dataclass
class HourRows:
    """One hour's bid-log rows and the counts recorded in ``opt_event_compactions``."""

    table: pa.Table  # the contract's layout (plus nothing: the warehouse adds traffic_source)
    decisions: int  # the hour's non-test decisions after deduplication, bids and no-bids
    wins: int
    clicks: int


def bid_log_rows(entity_code: str, hour_start: datetime, decisions: pa.Table, notices: pa.Table) -> HourRows:
    """The bid-log rows of the bids placed in ``[hour_start, hour_start + 1h)``: one per bid, with
    ``won``, ``clearing_price_cpm`` and ``clicked`` from its notices (``notices`` must cover the hour
    plus ``RESEND_SLACK`` and the attribution window), and one per floor no-bid whose
    ``unfloored_cpm`` is under its floor, with that as the bid, lost (module docstring; a part
    written before that column has none, and its floor no-bids no row).
    ``decisions`` should cover ``decisions_read_window``: they are deduplicated before the hour is cut.
    ``user_id`` is the bidder's user hash (the raw id is not logged)."""
    end = hour_start + timedelta(hours=1)
    outcomes = impression_outcomes(decisions, notices)
    df = outcomes.frame
    df = df.loc[(df["event_time"] >= hour_start) & (df["event_time"] < end) & (df["entity_code"] == entity_code)]
    n_decisions = len(df)
    placed = df["bid"].astype(bool).to_numpy()
    floored = ~placed & (df["no_bid_reason"] == FLOOR_NO_BID_REASON).to_numpy()
    price = np.where(placed, df["bid_cpm"].to_numpy(dtype=float), df["unfloored_cpm"].to_numpy(dtype=float))
    # a floor no-bid's price is under its floor by construction (bidopt.bidder.core); a row that says
    # otherwise (a hand-written part) would read as a cleared bid that lost, so it is left out
    floor = df["floor_cpm"].to_numpy(dtype=float)
    under_floor = (price > 0) & (price < floor)  # False for a NaN floor or price
    keep = (placed & np.isfinite(price)) | (floored & under_floor)
    bids = df.loc[keep].assign(bid_cpm=price[keep])  # won and clicked are False on a no-bid
    columns = {
        "event_time": bids["event_time"],
        "entity_code": bids["entity_code"],
        "request_id": bids["request_id"],
        "user_id": bids["user_hash"],
        "geo_region_name": bids["geo_region_name"],
        "os_code": bids["os_code"],
        "browser_code": bids["browser_code"],
        "device_type": bids["device_type"],
        "domain": bids["domain"],
        "npi_matched": bids["npi_matched"].astype(bool),
        "floor_cpm": bids["floor_cpm"],
        "bid_cpm": bids["bid_cpm"].astype(float),
        "won": bids["won"],
        "clearing_price_cpm": bids["price_cpm"].where(bids["won"], np.nan),
        "clicked": bids["clicked"],
    }
    frame = pd.DataFrame(columns).sort_values("event_time", kind="stable")
    table = pa.Table.from_pandas(frame, schema=BID_LOG_SCHEMA, preserve_index=False)
    return HourRows(
        table=conform_bid_logs(table),
        decisions=n_decisions,
        wins=int(bids["won"].sum()),
        clicks=int(bids["clicked"].sum()),
    )


def decisions_read_window(hour_start: datetime) -> tuple[datetime, datetime]:
    """The decisions ``bid_log_rows`` needs for the hour from ``hour_start``: the hour, and
    ``RESEND_SLACK`` either side of it. Both hours of a resend that straddles their boundary then
    keep the same one of its answers (``impression_outcomes``), and only the hour holding it logs
    it, as the readout, which deduplicates over the whole split, counts it once."""
    return hour_start - RESEND_SLACK, hour_start + timedelta(hours=1) + RESEND_SLACK


def compactable_hours(hours: list[datetime], until: datetime, attribution: timedelta) -> list[datetime]:
    """The hours whose every notice has arrived by ``until``: ``H + 1h + attribution <= until``."""
    return [h for h in hours if h + timedelta(hours=1) + attribution <= until]

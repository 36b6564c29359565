"""Offline replay of a run over logged requests: what it would bid, win and spend (pure, no Ray, no I/O).

For every logged request (a bid-log row: the contract's feature columns, ``domain`` and
``floor_cpm``) and a run (its ``RunTables``, as the bidder holds them, and its win model):

* the bid the bidder would place, with the bidder's own code: ``RunTables.lookup_key`` on the
  request's feature values (full key, else the anchor's row, else the default), ``RunTables.multiplier``
  of its domain and ``RunTables.quote`` (multiplier, floor, the run's min and max bid), each called
  once per distinct input rather than once per row (they are pure functions of their inputs);
* whether it bids (``quote`` gave a price: no bid where the floor is above what the run would pay);
* the win model's probability at that price, ``P(win | segment features, domain, ln price)``: for a
  floor-aware run (``WinRateModel.floor_cleared``) P(win | the bid clears the floor), which a placed
  bid does, so ``expected_win_rate`` is per bid placed; the run's target and ``predicted_win_rate``
  count the requests a floor blocked as losses (README, "Bid quality"), and so does
  ``expected_priced_win_rate`` (expected wins / (bids + ``floor_no_bids``), the no-bids whose floor
  the run's price did not clear; a table without a valid price is neither), the rate to hold
  against the target, as the A/B readout's ``priced_win_rate``;
* the expected spend: ``P(win) x price`` in a first-price auction; in a second-price auction the
  winner pays ``max(Z, floor)``, ``Z`` the highest competing bid whose CDF is the model's win curve
  ``F``, so ``E[price x 1{win}] = b F(b) - integral_floor^b F(x) dx``, the integral by 8-point
  Gauss-Legendre quadrature on the model's own curve.

``replay_partials`` turns a batch into sums per (run, segment key, level), which add up across batches
(``combine_partials`` adds them and derives the ratios): bid share = bids / requests, expected win
rate = expected wins / bids, eCPM = expected spend per thousand won impressions. ``bidopt.jobs.replay``
runs it over an entity's logs, in one process or on Ray Data.

Logged feature values are stored normalised (``bidopt.warehouse.contract``), the way the bidder reads
them from requests; nulls are ``unknown`` as in the optimizer's aggregates, ``floor_bucket`` is
derived from ``floor_cpm`` as the bidder derives it from ``bidfloor``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xgboost as xgb

from bidopt.bidder.core import RunTables, no_price_reason
from bidopt.errors import InvalidConfig
from bidopt.events.schema import FLOOR_NO_BID_REASON
from bidopt.optimizer.models import FLOOR_CLEARED_ATTR, CategoryEncoder, WinRateModel
from bidopt.warehouse.contract import DERIVED_FEATURES, FEATURE_COLUMNS, UNKNOWN, floor_bucket_label

WIN_MODEL, WIN_ENCODER = "win_model.ubj", "win_encoder.json"
FIRST_PRICE, SECOND_PRICE = "first_price", "second_price"
# What a logged request must carry (besides the run's own feature columns).
REQUEST_COLUMNS = ("domain", "floor_cpm")
SUM_COLUMNS = ("requests", "bids", "floor_no_bids", "expected_wins", "expected_spend_cpm", "bid_sum")
PARTIAL_COLUMNS = ("run_id", "segment_key", "level", *SUM_COLUMNS)
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(8)
_NODES, _WEIGHTS = (_NODES + 1.0) / 2.0, _WEIGHTS / 2.0  # on [0, 1]


def win_encoder_json(model: WinRateModel) -> bytes:
    """The win model's category codes (which value each code stands for), stored next to its booster."""
    return json.dumps({"features": model.encoder.features, "categories": model.encoder.categories}).encode()


def load_win_model(booster_ubj: bytes, encoder_json: bytes) -> WinRateModel:
    """A run's win model from its ``win_model.ubj`` and ``win_encoder.json``."""
    booster = xgb.Booster()
    booster.load_model(bytearray(booster_ubj))
    enc = json.loads(encoder_json)
    return WinRateModel(
        booster,
        CategoryEncoder(list(enc["features"]), {k: list(v) for k, v in enc["categories"].items()}),
        floor_cleared=booster.attr(FLOOR_CLEARED_ATTR) == "true",
    )


@dataclass(frozen=True)
class ReplayRun:
    """One run to replay: its tables as a bidder loads them, its win model and the auction it bids in."""

    tables: RunTables
    model: WinRateModel
    auction_type: str = FIRST_PRICE

    def __post_init__(self) -> None:
        if self.auction_type not in (FIRST_PRICE, SECOND_PRICE):
            raise InvalidConfig(f"auction type must be {FIRST_PRICE} or {SECOND_PRICE}, got {self.auction_type!r}")
        known = {*FEATURE_COLUMNS, *DERIVED_FEATURES}
        extra = [f for f in (*self.tables.features, *self.model.encoder.features) if f not in known]
        if extra:
            raise InvalidConfig(f"run {self.run_id} uses {', '.join(extra)}, which no logged request carries")

    @property
    def run_id(self) -> str:
        return self.tables.run_id


def required_columns(runs: Sequence[ReplayRun]) -> list[str]:
    """Every logged column the replay of ``runs`` reads."""
    names = {*REQUEST_COLUMNS}
    for run in runs:
        names |= {f for f in (*run.tables.features, *run.model.encoder.features) if f != "floor_bucket"}
    return sorted(names)


def feature_values(batch: pd.DataFrame, name: str) -> pd.Series:
    """One feature of logged requests as the bidder and the optimizer see it: text, ``unknown`` for
    null, booleans as ``true``/``false``, ``floor_bucket`` from ``floor_cpm``."""
    if name == "floor_bucket":
        codes, distinct = pd.factorize(batch["floor_cpm"].astype(float), use_na_sentinel=True)
        labels = [floor_bucket_label(float(v)) for v in distinct] + [floor_bucket_label(None)]
        return pd.Series(np.array(labels, dtype=object)[codes], index=batch.index)
    if name not in batch.columns:
        raise InvalidConfig(f"logged requests lack column {name}")
    codes, distinct = pd.factorize(batch[name], use_na_sentinel=True)  # each distinct value once
    text = [("true" if v else "false") if isinstance(v, (bool, np.bool_)) else str(v).lower() for v in distinct]
    return pd.Series(np.array([*text, UNKNOWN], dtype=object)[codes], index=batch.index)  # code -1: null


def _codes(frame: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """``(row -> distinct row index, distinct rows)`` of a frame, column codes combined as integers."""
    n = len(frame)
    packed = np.zeros(n, dtype=np.int64)
    for name in frame.columns:
        codes, distinct = pd.factorize(frame[name], use_na_sentinel=False)
        packed = packed * len(distinct) + codes  # < n * len(distinct): re-factorised below, never overflows
        packed = pd.factorize(packed)[0]
    if frame.shape[1] == 0:
        return packed, pd.DataFrame(index=range(1 if n else 0))
    first = np.zeros(packed.max() + 1 if n else 0, dtype=np.int64)
    first[packed[::-1]] = np.arange(n)[::-1]  # the first row of each distinct combination
    return packed, frame.iloc[first].reset_index(drop=True)


def replay_rows(batch: pd.DataFrame, run: ReplayRun) -> pd.DataFrame:
    """Per logged request: ``segment_key``, ``level``, ``bids`` (whether the run bids),
    ``floor_no_bids`` (whether it does not only because of the floor), ``bid_cpm`` (NaN when not
    bid), ``p_win`` (0 when not) and ``expected_spend_cpm``."""
    for col in REQUEST_COLUMNS:
        if col not in batch.columns:
            raise InvalidConfig(f"logged requests lack column {col}")
    batch = batch.reset_index(drop=True)
    n = len(batch)
    tables = run.tables
    values = {name: feature_values(batch, name) for name in {*tables.features, *run.model.encoder.features}}

    codes, distinct = _codes(pd.DataFrame({f: values[f] for f in tables.features}, index=batch.index))
    found = [tables.lookup_key(list(row)) for row in distinct.itertuples(index=False, name=None)]
    if not tables.features and n:
        found = [tables.lookup_key([])]
    base = np.array([f[0] for f in found], dtype=float)[codes]
    key = np.array([f[1] for f in found], dtype=object)[codes]
    level = np.array([f[2] for f in found], dtype=object)[codes]

    domains = batch["domain"].astype(object).where(batch["domain"].notna(), None)
    mult_of = {d: tables.multiplier(d) for d in pd.unique(domains)}
    multiplier = domains.map(mult_of).to_numpy(dtype=float) if n else np.empty(0)
    floor = batch["floor_cpm"].astype(float).fillna(0.0).to_numpy()  # no floor sent: bidfloor 0

    tcodes, tdistinct = _codes(pd.DataFrame({"base": base, "multiplier": multiplier, "floor": floor}))
    quoted = [tables.quote(b, m, f) for b, m, f in tdistinct.itertuples(index=False, name=None)]
    price = np.array([np.nan if q is None else q for q in quoted], dtype=float)[tcodes] if n else np.empty(0)
    bids = ~np.isnan(price)
    # a no-bid is the floor's as the bidder labels it (no_price_reason): a table without a valid price
    # is no floor no-bid, and no loss on the target's basis
    combos = tdistinct.itertuples(index=False, name=None)
    floored = [
        q is None and no_price_reason(tables, b, m)[0] == FLOOR_NO_BID_REASON for (b, m, _), q in zip(combos, quoted)
    ]
    floor_no_bid = np.array(floored, dtype=bool)[tcodes] if n else np.zeros(0, dtype=bool)

    p = np.zeros(n)
    spend = np.zeros(n)
    if bids.any():
        # The model is asked once per distinct (model features, price): without floors a price is
        # a function of the segment and the domain, so far fewer than the rows.
        frame = pd.DataFrame({f: values[f][bids].to_numpy() for f in run.model.encoder.features})
        frame["__price"] = price[bids]
        if run.auction_type != FIRST_PRICE:  # a second-price winner pays at least the floor
            frame["__floor"] = floor[bids]
        pcodes, pdistinct = _codes(frame)
        b = pdistinct.pop("__price").to_numpy(dtype=float)
        floors = pdistinct.pop("__floor").to_numpy(dtype=float) if "__floor" in pdistinct else None
        p_bid = run.model.predict(pdistinct, b).astype(float)
        if run.auction_type == FIRST_PRICE:
            s_bid = p_bid * b
        else:
            s_bid = _second_price_spend(run.model, pdistinct, b, p_bid, floors)
        p[bids], spend[bids] = p_bid[pcodes], s_bid[pcodes]
    return pd.DataFrame(
        {
            "segment_key": key,
            "level": level,
            "bids": bids,
            "floor_no_bids": floor_no_bid,
            "bid_cpm": price,
            "p_win": p,
            "expected_spend_cpm": spend,
        }
    )


def _second_price_spend(
    model: WinRateModel, frame: pd.DataFrame, b: np.ndarray, p_b: np.ndarray, floors: np.ndarray | None = None
) -> np.ndarray:
    """``b F(b) - integral_floor^b F(x) dx``: the expected price paid (CPM) when the winner pays
    ``max(Z, floor)``, ``Z`` the price to beat whose CDF is the win curve ``F`` (a bid is only placed
    at or above the floor): ``floor F(floor) + integral_floor^b x dF(x)``, integrated by parts."""
    k = len(_NODES)
    lo = np.zeros(len(b)) if floors is None else np.clip(np.nan_to_num(floors, nan=0.0), 0.0, b)
    rep = frame.loc[frame.index.repeat(k)].reset_index(drop=True)  # row i's k nodes together
    points = (lo[:, None] + (b - lo)[:, None] * _NODES[None, :]).ravel()
    f = model.predict(rep, points).astype(float).reshape(len(b), k)
    integral = (b - lo) * (f * _WEIGHTS[None, :]).sum(axis=1)
    return np.maximum(b * p_b - integral, 0.0)


def replay_partials(batch: pd.DataFrame, runs: Sequence[ReplayRun]) -> pd.DataFrame:
    """Sums per (run, segment key, level) of one batch of logged requests (``PARTIAL_COLUMNS``);
    partials of several batches add up (``combine_partials``)."""
    out = []
    for run in runs:
        rows = replay_rows(batch, run)
        rows["requests"] = 1
        rows["bid_sum"] = np.where(rows["bids"], rows["bid_cpm"], 0.0)
        rows["expected_wins"] = rows["p_win"]
        part = rows.groupby(["segment_key", "level"], as_index=False, sort=False)[list(SUM_COLUMNS)].sum()
        part.insert(0, "run_id", run.run_id)
        out.append(part)
    if not out or not len(batch):
        return empty_partials()
    frame = pd.concat(out, ignore_index=True)
    for name in ("bids", "floor_no_bids", "requests"):
        frame[name] = frame[name].astype(np.int64)
    return frame[list(PARTIAL_COLUMNS)]


def empty_partials() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run_id": pd.Series(dtype=object),
            "segment_key": pd.Series(dtype=object),
            "level": pd.Series(dtype=object),
            "requests": pd.Series(dtype=np.int64),
            "bids": pd.Series(dtype=np.int64),
            "floor_no_bids": pd.Series(dtype=np.int64),
            "expected_wins": pd.Series(dtype=float),
            "expected_spend_cpm": pd.Series(dtype=float),
            "bid_sum": pd.Series(dtype=float),
        }
    )


def _ratios(row: dict) -> dict:
    requests, bids, wins, spend = row["requests"], row["bids"], row["expected_wins"], row["expected_spend_cpm"]
    priced = bids + row["floor_no_bids"]
    return {
        **row,
        "bid_share": bids / requests if requests else None,
        "expected_win_rate": wins / bids if bids else None,
        "expected_priced_win_rate": wins / priced if priced else None,  # floor no-bids as losses
        "expected_spend": spend / 1000.0,  # CPM prices: each impression costs price / 1000
        "ecpm": spend / wins if wins else None,
        "mean_bid_cpm": row["bid_sum"] / bids if bids else None,
    }


def combine_partials(
    partials: pd.DataFrame | Sequence[pd.DataFrame], run_ids: Sequence[str], *, top_segments: int | None = 50
) -> list[dict]:
    """The partial sums of every batch added up: per run (in ``run_ids`` order) its ``total`` and its
    ``segments`` (the ``top_segments`` with most requests; None: all), each with requests, bids,
    expected wins and spend and the ratios (bid share, expected win rate, eCPM, mean bid)."""
    if not isinstance(partials, pd.DataFrame):
        partials = pd.concat([empty_partials(), *partials], ignore_index=True)
    sums = partials.groupby(["run_id", "segment_key", "level"], as_index=False, sort=False)[list(SUM_COLUMNS)].sum()
    out = []
    for run_id in run_ids:
        mine = sums[sums["run_id"] == run_id].sort_values(["requests", "segment_key"], ascending=[False, True])
        total = {c: float(mine[c].sum()) for c in SUM_COLUMNS}
        for name in ("requests", "bids", "floor_no_bids"):
            total[name] = int(total[name])
        shown = mine if top_segments is None else mine.head(top_segments)
        segments = []
        for r in shown.to_dict("records"):
            r = {**r, "requests": int(r["requests"]), "bids": int(r["bids"]), "floor_no_bids": int(r["floor_no_bids"])}
            r.pop("run_id")
            segments.append(_ratios(r))
        out.append({"run_id": run_id, "total": _ratios(total), "segments": segments, "segment_count": int(len(mine))})
    return out

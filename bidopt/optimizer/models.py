"""Models over aggregated bid logs: win rate, CTR, bid landscape, and their metrics.

Training rows are the warehouse's aggregates (one row per segment x bid bucket
with counts), expanded to two weighted rows each: label 1 with weight ``wins``
and label 0 with weight ``bids - wins`` (CTR: clicks / wins - clicks). This is
the same likelihood as training on the raw rows whose bid is the bucket's mean
bid, at a fraction of the size.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from bidopt.errors import InvalidConfig
from bidopt.optimizer.trees import TreeEnsemble

FLOOR_CLEARED_ATTR = "bidopt_floor_cleared"  # booster attribute of a model trained on cleared bids only
UNSEEN = -1.0  # code of a value the model never saw (XGBoost reads a negative category as invalid: left)
OTHER = "(other)"  # catch-all category: values without one of their own are encoded as this, if present


def weighted_auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float | None:
    """Area under the ROC curve with sample weights and ties counted half; None without both classes."""
    scores, labels, weights = (np.asarray(a, dtype=float) for a in (scores, labels, weights))
    pos_w, neg_w = weights * (labels > 0.5), weights * (labels <= 0.5)
    total_pos, total_neg = pos_w.sum(), neg_w.sum()
    if total_pos <= 0 or total_neg <= 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    s, p, n = scores[order], pos_w[order], neg_w[order]
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]  # groups of tied scores
    p_grp, n_grp = np.add.reduceat(p, starts), np.add.reduceat(n, starts)
    neg_below = np.cumsum(n_grp) - n_grp
    return float(((neg_below + 0.5 * n_grp) * p_grp).sum() / (total_pos * total_neg))


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, weights: np.ndarray, n_bins: int = 10
) -> float | None:
    """Weighted ECE over ``n_bins`` equal-width probability bins."""
    probs, labels, weights = (np.asarray(a, dtype=float) for a in (probs, labels, weights))
    total = weights.sum()
    if total <= 0:
        return None
    bins = np.minimum((probs * n_bins).astype(int), n_bins - 1)
    w = np.bincount(bins, weights, n_bins)
    wp = np.bincount(bins, weights * probs, n_bins)
    wy = np.bincount(bins, weights * labels, n_bins)
    nz = w > 0
    return float(np.abs(wp[nz] - wy[nz]).sum() / total)


def clears_floor(bids, floors) -> np.ndarray:
    """Whether each bid clears its floor (NaN or a floor of 0 or less: none, cleared)."""
    bids, floors = np.asarray(bids, dtype=float), np.asarray(floors, dtype=float)
    return np.isnan(floors) | (floors <= 0) | (bids >= floors)


PRICE_MASS_FLOOR = 1e-10  # the least probability ANLP gives a price, so that one zero is not infinite


def market_price_anlp(
    model: WinRateModel,
    rows: pd.DataFrame,
    price_units: np.ndarray,
    unit_cpm: float,
    floors: np.ndarray | None = None,
) -> tuple[float, float]:
    """ANLP as DLF and DRSA define it: minus the mean log probability of each row's true market
    price ``z`` (an integer number of price units of ``unit_cpm`` each), with
    ``P(z) = F(z + 1) - F(z)`` and ``F(b) = P(win | row, bid b)`` the win model's curve
    (``F(0) = 0``: no bid of 0 wins). Returns ANLP and the share of rows whose ``P(z)`` was under
    ``PRICE_MASS_FLOOR`` and counted at it. ``floors``: each row's floor (CPM, NaN: none), with which
    a floor-cleared model's ``F`` is ``predict_at_floors`` (no price under the floor wins)."""
    z = np.floor(np.asarray(price_units, dtype=float) + 1e-9)
    fl = np.full(len(z), np.nan) if floors is None else np.asarray(floors, dtype=float)

    def curve(bids: np.ndarray) -> np.ndarray:
        return model.predict_at_floors(rows, bids, fl) if model.floor_cleared else model.predict(rows, bids)

    hi = curve((z + 1) * unit_cpm)
    lo = np.where(z > 0, curve(np.maximum(z, 1) * unit_cpm), 0.0)
    p = hi - lo
    return float(-np.log(np.maximum(p, PRICE_MASS_FLOOR)).mean()), float((p < PRICE_MASS_FLOOR).mean())


def expand_binary(df: pd.DataFrame, positives: str, trials: str) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Aggregated rows -> (rows twice over, labels, weights); rows with zero weight are dropped."""
    pos = df[positives].to_numpy(dtype=float)
    neg = df[trials].to_numpy(dtype=float) - pos
    rows = pd.concat([df, df], ignore_index=True)
    labels = np.r_[np.ones(len(df)), np.zeros(len(df))]
    weights = np.r_[pos, neg]
    keep = weights > 0
    return rows[keep].reset_index(drop=True), labels[keep], weights[keep]


@dataclass
class CategoryEncoder:
    """Feature values -> integer codes learnt from training rows (``UNSEEN`` otherwise)."""

    features: list[str]
    categories: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def fit(cls, df: pd.DataFrame, features: Sequence[str]) -> CategoryEncoder:
        return cls(list(features), {f: sorted(df[f].astype(str).unique().tolist()) for f in features})

    def encode(self, df: pd.DataFrame) -> np.ndarray:
        cols = []
        for f in self.features:
            index = pd.Index(self.categories[f])
            codes = index.get_indexer(df[f].astype(str)).astype(np.float32)
            fallback = index.get_loc(OTHER) if OTHER in index else UNSEEN
            codes[codes < 0] = fallback
            cols.append(codes)
        return np.column_stack(cols) if cols else np.empty((len(df), 0), dtype=np.float32)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _expit(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def mean_bid(df: pd.DataFrame) -> np.ndarray:
    return df["bid_sum"].to_numpy(dtype=float) / np.maximum(df["bids"].to_numpy(dtype=float), 1)


RUN_CHUNK_CELLS = 2048  # cells re-knotted at a time (``through_step_middles``: ~15 cells x knots temporaries)


def through_step_middles(table: np.ndarray, log_knots: np.ndarray, *, in_place: bool = False) -> np.ndarray:
    """A knot table (cells x knots, a cell's step value at each knot) with every cell's runs of equal
    values replaced by the line through the runs' middles (in ln bid), keeping the dtype; with
    ``in_place`` the table itself is rewritten (a chunk at a time, each read before it is written),
    so that a table of 148k cells x 250 knots is not held twice.

    The knots are the midpoints between the split values of all the trees together, so a cell whose
    own trees do not split in a span has the same value at several consecutive knots: read as it is,
    its curve is flat there, a price density from it gives the prices in the span no mass at all
    (the iPinYou test rows: 14.7% of them, at ANLP's floor), and a bid search crossing the target on
    the flat's edge lands on a step's edge, which the knots were meant to avoid. Each run is one step
    of the cell's curve, so its value is taken at its middle, as the knots take each global step's.
    The first run's left half and the last run's right half stay flat: the outer knots' values, which
    the tails continue, are unchanged (so the prices inside those halves still get no mass).

    Any difference starts a new run, however small: the trees' values are sums of float32 leaves
    taken as they are (``TreeEnsemble``: a value no tree changes stays bit for bit the same), so
    equal means no tree splits there. A NaN (no ensemble gives one) spreads to its neighbours' halves."""
    n, width = table.shape
    if width < 3 or n == 0:
        return table if in_place else table.copy()
    x = np.asarray(log_knots, dtype=np.float64)
    out = table if in_place else np.empty_like(table)
    positions = np.arange(width)
    for c0 in range(0, n, RUN_CHUNK_CELLS):
        v = table[c0 : c0 + RUN_CHUNK_CELLS].astype(np.float64)
        rows = np.arange(len(v))[:, None]
        starts_here = np.ones(v.shape, dtype=bool)
        starts_here[:, 1:] = v[:, 1:] != v[:, :-1]
        ends_here = np.ones(v.shape, dtype=bool)
        ends_here[:, :-1] = starts_here[:, 1:]
        start = np.maximum.accumulate(np.where(starts_here, positions, 0), axis=1)  # first knot of the run
        end = np.minimum.accumulate(np.where(ends_here, positions, width - 1)[:, ::-1], axis=1)[:, ::-1]
        mid = (x[start] + x[end]) / 2
        prev_end = np.maximum(start - 1, 0)  # the run before: its last knot, its middle and value
        prev_mid = (x[start[rows, prev_end]] + x[prev_end]) / 2
        next_start = np.minimum(end + 1, width - 1)  # the run after
        next_mid = (x[next_start] + x[end[rows, next_start]]) / 2
        xj = x[None, :]
        left = (start > 0) & (xj < mid)
        right = (end < width - 1) & (xj > mid)
        prev_v, next_v = v[rows, prev_end], v[rows, next_start]
        with np.errstate(invalid="ignore", divide="ignore"):  # the masked-out cases divide by 0
            res = np.where(left, prev_v + (v - prev_v) * (xj - prev_mid) / (mid - prev_mid), v)
            res = np.where(right, v + (next_v - v) * (xj - mid) / (next_mid - mid), res)
        out[c0 : c0 + RUN_CHUNK_CELLS] = res
    return out


KNOT_CACHE_CELLS = 16_384  # knot tables a model keeps for reuse (~16 MB at 250 knots, float32)
# models whose knot tables a process keeps, the least recently used dropped first: more than a replay
# prices at once (a run and up to ten --against runs, bidopt.replays.MAX_AGAINST), else each evicts
# the next in turn and none is ever found
KNOT_CACHE_MODELS = 16
_KNOT_CACHES: dict[str, dict] = {}
_KNOT_CACHES_LOCK = threading.Lock()  # the API replays in FastAPI's thread pool
PREDICT_CHUNK_CELLS = 16_384  # distinct cells whose knot tables one prediction holds at a time (~16 MB at 250 knots)


def _distinct_rows(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of encoded ``codes`` (float32 category codes, UNSEEN -1) and each row's
    position among them. Codes are small whole numbers, so each row packs into one int64 (a radix
    per column): ``np.unique`` on one column is ~10x faster than on rows (``axis=0``)."""
    n, width = codes.shape
    if width == 0:  # no features: one cell
        return codes[:1], np.zeros(n, dtype=np.int64)
    if n == 0:
        return codes, np.zeros(0, dtype=np.int64)
    whole = np.isfinite(codes).all() and (codes == np.trunc(codes)).all() and np.abs(codes).max() < 2.0**31
    if whole:
        ints = np.where(codes < 0, 0, codes.astype(np.int64) + 1)  # any negative code (UNSEEN) -> 0
        radix = ints.max(axis=0) + 1
    if not whole or float(np.prod(radix.astype(float))) >= 2.0**62 or (codes < -1).any():
        cells, inverse = np.unique(codes, axis=0, return_inverse=True)  # not packable: the slow way
        return cells, inverse.ravel()
    weights = np.r_[np.cumprod(radix[::-1])[::-1][1:], 1]
    keys, first, inverse = np.unique(ints @ weights, return_index=True, return_inverse=True)
    return codes[first], inverse.ravel()


def _log_bid(bids) -> np.ndarray:
    return np.log(np.maximum(np.asarray(bids, dtype=float), 1e-6)).astype(np.float32)


def _win_matrix(encoder: CategoryEncoder, df: pd.DataFrame, log_bids: np.ndarray) -> xgb.DMatrix:
    """Segment feature codes (categorical) and ln(bid) (numeric, the monotone column)."""
    x = np.column_stack([encoder.encode(df), log_bids]).astype(np.float32)
    return xgb.DMatrix(x, feature_types=["c"] * len(encoder.features) + ["q"], enable_categorical=True)


@dataclass
class WinRateModel:
    """P(win | segment features, bid), monotone increasing in the bid and continuous in it.

    The trees are step functions of ln(bid): constant between the bid split values, each step the
    mean win rate of the training rows inside it. Read as it is, the lowest bid reaching a target
    lands on the left edge of a step, where the true rate is below the step's mean (measured on the
    simulator: +0.029 predicted over true at the suggested bids, the bids too low), and a price
    density from it puts almost all mass on a few steps. So predictions interpolate: the step value
    is taken at its middle (a *knot*, the midpoint between consecutive split values of all the
    trees), a cell's runs of equal values at consecutive knots (spans where its own trees do not
    split) are one step of its curve, taken at the run's middle (``through_step_middles``), and the
    curve is linear in ln(bid) between knots, and continues logistically beyond the outer ones
    (``_tails``). Interpolating increasing values keeps the curve monotone, and the knots and tails
    come from the booster alone, so any reader of the model artifact with this code predicts the same
    curve (the re-knotting of runs is newer than some artifacts: a run made before it is replayed on
    the re-knotted curve, which can differ from the one its bids were solved on by a few points)."""

    booster: xgb.Booster
    encoder: CategoryEncoder
    # trained on the bids that cleared their floor only (``bidopt.optimizer.floors``): ``predict`` is
    # then P(win | the bid clears the request's floor), and ``predict_at_floors`` P(win)
    floor_cleared: bool = False
    _knots: np.ndarray | None = field(default=None, repr=False)
    _ensemble: TreeEnsemble | None = field(default=None, repr=False)
    # names this model's cache of knot tables (``_tables``), kept by the process, not the instance: a
    # copy unpickled in a Ray worker (the replay ships the model to every task) finds the tables
    # that worker's earlier tasks read
    _cache_key: str = field(default_factory=lambda: uuid.uuid4().hex, repr=False)

    def predict(self, df: pd.DataFrame, bids: np.ndarray) -> np.ndarray:
        return self.predict_encoded(self.encoder.encode(df), bids)

    def predict_at_floors(self, df: pd.DataFrame, bids: np.ndarray, floors: np.ndarray) -> np.ndarray:
        """P(win) of requests whose floors are known (NaN: none): a floor-cleared model's curve times
        1{bid >= floor}; any other model's curve as it is (its data already lost below the floors)."""
        p = self.predict_many(df, bids)
        if not self.floor_cleared:
            return p
        return np.where(clears_floor(bids, floors), p, 0.0)

    def _raw(self, codes: np.ndarray, log_bids: np.ndarray) -> np.ndarray:
        """The trees' step value at ``log_bids`` (float32 ln(bid), as the trees compare them)."""
        x = np.column_stack([codes, log_bids.astype(np.float32)]).astype(np.float32)
        types = ["c"] * len(self.encoder.features) + ["q"]
        return self.booster.predict(xgb.DMatrix(x, feature_types=types, enable_categorical=True)).astype(np.float64)

    def knots(self) -> np.ndarray:
        """float32 ln(bid) points, one inside each step of the bid (see the class docstring)."""
        if self._knots is None:
            s = self.bid_thresholds()
            if len(s) == 0:
                k = np.empty(0, dtype=np.float32)
            else:
                gaps = np.diff(s) if len(s) > 1 else np.array([np.float32(0.2)])
                mids = ((s[:-1] + s[1:]) / np.float32(2)).astype(np.float32)
                inside = (mids > s[:-1]) & (mids < s[1:])  # adjacent float32 splits have no midpoint
                first, last = np.float32(s[0] - gaps[0] / 2), np.float32(s[-1] + gaps[-1] / 2)
                # strictly outside the outer splits, where the trees give the outer steps' values
                first = first if first < s[0] else np.nextafter(s[0], np.float32(-np.inf))
                last = last if last > s[-1] else np.nextafter(s[-1], np.float32(np.inf))
                k = np.r_[first, mids[inside], last].astype(np.float32)
            self._knots = k
        return self._knots

    def _bracket(self, log_bids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per bid: the index of the knot above it (1..len-1) and its weight on that knot."""
        k = self.knots().astype(np.float64)
        x = np.clip(np.asarray(log_bids, dtype=np.float64), k[0], k[-1])
        j = np.clip(np.searchsorted(k, x, side="right"), 1, len(k) - 1)
        return j, (x - k[j - 1]) / (k[j] - k[j - 1])

    def knot_table(self, codes: np.ndarray) -> np.ndarray:
        """Each encoded row's curve at every knot: the trees' step values (``steps_at``) with the
        row's runs of equal values through their middles (``through_step_middles``). float32."""
        k = self.knots()
        return through_step_middles(self.steps_at(codes, k), k, in_place=True)

    @property
    def _tables(self) -> dict:
        """Distinct cells' knot tables already read (encoded row bytes -> float32 row), at most
        ``KNOT_CACHE_CELLS``: a replay prices the same cells in every batch, twice in a second-price
        one (the bid, then the spend's quadrature nodes), and the trees never change after training.
        The process keeps the caches of its ``KNOT_CACHE_MODELS`` latest models."""
        with _KNOT_CACHES_LOCK:
            tables = _KNOT_CACHES.pop(self._cache_key, None)
            if tables is None:
                tables = {}
                while len(_KNOT_CACHES) >= KNOT_CACHE_MODELS:
                    _KNOT_CACHES.pop(next(iter(_KNOT_CACHES)), None)
            _KNOT_CACHES[self._cache_key] = tables  # last: the most recently used
            return tables

    def _cached_knot_tables(self, cells: np.ndarray) -> np.ndarray:
        """``knot_table`` of distinct encoded ``cells``, the ones read before taken from ``_tables``."""
        tables = self._tables  # once: another thread may evict this model's cache meanwhile
        keys = [row.tobytes() for row in cells]
        found = [tables.get(key) for key in keys]
        missing = [i for i, row in enumerate(found) if row is None]
        if len(missing) == len(keys):
            table = self.knot_table(cells)
        else:
            table = np.empty((len(cells), len(self.knots())), dtype=np.float32)
            known = [i for i, row in enumerate(found) if row is not None]
            table[known] = np.stack([found[i] for i in known])
            if missing:
                table[missing] = self.knot_table(cells[missing])
        room = KNOT_CACHE_CELLS - len(tables)
        for i in missing[: max(room, 0)]:
            tables[keys[i]] = table[i].copy()
        return table

    def predict_encoded(self, codes: np.ndarray, bids: np.ndarray) -> np.ndarray:
        """``predict`` for rows already encoded with ``self.encoder.encode`` (reused across calls):
        each distinct row's knot table read once (``knot_table``), each bid interpolated in it."""
        k = self.knots()
        x = _log_bid(bids).astype(np.float64)
        if len(k) < 2:
            return self._raw(codes, x)
        codes = np.asarray(codes, dtype=np.float32)
        codes = codes[:, None] if codes.ndim == 1 else codes  # one feature's codes as a column
        cells, rows = _distinct_rows(codes)
        j, t = self._bracket(x)
        p = np.empty(len(x))
        outside = (x < k[0]) | (x > k[-1])
        # a chunk of distinct cells' tables at a time: a batch of many distinct cells never holds
        # them all (cells x knots float32, plus the re-knotting's temporaries)
        order = np.argsort(rows, kind="stable")
        bounds = np.searchsorted(rows[order], np.arange(0, len(cells) + PREDICT_CHUNK_CELLS, PREDICT_CHUNK_CELLS))
        for c, (b0, b1) in enumerate(zip(bounds[:-1], bounds[1:])):
            if b0 == b1:
                continue
            mine = order[b0:b1]
            table = self._cached_knot_tables(cells[c * PREDICT_CHUNK_CELLS : (c + 1) * PREDICT_CHUNK_CELLS])
            local = rows[mine] - c * PREDICT_CHUNK_CELLS
            jm = j[mine]
            lo, hi = table[local, jm - 1].astype(np.float64), table[local, jm].astype(np.float64)
            p[mine] = lo + t[mine] * (hi - lo)
            out = outside[mine]
            if out.any():
                r = local[out]
                first, last = table[r, 0].astype(np.float64), table[r, -1].astype(np.float64)
                p[mine[out]] = self._tails(x[mine][out], first, last)
        return p

    def _tails(self, x: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
        """The curve beyond the outer knots (``first`` and ``last``: its values there), where no
        training bid tells what winning takes: a logistic continuation whose slope in ln(bid) is the
        curve's own mean logit slope between the outer knots, so that the curve tends to 0 and 1
        instead of staying flat (a flat tail gives prices outside the logged bids no probability at
        all) and is unchanged inside. Flat where the curve does not rise."""
        k = self.knots().astype(np.float64)
        lf, ll = _logit(first), _logit(last)
        slope = np.maximum((ll - lf) / (k[-1] - k[0]), 0.0)
        below = x < k[0]
        logit = np.where(below, lf + slope * (x - k[0]), ll + slope * (x - k[-1]))
        return np.where(below, np.minimum(_expit(logit), first), np.maximum(_expit(logit), last))

    def bid_thresholds(self) -> np.ndarray:
        """The ln(bid) split values of all trees: the trees are constant in the bid between them."""
        trees = self.booster.trees_to_dataframe()
        bid_feature = f"f{len(self.encoder.features)}"
        return np.unique(trees.loc[trees["Feature"] == bid_feature, "Split"].to_numpy(np.float32))

    def predict_many(self, df: pd.DataFrame, bids: np.ndarray) -> np.ndarray:
        """``predict`` (kept for its callers: every prediction reads each distinct segment's knot
        table once, ``predict_encoded``)."""
        return self.predict_encoded(self.encoder.encode(df), bids)

    def curves(self, segments: pd.DataFrame, grid: np.ndarray) -> np.ndarray:
        """Predicted win rate of every segment (rows) at every grid bid (columns)."""
        segments = segments.reset_index(drop=True)
        k = self.knots()
        if len(k) < 2:
            return self._steps_at(segments, _log_bid(grid))
        at_knots = self.knot_table(self.encoder.encode(segments)).astype(np.float64)
        x = _log_bid(grid).astype(np.float64)
        j, t = self._bracket(x)
        out = at_knots[:, j - 1] + t * (at_knots[:, j] - at_knots[:, j - 1])
        for col in np.flatnonzero((x < k[0]) | (x > k[-1])):
            out[:, col] = self._tails(np.full(len(out), x[col]), at_knots[:, 0], at_knots[:, -1])
        return out

    def _steps_at(self, segments: pd.DataFrame, log_grid: np.ndarray) -> np.ndarray:
        """The trees' step values of every segment at every float32 ln(bid) of ``log_grid``, by the
        booster itself (for a model with fewer than two knots, which has no knot table)."""
        segments = segments.reset_index(drop=True)
        rep = segments.loc[segments.index.repeat(len(log_grid))]
        dm = _win_matrix(self.encoder, rep, np.tile(np.asarray(log_grid, dtype=np.float32), len(segments)))
        return self.booster.predict(dm).reshape(len(segments), len(log_grid)).astype(np.float64)

    def steps_at(self, codes: np.ndarray, log_points: np.ndarray) -> np.ndarray:
        """The trees' step value of every encoded row at every float32 ln(bid) of ``log_points``
        (sorted): ``rows x points``, what ``_raw`` gives for each pair to within float32 rounding
        (~2e-7: XGBoost adds the leaves in float32, this in float64), read from the trees' structure
        (``TreeEnsemble``) in one walk per row instead of one booster prediction per (row, point).
        float32 (the float64 sums are held a chunk of rows at a time); ``knot_table`` re-knots them."""
        if self._ensemble is None:
            self._ensemble = TreeEnsemble.from_booster(self.booster, column=len(self.encoder.features))
        rows = np.column_stack([codes, np.zeros(len(codes), dtype=np.float32)]).astype(np.float32)
        return self._ensemble.probabilities(rows, np.asarray(log_points, dtype=np.float32), dtype=np.float32)


@dataclass(frozen=True)
class CellCurves:
    """Cells' win curves read once from the trees: every cell's knot table
    (``WinRateModel.knot_table``), float32, so that the bid search prices a cell at any bid by the
    interpolation and tails of ``WinRateModel.predict_encoded``, which reads the same table.
    (At 1M logged bids with adjustment columns: 148k cells x ~250 knots, ~150 MB.) ``index``: which
    rows of ``steps`` these cells are (a subset shares its parent's table).

    ``tails`` and ``clearing``: set when the knot table was multiplied by floor-clearing shares
    (``bidopt.optimizer.floors``): per cell, the trees' own values at the first and the last knot
    (``rows x 2``), and the cells' shares at any bid (a ``FloorShares``). Beyond the knots the curve is
    then the share at the bid times the logistic tail of the plain curve: a tail continued from a
    multiplied end took its slope from the floors, not the market (a first value near 0 behind
    floors gave a tail that reached 0.99 at 10 CPM), and the share at the outer knot counted the
    floors between it and the bid as cleared (a bid of 0.5 under floors of 1.0 predicted at 0.64)."""

    model: WinRateModel
    codes: np.ndarray
    steps: np.ndarray | None  # None: a model with fewer than two knots, priced by the booster
    index: np.ndarray
    tails: np.ndarray | None = None
    clearing: Any = None  # bidopt.optimizer.floors.FloorShares (which imports this module)

    @classmethod
    def of(cls, model: WinRateModel, cells: pd.DataFrame) -> CellCurves:
        codes = model.encoder.encode(cells.reset_index(drop=True))
        k = model.knots()
        if len(k) < 2:
            return cls(model, codes, None, np.arange(len(codes)))
        return cls(model, codes, model.knot_table(codes), np.arange(len(codes)))

    def __len__(self) -> int:
        return len(self.index)

    def take(self, which: np.ndarray) -> CellCurves:
        """The curves of a subset of these cells (a boolean mask or positions), in that order."""
        return CellCurves(self.model, self.codes, self.steps, self.index[which], self.tails, self.clearing)

    def at_knots(self, rows: np.ndarray, knots: slice) -> np.ndarray:
        """The knot tables of cells ``rows`` (positions in these cells) at a range of the knots."""
        if self.steps is None:
            raise ValueError("a model with fewer than two knots has no knot table")
        return self.steps[self.index[rows], knots].astype(np.float64)

    def predict(self, bids: np.ndarray) -> np.ndarray:
        """Each cell's win probability at its own bid: ``WinRateModel.predict_encoded`` for the cells."""
        model = self.model
        if self.steps is None:
            return model.predict_encoded(self.codes[self.index], bids)
        k = model.knots().astype(np.float64)
        x = _log_bid(bids).astype(np.float64)
        j, t = model._bracket(x)
        lo = self.steps[self.index, j - 1].astype(np.float64)
        hi = self.steps[self.index, j].astype(np.float64)
        p = lo + t * (hi - lo)
        outside = (x < k[0]) | (x > k[-1])
        if outside.any():
            rows = self.index[outside]
            if self.tails is None:
                first, last = self.steps[rows, 0].astype(np.float64), self.steps[rows, -1].astype(np.float64)
                p[outside] = model._tails(x[outside], first, last)
            else:
                ends = self.tails[rows].astype(np.float64)
                xo = x[outside]
                p[outside] = self.clearing.at(rows, xo) * model._tails(xo, ends[:, 0], ends[:, 1])
        return p


@dataclass
class CtrModel:
    booster: xgb.Booster
    encoder: CategoryEncoder

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        x = self.encoder.encode(df).astype(np.float32)
        return self.booster.predict(xgb.DMatrix(x, feature_types=["c"] * x.shape[1], enable_categorical=True))


def _params(cfg: dict, monotone: str | None) -> dict:
    params = {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "tree_method": "hist",
        "max_depth": cfg["xgb_max_depth"],
        "eta": cfg["xgb_learning_rate"],
        "max_cat_to_onehot": 1,
        "min_child_weight": 5.0,
        "nthread": cfg.get("nthread", 0),
        "seed": 0,
    }
    if monotone:
        params["monotone_constraints"] = monotone
    return params


def train_win_model(
    train: pd.DataFrame, features: Sequence[str], cfg: dict, *, floor_cleared: bool = False
) -> WinRateModel:
    """XGBoost on the aggregated training rows, monotone-increasing in log(bid). ``floor_cleared``:
    on the bids that cleared their floor only (``cleared_bids`` at ``cleared_bid_sum``), so that the
    model is P(win | the bid clears the floor) (``bidopt.optimizer.floors``)."""
    encoder = CategoryEncoder.fit(train, features)
    if floor_cleared:
        train = train.assign(bids=train["cleared_bids"], bid_sum=train["cleared_bid_sum"])
        if not (train["bids"] > 0).any():
            raise InvalidConfig(
                "no training bid cleared its floor: nothing to learn the market from "
                "(floor_aware_win_model=false learns from every bid)"
            )
    rows, labels, weights = expand_binary(train, "wins", "bids")
    dtrain = _win_matrix(encoder, rows, _log_bid(mean_bid(rows)))
    dtrain.set_label(labels)
    dtrain.set_weight(weights)
    monotone = "(" + ",".join(["0"] * len(features) + ["1"]) + ")"
    booster = xgb.train(_params(cfg, monotone), dtrain, num_boost_round=cfg["xgb_num_rounds"])
    if floor_cleared:  # saved with the booster (win_model.ubj): what its curve means
        booster.set_attr(**{FLOOR_CLEARED_ATTR: "true"})
    return WinRateModel(booster, encoder, floor_cleared=floor_cleared)


def evaluate_win_model(model: WinRateModel, test: pd.DataFrame) -> dict[str, float | None]:
    """AUC, ECE and win rates on the held-out aggregates, at each bucket's mean bid. A floor-cleared
    model is asked about the bids that cleared their floor (``cleared_bids``, at their own mean bid);
    the rest, which the floor blocked, count as losses it predicts at 0: the figures are P(win)'s."""
    cleared = model.floor_cleared and "cleared_bids" in test
    if cleared:
        blocked = (test["bids"] - test["cleared_bids"]).to_numpy(float)
        test = test.assign(bids=test["cleared_bids"], bid_sum=test["cleared_bid_sum"])
    rows, labels, weights = expand_binary(test, "wins", "bids")
    if len(rows) == 0 and not (cleared and blocked.sum() > 0):
        return {"auc": None, "ece": None, "holdout_bids": 0.0, "holdout_win_rate": None}
    probs = model.predict_many(rows, mean_bid(rows)) if len(rows) else np.empty(0)
    if cleared and blocked.sum() > 0:
        probs = np.r_[probs, np.zeros(int((blocked > 0).sum()))]
        labels, weights = np.r_[labels, np.zeros(len(probs) - len(labels))], np.r_[weights, blocked[blocked > 0]]
    return {
        "auc": weighted_auc(probs, labels, weights),
        "ece": expected_calibration_error(probs, labels, weights),
        "holdout_bids": float(weights.sum()),
        "holdout_win_rate": float((labels * weights).sum() / weights.sum()),
        "holdout_predicted_win_rate": float((probs * weights).sum() / weights.sum()),
    }


def train_ctr_model(train: pd.DataFrame, features: Sequence[str], cfg: dict) -> CtrModel | None:
    """XGBoost CTR model on won impressions; None when there is nothing to learn from."""
    won = train[train["wins"] > 0]
    if won["clicks"].sum() == 0 or (won["wins"] - won["clicks"]).sum() == 0 or not features:
        return None
    encoder = CategoryEncoder.fit(won, features)
    rows, labels, weights = expand_binary(won, "clicks", "wins")
    x = encoder.encode(rows).astype(np.float32)
    dtrain = xgb.DMatrix(x, label=labels, weight=weights, feature_types=["c"] * x.shape[1], enable_categorical=True)
    params = _params(cfg, None) | {"max_depth": min(cfg["xgb_max_depth"], 4), "min_child_weight": 20.0}
    booster = xgb.train(params, dtrain, num_boost_round=max(cfg["xgb_num_rounds"] // 2, 10))
    return CtrModel(booster, encoder)


def evaluate_ctr_model(model: CtrModel | None, train: pd.DataFrame, test: pd.DataFrame) -> dict[str, float | None]:
    won_test = test[test["wins"] > 0]
    out: dict[str, float | None] = {
        "train_ctr": _ratio(train["clicks"].sum(), train["wins"].sum()),
        "holdout_ctr": _ratio(won_test["clicks"].sum(), won_test["wins"].sum()),
        "auc": None,
    }
    if model is not None and len(won_test):
        rows, labels, weights = expand_binary(won_test, "clicks", "wins")
        out["auc"] = weighted_auc(model.predict(rows), labels, weights)
    return out


def _ratio(a: float, b: float) -> float | None:
    return float(a) / float(b) if b else None


def fit_bid_landscape(df: pd.DataFrame, group: str | None, *, iterations: int = 25) -> dict[str, float]:
    """Logistic landscape ``logit P(win) = a[group] + b * ln(bid)`` by Newton's method (IRLS).

    ``b`` (``bid_coefficient``) is how many logits one unit of log-bid buys; the
    domain multipliers use it to turn a win-rate gap into a bid factor.
    """
    groups = df[group].astype(str).to_numpy() if group else np.zeros(len(df), dtype=object)
    codes, uniques = pd.factorize(groups)
    k = len(uniques)
    x = np.log(np.maximum(mean_bid(df), 1e-6))
    wins, n = df["wins"].to_numpy(dtype=float), df["bids"].to_numpy(dtype=float)
    a, b = np.zeros(k), 1.0
    for _ in range(iterations):
        eta = a[codes] + b * x
        p = 1 / (1 + np.exp(-np.clip(eta, -30, 30)))
        w = n * p * (1 - p) + 1e-9
        r = wins - n * p
        # Newton step on (a, b): the Hessian is block-arrow shaped (diagonal in a), solved in closed form.
        h_aa = np.bincount(codes, w, k) + 1e-6
        h_ab = np.bincount(codes, w * x, k)
        h_bb = (w * x * x).sum()
        g_a = np.bincount(codes, r, k)
        g_b = (r * x).sum()
        schur = h_bb - (h_ab**2 / h_aa).sum()
        db = (g_b - (h_ab * g_a / h_aa).sum()) / schur
        da = (g_a - h_ab * db) / h_aa
        a, b = a + da, b + db
        if max(np.abs(da).max(initial=0), abs(db)) < 1e-8:
            break
    eta = a[codes] + b * x
    p = 1 / (1 + np.exp(-np.clip(eta, -30, 30)))
    ll = (wins * np.log(p + 1e-12) + (n - wins) * np.log(1 - p + 1e-12)).sum()
    return {"bid_coefficient": float(b), "groups": float(k), "mean_log_likelihood": float(ll / max(n.sum(), 1))}

"""Suggested bids per segment, back-off rows, and per-domain multipliers.

The win model conditions on the segment features *and* adjustment columns (the
domain): the logging policy bids higher where the market is higher for reasons
the segment does not show, and a model without them learns a curve that is too
flat (measured in ``benchmarks/quality.py``). A segment's win curve is then the
traffic-weighted mixture of its cells' curves (its own domain mix); mixtures of
monotone curves are monotone and, like the cells' curves, linear in ln(bid)
between the model's knots. Each cell's curve at every knot (its knot table: the
trees' step values, a cell's runs of equal values taken at their middles) is read
once (``CellCurves``), so the bid reaching a target is the first knot
whose mixture reaches it, solved exactly on the line to the knot before (or
bisected in a logistic tail beyond the knots; the win curve is continuous, see
``WinRateModel``): the first grid bid above the crossing overshot the target.

Segment keys are the feature values joined by ``|`` in feature order. Back-off
rows replace values by ``*``: ``<anchor>|*|*`` (level ``anchor``) and ``*|*|*``
(level ``default``), so a bidder that misses a full key falls back to the
anchor's row and then to the entity default, and always finds a bid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bidopt.configs import PRICE_DECIMALS, price_ceil, price_floor
from bidopt.optimizer.models import OTHER, CellCurves, WinRateModel
from bidopt.warehouse.contract import backoff_key, segment_key

GRID_POINTS = 256
# Cells whose knot tables (curves at every knot) the bid search reads at once, and the most groups it mixes
# at once (each x ~256 knots x 8 B: 32 MB).
KNOT_CHUNK_CELLS = 16_384
# Optimistic exploration aims at most this high: no finite bid is sure to win every auction,
# so a bound near 1 would send thin segments to the top of the grid.
OPTIMISTIC_TARGET_CEILING = 0.99


@dataclass(frozen=True)
class BidPolicy:
    target_win_rate: float
    min_bid_cpm: float
    max_bid_cpm: float
    exploration_mode: str  # none | uplift | optimistic
    aggressive_exploration: bool
    exploration_uplift: float
    min_segment_bids: int
    use_floors: bool

    @classmethod
    def from_configs(cls, cfg: dict, *, use_floors: bool) -> BidPolicy:
        return cls(
            cfg["target_win_rate"],
            cfg["min_bid_cpm"],
            cfg["max_bid_cpm"],
            cfg["exploration_mode"],
            cfg["aggressive_exploration"],
            cfg["exploration_uplift"],
            cfg["min_segment_bids"],
            use_floors,
        )

    @property
    def thin_threshold(self) -> int:
        """Segments with fewer training bids than this explore (twice as many when aggressive)."""
        return self.min_segment_bids * (2 if self.aggressive_exploration else 1)

    def grid(self) -> np.ndarray:
        return np.geomspace(self.min_bid_cpm, self.max_bid_cpm, GRID_POINTS)

    def round_bids(self, bids: np.ndarray) -> np.ndarray:
        """Bids as written: ``PRICE_DECIMALS`` decimals, within the bounds rounded inwards, so that
        rounding never lifts a capped bid above ``max_bid_cpm`` nor drops one below ``min_bid_cpm``."""
        return np.clip(np.round(bids, PRICE_DECIMALS), price_ceil(self.min_bid_cpm), price_floor(self.max_bid_cpm))


def exploration_targets(
    target_win_rate: float, weights: np.ndarray, thin: np.ndarray, *, aggressive: bool
) -> np.ndarray:
    """Per segment, the win rate optimistic exploration aims at: for thin segments an upper
    confidence bound of the target (what they need could be more than the model says, and only
    bidding there finds out), between the plain target and ``OPTIMISTIC_TARGET_CEILING``;
    the plain target elsewhere. Never below the plain target, even when it is above the ceiling."""
    t = target_win_rate
    z = 2.0 if aggressive else 1.0
    bound = t + z * np.sqrt(t * (1 - t) / np.maximum(weights, 1.0))
    return np.where(thin, np.clip(bound, t, max(OPTIMISTIC_TARGET_CEILING, t)), t)


def lump_rare(df: pd.DataFrame, column: str, keep: set[str]) -> pd.DataFrame:
    """``column`` values outside ``keep`` become ``(other)``."""
    return df.assign(**{column: np.where(df[column].isin(keep), df[column], OTHER)})


@dataclass
class Mixture:
    """Cells (rows with the model's columns and their training ``bids``) grouped into mixtures."""

    cells: pd.DataFrame
    group: np.ndarray
    n_groups: int
    curves: CellCurves | None = None  # the cells' curves, read from the trees on first use

    @property
    def weights(self) -> np.ndarray:
        return self.cells["bids"].to_numpy(float)

    def _mix(self, p: np.ndarray) -> np.ndarray:
        """Traffic-weighted mean per group of the cells' ``p``."""
        w = self.weights
        return np.bincount(self.group, w * p, self.n_groups) / np.maximum(
            np.bincount(self.group, w, self.n_groups), 1e-12
        )

    def _curves(self, model: WinRateModel) -> CellCurves:
        if self.curves is None or self.curves.model is not model:
            self.curves = CellCurves.of(model, self.cells)
        if len(self.curves) != len(self.cells):
            raise ValueError(f"curves of {len(self.curves)} cells given for a mixture of {len(self.cells)}")
        return self.curves

    def rate(self, model: WinRateModel, bid_per_group: np.ndarray) -> np.ndarray:
        """Traffic-weighted predicted win rate of each group at its own bid."""
        return self._mix(self._curves(model).predict(bid_per_group[self.group]))

    def _first_reaching(
        self,
        model: WinRateModel,
        inner: slice,
        rate_bottom: np.ndarray,
        rate_top: np.ndarray,
        targets: np.ndarray,
        which: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For the groups ``which`` (each with ``rate_bottom < target <= rate_top``), on the points
        ``[bottom, *knots[inner], top]`` (``inner``: the range of the model's knots between the grid's
        bounds, where the mixture is the traffic-weighted mean of the cells' knot tables): the index of
        the first point whose mixture rate reaches the group's target, and the rates there and at the
        point before.

        The cells' curves at the knots are read from their ``CellCurves`` (one walk of the trees
        per cell, shared by every mixture of the same cells), a group's cells together, groups in
        chunks of about ``KNOT_CHUNK_CELLS`` cells and the cells of each chunk at most that many at a
        time, so that the (groups x knots) mixtures and (cells x knots) reads stay small. The mixture
        is monotone, so this is the bracket a bisection over the points would find, without a model
        prediction per step."""
        hi = np.empty(len(which), dtype=np.int64)
        r_lo, r_hi = np.empty(len(which)), np.empty(len(which))
        position = np.full(self.n_groups, -1)
        position[which] = np.arange(len(which))
        cells = np.flatnonzero(position[self.group] >= 0)
        cells = cells[np.argsort(position[self.group[cells]], kind="stable")]  # a group's cells together
        slot = position[self.group[cells]]
        starts = np.r_[0, np.flatnonzero(np.diff(slot)) + 1]  # the first cell of each group, in order
        ends = np.r_[starts[1:], len(cells)]
        curves, w = self._curves(model), self.weights
        g0 = 0
        while g0 < len(starts):
            g1 = max(g0 + 1, int(np.searchsorted(starts, starts[g0] + KNOT_CHUNK_CELLS, side="left")))
            g1 = min(g1, len(starts))
            n = g1 - g0
            mixed = np.zeros((n, inner.stop - inner.start))
            total = np.zeros(n)
            # a group larger than a chunk (the default back-off level is one group of every cell) is
            # read a chunk of its cells at a time, in order: the same sums, a bounded table
            for c0 in range(starts[g0], ends[g1 - 1], KNOT_CHUNK_CELLS):
                c1 = min(c0 + KNOT_CHUNK_CELLS, ends[g1 - 1])
                part, local = cells[c0:c1], slot[c0:c1] - g0  # local: 0 .. n-1
                if inner.stop > inner.start:
                    np.add.at(mixed, local, w[part, None] * curves.at_knots(part, inner))
                total += np.bincount(local, w[part], n)
            total = np.maximum(total, 1e-12)
            groups = which[g0:g1]
            rates = np.column_stack([rate_bottom[groups], mixed / total[:, None], rate_top[groups]])
            first = np.argmax(rates >= targets[groups, None], axis=1)  # rate_top reaches: always found
            first = np.maximum(first, 1)  # rate_bottom is below the target
            rows = np.arange(n)
            hi[g0:g1], r_hi[g0:g1], r_lo[g0:g1] = first, rates[rows, first], rates[rows, first - 1]
            g0 = g1
        return hi, r_lo, r_hi

    def lowest_bids(self, model: WinRateModel, grid: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per group: the lowest bid in ``[grid[0], grid[-1]]`` whose mixture win rate reaches the
        group's target, or the top of the grid; and whether it was reached.

        The model's curve is linear in ln(bid) between its knots, and so is a mixture of them (the
        knots are the same for every cell). So the crossing is found among the knots (the first
        whose mixture rate reaches the target, ``_first_reaching``) and then solved exactly on the
        line between the two knots around it. Where it falls in a tail (below the first knot or
        above the last, where the curve is logistic) it is bisected in ln(bid) instead. The lowest
        grid bid above the crossing, as this once returned, overshot the target by up to a step."""
        lo_b, hi_b = float(np.log(grid[0])), float(np.log(grid[-1]))
        n = self.n_groups
        rate_top = self.rate(model, np.full(n, grid[-1]))
        rate_bottom = self.rate(model, np.full(n, grid[0]))
        reached = rate_top >= targets
        bid = np.where(rate_bottom >= targets, grid[0], grid[-1])
        open_ = reached & (rate_bottom < targets)
        if not open_.any():
            return bid, reached
        knots = model.knots().astype(np.float64)
        inside = np.flatnonzero((knots > lo_b) & (knots < hi_b))  # sorted knots: a range
        inner = slice(int(inside[0]), int(inside[-1]) + 1) if len(inside) else slice(0, 0)
        points = np.r_[lo_b, knots[inner], hi_b]  # ln(bid); the mixture is linear between inner knots
        # rate(points[lo]) < target <= rate(points[hi])
        lo, hi = np.zeros(n, dtype=np.int64), np.full(n, len(points) - 1)
        r_lo, r_hi = rate_bottom.copy(), rate_top.copy()
        which = np.flatnonzero(open_)
        hi[which], r_lo[which], r_hi[which] = self._first_reaching(model, inner, rate_bottom, rate_top, targets, which)
        lo[which] = hi[which] - 1
        x_lo, x_hi = points[lo], points[hi]
        # between two knots, or a grid bound and a knot, inside the knots' span: one linear piece
        linear = (x_lo >= knots[0]) & (x_hi <= knots[-1]) if len(knots) >= 2 else np.zeros(n, dtype=bool)
        frac = np.clip((targets - r_lo) / np.where(r_hi > r_lo, r_hi - r_lo, 1.0), 0.0, 1.0)
        x = np.where(open_ & linear, x_lo + frac * (x_hi - x_lo), x_hi)
        curved = open_ & ~linear  # a tail, or a model without knots: bisect in ln(bid)
        if curved.any():
            # on the cells of those groups only: a tail is rare and 30 steps over every cell are not
            which = np.flatnonzero(curved)
            remap = np.full(n, -1)
            remap[which] = np.arange(len(which))
            in_sub = curved[self.group]
            sub = Mixture(
                self.cells[in_sub].reset_index(drop=True),
                remap[self.group[in_sub]],
                len(which),
                curves=self._curves(model).take(in_sub),
            )
            a, b, t = x_lo[which], x_hi[which], targets[which]
            for _ in range(30):  # 30 halvings of at most ln(grid span) are far below a cent
                m = (a + b) / 2
                ok = sub.rate(model, np.exp(m)) >= t
                b, a = np.where(ok, m, b), np.where(ok, a, m)
            x[which] = b
        # the bounds exactly (within a millionth of the bid, below a price decimal): a bid at the top of
        # the grid is how callers tell a capped one
        out = np.where(x >= hi_b - 1e-6, grid[-1], np.where(x <= lo_b + 1e-6, grid[0], np.exp(x)))
        return np.where(open_, out, bid), reached


def _group(cells: pd.DataFrame, columns: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
    if not columns:
        return np.zeros(len(cells), dtype=np.int64), pd.DataFrame(index=[0])
    keys = cells[columns].astype(str)
    codes, uniques = pd.factorize(pd.MultiIndex.from_frame(keys))
    return codes.astype(np.int64), pd.DataFrame(list(uniques), columns=columns)


def suggest_bids(
    model: WinRateModel,
    cells: pd.DataFrame,
    features: Sequence[str],
    policy: BidPolicy,
    floors: pd.DataFrame | None = None,
    curves: CellCurves | None = None,
) -> tuple[pd.DataFrame, pd.Series]:
    """One row per segment plus back-off rows, and each segment's unexplored model bid.

    ``cells``: the model's columns (segment features, then adjustment columns) and
    ``bids`` (training bids of the cell). ``floors``: ``typical_floor`` per segment
    (features + column), applied when the policy uses floors. Columns of the table:
    ``segment_key, level, bid_cpm, predicted_win_rate, train_bids, explored, capped``.
    The series maps segment keys to the bid that reaches the target before
    exploration, floors and caps (what domain multipliers are relative to).
    ``curves``: the cells' ``CellCurves`` if the caller has them (read from the trees otherwise).
    """
    features = list(features)
    grid = policy.grid()
    cells = cells.reset_index(drop=True)
    seg_codes, segs = _group(cells, features)
    mix = Mixture(cells, seg_codes, len(segs), curves=curves)
    weights = np.bincount(seg_codes, mix.weights, len(segs))
    keys = [segment_key(v) for v in segs.astype(str).itertuples(index=False)]

    plain = np.full(len(segs), policy.target_win_rate)
    model_bids, reached = mix.lowest_bids(model, grid, plain)
    thin = weights < policy.thin_threshold
    bids = model_bids
    if policy.exploration_mode == "optimistic" and thin.any():
        targets = exploration_targets(policy.target_win_rate, weights, thin, aggressive=policy.aggressive_exploration)
        bids, reached = mix.lowest_bids(model, grid, targets)
    if policy.exploration_mode == "uplift":
        uplift = policy.exploration_uplift * (2 if policy.aggressive_exploration else 1)
        bids = np.where(thin, bids * (1 + uplift), bids)
    if policy.use_floors and floors is not None and len(floors):
        seg_floor = segs.astype(str).merge(floors.astype({f: str for f in features}), on=features, how="left")
        floor = seg_floor["typical_floor"].to_numpy(float)
        bids = np.where(np.isnan(floor), bids, np.maximum(bids, floor))
    capped = (~reached) | (bids > policy.max_bid_cpm)
    bids = policy.round_bids(bids)

    rows = pd.DataFrame(
        {
            "segment_key": keys,
            "level": "segment",
            "bid_cpm": bids,
            "predicted_win_rate": np.round(mix.rate(model, bids), 4),
            "train_bids": weights.astype(np.int64),
            "explored": thin & (policy.exploration_mode != "none"),
            "capped": capped,
        }
    )
    backoffs = _backoff_rows(model, cells, features, grid, policy, mix._curves(model))
    return pd.concat([rows, backoffs], ignore_index=True), pd.Series(model_bids, index=keys)


def _backoff_rows(
    model: WinRateModel,
    cells: pd.DataFrame,
    features: list[str],
    grid: np.ndarray,
    policy: BidPolicy,
    curves: CellCurves,
) -> pd.DataFrame:
    """Traffic-weighted mixtures of each anchor value and of the whole entity."""
    out = []
    levels = [([features[0]], "anchor")] if len(features) > 1 else []
    for columns, level in levels + [([], "default")]:
        codes, groups = _group(cells, columns)
        mix = Mixture(cells, codes, len(groups), curves=curves)
        bids, reached = mix.lowest_bids(model, grid, np.full(len(groups), policy.target_win_rate))
        bids = policy.round_bids(bids)
        rates = mix.rate(model, bids)
        w = np.bincount(codes, mix.weights, len(groups))
        for i in range(len(groups)):
            head = [str(groups.iloc[i, 0])] if columns else []
            out.append(
                {
                    "segment_key": backoff_key(head, len(features)),
                    "level": level,
                    "bid_cpm": float(bids[i]),
                    "predicted_win_rate": round(float(rates[i]), 4),
                    "train_bids": int(w[i]),
                    "explored": False,
                    "capped": not bool(reached[i]),
                }
            )
    return pd.DataFrame(out)


def domain_multipliers(
    model: WinRateModel,
    cells: pd.DataFrame,
    features: Sequence[str],
    segment_bids: pd.Series,
    policy: BidPolicy,
    *,
    min_domain_bids: int,
    lower: float,
    upper: float,
    domain_column: str = "domain",
    curves: CellCurves | None = None,
) -> pd.DataFrame:
    """``domain, multiplier, bids, segments`` for domains the model knows with enough bids.

    For each (segment, domain), the mixture of its cells (they may also differ in the model's
    adjustment columns): the lowest bid reaching the target on that domain alone, divided by the
    segment's bid (``segment_bids``, the mixture over its domains): how much more or less the
    domain needs. A domain's multiplier is the traffic-weighted geometric mean of its ratios over
    the segments it appears in (pairs where either bid is capped are left out), clipped to
    ``[lower, upper]``.
    So ``segment bid x multiplier`` approximates the domain's own bid in each segment.
    ``curves``: the ``CellCurves`` of ``cells``, if the caller has them.
    """
    cols = ["domain", "multiplier", "bids", "segments"]
    features = list(features)
    cells = cells.reset_index(drop=True)
    totals = cells.groupby(domain_column)["bids"].sum()
    eligible = totals.index[(totals >= min_domain_bids) & ~totals.index.isin([OTHER, "unknown"])]
    in_pairs = cells[domain_column].isin(eligible).to_numpy()
    pairs = cells[in_pairs].reset_index(drop=True)
    if pairs.empty:
        return pd.DataFrame(columns=cols)
    # one mixture per (segment, domain): the cells also differ in the adjustment columns, if any
    codes, groups = _group(pairs, [*features, domain_column])
    mix = Mixture(pairs, codes, len(groups), curves=curves.take(in_pairs) if curves is not None else None)
    grid = policy.grid()
    own, reached = mix.lowest_bids(model, grid, np.full(len(groups), policy.target_win_rate))
    seg_keys = [segment_key(v) for v in groups[features].astype(str).itertuples(index=False)]
    seg_bid = segment_bids.reindex(seg_keys).to_numpy(float)
    usable = reached & np.isfinite(seg_bid) & (own < grid[-1]) & (seg_bid < grid[-1])
    group_bids = np.bincount(codes, pairs["bids"].to_numpy(float), len(groups))
    part = groups.assign(bids=group_bids, log_ratio=np.log(own / seg_bid))[usable]
    if part.empty:
        return pd.DataFrame(columns=cols)
    w = part["bids"].to_numpy(float)
    agg = (
        part.assign(wlr=w * part["log_ratio"])
        .groupby(domain_column)
        .agg(wlr=("wlr", "sum"), w=("bids", "sum"), segments=("bids", "size"))
    )
    # Rounded to the bids' decimals inside the bounds rounded inwards, like ``BidPolicy.round_bids``:
    # an upper bound of 1.99996 must not become a multiplier of 2.0.
    mult = np.clip(
        np.round(np.exp(agg["wlr"] / agg["w"]).to_numpy(), PRICE_DECIMALS), price_ceil(lower), price_floor(upper)
    )
    out = pd.DataFrame(
        {
            "domain": agg.index.astype(str),
            "multiplier": mult,
            "bids": totals.reindex(agg.index).to_numpy(np.int64),
            "segments": agg["segments"].to_numpy(np.int64),
        }
    )
    return out.sort_values("bids", ascending=False).reset_index(drop=True)


def top_segment_curves(
    model: WinRateModel,
    cells: pd.DataFrame,
    features: Sequence[str],
    policy: BidPolicy,
    *,
    top: int = 8,
    points: int = 40,
    curves: CellCurves | None = None,
) -> dict:
    """Mixture win-rate curves of the ``top`` segments by traffic, for plots:
    ``{"bids": [...], "segments": [{"segment_key", "train_bids", "win_rate": [...]}, ...]}``."""
    features = list(features)
    cells = cells.reset_index(drop=True)
    codes, segs = _group(cells, features)
    weights = np.bincount(codes, cells["bids"].to_numpy(float), len(segs))
    chosen = np.argsort(-weights)[:top]
    keep = np.isin(codes, chosen)
    remap = {c: i for i, c in enumerate(chosen)}
    mix = Mixture(
        cells[keep].reset_index(drop=True),
        np.array([remap[c] for c in codes[keep]], dtype=np.int64),
        len(chosen),
        curves=curves.take(keep) if curves is not None else None,
    )
    grid = np.geomspace(policy.min_bid_cpm, policy.max_bid_cpm, points)
    rates = np.column_stack([mix.rate(model, np.full(len(chosen), b)) for b in grid])
    return {
        "bids": [round(float(b), 4) for b in grid],
        "target_win_rate": policy.target_win_rate,
        "segments": [
            {
                "segment_key": segment_key(segs.iloc[c].astype(str).tolist()),
                "train_bids": int(weights[c]),
                "win_rate": [round(float(r), 4) for r in rates[i]],
            }
            for i, c in enumerate(chosen)
        ],
    }

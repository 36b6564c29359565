"""Suggested bids per segment, back-off rows, and per-domain multipliers.

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

from bidopt.optimizer.models import WinRateModel, mean_bid

GRID_POINTS = 256
WILDCARD = "*"
KEY_SEPARATOR = "|"


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
        return cls(cfg["target_win_rate"], cfg["min_bid_cpm"], cfg["max_bid_cpm"], cfg["exploration_mode"],
                   cfg["aggressive_exploration"], cfg["exploration_uplift"], cfg["min_segment_bids"], use_floors)

    @property
    def thin_threshold(self) -> int:
        """Segments with fewer training bids than this explore (twice as many when aggressive)."""
        return self.min_segment_bids * (2 if self.aggressive_exploration else 1)

    def grid(self) -> np.ndarray:
        return np.geomspace(self.min_bid_cpm, self.max_bid_cpm, GRID_POINTS)


def segment_key(values: Sequence[str]) -> str:
    return KEY_SEPARATOR.join(values)


def lowest_bid_reaching(curves: np.ndarray, grid: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``curves`` (win rate over ``grid``, non-decreasing): the lowest grid bid whose win
    rate reaches the row's target, or the top of the grid; and whether the target was reached."""
    reached = curves >= targets[:, None]
    any_reached = reached.any(axis=1)
    first = np.where(any_reached, reached.argmax(axis=1), len(grid) - 1)
    return grid[first], any_reached


def suggest_bids(
    model: WinRateModel,
    segments: pd.DataFrame,
    features: Sequence[str],
    policy: BidPolicy,
) -> pd.DataFrame:
    """One row per segment plus back-off rows.

    ``segments``: one row per segment with the feature columns, ``bids`` (training
    bids) and, when floors are used, ``typical_floor``. Columns of the result:
    ``segment_key, level, bid_cpm, predicted_win_rate, train_bids, explored, capped``.
    """
    grid = policy.grid()
    segs = segments.reset_index(drop=True)
    curves = model.curves(segs[list(features)], grid)
    weights = segs["bids"].to_numpy(float)
    n = len(segs)

    targets = np.full(n, policy.target_win_rate)
    thin = weights < policy.thin_threshold
    if policy.exploration_mode == "optimistic":
        # Bid for an upper confidence bound of the target: what a thin segment needs could be
        # more than the model says, and only bidding there finds out.
        z = 2.0 if policy.aggressive_exploration else 1.0
        t = policy.target_win_rate
        bound = t + z * np.sqrt(t * (1 - t) / np.maximum(weights, 1.0))
        targets = np.where(thin, np.minimum(bound, 0.99), targets)
    bids, reached = lowest_bid_reaching(curves, grid, targets)
    if policy.exploration_mode == "uplift":
        uplift = policy.exploration_uplift * (2 if policy.aggressive_exploration else 1)
        bids = np.where(thin, bids * (1 + uplift), bids)
    if policy.use_floors and "typical_floor" in segs:
        floors = segs["typical_floor"].to_numpy(float)
        bids = np.where(np.isnan(floors), bids, np.maximum(bids, floors))
    capped = (~reached) | (bids > policy.max_bid_cpm)
    bids = np.clip(bids, policy.min_bid_cpm, policy.max_bid_cpm)
    idx = np.clip(np.searchsorted(grid, bids), 0, len(grid) - 1)
    predicted = curves[np.arange(n), idx]
    explored = thin & (policy.exploration_mode != "none")

    rows = pd.DataFrame({
        "segment_key": [segment_key(v) for v in segs[list(features)].astype(str).itertuples(index=False)],
        "level": "segment",
        "bid_cpm": np.round(bids, 4),
        "predicted_win_rate": np.round(predicted, 4),
        "train_bids": weights.astype(np.int64),
        "explored": explored,
        "capped": capped,
    })
    backoffs = _backoff_rows(segs, features, curves, weights, grid, policy)
    return pd.concat([rows, backoffs], ignore_index=True)


def _backoff_rows(segs: pd.DataFrame, features: Sequence[str], curves: np.ndarray, weights: np.ndarray,
                  grid: np.ndarray, policy: BidPolicy) -> pd.DataFrame:
    """Traffic-weighted mean curve of each anchor value and of the whole entity."""
    anchor = features[0]
    groups = [(segment_key([str(a)] + [WILDCARD] * (len(features) - 1)), "anchor", segs[anchor] == a)
              for a in segs[anchor].unique()] if len(features) > 1 else []
    groups.append((segment_key([WILDCARD] * len(features)), "default", np.ones(len(segs), dtype=bool)))
    out = []
    for key, level, mask in groups:
        mask = np.asarray(mask)
        w = weights[mask]
        curve = (curves[mask] * w[:, None]).sum(axis=0) / max(w.sum(), 1e-9)
        bid, reached = lowest_bid_reaching(curve[None, :], grid, np.array([policy.target_win_rate]))
        b = float(np.clip(bid[0], policy.min_bid_cpm, policy.max_bid_cpm))
        out.append({"segment_key": key, "level": level, "bid_cpm": round(b, 4),
                    "predicted_win_rate": round(float(curve[np.searchsorted(grid, b).clip(0, len(grid) - 1)]), 4),
                    "train_bids": int(w.sum()), "explored": False, "capped": not bool(reached[0])})
    return pd.DataFrame(out)


def domain_multipliers(
    model: WinRateModel,
    domain_rows: pd.DataFrame,
    features: Sequence[str],
    bid_coefficient: float,
    *,
    min_domain_bids: int,
    lower: float,
    upper: float,
) -> pd.DataFrame:
    """``domain, multiplier, bids, observed_win_rate, expected_win_rate`` for domains with enough bids.

    ``domain_rows`` are aggregates by (features..., domain, bid bucket). For each
    domain we find the logit offset ``delta`` that makes the win model's expected
    wins on the domain's own rows (same segments, same bids) equal its observed
    wins: a one-dimensional maximum-likelihood fit by Newton's method, with a weak
    N(0, 1) prior so a domain with few bids stays near 0. A bid factor ``m`` moves
    the logit by ``bid_coefficient * ln(m)``, so ``m = exp(-delta / bid_coefficient)``
    cancels the offset; it is clipped to ``[lower, upper]``. A domain that is
    easier to win than its segments suggest gets a multiplier below 1.
    """
    cols = ["domain", "multiplier", "bids", "observed_win_rate", "expected_win_rate"]
    if domain_rows.empty or bid_coefficient <= 0:
        return pd.DataFrame(columns=cols)
    rows = domain_rows.reset_index(drop=True)
    per = rows.groupby("domain", observed=True)[["bids", "wins"]].sum()
    keep = per.index[(per["bids"] >= min_domain_bids) & (per.index != "unknown")]
    rows = rows[rows["domain"].isin(keep)].reset_index(drop=True)
    if rows.empty:
        return pd.DataFrame(columns=cols)
    p0 = np.clip(model.predict_many(rows[list(features)], mean_bid(rows)), 1e-6, 1 - 1e-6)
    eta = np.log(p0 / (1 - p0))
    codes, domains = pd.factorize(rows["domain"])
    k = len(domains)
    n, wins = rows["bids"].to_numpy(float), rows["wins"].to_numpy(float)
    observed_wins = np.bincount(codes, wins, k)
    delta = np.zeros(k)
    for _ in range(50):
        p = 1 / (1 + np.exp(-(eta + delta[codes])))
        grad = observed_wins - np.bincount(codes, n * p, k) - delta  # prior N(0, 1)
        hess = np.bincount(codes, n * p * (1 - p), k) + 1.0
        step = grad / hess
        delta += step
        if np.abs(step).max() < 1e-9:
            break
    bids = np.bincount(codes, n, k)
    mult = np.clip(np.exp(-delta / bid_coefficient), lower, upper)
    out = pd.DataFrame({"domain": domains.astype(str), "multiplier": np.round(mult, 4),
                        "bids": bids.astype(np.int64), "observed_win_rate": np.round(observed_wins / bids, 4),
                        "expected_win_rate": np.round(np.bincount(codes, n * p0, k) / bids, 4)})
    return out.sort_values("bids", ascending=False).reset_index(drop=True)

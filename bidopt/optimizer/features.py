"""Segment feature selection: an anchor, then features ranked by a signal score.

The signal score of a candidate feature, given the features already chosen, is
the share (in percent, 0-100) of the validation log-loss of winning *at a given
bid* that splitting the segments by the candidate removes. Rows come in two
slices: the estimation slice (``is_holdout`` false) and the validation slice
(``is_holdout`` true; the optimizer carves it from the end of its training
window, so the run's own held-out slice, which reports AUC, ECE and coverage,
is never used to choose features).

Both sides of the comparison are the same two-level estimator, so that only the
candidate's information can make a difference:

* the *parent* rate of a row is its (chosen features, bid bin) cell's
  estimation-slice win rate, shrunk towards its bid bin's rate;
* the *baseline* shrinks that same cell's rate towards the parent again;
* the *candidate* shrinks the (chosen features, candidate, bid bin) cell's rate
  towards the same parent;

each with ``PRIOR_STRENGTH`` pseudo-bids. A feature with one value gives the
candidate exactly the baseline's cells, so it scores exactly 0 (an earlier score
shrank the candidate's cells towards an already shrunk parent but scored it
against that parent alone: splitting by anything, even a constant, "removed"
loss by undoing shrinkage). A feature of pure noise splits cells at random: on
the validation slice it can only add variance, and it scores about 0 (clipped
at 0). Features are added greedily, best first, while their score is at least
``MIN_SIGNAL_SCORE`` and the segments keep enough support: at least
``MIN_SUPPORTED_SHARE`` of the bids must fall in segments with
``min_segment_bids`` bids or more.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bidopt.optimizer.models import mean_bid

MIN_SIGNAL_SCORE = 0.5
MIN_SUPPORTED_SHARE = 0.8
PRIOR_STRENGTH = 20.0  # pseudo-bids pulling a cell towards its parent cell
BID_BIN_LOG_WIDTH = 0.2  # bid bins ~22% wide for scoring


@dataclass(frozen=True)
class FeatureChoice:
    name: str
    is_anchor: bool
    signal_score: float | None
    support: float  # share of training bids in well-supported segments


def _bid_bin(df: pd.DataFrame) -> np.ndarray:
    return np.floor(np.log(np.maximum(mean_bid(df), 1e-6)) / BID_BIN_LOG_WIDTH).astype(np.int64)


def _cell_predictions(train: pd.DataFrame, test: pd.DataFrame, keys: list[str], prior_test: np.ndarray) -> np.ndarray:
    """Shrunk training win rate of each test row's cell, towards ``prior_test``."""
    cells = train.groupby(keys, observed=True)[["wins", "bids"]].sum()
    joined = test[keys].merge(cells, left_on=keys, right_index=True, how="left")
    wins = joined["wins"].fillna(0).to_numpy(float)
    bids = joined["bids"].fillna(0).to_numpy(float)
    return (wins + PRIOR_STRENGTH * prior_test) / (bids + PRIOR_STRENGTH)


def _log_loss(p: np.ndarray, test: pd.DataFrame) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    wins, bids = test["wins"].to_numpy(float), test["bids"].to_numpy(float)
    return float(-(wins * np.log(p) + (bids - wins) * np.log(1 - p)).sum() / max(bids.sum(), 1))


def signal_score(df: pd.DataFrame, chosen: Sequence[str], candidate: str) -> float:
    """Percent of the validation log-loss (given ``chosen`` and the bid) removed by ``candidate``:
    ``df`` is an aggregate by ``chosen + [candidate]`` whose ``is_holdout`` rows are the validation
    slice. 0 for a candidate without information (see the module's docstring)."""
    df = df.assign(_bin=_bid_bin(df))
    train, test = df[~df["is_holdout"]], df[df["is_holdout"]]
    if len(train) == 0 or len(test) == 0:
        return 0.0
    global_rate = train["wins"].sum() / max(train["bids"].sum(), 1)
    by_bin = _cell_predictions(train, test, ["_bin"], np.full(len(test), global_rate))
    coarse_keys = [*chosen, "_bin"]
    parent = _cell_predictions(train, test, coarse_keys, by_bin) if chosen else by_bin
    baseline = _cell_predictions(train, test, coarse_keys, parent)
    fine = _cell_predictions(train, test, [*chosen, candidate, "_bin"], parent)
    base_loss = _log_loss(baseline, test)
    if base_loss <= 0:
        return 0.0
    return float(np.clip(100.0 * (base_loss - _log_loss(fine, test)) / base_loss, 0.0, 100.0))


def segment_support(df: pd.DataFrame, features: Sequence[str], min_segment_bids: int) -> float:
    """Share of ``df``'s bids (all of its rows: the estimation and validation slices together are
    the run's training window) in segments of ``features`` with ``min_segment_bids`` bids or more."""
    train = df
    if not features:
        return 1.0
    sizes = train.groupby(list(features), observed=True)["bids"].sum()
    total = sizes.sum()
    return float(sizes[sizes >= min_segment_bids].sum() / total) if total else 0.0


def select_features(
    aggregate: Callable[[list[str]], pd.DataFrame],
    anchor: str,
    candidates: Sequence[str],
    *,
    max_features: int,
    min_segment_bids: int,
    on_score: Callable[[str, float, float], None] | None = None,
) -> list[FeatureChoice]:
    """Greedy selection. ``aggregate(features)`` returns the warehouse aggregate of the training
    window grouped by ``features``, with ``is_holdout`` marking the validation slice (never the
    run's held-out test slice); it is called once per candidate per round."""
    anchor_df = aggregate([anchor])
    chosen = [FeatureChoice(anchor, True, None, segment_support(anchor_df, [anchor], min_segment_bids))]
    remaining = [c for c in candidates if c != anchor]
    while remaining and len(chosen) < max_features:
        names = [c.name for c in chosen]
        scored = []
        for cand in remaining:
            df = aggregate([*names, cand])
            score = signal_score(df, names, cand)
            support = segment_support(df, [*names, cand], min_segment_bids)
            if on_score:
                on_score(cand, score, support)
            scored.append((score, support, cand))
        eligible = [s for s in scored if s[0] >= MIN_SIGNAL_SCORE and s[1] >= MIN_SUPPORTED_SHARE]
        if not eligible:
            break
        score, support, best = max(eligible)
        chosen.append(FeatureChoice(best, False, round(score, 3), support))
        remaining.remove(best)
    return chosen

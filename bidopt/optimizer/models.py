"""Models over aggregated bid logs: win rate, CTR, bid landscape, and their metrics.

Training rows are the warehouse's aggregates (one row per segment x bid bucket
with counts), expanded to two weighted rows each: label 1 with weight ``wins``
and label 0 with weight ``bids - wins`` (CTR: clicks / wins - clicks). This is
the same likelihood as training on the raw rows whose bid is the bucket's mean
bid, at a fraction of the size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xgboost as xgb

UNSEEN = -1.0  # code of a value the model never saw (XGBoost sends it down the default branch)
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


def mean_bid(df: pd.DataFrame) -> np.ndarray:
    return df["bid_sum"].to_numpy(dtype=float) / np.maximum(df["bids"].to_numpy(dtype=float), 1)


def _log_bid(bids) -> np.ndarray:
    return np.log(np.maximum(np.asarray(bids, dtype=float), 1e-6)).astype(np.float32)


def _win_matrix(encoder: CategoryEncoder, df: pd.DataFrame, log_bids: np.ndarray) -> xgb.DMatrix:
    """Segment feature codes (categorical) and ln(bid) (numeric, the monotone column)."""
    x = np.column_stack([encoder.encode(df), log_bids]).astype(np.float32)
    return xgb.DMatrix(x, feature_types=["c"] * len(encoder.features) + ["q"], enable_categorical=True)


@dataclass
class WinRateModel:
    """P(win | segment features, bid), monotone increasing in the bid."""

    booster: xgb.Booster
    encoder: CategoryEncoder

    def predict(self, df: pd.DataFrame, bids: np.ndarray) -> np.ndarray:
        return self.predict_encoded(self.encoder.encode(df), bids)

    def predict_encoded(self, codes: np.ndarray, bids: np.ndarray) -> np.ndarray:
        """``predict`` for rows already encoded with ``self.encoder.encode`` (reused across calls)."""
        x = np.column_stack([codes, _log_bid(bids)]).astype(np.float32)
        types = ["c"] * len(self.encoder.features) + ["q"]
        return self.booster.predict(xgb.DMatrix(x, feature_types=types, enable_categorical=True))

    def bid_thresholds(self) -> np.ndarray:
        """The ln(bid) split values of all trees: the model is constant in the bid between them."""
        trees = self.booster.trees_to_dataframe()
        bid_feature = f"f{len(self.encoder.features)}"
        return np.unique(trees.loc[trees["Feature"] == bid_feature, "Split"].to_numpy(np.float32))

    def predict_many(self, df: pd.DataFrame, bids: np.ndarray) -> np.ndarray:
        """``predict`` for many rows that share few segments, exactly and much faster: every tree
        sends ``ln(bid) < split`` left, so within a segment the prediction only changes at the
        bid split values. Each segment is predicted once per interval between them."""
        x = _log_bid(bids)
        codes = self.encoder.encode(df).astype(np.int64) + 1  # UNSEEN (-1) -> 0
        radix = np.array([len(self.encoder.categories[f]) + 1 for f in self.encoder.features], dtype=np.int64)
        packed = (
            (codes * np.r_[np.cumprod(radix[::-1])[::-1][1:], 1]).sum(axis=1)
            if len(radix)
            else np.zeros(len(df), dtype=np.int64)
        )
        keys, inverse = np.unique(packed, return_inverse=True)
        splits = self.bid_thresholds()
        if len(keys) * (len(splits) + 1) >= len(df):  # few rows per segment: direct is cheaper
            return self.predict_encoded(codes.astype(np.float32) - 1, bids)
        first_row = np.zeros(len(keys), dtype=np.int64)
        first_row[inverse[::-1]] = np.arange(len(df))[::-1]
        segments = df.iloc[first_row].reset_index(drop=True)
        # one representative ln(bid) per interval: below the first split, then each split value
        points = np.r_[np.float32(splits[0] - 1.0) if len(splits) else np.float32(0.0), splits].astype(np.float32)
        curves = self._curves_log(segments, points)
        interval = np.searchsorted(splits, x, side="right")
        return curves[inverse.ravel(), interval]

    def curves(self, segments: pd.DataFrame, grid: np.ndarray) -> np.ndarray:
        """Predicted win rate of every segment (rows) at every grid bid (columns)."""
        return self._curves_log(segments, _log_bid(grid))

    def _curves_log(self, segments: pd.DataFrame, log_grid: np.ndarray) -> np.ndarray:
        segments = segments.reset_index(drop=True)
        rep = segments.loc[segments.index.repeat(len(log_grid))]
        dm = _win_matrix(self.encoder, rep, np.tile(log_grid, len(segments)))
        return self.booster.predict(dm).reshape(len(segments), len(log_grid))


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


def train_win_model(train: pd.DataFrame, features: Sequence[str], cfg: dict) -> WinRateModel:
    """XGBoost on the aggregated training rows, monotone-increasing in log(bid)."""
    encoder = CategoryEncoder.fit(train, features)
    rows, labels, weights = expand_binary(train, "wins", "bids")
    dtrain = _win_matrix(encoder, rows, _log_bid(mean_bid(rows)))
    dtrain.set_label(labels)
    dtrain.set_weight(weights)
    monotone = "(" + ",".join(["0"] * len(features) + ["1"]) + ")"
    booster = xgb.train(_params(cfg, monotone), dtrain, num_boost_round=cfg["xgb_num_rounds"])
    return WinRateModel(booster, encoder)


def evaluate_win_model(model: WinRateModel, test: pd.DataFrame) -> dict[str, float | None]:
    rows, labels, weights = expand_binary(test, "wins", "bids")
    if len(rows) == 0:
        return {"auc": None, "ece": None, "holdout_bids": 0.0, "holdout_win_rate": None}
    probs = model.predict_many(rows, mean_bid(rows))
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

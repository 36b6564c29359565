"""A boosted tree ensemble read as a step function of one numeric column (pure numpy).

The bid search asks the win model for the same cells at many bids: a cell's categorical values
are fixed and only ln(bid) changes. Through ``Booster.predict`` every (cell, bid) is a row that
walks all trees from the root (at 1M logged bids with adjustment columns: 148k cells, ~10M rows,
47 of a run's 58 s). But in each tree a cell's path depends on the bid only at the bid's own splits:
walking the tree once per *cell*, following both branches where the tree splits on the bid, gives
every leaf the cell can reach together with the range of bids that reach it. Summed over the trees,
that is the cell's margin at every bid point at once (``margins``), at the cost of the leaves a cell
can reach rather than of one full walk per point.

The decisions are XGBoost's own (``src/predictor/predict_fn.h``, ``src/common/categorical.h``), and
``tests/unit/test_trees.py`` checks them against ``Booster.predict``:

* numeric split: ``x < split_condition`` goes left, float32 against float32; a missing value
  (NaN) follows ``default_left``;
* categorical split (the partition kind, ``max_cat_to_onehot=1``): a category listed in the node's
  set goes right, any other valid category goes left; a code is truncated to an integer, and a
  negative one (the encoder's ``UNSEEN``) or one of 2^24 or more is invalid and goes left; NaN
  follows ``default_left``;
* the margin is the sum of the leaves plus the base margin, ``logit(base_score)`` for
  ``binary:logistic``, the only objective the win model uses.

XGBoost adds the leaves in float32, this in float64: the values agree to ~2e-7, not bit for bit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import xgboost as xgb

# Cells walked together: bounds the (cells x points) float64 work arrays (16,384 x 257 x 8 B = 34 MB)
# while keeping numpy's per-call overhead small against the work of a call; a float32 result of many
# cells (CellCurves) is filled a chunk at a time.
CHUNK_CELLS = 16_384
MAX_CATEGORY = 2**24  # XGBoost's bound on a category code (a float32 holds integers exactly below it)


def _base_score(text: str) -> float:
    """``base_score`` as the model JSON stores it: ``"5E-1"`` (XGBoost 2) or ``"[5E-1]"`` (3, one
    value per target; the win model has one)."""
    values = np.atleast_1d(np.asarray(json.loads(text) if text.startswith("[") else [text], dtype=np.float64))
    if len(values) != 1:
        raise ValueError(f"a booster of one target has one base_score, not {text}")
    return float(values[0])


@dataclass(frozen=True)
class _Tree:
    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray  # float32; a leaf's value at a leaf
    default_left: np.ndarray
    categories: dict[int, np.ndarray]  # categorical node -> which codes go right, by code; a last False


class TreeEnsemble:
    """The trees of a ``binary:logistic`` booster over float32 columns, one of them (``column``) the
    one the margins are taken as a function of."""

    def __init__(self, trees: list[_Tree], base_margin: float, column: int) -> None:
        self.trees = trees
        self.base_margin = base_margin
        self.column = column

    @classmethod
    def from_booster(cls, booster: xgb.Booster, column: int) -> TreeEnsemble:
        model = json.loads(booster.save_raw("json"))
        learner = model["learner"]
        objective = learner["objective"]["name"]
        if objective != "binary:logistic":
            raise ValueError(f"only binary:logistic boosters are read as step functions, not {objective}")
        gbm = learner["gradient_booster"]
        if gbm.get("name", "gbtree") != "gbtree":
            raise ValueError(f"only gbtree boosters are read as step functions, not {gbm.get('name')}")
        if not gbm["model"]["trees"]:
            # XGBoost predicts a margin of base_score itself for a booster without trees, not its
            # logit: refused rather than read differently (the win model trains at least 10 rounds)
            raise ValueError("a booster without trees is not read as a step function")
        base = _base_score(learner["learner_model_param"]["base_score"])
        base_margin = float(np.log(base / (1.0 - base)))
        trees = []
        for t in gbm["model"]["trees"]:
            cats: dict[int, np.ndarray] = {}
            values = np.asarray(t.get("categories", []), dtype=np.int64)
            for node, start, size in zip(
                t.get("categories_nodes", []), t.get("categories_segments", []), t.get("categories_sizes", [])
            ):
                listed = values[start : start + size]
                # a lookup by code instead of a set test: its last entry (False) is where codes above
                # the largest listed one, and invalid ones (-1), are sent
                goes_right = np.zeros(int(listed.max(initial=-1)) + 2, dtype=bool)
                goes_right[listed] = True
                cats[int(node)] = goes_right
            trees.append(
                _Tree(
                    np.asarray(t["left_children"], dtype=np.int64),
                    np.asarray(t["right_children"], dtype=np.int64),
                    np.asarray(t["split_indices"], dtype=np.int64),
                    np.asarray(t["split_conditions"], dtype=np.float32),
                    np.asarray(t["default_left"], dtype=bool),
                    cats,
                )
            )
        return cls(trees, base_margin, column)

    def margins(self, rows: np.ndarray, points: np.ndarray, dtype=np.float64) -> np.ndarray:
        """The raw margin of every row (float32 columns; ``column``'s own value is ignored) at every
        value of ``points`` (sorted, float32) of the column: ``len(rows) x len(points)`` of ``dtype``
        (summed in float64 a chunk of ``CHUNK_CELLS`` rows at a time whatever ``dtype`` is)."""
        return self._by_chunks(rows, points, dtype, logistic=False)

    def probabilities(self, rows: np.ndarray, points: np.ndarray, dtype=np.float64) -> np.ndarray:
        """``margins`` through the logistic function: what ``Booster.predict`` gives for the rows
        with the column set to each point."""
        return self._by_chunks(rows, points, dtype, logistic=True)

    def _by_chunks(self, rows: np.ndarray, points: np.ndarray, dtype, *, logistic: bool) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.float32)
        points = np.asarray(points, dtype=np.float32)
        if len(points) > 1 and np.any(np.diff(points) < 0):
            raise ValueError("points must be sorted")
        out = np.empty((len(rows), len(points)), dtype=dtype)
        for start in range(0, len(rows), CHUNK_CELLS):
            margin = self._chunk(rows[start : start + CHUNK_CELLS], points)
            out[start : start + CHUNK_CELLS] = 1.0 / (1.0 + np.exp(-margin)) if logistic else margin
        return out

    def _chunk(self, rows: np.ndarray, points: np.ndarray) -> np.ndarray:
        n, k = len(rows), len(points)
        # codes as XGBoost reads them: truncated, and -1 where invalid (negative, too large or NaN)
        valid = (rows >= 0) & (rows < MAX_CATEGORY)
        # by column (``[feature][rows]`` gathers from one contiguous column)
        codes = np.ascontiguousarray(np.where(valid, np.trunc(np.where(valid, rows, 0)), -1).astype(np.int64).T)
        nan = np.ascontiguousarray(np.isnan(rows).T)
        columns = np.ascontiguousarray(rows.T)
        # one more column than points: a leaf reached for points [a, b) adds at a and takes off at b
        diff = np.zeros((n, k + 1), dtype=np.float64)
        everyone = np.arange(n)
        for tree in self.trees:
            stack = [(0, everyone, 0, k)]
            while stack:
                node, who, a, b = stack.pop()
                left = tree.left[node]
                if left < 0:  # a leaf: its value for these rows at points [a, b)
                    value = float(tree.threshold[node])
                    diff[who, a] += value  # a row reaches a leaf once: no repeated index here
                    diff[who, b] -= value
                    continue
                right, feature = tree.right[node], tree.feature[node]
                if feature == self.column:
                    # points below the split go left: [a, m) left, [m, b) right
                    m = int(np.searchsorted(points, tree.threshold[node], side="left"))
                    if a < min(m, b):
                        stack.append((left, who, a, min(m, b)))
                    if max(a, m) < b:
                        stack.append((right, who, max(a, m), b))
                    continue
                table = tree.categories.get(node)
                if table is not None:
                    goes_right = table[np.minimum(codes[feature][who], len(table) - 1)]
                else:
                    goes_right = ~(columns[feature][who] < tree.threshold[node])  # NaN: not below
                missing = nan[feature][who]
                if missing.any():
                    goes_right = np.where(missing, not tree.default_left[node], goes_right)
                to_right, to_left = who[goes_right], who[~goes_right]
                if len(to_left):
                    stack.append((left, to_left, a, b))
                if len(to_right):
                    stack.append((right, to_right, a, b))
        return np.cumsum(diff[:, :k], axis=1) + self.base_margin

"""The tree ensemble read as a step function of the bid gives what Booster.predict gives."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from bidopt.optimizer.trees import TreeEnsemble

TYPES = ["c", "c", "q", "q"]  # two categorical columns, one numeric, then ln(bid)


def _booster(seed: int, *, rounds: int = 40, depth: int = 5, objective: str = "binary:logistic", **extra):
    rng = np.random.default_rng(seed)
    n = 20_000
    x = np.column_stack(
        [rng.integers(0, 40, n), rng.integers(0, 6, n), rng.normal(size=n), np.log(rng.uniform(0.5, 20, n))]
    ).astype(np.float32)
    x[rng.uniform(size=n) < 0.05, 1] = np.nan  # missing values train a default direction
    x[rng.uniform(size=n) < 0.05, 2] = np.nan
    logit = x[:, 3] - 1.5 + 0.04 * x[:, 0] + 0.5 * (x[:, 1] == 2) + 0.3 * np.nan_to_num(x[:, 2])
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(float)
    params = {
        "objective": objective,
        "max_depth": depth,
        "tree_method": "hist",
        "max_cat_to_onehot": 1,  # partition splits, as the win model trains
        "monotone_constraints": "(0,0,0,1)",
        "eta": 0.3,
        **extra,
    }
    dtrain = xgb.DMatrix(x, y, feature_types=TYPES, enable_categorical=True)
    return xgb.train(params, dtrain, rounds)


def _cells(seed: int, n: int = 600) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cells = np.column_stack([rng.integers(-1, 45, n), rng.integers(-1, 8, n), rng.normal(size=n), np.zeros(n)]).astype(
        np.float32
    )  # -1: the encoder's UNSEEN; 40-44 and 6-7: categories no tree has seen
    cells[::7, 0] = np.nan
    cells[::11, 1] = np.nan
    cells[::5, 2] = np.nan
    cells[::13, 0] = 2.5  # not an integer: an invalid category, as XGBoost reads it
    return cells


def _booster_at(booster: xgb.Booster, cells: np.ndarray, points: np.ndarray, **kw) -> np.ndarray:
    rows = np.repeat(cells, len(points), axis=0)
    rows[:, 3] = np.tile(points, len(cells))
    dm = xgb.DMatrix(rows, feature_types=TYPES, enable_categorical=True)
    return booster.predict(dm, **kw).reshape(len(cells), len(points)).astype(np.float64)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_margins_and_probabilities_match_the_booster_at_every_point(seed):
    booster = _booster(seed)
    ensemble = TreeEnsemble.from_booster(booster, column=3)
    cells = _cells(seed)
    thresholds = np.unique(booster.trees_to_dataframe().query("Feature == 'f3'")["Split"].to_numpy(np.float32))
    # every split value itself (where the decision flips), points between them and outside them
    points = np.unique(np.r_[thresholds, np.log(np.geomspace(0.1, 50, 64)).astype(np.float32)])
    margins = ensemble.margins(cells, points)
    assert np.abs(margins - _booster_at(booster, cells, points, output_margin=True)).max() < 1e-4
    assert np.abs(ensemble.probabilities(cells, points) - _booster_at(booster, cells, points)).max() < 1e-5


def test_a_base_score_of_its_own_and_more_cells_than_a_chunk(monkeypatch):
    import bidopt.optimizer.trees as trees

    monkeypatch.setattr(trees, "CHUNK_CELLS", 64)  # cells walked in several chunks, results in order
    booster = _booster(4, rounds=10, base_score=0.2)
    cells, points = _cells(4, n=300), np.log(np.geomspace(0.3, 30, 17)).astype(np.float32)
    probs = TreeEnsemble.from_booster(booster, column=3).probabilities(cells, points)
    assert np.abs(probs - _booster_at(booster, cells, points)).max() < 1e-5


def test_a_booster_without_splits_on_the_column_is_flat_in_it():
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.integers(0, 5, 2000), rng.integers(0, 3, 2000)]).astype(np.float32)
    y = (x[:, 0] > 2).astype(float)
    dtrain = xgb.DMatrix(x, y, feature_types=["c", "q"], enable_categorical=True)
    booster = xgb.train({"objective": "binary:logistic", "max_cat_to_onehot": 1}, dtrain, 5)
    cells = np.c_[np.arange(-1, 6, dtype=np.float32), np.zeros(7, dtype=np.float32)]
    probs = TreeEnsemble.from_booster(booster, column=1).probabilities(cells, np.float32([0.0, 5.0]))
    assert np.allclose(probs[:, 0], probs[:, 1])


def test_what_it_cannot_read_is_refused():
    with pytest.raises(ValueError, match="only binary:logistic"):
        TreeEnsemble.from_booster(_booster(5, rounds=2, objective="reg:squarederror"), column=3)
    with pytest.raises(ValueError, match="without trees"):  # XGBoost reads its base_score differently
        TreeEnsemble.from_booster(_booster(5, rounds=0), column=3)
    ensemble = TreeEnsemble.from_booster(_booster(5, rounds=2), column=3)
    with pytest.raises(ValueError, match="sorted"):
        ensemble.margins(_cells(5, n=3), np.float32([1.0, 0.0]))

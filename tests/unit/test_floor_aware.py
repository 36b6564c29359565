"""The floor-aware win curve (``bidopt.optimizer.floors``): the clearing shares it multiplies the cells'
curves by, and a run on a market whose logging policy lifts bids to the floor, priced with and
without it against the simulator's truth."""

import tempfile

import numpy as np
import pandas as pd
import pytest

from bidopt.configs import parse_run_configs
from bidopt.errors import InvalidConfig
from bidopt.optimizer import floors as FL
from bidopt.optimizer import models as M
from bidopt.optimizer.pipeline import RunSpec, optimize
from bidopt.simulator import MarketSpec, simulate_market, true_win_probability
from bidopt.warehouse import open_warehouse
from bidopt.warehouse.contract import floor_bucket_label, segment_key

CFG = parse_run_configs({"xgb_num_rounds": 40})


def _model_and_cells():
    rng = np.random.default_rng(5)
    rows = []
    for seg, mu in (("a", 0.0), ("b", 0.7), ("c", -0.5)):
        for bid in np.geomspace(0.05, 20, 60):
            p = 1 / (1 + np.exp(-2.0 * (np.log(bid) - mu)))
            n = 300
            rows.append({"f": seg, "bids": n, "wins": rng.binomial(n, p), "bid_sum": n * bid})
    df = pd.DataFrame(rows)
    model = M.train_win_model(df, ["f"], CFG)
    cells = df.groupby("f", as_index=False)["bids"].sum()
    return model, cells


def _histogram(floors_by_cell: dict[str, np.ndarray], bins: FL.FloorBins) -> pd.DataFrame:
    """What ``floor_histogram`` answers for these floors (NaN: none), binned as its SQL bins them."""
    out = []
    for cell, floors in floors_by_cell.items():
        has = ~np.isnan(floors) & (floors > 0)
        b = np.floor((np.log(np.where(has, floors, 1.0)) - np.log(bins.lowest_cpm)) / bins.width)
        b = np.where(np.where(has, floors, 0.0) >= bins.highest_cpm, FL.FLOOR_BINS, b)
        part = pd.DataFrame(
            {"f": cell, "floor_bin": pd.array([int(v) if h else None for v, h in zip(b, has)], "Int64")}
        )
        out.append(part.groupby(["f", "floor_bin"], dropna=False).size().rename("n").reset_index())
    return pd.concat(out, ignore_index=True)


def test_each_cell_curve_is_multiplied_by_the_share_of_its_floors_a_bid_clears():
    model, cells = _model_and_cells()
    rng = np.random.default_rng(1)
    bins = FL.FloorBins(0.05, 20.0)
    floors = {
        # a: half without a floor, the rest log-normal around 1.0; b: every floor at exactly 2.0, some
        # below the lowest bid; c: none at all
        "a": np.where(rng.random(4000) < 0.5, np.nan, np.exp(rng.normal(0.0, 0.6, 4000))),
        "b": np.r_[np.full(3000, 2.0), np.full(1000, 0.01)],
        "c": np.full(500, np.nan),
    }
    curves = M.CellCurves.of(model, cells)
    plain = curves.steps.copy()
    before = FL.apply_clearing_shares(curves, _histogram(floors, bins), cells, ["f"], bins)
    knots = model.knots().astype(np.float64)
    for i, cell in enumerate(cells["f"]):
        fl = floors[cell]
        # the share of the cell's requests whose floor a bid at each knot clears, counted directly
        ecdf = np.array([(np.isnan(fl) | (fl <= np.exp(k))).mean() for k in knots])
        share = before.steps[i] / np.maximum(plain[i], 1e-12)
        inside = (knots > np.log(bins.lowest_cpm)) & (plain[i] > 1e-3)
        # uniform inside a bin of 1/256 of the range: within the mass of one bin of the cell's floors
        assert np.abs(share[inside] - ecdf[inside]).max() < 0.03, cell
    assert np.allclose(before.steps[2], plain[2])  # no floors: unchanged
    with pytest.raises(ValueError, match="already"):
        FL.apply_clearing_shares(before, _histogram(floors, bins), cells, ["f"], bins)
    # a floor of exactly 2.0 is cleared by a bid of 2.0 and over, none under it (a bin's width apart)
    share_b = before.steps[1] / np.maximum(plain[1], 1e-12)
    assert share_b[knots < np.log(2.0) - bins.width].max() == pytest.approx(0.25, abs=1e-6)
    assert share_b[knots > np.log(2.0) + bins.width].min() == pytest.approx(1.0, abs=1e-6)


def test_beyond_the_knots_the_curve_is_the_plain_tail_times_the_share_at_the_bid():
    """A tail continued from the multiplied ends took its slope from the floors (with every floor above
    the first knot, the curve shot to 1 past the last knot), and the share at the outer knot counted
    the floors between it and the bid as cleared (a bid of 0.5 under floors of 1.0 won 64%)."""
    model, cells = _model_and_cells()
    bins = FL.FloorBins(0.01, 20.0)  # every bid below is above the run's lowest
    rng = np.random.default_rng(2)
    knots = model.knots().astype(np.float64)
    low = float(np.exp(knots[0]))
    floors = {
        "a": np.exp(rng.normal(np.log(0.8), 0.2, 2000)),
        "b": np.r_[np.full(1000, low / 2), np.full(1000, np.nan)],  # half under the first knot, half none
        "c": np.full(500, low / 1.5),
    }
    plain = M.CellCurves.of(model, cells)
    untouched = M.CellCurves.of(model, cells)
    priced = FL.apply_clearing_shares(plain, _histogram(floors, bins), cells, ["f"], bins)
    for bid in (np.exp(knots[-1]) * 1.5, np.exp(knots[-1]) * 4, low / 1.2, low / 1.8, low / 3):
        at = np.full(len(cells), bid)
        want = np.array([(np.isnan(floors[c]) | (floors[c] <= bid)).mean() for c in cells["f"]])
        got = priced.predict(at) / np.maximum(untouched.predict(at), 1e-12)
        assert np.abs(got - want).max() < 0.03, bid  # the share at the bid, within a bin's mass
    # under every floor of c, c cannot win; a (floors around 0.8) is below its floors at low / 3 too
    assert priced.predict(np.full(3, low / 3))[2] < 1e-9
    # the share at the bid agrees with the knot table's at every knot
    shares = priced.clearing.at(np.repeat(np.arange(3), len(knots)), np.tile(knots, 3)).reshape(3, -1)
    assert np.allclose(shares * untouched.steps, priced.steps, atol=1e-6)
    # and the subset a bisection takes keeps them
    sub = priced.take(np.array([2, 0]))
    top = np.full(2, np.exp(knots[-1]) * 2)
    assert np.allclose(sub.predict(top), priced.predict(np.full(3, top[0]))[[2, 0]])


def test_the_shares_refuse_a_subset_of_the_cells_and_leave_cells_without_floors_alone():
    model, cells = _model_and_cells()
    curves = M.CellCurves.of(model, cells)
    bins = FL.FloorBins(0.05, 20.0)
    with pytest.raises(ValueError, match="whole knot table"):
        FL.apply_clearing_shares(curves.take(np.array([0, 1])), _histogram({"a": np.ones(2)}, bins), cells, ["f"], bins)
    plain = curves.steps.copy()
    priced = FL.apply_clearing_shares(curves, _histogram({"zz": np.array([1.0])}, bins), cells, ["f"], bins)
    assert np.array_equal(priced.steps, plain)  # an entry of no cell is dropped; cells without any: 1


def test_a_run_whose_bids_all_sat_below_their_floors_is_refused_with_the_reason():
    model, _ = _model_and_cells()
    df = pd.DataFrame(
        {"f": ["a"] * 3, "bids": 10, "wins": 0, "bid_sum": 5.0, "cleared_bids": 0, "cleared_bid_sum": 0.0}
    )
    with pytest.raises(InvalidConfig, match="no training bid cleared its floor"):
        M.train_win_model(df, ["f"], CFG, floor_cleared=True)


def test_predict_at_floors_is_zero_under_the_floor_only_for_a_floor_cleared_model():
    model, _ = _model_and_cells()
    rows = pd.DataFrame({"f": ["a", "a", "a", "a"]})
    bids, floors = np.array([1.0, 1.0, 1.0, 1.0]), np.array([np.nan, 0.5, 1.0, 1.5])
    p = model.predict(rows, bids)
    assert np.array_equal(model.predict_at_floors(rows, bids, floors), p)  # not trained floor-cleared
    model.floor_cleared = True
    assert np.array_equal(model.predict_at_floors(rows, bids, floors), np.r_[p[:3], 0.0])


@pytest.fixture(scope="module")
def lifted_market():
    """A second-price market with floors whose logging policy lifts every bid below a floor to it."""
    spec = MarketSpec(
        "floored", rows=150_000, seed=11, auction_type="second_price", floor_available=True, floor_lift_share=1.0
    )
    return spec, simulate_market(spec)


def _predicted_minus_true(table, floor_aware: bool, target: float = 0.3) -> dict[str, float]:
    """Predicted (the bid table's) minus true win rate at the suggested bids, over the training
    requests with a floor and over those without, and the traffic-weighted |true - target| of the
    segments (as ``benchmarks/quality.py`` scores them)."""
    macros = {n: i for i, n in enumerate(["geo_region_name", "os_code", "device_type", "domain"], start=1)}
    static = {"floor_available": True, "npi_enabled": False, "domain_enabled": False}
    configs = {
        "target_win_rate": target,
        "max_bid_cpm": 50.0,
        "exploration_mode": "none",
        "xgb_num_rounds": 100,
        "xgb_learning_rate": 0.3,
        "adjust_unchosen_features": True,  # the confounding through them is another bias (README)
        "floor_aware_win_model": floor_aware,
        "max_features": 2,
    }
    thresholds = {"min_win_auc": 0.5, "max_win_ece": 0.2, "min_bid_coverage": 0.5}
    with tempfile.TemporaryDirectory() as tmp:
        wh = open_warehouse(f"duckdb:///{tmp}")
        wh.load_bid_logs(table)
        result = optimize(wh, RunSpec("r", "floored", "geo_region_name", macros, static, configs, thresholds))
        wh.close()
    assert result.model.floor_cleared is floor_aware
    assert result.metrics["win_rate_model"]["floor_aware"] == float(floor_aware)
    df = table.to_pandas()
    df = df[df.event_time < result.holdout_from]  # the truth over the rows the run trained on
    for col in ("geo_region_name", "os_code", "device_type"):
        df[col] = df[col].astype(str)
    df["floor_bucket"] = [floor_bucket_label(None if np.isnan(f) else f) for f in df.floor_cpm]
    features = [c.name for c in result.features]
    keys = pd.Series([segment_key(v) for v in df[features].itertuples(index=False)], index=df.index)
    table_bids = result.bids.set_index("segment_key")
    bid = keys.map(table_bids["bid_cpm"]).to_numpy(float)
    predicted = keys.map(table_bids["predicted_win_rate"]).to_numpy(float)
    true = true_win_probability(bid, df.truth_mu.to_numpy(), df.truth_sigma.to_numpy(), df.floor_cpm.to_numpy())
    ok = ~np.isnan(bid)
    per_segment = pd.DataFrame({"key": keys[ok], "true": true[ok]}).groupby("key")["true"].agg(["mean", "size"])
    floored = ok & df.floor_cpm.notna().to_numpy()
    unfloored = ok & ~floored
    return {
        "floored": float(predicted[floored].mean() - true[floored].mean()),
        "unfloored": float(predicted[unfloored].mean() - true[unfloored].mean()),
        "gap": float(np.average(np.abs(per_segment["mean"] - target), weights=per_segment["size"])),
    }


def test_a_floor_aware_run_prices_the_floors_the_lifting_policy_hides(lifted_market):
    _, table = lifted_market
    naive = _predicted_minus_true(table, floor_aware=False)
    aware = _predicted_minus_true(table, floor_aware=True)
    print(f"naive {naive}; floor-aware {aware}")
    # the curve learnt from won/lost at b is too high where floors block (measured +0.067 on the
    # requests with a floor, +0.024 on those without: the confounding left at this size)...
    assert naive["floored"] > 0.04
    # ...and the floor-aware curve is not (+0.004), and its bids are nearer the target
    assert abs(aware["floored"]) < 0.02 and aware["gap"] < naive["gap"] - 0.005

"""The optimizer's maths, without Ray or a database: metrics, models, features, bids."""

import dataclasses
import pickle

import numpy as np
import pandas as pd
import pytest

from bidopt.configs import parse_run_configs
from bidopt.optimizer import bids as B
from bidopt.optimizer import features as F
from bidopt.optimizer import models as M
from bidopt.optimizer import trees as T
from bidopt.simulator import MarketSpec, oracle_bid, simulate_market
from bidopt.warehouse import Window, open_warehouse

CFG = parse_run_configs({"xgb_num_rounds": 60})


def test_weighted_auc_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    s, y, w = rng.random(60).round(1), rng.integers(0, 2, 60), rng.integers(1, 4, 60).astype(float)
    num = den = 0.0
    for i in range(60):
        for j in range(60):
            if y[i] == 1 and y[j] == 0:
                den += w[i] * w[j]
                num += w[i] * w[j] * (1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0)
    assert M.weighted_auc(s, y, w) == pytest.approx(num / den)
    assert M.weighted_auc(s, np.ones(60), w) is None


def test_ece():
    p = np.array([0.1, 0.1, 0.9, 0.9])
    assert M.expected_calibration_error(p, np.array([0, 0, 1, 1]), np.ones(4)) == pytest.approx(0.1)
    assert M.expected_calibration_error(p, np.array([0, 1, 0, 1]), np.ones(4)) == pytest.approx(0.4)


def test_landscape_recovers_a_known_slope():
    rng = np.random.default_rng(1)
    bids = np.exp(rng.uniform(-1, 2, 4000))
    g = rng.integers(0, 3, 4000)
    p = 1 / (1 + np.exp(-(np.array([-1.0, 0.0, 0.5])[g] + 1.7 * np.log(bids))))
    df = pd.DataFrame({"geo": g.astype(str), "bids": 50, "wins": rng.binomial(50, p), "bid_sum": 50 * bids})
    assert M.fit_bid_landscape(df, "geo")["bid_coefficient"] == pytest.approx(1.7, abs=0.05)


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    spec = MarketSpec("e", rows=300_000, seed=21, npi_enabled=True)
    table = simulate_market(spec)
    wh = open_warehouse(f"duckdb:///{tmp_path_factory.mktemp('wh')}")
    wh.load_bid_logs(table)
    s = wh.summary("e")
    window = Window(s["first_time"], s["last_time"] + pd.Timedelta(microseconds=1))
    holdout = s["last_time"] - pd.Timedelta(days=5)
    yield table.to_pandas(), wh, window, holdout
    wh.close()


def test_signal_scores_rank_real_signal_above_noise(market):
    _, wh, window, holdout = market

    def agg(fs):
        return wh.aggregate_bids("e", window, fs, bid_bucket_cpm=0.25, holdout_from=holdout).to_pandas()

    # geo moves prices a lot in the simulator, the browser hardly at all
    geo = F.signal_score(agg(["geo_region_name"]), [], "geo_region_name")
    browser = F.signal_score(agg(["browser_code"]), [], "browser_code")
    assert geo > 5 * max(browser, 0.1)
    chosen = F.select_features(
        agg,
        "geo_region_name",
        ["geo_region_name", "os_code", "browser_code", "device_type", "npi_matched"],
        max_features=4,
        min_segment_bids=200,
    )
    names = [c.name for c in chosen]
    assert names[0] == "geo_region_name" and chosen[0].is_anchor and chosen[0].signal_score is None
    assert "browser_code" not in names and "npi_matched" in names
    assert all(0 <= c.signal_score <= 100 for c in chosen[1:])
    one = F.select_features(
        agg, "geo_region_name", ["geo_region_name", "os_code"], max_features=1, min_segment_bids=200
    )
    assert [c.name for c in one] == ["geo_region_name"]


def _aggregate_with(df: pd.DataFrame, holdout, extra: dict[str, np.ndarray], by: list[str]) -> pd.DataFrame:
    """The warehouse's aggregate of raw simulator rows by ``by`` (contract columns and ``extra``
    columns made up here), with 0.25 CPM bid buckets and ``is_holdout`` from ``holdout``."""
    rows = df.assign(**extra, is_holdout=df.event_time >= holdout, bid_bucket=np.floor(df.bid_cpm / 0.25))
    rows["bids"], rows["wins"], rows["bid_sum"] = 1, rows.won.astype(int), rows.bid_cpm
    return rows.groupby([*by, "is_holdout", "bid_bucket"], observed=True, as_index=False)[
        ["bids", "wins", "bid_sum"]
    ].sum()


def test_a_feature_without_information_scores_zero(market):
    """A constant scores exactly 0 and pure noise (2 or 12 values) below 0.1, alone and after the
    anchor; the old score gave a constant 0.74 by undoing shrinkage. Real features stay above."""
    df, _, _, holdout = market
    rng = np.random.default_rng(5)
    extra = {
        "constant": np.full(len(df), "same"),
        "coin": rng.integers(0, 2, len(df)).astype(str),
        "die": rng.integers(0, 12, len(df)).astype(str),
    }
    for chosen in ([], ["geo_region_name"]):
        for name in extra:
            score = F.signal_score(_aggregate_with(df, holdout, extra, [*chosen, name]), chosen, name)
            assert score < 0.1, (chosen, name, score)
            if name == "constant":
                assert score == 0.0
    real = F.signal_score(
        _aggregate_with(df, holdout, {}, ["geo_region_name", "device_type"]), ["geo_region_name"], "device_type"
    )
    assert real > 1.0


def test_win_model_is_monotone_calibrated_and_bids_hit_the_target(market):
    df, wh, window, holdout = market
    features = ["geo_region_name", "device_type"]
    agg = wh.aggregate_bids("e", window, features, bid_bucket_cpm=0.25, holdout_from=holdout).to_pandas()
    train, test = agg[~agg.is_holdout], agg[agg.is_holdout]
    model = M.train_win_model(train, features, CFG)
    metrics = M.evaluate_win_model(model, test)
    assert metrics["auc"] > 0.7 and metrics["ece"] < 0.03
    segs = train.groupby(features, as_index=False)["bids"].sum()
    grid = np.geomspace(0.1, 50, 64)
    assert (np.diff(model.curves(segs[features], grid), axis=1) >= -1e-6).all()

    policy = B.BidPolicy.from_configs(CFG | {"target_win_rate": 0.5, "exploration_mode": "none"}, use_floors=False)
    table, _ = B.suggest_bids(model, segs, features, policy)
    seg_rows = table[table.level == "segment"].set_index("segment_key")
    # the suggested bid of big segments is close to the simulator's oracle bid
    errors = []
    for (geo, device), part in df.groupby(["geo_region_name", "device_type"], observed=True):
        if len(part) < 3000:
            continue
        oracle = oracle_bid(0.5, part.truth_mu.to_numpy(), part.truth_sigma.to_numpy())
        errors.append(abs(seg_rows.loc[f"{geo}|{device}", "bid_cpm"] / oracle - 1))
    assert len(errors) > 10 and np.median(errors) < 0.1
    # back-off rows: one per anchor value and one default, so every key finds a bid
    assert (table.level == "default").sum() == 1 and table.loc[table.level == "default", "segment_key"].item() == "*|*"
    assert set(table.loc[table.level == "anchor", "segment_key"]) == {f"{g}|*" for g in segs.geo_region_name.unique()}


def _toy_model(slope=2.0):
    """A win model over one feature whose curves we know: two segments, 'a' cheaper than 'b'."""
    rng = np.random.default_rng(3)
    rows = []
    for seg, mu in (("a", 0.0), ("b", 1.0)):
        for bid in np.geomspace(0.2, 20, 40):
            p = 1 / (1 + np.exp(-slope * (np.log(bid) - mu)))
            rows.append({"f": seg, "bids": 400, "wins": rng.binomial(400, p), "bid_sum": 400 * bid})
    df = pd.DataFrame(rows)
    return M.train_win_model(df, ["f"], CFG), df


def test_caps_minimum_floors_and_exploration():
    model, _ = _toy_model()
    segs = pd.DataFrame({"f": ["a", "b"], "bids": [10_000, 50], "typical_floor": [np.nan, 2.0]})
    base = CFG | {"target_win_rate": 0.5, "min_bid_cpm": 0.5, "max_bid_cpm": 2.5, "min_segment_bids": 200}

    def table(**kw):
        return B.suggest_bids(model, segs, ["f"], B.BidPolicy.from_configs(base | kw, use_floors=False))[0].set_index(
            "segment_key"
        )

    none = table(exploration_mode="none")
    assert none.loc["a", "bid_cpm"] == pytest.approx(1.0, rel=0.15)  # logit 0 at ln(bid) = 0
    assert none.loc["b", "bid_cpm"] == pytest.approx(np.e, rel=0.15) or none.loc["b", "capped"]
    assert none["bid_cpm"].max() <= 2.5 and none["bid_cpm"].min() >= 0.5
    assert not none.loc["b", "explored"]
    uplift = table(exploration_mode="uplift")
    assert uplift.loc["b", "explored"] and not uplift.loc["a", "explored"]
    low = table(exploration_mode="uplift", max_bid_cpm=100, target_win_rate=0.3)
    low_none = table(exploration_mode="none", max_bid_cpm=100, target_win_rate=0.3)
    assert low.loc["b", "bid_cpm"] == pytest.approx(low_none.loc["b", "bid_cpm"] * 1.15, rel=1e-3)
    aggressive = table(exploration_mode="uplift", max_bid_cpm=100, target_win_rate=0.3, aggressive_exploration=True)
    assert aggressive.loc["b", "bid_cpm"] == pytest.approx(low_none.loc["b", "bid_cpm"] * 1.30, rel=1e-3)
    optimistic = table(exploration_mode="optimistic", max_bid_cpm=100, target_win_rate=0.3)
    assert optimistic.loc["b", "bid_cpm"] > low_none.loc["b", "bid_cpm"]
    assert optimistic.loc["a", "bid_cpm"] == low_none.loc["a", "bid_cpm"]  # well supported: no exploration
    floors = B.suggest_bids(
        model,
        segs,
        ["f"],
        B.BidPolicy.from_configs(
            base | {"exploration_mode": "none", "target_win_rate": 0.2, "max_bid_cpm": 100}, use_floors=True
        ),
        floors=segs[["f", "typical_floor"]],
    )[0].set_index("segment_key")
    assert floors.loc["b", "bid_cpm"] >= 2.0 and floors.loc["a", "bid_cpm"] < 2.0


def _two_domain_cells():
    """Two domains inside each segment, one cheap and one dear, and a tiny one; the logged bids
    follow the market (the confounding of a real bidder's logs). ``(model, cells)``."""
    rng = np.random.default_rng(4)
    rows = []
    for seg, mu in (("a", 0.0), ("b", 1.0)):
        for domain, shift, share in (("cheap.com", -0.4, 0.5), ("dear.com", 0.4, 0.5), ("tiny.com", 0.0, 0.002)):
            m = mu + shift
            for bid in np.exp(m + np.linspace(-2, 2, 30)):  # the policy bids around the market
                n = int(2000 * share) + 1
                p = 1 / (1 + np.exp(-2.0 * (np.log(bid) - m)))
                rows.append({"f": seg, "domain": domain, "bids": n, "wins": rng.binomial(n, p), "bid_sum": n * bid})
    df = pd.DataFrame(rows)
    model = M.train_win_model(df, ["f", "domain"], CFG)
    return model, df.groupby(["f", "domain"], as_index=False)["bids"].sum()


def test_domain_adjustment_and_multipliers_recover_known_domain_effects():
    """The mixture bid sits between the domains' own bids, and the multipliers turn it into each
    domain's own bid."""
    model, cells = _two_domain_cells()
    policy = B.BidPolicy.from_configs(
        CFG | {"target_win_rate": 0.5, "exploration_mode": "none", "max_bid_cpm": 50.0}, use_floors=False
    )
    table, model_bids = B.suggest_bids(model, cells, ["f"], policy)
    bids = table.set_index("segment_key")["bid_cpm"]
    assert np.exp(-0.4) * 0.9 < bids["a"] < np.exp(0.4) * 1.1 and bids["b"] > bids["a"] * 2
    mult = B.domain_multipliers(
        model, cells, ["f"], model_bids, policy, min_domain_bids=500, lower=0.5, upper=2.0
    ).set_index("domain")
    assert "tiny.com" not in mult.index
    for domain, shift in (("cheap.com", -0.4), ("dear.com", 0.4)):
        own = np.exp(shift)  # each domain's own bid / the segment's mixture bid, up to the mixture's centre
        assert mult.loc[domain, "multiplier"] * bids["a"] == pytest.approx(own, rel=0.12)
    tight = B.domain_multipliers(
        model, cells, ["f"], model_bids, policy, min_domain_bids=500, lower=0.9, upper=1.1
    ).set_index("domain")
    assert tight["multiplier"].tolist() == [pytest.approx(x) for x in np.clip(mult["multiplier"], 0.9, 1.1)]
    # cells split further by an adjustment column: one mixture per (segment, domain), as before
    halves = pd.concat([cells.assign(adj="u", bids=cells["bids"] / 2), cells.assign(adj="v", bids=cells["bids"] / 2)])
    split = B.domain_multipliers(
        model, halves, ["f"], model_bids, policy, min_domain_bids=500, lower=0.5, upper=2.0
    ).set_index("domain")
    assert split["segments"].tolist() == mult["segments"].tolist()
    assert split["multiplier"].tolist() == pytest.approx(mult["multiplier"].tolist())


def test_rounding_never_crosses_the_bounds():
    """Bids are written with 4 decimals: rounded after clipping, max_bid_cpm=2.00006 gave 2.0001 and
    min_bid_cpm=0.50004 gave 0.5, and the run failed its own validation. Likewise multipliers."""
    model, _ = _toy_model()
    segs = pd.DataFrame({"f": ["a", "b"], "bids": [10_000, 10_000]})
    for target, lo, hi in ((0.5, 0.10004, 2.00006), (0.02, 0.50004, 100.0), (0.5, 2.00001, 2.0001)):
        policy = B.BidPolicy.from_configs(
            CFG | {"target_win_rate": target, "exploration_mode": "none", "min_bid_cpm": lo, "max_bid_cpm": hi},
            use_floors=False,
        )
        bids = B.suggest_bids(model, segs, ["f"], policy)[0]["bid_cpm"].to_numpy()
        assert ((bids >= lo) & (bids <= hi)).all(), (lo, hi, bids)
        assert (bids == np.round(bids, 4)).all()
    capped = B.BidPolicy.from_configs(CFG | {"target_win_rate": 0.5, "max_bid_cpm": 2.00006}, use_floors=False)
    assert B.suggest_bids(model, segs, ["f"], capped)[0].set_index("segment_key").loc["b", "bid_cpm"] == 2.0

    model, cells = _two_domain_cells()
    policy = B.BidPolicy.from_configs(
        CFG | {"target_win_rate": 0.5, "exploration_mode": "none", "max_bid_cpm": 50.0}, use_floors=False
    )
    _, model_bids = B.suggest_bids(model, cells, ["f"], policy)
    mult = B.domain_multipliers(
        model, cells, ["f"], model_bids, policy, min_domain_bids=500, lower=0.90004, upper=1.09996
    ).set_index("domain")["multiplier"]
    assert (mult["cheap.com"], mult["dear.com"]) == (0.9001, 1.0999)  # rounding used to give 0.9 and 1.1


def test_optimistic_exploration_never_aims_below_the_target():
    """The upper confidence bound was capped at 0.99, so a target of 0.995 explored *below* it."""
    weights, thin = np.array([10.0, 50.0, 10_000.0]), np.array([True, True, False])
    for target in (0.3, 0.98, 0.995, 0.9999):
        for aggressive in (False, True):
            aims = B.exploration_targets(target, weights, thin, aggressive=aggressive)
            assert (aims >= target).all() and aims[2] == target
    assert B.exploration_targets(0.3, weights, thin, aggressive=False)[0] > 0.3  # thin segments still explore

    model, _ = _toy_model()
    segs = pd.DataFrame({"f": ["a", "b"], "bids": [50, 10_000]})  # a is thin; 0.995 is reachable for it

    def bid_of_a(mode):
        policy = B.BidPolicy.from_configs(
            CFG | {"target_win_rate": 0.995, "exploration_mode": mode, "max_bid_cpm": 100.0}, use_floors=False
        )
        return B.suggest_bids(model, segs, ["f"], policy)[0].set_index("segment_key").loc["a", "bid_cpm"]

    assert bid_of_a("optimistic") >= bid_of_a("none") < 100.0


def test_predictions_are_the_boosters_steps_where_a_cell_has_a_step_of_one_knot(market, monkeypatch):
    """Independent of the knot table's own code: at a knot where a cell's step value differs from both
    neighbours (a run of one), the re-knotted curve is the booster's own prediction; and reading the
    distinct cells' tables in chunks, many rows per cell, changes nothing."""
    df, wh, window, holdout = market
    features = ["geo_region_name", "os_code"]
    agg = wh.aggregate_bids("e", window, features, bid_bucket_cpm=0.25).to_pandas()
    model = M.train_win_model(agg, features, CFG)
    rows = df.sample(20_000, random_state=0)[features + ["bid_cpm"]].astype({"geo_region_name": str, "os_code": str})
    rows.iloc[:50, 0] = "atlantis"  # a value the model never saw
    bids = rows.bid_cpm.to_numpy() * np.random.default_rng(0).uniform(0.5, 2, len(rows))
    whole = model.predict(rows[features], bids)
    monkeypatch.setattr(M, "PREDICT_CHUNK_CELLS", 3)
    assert np.array_equal(model.predict(rows[features], bids), whole)  # chunked, and from its cache
    # a copy unpickled in the same process (a Ray worker's next task) finds the tables read before
    shipped = pickle.loads(pickle.dumps(model))
    assert shipped._tables is model._tables and len(model._tables) > 0
    fresh = dataclasses.replace(model, _cache_key="another model")  # an empty cache
    monkeypatch.setattr(M, "KNOT_CACHE_CELLS", 2)  # a cache that fills up at once
    assert np.array_equal(fresh.predict(rows[features], bids), whole) and len(fresh._tables) == 2
    assert np.array_equal(fresh.predict(rows[features], bids), whole)
    M._KNOT_CACHES.pop("another model")
    # least recently used first: models used in turn, as a replay's runs are per batch, keep theirs
    monkeypatch.setattr(M, "KNOT_CACHE_MODELS", 2)
    a, b, c = (dataclasses.replace(model, _cache_key=f"model {i}") for i in range(3))
    a.predict(rows[features], bids), b.predict(rows[features], bids)
    a.predict(rows[features], bids)  # a is now the most recent: c evicts b, not a
    c.predict(rows[features], bids)
    assert "model 0" in M._KNOT_CACHES and "model 1" not in M._KNOT_CACHES
    for key in ("model 0", "model 2"):
        M._KNOT_CACHES.pop(key)
    cells = rows[features].drop_duplicates().head(20).reset_index(drop=True)
    k = model.knots()
    raw = model._steps_at(cells, k)  # the booster itself, cells x knots
    single = np.zeros(raw.shape, dtype=bool)
    single[:, 1:-1] = (raw[:, 1:-1] != raw[:, :-2]) & (raw[:, 1:-1] != raw[:, 2:])
    assert single.sum() > 20
    r, j = np.nonzero(single)
    at = model.predict(cells.iloc[r].reset_index(drop=True), np.exp(k[j].astype(np.float64)))
    assert np.abs(at - raw[r, j]).max() < 1e-6


def test_win_curve_is_continuous_monotone_and_proper_and_bids_land_on_the_target():
    """The trees' steps are interpolated between knots and continued logistically beyond them:
    no jumps, increasing, towards 0 and 1 outside the logged bids; and the suggested bid is the
    crossing of the target itself, not the first grid point above it (which overshot)."""
    model, _ = _toy_model()
    segs = pd.DataFrame({"f": ["a", "b"]})
    grid = np.geomspace(0.001, 5000, 4000)
    curves = model.curves(segs, grid)
    assert (np.diff(curves, axis=1) >= -1e-12).all()
    assert np.abs(np.diff(curves, axis=1)).max() < 0.01  # no step of the trees survives as a jump
    assert curves[:, 0].max() < 0.01 and curves[:, -1].min() > 0.99  # proper tails, logged bids 0.2-20
    assert np.allclose(model.predict(pd.DataFrame({"f": ["a"] * 4000}), grid), curves[0])
    table, _ = B.suggest_bids(
        model,
        segs.assign(bids=1000),
        ["f"],
        B.BidPolicy.from_configs(CFG | {"target_win_rate": 0.4, "exploration_mode": "none"}, use_floors=False),
    )
    seg_rows = table[table.level == "segment"].set_index("segment_key")
    rates = [model.predict(pd.DataFrame({"f": [k]}), np.array([seg_rows.loc[k, "bid_cpm"]]))[0] for k in ("a", "b")]
    assert rates == pytest.approx([0.4, 0.4], abs=0.002)


def test_market_price_anlp_is_the_mean_negative_log_mass_of_the_true_price():
    model, _ = _toy_model()
    rows = pd.DataFrame({"f": ["a", "b", "a"]})
    z = np.array([0, 3, 150])  # in units of 0.01 CPM
    anlp, floored = M.market_price_anlp(model, rows, z, 0.01)
    f = lambda b: np.array([model.predict(rows.iloc[[i]], np.array([b[i]]))[0] for i in range(3)])  # noqa: E731
    mass = f((z + 1) * 0.01) - np.where(z > 0, f(np.maximum(z, 1) * 0.01), 0.0)
    assert anlp == pytest.approx(-np.log(np.maximum(mass, M.PRICE_MASS_FLOOR)).mean())
    assert floored == pytest.approx((mass < M.PRICE_MASS_FLOOR).mean())


def test_a_cells_runs_of_equal_knot_values_are_one_step_taken_at_its_middle(monkeypatch):
    x = np.arange(6, dtype=np.float64)
    table = np.array([[0.1, 0.1, 0.1, 0.3, 0.3, 0.5], [0.2] * 6, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    # runs of row 0: knots 0-2 (middle 1), 3-4 (middle 3.5), 5; the line through (1, .1), (3.5, .3), (5, .5)
    expected = [0.1, 0.1, 0.1 + 0.2 * 1 / 2.5, 0.1 + 0.2 * 2 / 2.5, 0.3 + 0.2 * 0.5 / 1.5, 0.5]
    got = M.through_step_middles(table, x)
    assert got[0] == pytest.approx(expected)
    assert np.array_equal(got[1:], table[1:])  # flat and strictly increasing rows are left as they are
    assert M.through_step_middles(table.astype(np.float32), x).dtype == np.float32
    monkeypatch.setattr(M, "RUN_CHUNK_CELLS", 2)  # rows re-knotted in chunks: the same
    assert np.array_equal(M.through_step_middles(table, x), got)


def test_inside_the_logged_bids_every_price_has_mass():
    """A cell whose own trees do not split between two of the model's knots used to be flat there
    (no mass for the prices in between: ANLP's floor); its steps are now taken at their middles."""
    model, df = _toy_model()
    cells = pd.DataFrame({"f": ["a", "b"]})
    k = model.knots().astype(np.float64)
    raw = model.steps_at(model.encoder.encode(cells), model.knots())
    assert (np.diff(raw, axis=1) == 0).any()  # the trees alone have flat spans
    grid = np.exp(np.linspace(k[1], k[-2], 2000))  # inside the knots, away from the flat outer halves
    curves = model.curves(cells, grid)
    assert (np.diff(curves, axis=1) > 0).all()
    rows = pd.DataFrame({"f": ["a"] * 200 + ["b"] * 200})
    z = np.tile(np.round(np.geomspace(np.exp(k[1]), np.exp(k[-2]), 200) * 100), 2)
    assert M.market_price_anlp(model, rows, z, 0.01)[1] == 0.0  # no price at the floor of 1e-10


def test_mixture_bids_reach_each_groups_target_whatever_the_chunks_of_cells(monkeypatch):
    """The knots' step values come from the cells' curves (filled in chunks of ``trees.CHUNK_CELLS``)
    in chunks of cells (``KNOT_CHUNK_CELLS``):
    a group split over chunks, groups in any order, and groups left out (closed) give the same bids,
    each reaching its own target on the model's own predictions."""
    model, _ = _toy_model()
    rng = np.random.default_rng(3)
    n_groups = 40
    group = rng.permutation(np.repeat(np.arange(n_groups), 5))  # five cells a group, interleaved
    cells = pd.DataFrame({"f": rng.choice(["a", "b"], len(group)), "bids": rng.integers(1, 500, len(group))})
    targets = rng.uniform(0.1, 0.9, n_groups)
    targets[::9] = 0.0  # reached at the bottom of the grid: not searched
    grid = np.geomspace(0.05, 50, 256)
    found = {}
    for chunk in (3, 7, 10_000):
        monkeypatch.setattr(B, "KNOT_CHUNK_CELLS", chunk)
        monkeypatch.setattr(T, "CHUNK_CELLS", chunk)  # the cells' curves filled in chunks too
        found[chunk] = B.Mixture(cells, group, n_groups).lowest_bids(model, grid, targets)
    bids, reached = found[10_000]
    assert reached.all()
    for chunk in (3, 7):
        assert np.array_equal(found[chunk][0], bids) and np.array_equal(found[chunk][1], reached)
    # the model's predictions per cell, mixed by hand (the same knot tables the search read, but mixed here)
    p = model.predict(cells, bids[group])
    w = cells["bids"].to_numpy(float)
    rates = np.bincount(group, w * p, n_groups) / np.bincount(group, w, n_groups)
    assert B.Mixture(cells, group, n_groups).rate(model, bids) == pytest.approx(rates, abs=1e-6)
    searched = targets > 0
    assert rates[searched] == pytest.approx(targets[searched], abs=1e-6)
    assert (bids[~searched] == grid[0]).all()
    wrong = M.CellCurves.of(model, cells.iloc[:10])  # curves of other cells are refused, not misread
    with pytest.raises(ValueError, match="curves of 10 cells given for a mixture of 200"):
        B.Mixture(cells, group, n_groups, curves=wrong).rate(model, bids)


def test_a_crossing_in_the_tail_is_found_and_the_top_of_the_grid_stays_exact():
    model, _ = _toy_model()  # logged bids 0.2-20: a 2% target crosses below the first knot
    cells = pd.DataFrame({"f": ["a", "b"], "bids": [1000, 1000]})
    mix = B.Mixture(cells, np.array([0, 1]), 2)
    grid = np.geomspace(0.01, 50, 256)
    bids, reached = mix.lowest_bids(model, grid, np.array([0.02, 0.02]))
    assert reached.all() and bids[0] < np.exp(model.knots()[0])  # segment a: in the lower tail
    assert mix.rate(model, bids) == pytest.approx([0.02, 0.02], abs=1e-4)
    top = mix.rate(model, np.full(2, grid[-1]))
    bids, reached = mix.lowest_bids(model, grid, top)  # reached only at the top of the grid
    assert reached.all() and (bids == grid[-1]).all()


def test_the_adjustment_takes_unchosen_features_by_score_while_the_cells_stay_bounded():
    from bidopt.optimizer.pipeline import MAX_ADJUST_CELL_FACTOR, adjustment_columns

    assert MAX_ADJUST_CELL_FACTOR == 3.0  # the bounds below are for this factor
    rng = np.random.default_rng(0)
    n = 5000
    train = pd.DataFrame(
        {
            "geo": rng.choice(["a", "b"], n),
            "domain": rng.choice(["d1", "d2"], n),  # 4 cells without adjustment, so at most 12 with
            "two": rng.choice(["x", "y"], n),  # x2: fits
            "three": rng.choice(["p", "q", "r"], n),  # x3: fits alone, not after "two"
            "many": rng.choice(list("abcdefghij"), n),  # x10: never fits
        }
    )
    scores = [
        {"feature": "three", "signal_score": 0.1},
        {"feature": "two", "signal_score": 0.5},
        {"feature": "many", "signal_score": 2.0},
        {"feature": "three", "signal_score": 0.9},  # the latest round's score counts
    ]
    unchosen = ["two", "three", "many"]
    # by score: many (too many cells), three (x3 = 12 cells), then two would make 24
    assert adjustment_columns(train, ["geo"], unchosen, scores) == ["three"]
    scores.append({"feature": "two", "signal_score": 1.0})
    assert adjustment_columns(train, ["geo"], unchosen, scores) == ["two"]  # then three would make 24
    assert adjustment_columns(train.iloc[:0], ["geo"], unchosen, scores) == []
    assert adjustment_columns(train, ["geo"], [], scores) == []

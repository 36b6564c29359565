"""The offline replay's maths (no Ray): the bids are the bidder's own, the sums add up across batches."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest

from bidopt.bidder.core import BidderState, EntityServing, RunTables, decide
from bidopt.bidder.fields import feature_reader
from bidopt.configs import parse_run_configs
from bidopt.errors import InvalidConfig
from bidopt.jobs.replay import choose_engine, replay_local
from bidopt.optimizer import models as M
from bidopt.optimizer.replay import (
    SECOND_PRICE,
    ReplayRun,
    combine_partials,
    load_win_model,
    replay_partials,
    replay_rows,
    required_columns,
    win_encoder_json,
)
from bidopt.simulator import MarketSpec, simulate_market
from bidopt.warehouse.contract import backoff_key, floor_bucket_label, segment_key

FEATURES = (("geo_region_name", "device.geo.region"), ("os_code", "device.os"), ("floor_bucket", None))
MODEL_FEATURES = ["geo_region_name", "os_code", "device_type", "domain"]


@pytest.fixture(scope="module")
def logs() -> pd.DataFrame:
    spec = MarketSpec("e", rows=30_000, seed=4, floor_available=True, npi_enabled=True, n_domains=60)
    return simulate_market(spec).to_pandas()


@pytest.fixture(scope="module")
def model(logs) -> M.WinRateModel:
    df = logs.assign(bid_bucket=np.floor(logs["bid_cpm"] / 0.25), wins=logs["won"].astype(int), bids=1)
    for f in MODEL_FEATURES:
        df[f] = df[f].astype(str)
    agg = df.groupby([*MODEL_FEATURES, "bid_bucket"], as_index=False, observed=True).agg(
        bids=("bids", "sum"), wins=("wins", "sum"), bid_sum=("bid_cpm", "sum")
    )
    return M.train_win_model(agg, MODEL_FEATURES, parse_run_configs({"xgb_num_rounds": 30}))


@pytest.fixture(scope="module")
def tables(logs) -> RunTables:
    """A bid table with holes (back-off to the anchor's row and to the default), multipliers below
    and above 1, floors above the cap, a minimum bid: every branch of the bidder's pricing."""
    rng = np.random.default_rng(0)
    values = logs[["geo_region_name", "os_code"]].astype(str)
    values["floor_bucket"] = [floor_bucket_label(None if np.isnan(f) else f) for f in logs["floor_cpm"]]
    keys = sorted({segment_key(v) for v in values.itertuples(index=False)})
    bids = {k: round(float(rng.uniform(0.2, 7.0)), 4) for k in keys if rng.random() < 0.6}
    for geo in sorted(set(values["geo_region_name"]))[::2]:
        bids[backoff_key([geo], 3)] = round(float(rng.uniform(0.5, 4.0)), 4)
    bids[backoff_key([], 3)] = 1.25
    domains = sorted(set(logs["domain"].astype(str)))[:20]
    multipliers = {d: round(float(rng.uniform(0.5, 2.0)), 4) for d in domains}
    readers = tuple(feature_reader(f, field) for f, field in FEATURES)
    features = tuple(f for f, _ in FEATURES)
    return RunTables("r1", features, readers, bids, multipliers, max_bid_cpm=5.0, checksum="x", min_bid_cpm=0.3)


def _request(row, i: int) -> bytes:
    imp = {"id": "1"}
    if not np.isnan(row.floor_cpm):
        imp["bidfloor"] = float(row.floor_cpm)
    return orjson.dumps(
        {
            "id": f"req-{i}",
            "imp": [imp],
            "site": {"domain": row.domain},
            "device": {"geo": {"region": row.geo_region_name}, "os": row.os_code},
            "user": {"id": f"u{i}"},
        }
    )


def test_replayed_bids_are_the_bidders_own_decisions(logs, tables, model):
    sample = logs.sample(400, random_state=1).reset_index(drop=True)
    rows = replay_rows(sample, ReplayRun(tables, model))
    state = BidderState({"e": EntityServing("e", 1, (tables,), (100,))})
    levels, no_bids = set(), 0
    for i, row in enumerate(sample.itertuples(index=False)):
        _status, _body, decisions, _reason = decide(state, "e", _request(row, i))
        (d,) = decisions
        got = rows.iloc[i]
        assert (got.segment_key, got.level) == (d.segment_key, d.level)
        if d.price is None:
            assert not got.bids and np.isnan(got.bid_cpm) and got.p_win == 0.0
            no_bids += 1
        else:
            assert got.bids and got.bid_cpm == d.price
        levels.add(d.level)
    assert levels == {"segment", "anchor", "default"} and 0 < no_bids < len(sample)  # every branch was hit


def test_win_probability_and_spend_come_from_the_runs_model(logs, tables, model):
    sample = logs.head(3000)
    rebuilt = load_win_model(bytes(model.booster.save_raw("ubj")), win_encoder_json(model))
    first = replay_rows(sample, ReplayRun(tables, rebuilt))
    bid = first["bids"].to_numpy()
    frame = sample.loc[bid, MODEL_FEATURES].astype(str).reset_index(drop=True)
    want = model.predict(frame, first["bid_cpm"].to_numpy()[bid])
    assert first["p_win"].to_numpy()[bid] == pytest.approx(want, abs=1e-6)
    assert first["expected_spend_cpm"].to_numpy()[bid] == pytest.approx(
        want * first["bid_cpm"].to_numpy()[bid], abs=1e-6
    )
    second = replay_rows(sample, ReplayRun(tables, rebuilt, SECOND_PRICE))
    paid, bound = second["expected_spend_cpm"].to_numpy()[bid], first["expected_spend_cpm"].to_numpy()[bid]
    assert (paid >= 0).all() and (paid <= bound + 1e-9).all() and paid.sum() < 0.95 * bound.sum()
    assert second["p_win"].tolist() == first["p_win"].tolist()


def test_partial_sums_add_up_across_batches(logs, tables, model):
    runs = [ReplayRun(tables, model), ReplayRun(RunTables("r2", (), (), {"": 2.0}, {}, 5.0, "y"), model)]
    whole = combine_partials(replay_partials(logs, runs), ["r1", "r2"], top_segments=None)
    batches = [logs.iloc[i : i + 7000] for i in range(0, len(logs), 7000)]
    pieces = combine_partials(replay_local(batches, runs), ["r1", "r2"], top_segments=None)
    for a, b in zip(whole, pieces, strict=True):
        assert a["total"] == pytest.approx(b["total"])
        assert [s["segment_key"] for s in a["segments"]] == [s["segment_key"] for s in b["segments"]]
    r1, r2 = whole
    assert r1["total"]["requests"] == r2["total"]["requests"] == len(logs)
    assert r1["total"]["bids"] == int(replay_rows(logs, runs[0])["bids"].sum())
    assert r1["total"]["expected_win_rate"] == pytest.approx(r1["total"]["expected_wins"] / r1["total"]["bids"])
    # the target's basis: every replayed no-bid here is one whose floor the price did not clear, a loss
    assert r1["total"]["floor_no_bids"] == len(logs) - r1["total"]["bids"]
    assert r1["total"]["expected_priced_win_rate"] == pytest.approx(r1["total"]["expected_wins"] / len(logs))
    # a table without a valid price is no floor no-bid (as the bidder's no_price_reason), nor a loss
    broken = RunTables("r3", (), (), {"": float("nan")}, {}, 5.0, "z")
    (nan_run,) = combine_partials(replay_partials(logs, [ReplayRun(broken, model)]), ["r3"])
    assert (nan_run["total"]["bids"], nan_run["total"]["floor_no_bids"]) == (0, 0)
    assert nan_run["total"]["expected_priced_win_rate"] is None
    assert r1["total"]["bids"] < len(logs)  # some floors are above the run's prices
    assert [s["segment_key"] for s in r2["segments"]] == [""]  # no features: one key, the default
    assert r2["total"]["mean_bid_cpm"] == pytest.approx(2.0)
    assert combine_partials(replay_local([], runs), ["r1"])[0]["total"]["bid_share"] is None


def test_bad_input_is_refused(logs, tables, model):
    with pytest.raises(InvalidConfig, match="lack column floor_cpm"):
        replay_rows(logs.drop(columns=["floor_cpm"]), ReplayRun(tables, model))
    with pytest.raises(InvalidConfig, match="auction type"):
        ReplayRun(tables, model, "vickrey")
    with pytest.raises(InvalidConfig, match="engine must be"):
        choose_engine("spark", 10)
    assert (choose_engine("auto", 10, 100), choose_engine("auto", 100, 100), choose_engine("local", 10**9)) == (
        "local",
        "ray",
        "local",
    )
    assert required_columns([ReplayRun(tables, model)]) == sorted(
        {"domain", "floor_cpm", "geo_region_name", "os_code", "device_type"}
    )


def test_second_price_spend_is_what_a_winner_pays_above_the_floor():
    """``E[max(Z, floor) 1{Z < b}]`` with ``Z`` distributed as the win curve says, by brute force on a
    fine grid, against the quadrature: with and without a floor (a floor raises what a win costs)."""
    import xgboost  # noqa: F401  (the model below is a real booster)

    from bidopt.configs import parse_run_configs
    from bidopt.optimizer import models as M
    from bidopt.optimizer.replay import _second_price_spend

    rng = np.random.default_rng(8)
    bids = np.geomspace(0.2, 20, 40)
    p = 1 / (1 + np.exp(-2.0 * np.log(bids)))
    df = pd.DataFrame({"f": "a", "bids": 400, "wins": rng.binomial(400, p), "bid_sum": 400 * bids})
    model = M.train_win_model(df, ["f"], parse_run_configs({"xgb_num_rounds": 60}))
    frame = pd.DataFrame({"f": ["a", "a", "a"]})
    b, floors = np.array([2.0, 2.0, 5.0]), np.array([0.0, 1.5, 0.8])
    got = _second_price_spend(model, frame, b, model.predict(frame, b), floors)
    for i in range(3):
        x = np.linspace(0, b[i], 20001)
        cdf = model.predict(pd.DataFrame({"f": ["a"] * len(x)}), np.maximum(x, 1e-9))
        cdf[0] = 0.0
        mass = np.diff(cdf)
        mid = (x[1:] + x[:-1]) / 2
        want = (np.maximum(mid, floors[i]) * mass).sum()
        assert got[i] == pytest.approx(want, rel=0.01), i
    assert got[1] > got[0]  # the floor costs

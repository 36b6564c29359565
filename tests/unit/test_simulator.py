"""The market simulator: reproducible, realistic in the ways the optimizer relies on, truthful."""

import dataclasses

import numpy as np
import pyarrow.compute as pc
import pytest

from bidopt.errors import InvalidConfig
from bidopt.simulator import MarketSpec, oracle_bid, simulate_market, true_win_probability


@pytest.fixture(scope="module")
def first_price():
    return simulate_market(MarketSpec("drugs_hcp", rows=200_000, seed=11, npi_enabled=True)).to_pandas()


@pytest.fixture(scope="module")
def second_price_floors():
    return simulate_market(
        MarketSpec("auto", rows=100_000, seed=12, auction_type="second_price", floor_available=True)
    ).to_pandas()


def test_same_seed_same_rows_and_chunking_does_not_matter():
    spec = MarketSpec("e", rows=5000, seed=5, chunk_rows=5000)
    a, b = simulate_market(spec), simulate_market(spec)
    assert a.equals(b)
    c = simulate_market(MarketSpec("e", rows=5000, seed=6))
    assert not a.column("bid_cpm").equals(c.column("bid_cpm"))
    chunked = simulate_market(MarketSpec("e", rows=5000, seed=5, chunk_rows=1000))
    assert (
        chunked.num_rows == 5000
        and pc.all(pc.greater_equal(chunked["event_time"].slice(1), chunked["event_time"].slice(0, 4999))).as_py()
    )  # time-ordered
    assert len(set(chunked["request_id"].to_pylist())) == 5000


def test_truth_is_calibrated_against_the_outcomes(first_price):
    df = first_price
    p = true_win_probability(df.bid_cpm.to_numpy(), df.truth_mu.to_numpy(), df.truth_sigma.to_numpy())
    bins = np.digitize(p, np.linspace(0, 1, 11))
    for b in np.unique(bins):
        sel = bins == b
        if sel.sum() > 2000:
            assert abs(df.won[sel].mean() - p[sel].mean()) < 0.02
    ctr = df[df.won].clicked.mean()
    assert ctr == pytest.approx(df[df.won].truth_ctr.mean(), rel=0.15)


def test_bids_vary_within_segments_and_domains_are_long_tailed(first_price):
    df = first_price
    spread = df.groupby(["geo_region_name", "device_type"], observed=True).bid_cpm.agg(lambda s: np.log(s).std())
    assert (spread > 0.3).all()
    shares = df.domain.value_counts(normalize=True).to_numpy()
    assert shares[:20].sum() > 0.3 and (shares < 1e-4).sum() > 100  # a head and a long tail
    assert 0.2 < df.won.mean() < 0.8 and 0 < df.npi_matched.mean() < 0.3


def test_auction_rules(first_price, second_price_floors):
    fp = first_price[first_price.won]
    assert (fp.clearing_price_cpm == fp.bid_cpm).all()
    assert first_price.floor_cpm.isna().all()
    sp = second_price_floors
    won = sp[sp.won]
    assert (won.clearing_price_cpm <= won.bid_cpm + 1e-9).all()
    assert (won.clearing_price_cpm < won.bid_cpm).mean() > 0.9
    floored = won[won.floor_cpm.notna()]
    assert (floored.bid_cpm >= floored.floor_cpm).all() and (floored.clearing_price_cpm >= floored.floor_cpm).all()
    assert 0.7 < sp.floor_cpm.notna().mean() < 0.8
    assert sp[~sp.won].clearing_price_cpm.isna().all()


def test_oracle_bid_reaches_the_target(first_price):
    df = first_price[first_price.geo_region_name == "texas"]
    mu, sigma = df.truth_mu.to_numpy(), df.truth_sigma.to_numpy()
    for target in (0.2, 0.5, 0.8):
        bid = oracle_bid(target, mu, sigma)
        assert true_win_probability(bid, mu, sigma).mean() == pytest.approx(target, abs=1e-6)
        assert true_win_probability(bid * 0.99, mu, sigma).mean() < target
    assert oracle_bid(0.5, [0.0], [1.0]) == pytest.approx(1.0)
    assert oracle_bid(0.9, [0.0], [0.5], floor=[np.nan]) == pytest.approx(np.exp(0.5 * 1.2815515655), rel=1e-6)
    assert oracle_bid(0.5, [0.0], [0.5], floor=[1e6]) == float("inf")  # a floor above any bid


def test_the_policy_lifts_the_given_share_of_bids_below_a_floor_and_nothing_else_changes():
    def market(share):
        spec = MarketSpec("auto", rows=20_000, seed=12, auction_type="second_price", floor_available=True)
        return simulate_market(dataclasses.replace(spec, floor_lift_share=share)).to_pandas()

    lifted, none = market(0.6), market(0.0)
    floored = none.floor_cpm.notna()
    # below a floor as the policy drew the bid (the table holds it rounded to 4 decimals)
    below = floored & (none.bid_cpm < none.floor_cpm + 1e-4)
    moved = lifted.bid_cpm != none.bid_cpm
    assert below.mean() > 0.1 and not (moved & ~below).any()  # only bids below a floor are lifted
    for column in ("event_time", "request_id", "user_id", "domain"):  # every other draw is the same
        assert (lifted[column] == none[column]).all(), column
    assert (lifted.clicked[~moved] == none.clicked[~moved]).all()
    assert moved[below].mean() == pytest.approx(0.6, abs=0.03)
    assert np.allclose(lifted.bid_cpm[moved], np.round(none.floor_cpm[moved] * 1.01, 4))
    assert (lifted.truth_mu == none.truth_mu).all() and (lifted.floor_cpm.fillna(-1) == none.floor_cpm.fillna(-1)).all()
    assert not none[below].won.any()  # a bid left below its floor never wins
    everything = market(1.0)
    assert not (everything.floor_cpm.notna() & (everything.bid_cpm < everything.floor_cpm)).any()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rows": 0},
        {"days": 0},
        {"auction_type": "dutch"},
        {"n_domains": 0},
        {"floor_lift_share": 1.5},
        {"floor_lift_share": float("nan")},
    ],
)
def test_bad_specs(kwargs):
    with pytest.raises(InvalidConfig):
        MarketSpec("e", **kwargs)

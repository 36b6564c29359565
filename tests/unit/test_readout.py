"""The A/B readout's statistics (bidopt.readout) and the decision/notice join (bidopt.events.compact).

Closed forms are computed here independently of the module (the Wilson bounds as roots of the score
quadratic, the z-test by hand); coverage and false-positive rates are checked by simulation."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from synthetic_events import Arm, synthetic_split

from bidopt.events.compact import bid_log_rows, compactable_hours, decisions_read_window, impression_outcomes
from bidopt.events.schema import (
    DECISION_SCHEMA,
    DECISIONS,
    FLOOR_NO_BID_REASON,
    NOTICES,
    conform_to_schema,
    rows_to_table,
)
from bidopt.readout import (
    Z95,
    ArmSpec,
    ratio_interval,
    split_readout,
    sum_interval,
    two_proportion_test,
    welch_z_test,
    wilson_interval,
)

T0 = datetime(2026, 11, 30, 10)


def wilson_roots(x: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The p with (x/n - p)^2 = z^2 p (1 - p) / n: a quadratic a p^2 + b p + c = 0."""
    phat = x / n
    a = 1 + z * z / n
    b = -(2 * phat + z * z / n)
    c = phat * phat
    disc = math.sqrt(b * b - 4 * a * c)
    return (-b - disc) / (2 * a), (-b + disc) / (2 * a)


@pytest.mark.parametrize(("x", "n"), [(40, 100), (1, 20), (0, 15), (15, 15), (6004, 9439)])
def test_wilson_matches_the_roots_of_the_score_quadratic(x, n):
    got = wilson_interval(x, n)
    low, high = wilson_roots(x, n)
    assert got["value"] == pytest.approx(x / n)
    assert got["low"] == pytest.approx(max(low, 0.0), abs=1e-12)
    assert got["high"] == pytest.approx(min(high, 1.0), abs=1e-12)


def test_undefined_values_are_none_never_nan():
    assert wilson_interval(0, 0) == {"value": None, "low": None, "high": None}
    assert ratio_interval(np.array([]), np.array([])) == {"value": None, "low": None, "high": None}
    assert ratio_interval(np.array([5.0]), np.array([1.0])) == {"value": 5.0, "low": None, "high": None}
    assert ratio_interval(np.array([1e308, 1e308]), np.array([1.0, 1.0]))["low"] is None  # inf is not JSON
    assert two_proportion_test(1, 0, 1, 10)["p_value"] is None
    assert welch_z_test(None, None, 1.0, 0.1)["significant"] is False


def test_two_proportion_test_by_hand():
    got = two_proportion_test(45, 100, 60, 100)
    pooled = 105 / 200
    z = 0.15 / math.sqrt(pooled * (1 - pooled) * (2 / 100))
    assert got["difference"] == pytest.approx(0.15)
    assert got["p_value"] == pytest.approx(math.erfc(z / math.sqrt(2)))
    assert got["p_value"] == pytest.approx(0.0336, abs=5e-4)  # z = 2.125
    se = math.sqrt(0.45 * 0.55 / 100 + 0.6 * 0.4 / 100)
    assert (got["low"], got["high"]) == pytest.approx((0.15 - Z95 * se, 0.15 + Z95 * se))
    assert got["significant"] is True
    assert two_proportion_test(50, 100, 50, 100)["p_value"] == pytest.approx(1.0)
    assert two_proportion_test(0, 10, 0, 10)["significant"] is False


def test_ratio_interval_with_one_win_per_unit_is_the_mean_interval():
    rng = np.random.default_rng(1)
    prices = rng.lognormal(0.5, 0.8, 500)
    got = ratio_interval(prices, np.ones(500))
    half = Z95 * prices.std(ddof=1) / math.sqrt(500)
    assert got["value"] == pytest.approx(prices.mean())
    assert (got["low"], got["high"]) == pytest.approx((prices.mean() - half, prices.mean() + half))
    spend = sum_interval(prices)
    half_sum = Z95 * math.sqrt(500) * prices.std(ddof=1)
    assert (spend["value"], spend["low"], spend["high"]) == pytest.approx(
        (prices.sum(), prices.sum() - half_sum, prices.sum() + half_sum)
    )


def test_wilson_interval_covers_the_true_rate_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    for p, n in ((0.4, 2000), (0.03, 1500)):
        draws = rng.binomial(n, p, 400)
        covered = sum(wilson_interval(int(x), n)["low"] <= p <= wilson_interval(int(x), n)["high"] for x in draws)
        assert 0.90 <= covered / 400 <= 0.99, (p, covered)


def test_delta_method_ecpm_covers_the_true_mean_price_with_clustered_users():
    """Users win 1-8 impressions each, their prices share a per-user level (clustered): the
    per-user delta method still covers the true mean clearing price ~95% of the time."""
    rng = np.random.default_rng(11)
    mu, sigma_user, sigma = 0.5, 0.4, 0.7
    truth = math.exp(mu + (sigma_user**2 + sigma**2) / 2)
    covered = 0
    for _ in range(400):
        wins = rng.integers(1, 9, 600)
        level = rng.normal(0.0, sigma_user, 600)
        y = np.array([np.exp(mu + lv + sigma * rng.standard_normal(w)).sum() for lv, w in zip(level, wins)])
        got = ratio_interval(y, wins.astype(float))
        covered += got["low"] <= truth <= got["high"]
    assert 0.90 <= covered / 400 <= 0.99, covered


def test_the_z_test_flags_about_5_percent_of_equal_arms():
    rng = np.random.default_rng(3)
    n = 3000
    xs, ys = rng.binomial(n, 0.4, 2000), rng.binomial(n, 0.4, 2000)
    flagged = sum(two_proportion_test(int(a), n, int(b), n)["significant"] for a, b in zip(xs, ys))
    assert 0.035 <= flagged / 2000 <= 0.065, flagged
    # and the interval of the difference covers 0 as often
    covers = sum(
        (t := two_proportion_test(int(a), n, int(b), n))["low"] <= 0 <= t["high"] for a, b in zip(xs[:400], ys[:400])
    )
    assert 0.90 <= covers / 400 <= 0.99


def test_a_synthetic_split_reads_out_its_truth():
    arms = [Arm("run_a", 50, 0.4, 0.02), Arm("run_b", 50, 0.65, 0.03)]
    dec, notes, truth = synthetic_split(
        "drugs_hcp", 3, arms, requests=20_000, start=T0, test_share=0.01, replay_share=0.05, seed=2
    )
    report = split_readout(dec, notes, 3, [ArmSpec(0, "run_a", 50, 0.4), ArmSpec(1, "run_b", 50, 0.65)])
    json.dumps(report, allow_nan=False)  # plain JSON
    assert report["test_requests_excluded"] == truth["test_requests"] > 0
    assert report["duplicates_dropped"] == truth["replays"] > 0
    assert report["orphan_notices"] == 0
    for arm in report["arms"]:
        want = truth[arm["run_id"]]
        assert (arm["bids"], arm["wins"], arm["clicks"]) == (want["bids"], want["wins"], want["clicks"])
        assert arm["spend"]["value"] == pytest.approx(want["spend"])
        assert arm["win_rate"]["low"] <= want["win_rate"] <= arm["win_rate"]["high"]
        assert arm["win_rate_gap"] == pytest.approx(arm["win_rate"]["value"] - arm["target_win_rate"])
        assert arm["ecpm"]["value"] == pytest.approx(want["spend"] * 1000 / want["wins"])
        assert arm["ecpc"]["value"] == pytest.approx(want["spend"] / want["clicks"])
        assert 0.03 < arm["no_bid_share"]["value"] < 0.07
    by_metric = {c["metric"]: c for c in report["comparisons"]}
    assert by_metric["win_rate"]["significant"] and by_metric["win_rate"]["difference"] > 0.2
    assert by_metric["ecpm"]["significant"]  # higher bids clear higher in a second-price auction
    hourly = [h for h in report["hourly"] if h["run_id"] == "run_b"]
    assert sum(h["wins"] for h in hourly) == truth["run_b"]["wins"]
    assert hourly[-1]["cumulative_spend"] == pytest.approx(truth["run_b"]["spend"])


def _decision(rid, *, bid=True, test=False, t=T0, split_id=1, run_id="r1", reason=None):
    return {
        "event_time": t,
        "entity_code": "e",
        "request_id": rid,
        "imp_id": "1",
        "split_id": split_id,
        "run_id": run_id,
        "arm": 0,
        "user_hash": f"u-{rid}",
        "test": test,
        "bid": bid,
        "bid_cpm": 2.0 if bid else None,
        "no_bid_reason": None if bid else reason,
        "npi_matched": False,
        "geo_region_name": "texas",
    }


def _notice(rid, kind, *, price=None, t=T0 + timedelta(seconds=1), test=False, split_id=1):
    return {
        "event_time": t,
        "entity_code": "e",
        "request_id": rid,
        "imp_id": "1",
        "kind": kind,
        "split_id": split_id,
        "run_id": "r1",
        "bid_cpm": 2.0,
        "bid_time": T0,
        "price_cpm": price,
        "test": test,
    }


def test_what_counts_as_a_win_a_price_and_a_click():
    dec = rows_to_table(
        DECISIONS,
        [_decision("win"), _decision("billing-only"), _decision("lost"), _decision("nobid", bid=False)]
        + [_decision("test", test=True), _decision("win", t=T0 + timedelta(seconds=3))]  # a resent request
        + [_decision("won-then-loss"), _decision("lost-then-win")]
        # resent: first a no-bid (tmax passed), then a bid that won: the bidding answer is the one kept
        + [_decision("resent", bid=False), _decision("resent", t=T0 + timedelta(seconds=2))],
    )
    notes = rows_to_table(
        NOTICES,
        [
            _notice("win", "win", price=1.5),
            _notice("win", "billing", price=9.0),  # the win notice's price wins
            _notice("win", "win", price=7.0, t=T0 + timedelta(seconds=9)),  # a replay: the first counts
            _notice("win", "click"),
            _notice("billing-only", "billing", price=1.0),
            _notice("lost", "loss"),
            _notice("lost", "click"),  # a click without a win counts nothing
            _notice("ghost", "win", price=3.0),  # no decision: an orphan
            _notice("nobid", "win", price=3.0),  # its decision did not bid: an orphan
            _notice("test", "win", price=3.0, test=True),
            # contradicting notices: the first to arrive decides (a forged win after a genuine loss)
            _notice("won-then-loss", "win", price=1.0, t=T0 + timedelta(seconds=1)),
            _notice("won-then-loss", "loss", t=T0 + timedelta(seconds=2)),
            _notice("lost-then-win", "loss", t=T0 + timedelta(seconds=1)),
            _notice("lost-then-win", "win", price=1.0, t=T0 + timedelta(seconds=2)),
            _notice("lost-then-win", "billing", price=1.0, t=T0 + timedelta(seconds=3)),
            _notice("resent", "win", price=0.5, t=T0 + timedelta(seconds=3)),
        ],
    )
    out = impression_outcomes(dec, notes)
    by = out.frame.set_index("request_id")
    assert list(by.loc[["win", "billing-only", "lost", "nobid"], "won"]) == [True, True, False, False]
    assert list(by.loc[["won-then-loss", "lost-then-win", "resent"], "won"]) == [True, False, True]
    assert by.loc["win", "price_cpm"] == 1.5 and by.loc["billing-only", "price_cpm"] == 1.0
    assert list(by["clicked"][by["clicked"]].index) == ["win"]
    assert (out.test_requests_excluded, out.duplicates_dropped, out.orphan_notices) == (1, 1, 2)
    assert out.duplicate_decisions == 2 and "test" not in by.index
    report = split_readout(dec, notes, 1, [ArmSpec(0, "r1", 100, 0.5)])
    arm = report["arms"][0]
    assert (arm["impressions"], arm["bids"], arm["wins"], arm["clicks"]) == (7, 6, 4, 1)
    assert arm["spend"]["value"] == pytest.approx(4.0 / 1000)
    assert split_readout(dec, notes, 2, [ArmSpec(0, "r1", 100, 0.5)])["arms"][0]["bids"] == 0  # another split


def test_the_gap_to_target_counts_the_floor_no_bids_as_losses_as_the_target_does():
    """A run's target counts the impressions whose floor its price does not clear as losses (the
    optimizer prices them); the bidder does not bid there. Per bid placed the rate reads higher."""
    floor, other = FLOOR_NO_BID_REASON, "currency not USD"
    dec = rows_to_table(
        DECISIONS,
        [_decision(f"w{i}") for i in range(2)]  # won
        + [_decision(f"l{i}") for i in range(2)]  # lost
        + [_decision(f"f{i}", bid=False, reason=floor) for i in range(4)]
        + [_decision(f"c{i}", bid=False, reason=other) for i in range(2)],  # not the run's pricing
    )
    notes = rows_to_table(NOTICES, [_notice(f"w{i}", "win", price=1.0) for i in range(2)])
    report = split_readout(dec, notes, 1, [ArmSpec(0, "r1", 100, 0.3)])
    arm = report["arms"][0]
    assert (arm["impressions"], arm["bids"], arm["wins"], arm["floor_no_bids"]) == (10, 4, 2, 4)
    # the hourly series (plotted against the target) on the same basis
    (hour,) = report["hourly"]
    assert (hour["bids"], hour["wins"], hour["floor_no_bids"]) == (4, 2, 4)
    assert hour["win_rate"]["value"] == pytest.approx(2 / 4)
    assert hour["priced_win_rate"]["value"] == pytest.approx(2 / 8)
    assert arm["win_rate"]["value"] == pytest.approx(2 / 4)  # per bid placed
    assert arm["priced_win_rate"]["value"] == pytest.approx(2 / 8)  # bids + floor no-bids
    assert arm["win_rate_gap"] == pytest.approx(2 / 8 - 0.3)
    assert arm["no_bid_share"]["value"] == pytest.approx(6 / 10)
    # without floor no-bids the two rates are one
    dec2 = dec.filter(pc.invert(pc.equal(dec["no_bid_reason"], floor)).fill_null(True))
    plain = split_readout(dec2, notes, 1, [ArmSpec(0, "r1", 100, 0.3)])["arms"][0]
    assert plain["floor_no_bids"] == 0 and plain["priced_win_rate"] == plain["win_rate"]
    assert plain["win_rate_gap"] == pytest.approx(0.5 - 0.3)


def test_an_hour_becomes_bid_log_rows():
    dec = rows_to_table(
        DECISIONS,
        [_decision("a"), _decision("b"), _decision("c", bid=False), _decision("d", test=True)]
        + [_decision("next-hour", t=T0 + timedelta(hours=1))],
    )
    notes = rows_to_table(
        NOTICES,
        [
            _notice("a", "win", price=1.25),
            _notice("a", "click", t=T0 + timedelta(minutes=70)),  # in the next hour: still joined
            _notice("b", "loss"),
            _notice("d", "win", price=1.0, test=True),
        ],
    )
    rows = bid_log_rows("e", T0, dec, notes)
    got = rows.table.to_pylist()
    assert [r["request_id"] for r in got] == ["a", "b"]
    outcomes = [(r["won"], r["clearing_price_cpm"], r["clicked"]) for r in got]
    assert outcomes == [(True, 1.25, True), (False, None, False)]
    assert got[0]["user_id"] == "u-a" and got[0]["geo_region_name"] == "texas" and got[0]["bid_cpm"] == 2.0
    assert (rows.decisions, rows.wins, rows.clicks) == (3, 1, 1)
    assert bid_log_rows("e", T0 + timedelta(hours=2), dec, notes).table.num_rows == 0


def test_a_floor_no_bid_becomes_a_bid_lost_to_its_floor_at_the_price_the_run_would_have_bid():
    """Imported logs of every bid hold the bids under their floor, lost; the platform's must too, or
    its floor histogram lacks every floor above its prices (and the target's losses go missing)."""
    floored = _decision("f", bid=False, reason=FLOOR_NO_BID_REASON) | {"floor_cpm": 3.0, "unfloored_cpm": 1.5}
    old_part = _decision("o", bid=False, reason=FLOOR_NO_BID_REASON) | {"floor_cpm": 3.0}  # no unfloored_cpm
    currency = _decision("c", bid=False, reason="currency not USD") | {"floor_cpm": 3.0, "unfloored_cpm": 1.5}
    dec = rows_to_table(DECISIONS, [_decision("a") | {"floor_cpm": 1.0}, floored, old_part, currency])
    notes = rows_to_table(NOTICES, [_notice("a", "win", price=0.75), _notice("f", "win", price=1.0)])  # f: orphan
    rows = bid_log_rows("e", T0, dec, notes)
    got = {r["request_id"]: r for r in rows.table.to_pylist()}
    assert sorted(got) == ["a", "f"]  # not the currency no-bid, nor a floor no-bid without its price
    f = got["f"]
    assert (f["bid_cpm"], f["floor_cpm"], f["won"], f["clearing_price_cpm"], f["clicked"]) == (
        1.5,
        3.0,
        False,
        None,
        False,
    )
    assert (got["a"]["bid_cpm"], got["a"]["won"]) == (2.0, True)
    assert (rows.decisions, rows.wins) == (4, 1)


def test_a_resend_across_an_hour_boundary_is_one_row_as_in_the_readout():
    """An exchange resent a request: a floor no-bid just before the hour turned, a bid just after.
    Each hour's compaction reads its neighbours' edges (decisions_read_window), keeps the bid and
    only the hour holding it logs it, so the training rows count the impression once, as the readout does."""
    h0, h1 = T0, T0 + timedelta(hours=1)
    floored = _decision("x", bid=False, reason=FLOOR_NO_BID_REASON, t=h1 - timedelta(seconds=1))
    floored |= {"floor_cpm": 3.0, "unfloored_cpm": 1.5}
    every = rows_to_table(DECISIONS, [floored, _decision("x", t=h1 + timedelta(seconds=1))])
    notes = rows_to_table(NOTICES, [_notice("x", "loss", t=h1 + timedelta(seconds=2))])

    def compacted(hour):
        start, end = decisions_read_window(hour)
        times = every["event_time"]
        window = every.filter(
            pc.and_(pc.greater_equal(times, pa.scalar(start, times.type)), pc.less(times, pa.scalar(end, times.type)))
        )
        return bid_log_rows("e", hour, window, notes).table.to_pylist()

    first, second = compacted(h0), compacted(h1)
    assert first == [] and [(r["bid_cpm"], r["won"]) for r in second] == [(2.0, False)]
    report = split_readout(every, notes, 1, [ArmSpec(0, "r1", 100, 0.3)])["arms"][0]
    assert (report["impressions"], report["bids"], report["floor_no_bids"]) == (1, 1, 0)
    # read as before (each hour's own decisions only), the impression was two rows
    assert len(bid_log_rows("e", h0, every.slice(0, 1), notes).table) == 1


def test_a_floor_no_bid_whose_price_is_not_under_its_floor_is_no_row():
    bad = [
        _decision(f"b{i}", bid=False, reason=FLOOR_NO_BID_REASON) | {"floor_cpm": floor, "unfloored_cpm": price}
        for i, (floor, price) in enumerate([(1.0, 1.0), (1.0, 2.0), (1.0, -0.5), (None, 0.5), (1.0, float("nan"))])
    ]
    assert bid_log_rows("e", T0, rows_to_table(DECISIONS, bad), rows_to_table(NOTICES, [])).table.num_rows == 0


def test_an_event_part_written_before_a_column_was_added_reads_with_it_null():
    part = rows_to_table(DECISIONS, [_decision("a")]).drop_columns(["unfloored_cpm"])
    table = conform_to_schema(part, DECISION_SCHEMA)
    assert table.schema == DECISION_SCHEMA and table["unfloored_cpm"].to_pylist() == [None]
    with pytest.raises(ValueError, match="lacks the required column request_id"):
        conform_to_schema(part.drop_columns(["request_id"]), DECISION_SCHEMA)
    nulls = part.set_column(part.column_names.index("request_id"), "request_id", pa.nulls(1, pa.string()))
    with pytest.raises(ValueError, match="1 nulls in the required column request_id"):
        conform_to_schema(nulls, DECISION_SCHEMA)


def test_an_hour_is_compactable_only_after_its_attribution_window():
    hours = [T0, T0 + timedelta(hours=1)]
    window = timedelta(hours=1)
    assert compactable_hours(hours, T0 + timedelta(hours=2), window) == [T0]
    assert compactable_hours(hours, T0 + timedelta(hours=2) - timedelta(microseconds=1), window) == []
    assert compactable_hours(hours, T0 + timedelta(hours=3), window) == hours


def test_ecpm_intervals_treat_the_user_as_the_unit():
    """40 users with 25 wins each at a price level of their own: the interval is the delta method's
    over per-user sums, wider than if the 1000 wins were independent."""
    rng = np.random.default_rng(5)
    decisions, notices, per_user = [], [], []
    for u in range(40):
        level = rng.lognormal(0.5, 0.6)
        prices = level * rng.lognormal(0, 0.1, 25)
        per_user.append(prices.sum())
        for k, price in enumerate(prices):
            rid = f"{u}-{k}"
            decisions.append({**_decision(rid), "user_hash": f"user{u}"})
            notices.append(_notice(rid, "win", price=float(price)))
    report = split_readout(
        rows_to_table(DECISIONS, decisions), rows_to_table(NOTICES, notices), 1, [ArmSpec(0, "r1", 100, 0.5)]
    )
    want = ratio_interval(np.array(per_user), np.full(40, 25.0))
    got = report["arms"][0]["ecpm"]
    assert (got["low"], got["high"]) == pytest.approx((want["low"], want["high"]))


def _clustered_arm(rng, users=300):
    """Users with 1-40 bids each whose own win chance varies around 0.4 (their segment is stable)."""
    bids = rng.integers(1, 41, users).astype(float)
    chance = rng.beta(2.0, 3.0, users)  # mean 0.4
    wins = rng.binomial(bids.astype(int), chance).astype(float)
    return wins, bids


def test_win_rate_intervals_and_tests_account_for_users_with_many_bids():
    from bidopt.readout import clustered_proportion, two_proportion_test, wilson_interval

    rng = np.random.default_rng(3)
    covered = naive_covered = false_positives = 0
    draws = 400
    for _ in range(draws):
        wins, bids = _clustered_arm(rng)
        mine = clustered_proportion(wins, bids)["ci"]
        naive = wilson_interval(wins.sum(), bids.sum())
        covered += mine["low"] <= 0.4 <= mine["high"]
        naive_covered += naive["low"] <= 0.4 <= naive["high"]
        a, b = clustered_proportion(*_clustered_arm(rng)), clustered_proportion(*_clustered_arm(rng))
        test = two_proportion_test(a["x"], a["n"], b["x"], b["n"], deff_a=a["deff"], deff_b=b["deff"])
        false_positives += test["significant"]
    assert 0.90 <= covered / draws <= 0.99, covered / draws
    assert naive_covered / draws < 0.8  # what treating bids as independent gives: far too narrow
    assert false_positives / draws < 0.09, false_positives / draws


def test_one_bid_per_user_is_the_plain_wilson_interval():
    from bidopt.readout import clustered_proportion, wilson_interval

    wins = np.array([1.0] * 30 + [0.0] * 70)
    assert clustered_proportion(wins, np.ones(100))["ci"] == pytest.approx(wilson_interval(30, 100), rel=0.02)
    assert clustered_proportion(np.zeros(50), np.full(50, 3.0))["deff"] == 1.0  # no wins: nothing to measure

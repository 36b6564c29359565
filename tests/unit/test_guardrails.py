"""Guardrail judgement and replacement plans (bidopt.guardrails): pure, no database."""

from __future__ import annotations

import math

import pytest

from bidopt import guardrails as g
from bidopt.configs import ENTITY_CONFIG_SPECS
from bidopt.errors import InvalidConfig

SETTINGS = g.GuardrailSettings(enabled=True, min_bids=1000, min_wins=20, max_win_rate_gap=0.1, max_no_bid_share=0.5)


def wilson(successes: int, n: int, z: float = 1.96) -> dict:
    """A 95% interval of a proportion, as the report gives it."""
    if n == 0:
        return {"value": None, "low": None, "high": None}
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"value": p, "low": centre - half, "high": centre + half}


def arm(run_id="A", index=0, *, target=0.4, bids=2000, wins=800, impressions=None, no_bids=0, floor_no_bids=0) -> dict:
    """``no_bids`` of any reason; ``floor_no_bids`` more, whose floor the price did not clear."""
    impressions = bids + no_bids + floor_no_bids if impressions is None else impressions
    return {
        "arm": index,
        "run_id": run_id,
        "traffic_pct": 50,
        "target_win_rate": target,
        "impressions": impressions,
        "bids": bids,
        "wins": wins,
        "win_rate": wilson(wins, bids),
        "floor_no_bids": floor_no_bids,
        "priced_win_rate": wilson(wins, bids + floor_no_bids),
        "no_bid_share": wilson(impressions - bids, impressions),
    }


def test_below_either_minimum_nothing_is_judged():
    # win rate 0 against a target of 0.4: far out, but too few bids or too few wins to say
    few_bids = g.judge_arm(arm(bids=999, wins=0), SETTINGS)
    assert few_bids.status == "waiting" and not few_bids.breaches
    assert "1000 bids" in few_bids.note
    # a target of 0.001: 5000 bids would bring 5 wins on target, 19 of its own are too few to judge
    few_wins = g.judge_arm(arm(bids=5000, wins=19, target=0.001), SETTINGS)
    assert few_wins.status == "waiting" and not few_wins.breaches
    at_both = g.judge_arm(arm(bids=5000, wins=20, target=0.001), SETTINGS)  # 0.4% against 0.001 + 0.1: inside
    assert at_both.status == "ok"
    high = g.judge_arm(arm(bids=5000, wins=1000, target=0.001), SETTINGS)  # 20% against at most 0.101
    assert high.status == "breach" and high.breaches[0].metric == "win_rate"


def test_an_arm_that_never_wins_is_judged_on_the_wins_it_would_have_had_on_target():
    # 0 wins of 1000 bids against 0.4: on target it would have won 400, past the 20-win minimum
    never = g.judge_arm(arm(bids=1000, wins=0), SETTINGS)
    assert never.status == "breach" and never.breaches[0].metric == "win_rate"
    assert g.judge_arm(arm(bids=40, wins=0), SETTINGS).status == "waiting"  # below the bids minimum


def test_the_win_rate_is_judged_with_the_floor_no_bids_as_losses_as_the_target_counts_them():
    # on target: 800 wins of 1,400 bids and 600 impressions whose floor the price did not clear is
    # 0.4 of what the run priced; per bid placed it reads 0.571, outside 0.4 +- 0.1
    on_target = g.judge_arm(arm(bids=1400, wins=800, floor_no_bids=600), SETTINGS)
    assert on_target.status == "ok", on_target
    # 0.357 per bid placed, inside the band, is 0.25 of what it priced: too low for its target
    low = g.judge_arm(arm(bids=1400, wins=500, floor_no_bids=600), SETTINGS)
    assert low.status == "breach" and low.breaches[0].metric == "win_rate"
    assert "600 floor no-bids" in low.breaches[0].text
    # the minimum sample counts the floor no-bids too: 900 bids + 300 of them pass 1,000
    assert g.judge_arm(arm(bids=900, wins=480, floor_no_bids=300), SETTINGS).status == "ok"
    # a report without the priced rate (no floor no-bids) is judged on its win rate
    plain = arm(bids=4000, wins=2400)
    del plain["priced_win_rate"], plain["floor_no_bids"]
    assert g.judge_arm(plain, SETTINGS).status == "breach"


def test_an_interval_that_reaches_into_the_band_is_no_breach():
    # point estimate 0.285 is outside 0.4 +- 0.1, but at 1000 bids its interval [0.258, 0.314] reaches 0.3
    verdict = g.judge_arm(arm(bids=1000, wins=285), SETTINGS)
    assert verdict.arm == 0 and verdict.status == "ok", verdict
    # the same rate on 10x the sample is sure: its whole interval is below 0.3
    sure = g.judge_arm(arm(bids=10_000, wins=2850), SETTINGS)
    assert sure.status == "breach"
    b = sure.breaches[0]
    assert b.high < b.allowed_low == pytest.approx(0.3) and b.allowed_high == pytest.approx(0.5)
    assert "outside target 0.4" in b.text


def test_a_win_rate_above_the_band_breaches_too():
    assert g.judge_arm(arm(bids=4000, wins=2400), SETTINGS).status == "breach"  # 0.6 vs 0.4 +- 0.1
    assert g.judge_arm(arm(bids=4000, wins=1900), SETTINGS).status == "ok"  # 0.475, inside


def test_no_bid_share_is_judged_on_impressions_and_on_its_interval():
    # bids nothing at all: no bids or wins to reach the minimum, yet the no-bid share is judged
    silent = g.judge_arm(arm(bids=0, wins=0, no_bids=3000), SETTINGS)
    assert silent.status == "breach" and [b.metric for b in silent.breaches] == ["no_bid_share"]
    # 52% no-bids on 1,100 impressions: the interval reaches below 0.5, no judgement yet
    close = g.judge_arm(arm(bids=528, wins=211, no_bids=572), SETTINGS)
    assert close.status == "waiting" and not close.breaches  # win rate still waits for 1000 bids
    assert "no-bid share [" in close.note
    too_few = g.judge_arm(arm(bids=0, wins=0, no_bids=999), SETTINGS)
    assert too_few.status == "waiting"


def test_no_interval_means_no_judgement():
    a = arm(bids=2000, wins=800)
    a["win_rate"] = {"value": None, "low": None, "high": None}
    a["no_bid_share"] = None
    assert g.judge_arm(a, SETTINGS).status == "waiting"


def test_settings_from_the_entity_configs_and_their_ranges():
    defaults = {k: s.default for k, s in ENTITY_CONFIG_SPECS.items()}
    settings = g.GuardrailSettings.from_configs(defaults)
    assert settings == g.GuardrailSettings()  # the dataclass defaults are the configs' defaults
    for key, bad in [
        ("guardrail_min_bids", "0"),
        ("guardrail_min_wins", "-1"),
        ("guardrail_max_win_rate_gap", "0"),
        ("guardrail_max_win_rate_gap", "1e400"),
        ("guardrail_max_no_bid_share", "nan"),
        ("guardrail_max_no_bid_share", 10**400),
        ("guardrail_min_bids", "1.5"),
        ("guardrail_enabled", "maybe"),
    ]:
        with pytest.raises(InvalidConfig):
            ENTITY_CONFIG_SPECS[key].parse(bad)


@pytest.mark.parametrize(
    "pairs,expected",
    [
        ([("A", 50)], [("A", 100)]),
        ([("A", 30), ("C", 20)], [("A", 60), ("C", 40)]),
        ([("A", 1), ("B", 1), ("C", 1)], [("A", 34), ("B", 33), ("C", 33)]),
        ([("A", 40), ("B", 30), ("C", 20)], [("A", 45), ("B", 33), ("C", 22)]),  # 44.4, 33.3, 22.2: the point left to A
        ([("A", 1), ("B", 98)], [("A", 1), ("B", 99)]),
    ],
)
def test_renormalise_keeps_whole_percentages_adding_to_100(pairs, expected):
    out = g.renormalise(pairs)
    assert out == expected and sum(p for _, p in out) == 100 and all(p >= 1 for _, p in out)


def test_renormalise_refuses_what_is_not_part_of_one_split():
    for bad in ([], [("A", 0)], [("A", 60), ("B", 60)]):
        with pytest.raises(ValueError):
            g.renormalise(bad)


def verdict(run_id, index, status):
    breaches = (g.Breach("win_rate", 0.0, 0.0, 0.01, 0.3, 0.5, "bad"),) if status == "breach" else ()
    return g.ArmVerdict(index, run_id, status, "bad" if breaches else "fine", breaches)


def split(split_id, runs, by="olivia"):
    return {"split_id": split_id, "deployed_by": by, "runs": [{"run_id": r, "traffic_pct": p} for r, p in runs]}


def test_no_breach_keeps_the_split():
    plan = g.plan_replacement(2, [("A", 50), ("B", 50)], [verdict("A", 0, "ok"), verdict("B", 1, "waiting")], [], set())
    assert plan.action == g.KEEP and plan.split == ()


def test_a_breaching_arm_is_dropped_and_the_other_takes_its_traffic():
    plan = g.plan_replacement(
        2, [("A", 50), ("B", 50)], [verdict("A", 0, "ok"), verdict("B", 1, "breach")], [], {"A", "B"}
    )
    assert plan.action == g.DROP_ARMS and plan.split == (("A", 100),)
    assert plan.reason.startswith("guardrail: run B (arm 1): bad; dropped, now A=100")


def test_three_arms_one_dropped_are_renormalised():
    active = [("A", 50), ("B", 30), ("C", 20)]
    verdicts = [verdict("A", 0, "breach"), verdict("B", 1, "ok"), verdict("C", 2, "ok")]
    plan = g.plan_replacement(5, active, verdicts, [], {"B", "C"})
    assert plan.action == g.DROP_ARMS and plan.split == (("B", 60), ("C", 40))


def test_every_arm_breached_restores_the_newest_safe_earlier_split():
    history = [
        split(4, [("A", 50), ("B", 50)]),  # the judged one
        split(3, [("A", 100)]),  # has a breaching run
        split(2, [("OLD", 100)]),  # OLD is no longer deployable
        split(1, [("X", 70), ("Y", 30)]),
    ]
    verdicts = [verdict("A", 0, "breach"), verdict("B", 1, "breach")]
    plan = g.plan_replacement(4, [("A", 50), ("B", 50)], verdicts, history, {"A", "B", "X", "Y"})
    assert plan.action == g.RESTORE_PREVIOUS and plan.restored_split_id == 1
    assert plan.split == (("X", 70), ("Y", 30)) and "restored split 1 (X=70, Y=30)" in plan.reason


def test_a_run_the_guardrail_took_out_before_is_never_restored():
    # split 2 (X, C) lost C to the guardrail (split 3 = X); X was replaced by the operator with D; D breaches
    history = [
        split(4, [("D", 100)]),
        split(3, [("X", 100)], by=g.GUARDRAIL_ACTOR),
        split(2, [("X", 50), ("C", 50)]),
        split(1, [("C", 100)]),
    ]
    assert g.runs_taken_out_by_guardrail(history) == {"C"}
    plan = g.plan_replacement(4, [("D", 100)], [verdict("D", 0, "breach")], history, {"C", "D", "X"})
    assert plan.action == g.RESTORE_PREVIOUS and plan.restored_split_id == 3 and plan.split == (("X", 100),)
    # with X gone too, nothing is safe: split 2 and 1 hold C
    plan = g.plan_replacement(4, [("D", 100)], [verdict("D", 0, "breach")], history, {"C", "D"})
    assert plan.action == g.NO_SAFE_SPLIT and plan.split == ()


def test_nothing_safe_leaves_the_split_and_says_so():
    plan = g.plan_replacement(1, [("A", 100)], [verdict("A", 0, "breach")], [split(1, [("A", 100)])], {"A"})
    assert plan.action == g.NO_SAFE_SPLIT and plan.split == ()
    assert "no earlier split of deployable runs is safe to restore: split 1 left as it is" in plan.reason


def test_a_newer_split_in_the_history_is_never_restored():
    # the history read after an operator's change may hold a split newer than the judged one
    history = [split(3, [("N", 100)]), split(2, [("A", 100)]), split(1, [("B", 100)])]
    plan = g.plan_replacement(2, [("A", 100)], [verdict("A", 0, "breach")], history, {"A", "B", "N"})
    assert plan.restored_split_id == 1


def test_a_kept_arm_that_is_no_longer_deployable_is_dropped_too():
    active = [("A", 50), ("B", 30), ("C", 20)]
    verdicts = [verdict("A", 0, "breach"), verdict("B", 1, "ok"), verdict("C", 2, "ok")]
    plan = g.plan_replacement(5, active, verdicts, [], {"C"})  # B's artifacts are gone
    assert plan.action == g.DROP_ARMS and plan.split == (("C", 100),)

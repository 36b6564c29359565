"""The A/B readout of one split: per-arm results with 95% intervals and tests between arms (pure).

Input: the split's decision and notice events (``bidopt.events.schema``) and its arms; output: the
numbers of the agreed report shape (``bidopt.service.split_report`` adds the split's header).
What counts as a bid, a win, a price and a click is ``bidopt.events.compact.impression_outcomes``:
the training rows and the readout share one definition.

**Intervals** (95%, two-sided, normal quantile ``Z95``):

* *Proportions* -- win rate (wins / bids), priced win rate (wins / (bids + floor no-bids), below),
  CTR (clicks / wins), no-bid share (impressions not bid on / impressions) -- use the Wilson score
  interval (unlike the Wald interval it stays inside [0, 1] and keeps close to nominal coverage
  near 0 or 1 and for small counts) on the *effective* sample size ``n / deff``. Arms are drawn
  per user and one user's bids share their segment, so they are not independent: a Wilson interval
  on raw bids covered a true 0.4 only 58% of the time in a simulation with 300 users of 1-40 bids
  each (a review found it). The design effect ``deff`` is the delta-method variance of the ratio
  of per-user sums (below) over the binomial one, at least 1: the interval is never narrower than
  the independent one, and equals it when every user has one bid or the users do not differ. (With
  no spread to measure, e.g. no wins at all, deff is 1.)
* *Ratio metrics* -- eCPM (sum of clearing CPM / wins) and eCPC (spend / clicks) -- are ratios of
  two sums whose values are heavy-tailed (prices) and clustered (one user sends many requests, and
  the arm is drawn per user). We use the delta method for ratio metrics (Deng, Knoblich, Lu,
  "Applying the Delta Method in Metric Analytics", KDD 2018) with the randomization unit as the
  unit of analysis: per user hash (the request id where a decision has none) the sums ``Y_u`` and
  ``X_u``, and ``Var(Ȳ/X̄) ≈ (s²_Y/X̄² − 2·Ȳ·s_XY/X̄³ + Ȳ²·s²_X/X̄⁴) / n``. Treating bids as
  independent would understate the variance when users repeat; the delta method needs no
  resampling (a bootstrap of 20k users per arm would cost seconds per report) and is accurate once
  an arm has a few hundred units, which the guardrails' minimum sample requires anyway.
* *Spend* (total, currency units = sum of CPM / 1000) is a sum over units: ``n·Ȳ`` with the normal
  interval ``± Z95·sqrt(n)·s_Y`` (the number of units taken as given).

**Tests between arms** (every pair, in arm order; ``significant`` is p < 0.05, not corrected for
multiple pairs): win rate and CTR by the two-proportion z-test with each arm's variance scaled by
its design effect (pooled proportion for the p-value, each arm's own for the interval of the
difference); eCPM by Welch's z on the two delta-method variances (the arms are independent samples
of units, so the variances add).

**Against the target.** A run's ``target_win_rate`` is the share of a segment's impressions it wins,
counting those whose floor is above its price as losses (the optimizer prices the floors it cannot
clear: ``bidopt.optimizer.floors``); the bidder does not bid on them (``FLOOR_NO_BID_REASON``). So
``priced_win_rate`` = wins / (bids + floor no-bids) is the rate on the target's basis, and
``win_rate_gap`` (and the guardrail's win-rate rule) use it; ``win_rate`` is wins per bid placed, the
rate an exchange reports, which on floored traffic reads about target / share of floors cleared.
Without floor no-bids the two are equal. Other no-bids (currency, tmax, no split, a table without a
valid price) are not the run's pricing and count in neither. The priced basis is the target's where
the run's training logs hold the bids that lost to their floor: logs of every bid, as imported, and
the platform's own rows, which compaction writes with its floor no-bids (``bidopt.events.compact``).
Events from before those were recorded (no ``unfloored_cpm``) left them out, and a run trained on
them alone learnt a rate nearer the per-bid one.

Where a value is undefined (no bids, no wins, a single unit) it is ``None``; no NaN or infinity is
ever returned (JSON has neither).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from bidopt.events.compact import Outcomes, impression_outcomes
from bidopt.events.schema import FLOOR_NO_BID_REASON

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal
ALPHA = 0.05


@dataclass(frozen=True)
class ArmSpec:
    arm: int
    run_id: str
    traffic_pct: int
    target_win_rate: float | None


def _num(x: float | None) -> float | None:
    """A finite float or None (never NaN or infinity)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def ci(value: float | None, low: float | None = None, high: float | None = None) -> dict[str, float | None]:
    return {"value": _num(value), "low": _num(low), "high": _num(high)}


def wilson_interval(successes: float, trials: float, z: float = Z95) -> dict[str, float | None]:
    """The proportion ``successes / trials`` with its Wilson score interval; all None without trials.
    Counts may be fractional (an effective sample size, ``clustered_proportion``)."""
    if trials <= 0:
        return ci(None)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return ci(p, max(0.0, centre - half), min(1.0, centre + half))


def ratio_with_variance(y: np.ndarray, x: np.ndarray) -> tuple[float | None, float | None]:
    """``sum(y) / sum(x)`` over units and its delta-method variance (None with fewer than 2 units
    or ``sum(x) == 0``)."""
    n = len(y)
    total_x = float(np.sum(x)) if n else 0.0
    if total_x <= 0:
        return None, None
    with np.errstate(over="ignore", invalid="ignore"):
        ratio = float(np.sum(y)) / total_x
    if n < 2:
        return ratio, None
    with np.errstate(over="ignore", invalid="ignore"):  # huge prices: inf/NaN becomes None below
        my, mx = float(np.mean(y)), float(np.mean(x))
        cov = np.cov(np.vstack([y, x]), ddof=1)
    var_y, var_x, cov_xy = float(cov[0, 0]), float(cov[1, 1]), float(cov[0, 1])
    var = (var_y / mx**2 - 2 * my * cov_xy / mx**3 + my**2 * var_x / mx**4) / n
    return ratio, max(var, 0.0)


def ratio_interval(y: np.ndarray, x: np.ndarray, z: float = Z95) -> dict[str, float | None]:
    """``sum(y) / sum(x)`` with its delta-method normal interval."""
    ratio, var = ratio_with_variance(y, x)
    if ratio is None or var is None:
        return ci(ratio)
    half = z * math.sqrt(var)
    return ci(ratio, ratio - half, ratio + half)


def design_effect(successes_u: np.ndarray, trials_u: np.ndarray) -> float:
    """``Var_delta(sum s_u / sum t_u) / (p(1-p)/n)`` over units, at least 1 (1 when it cannot be measured)."""
    n = float(np.sum(trials_u))
    if n <= 0:
        return 1.0
    p = float(np.sum(successes_u)) / n
    _, var = ratio_with_variance(successes_u, trials_u)
    if var is None or not 0 < p < 1:
        return 1.0
    deff = var * n / (p * (1 - p))
    return deff if math.isfinite(deff) and deff > 1 else 1.0


def clustered_proportion(successes_u: np.ndarray, trials_u: np.ndarray, z: float = Z95) -> dict[str, Any]:
    """The proportion of per-unit sums with its Wilson interval on the effective sample size;
    ``{"ci": ..., "x": successes, "n": trials, "deff": design effect}`` (see the module docstring)."""
    x, n = float(np.sum(successes_u)), float(np.sum(trials_u))
    deff = design_effect(successes_u, trials_u)
    interval = wilson_interval(x / deff, n / deff, z)
    if n > 0:
        interval["value"] = _num(x / n)
    return {"ci": interval, "x": x, "n": n, "deff": deff}


def sum_interval(y: np.ndarray, z: float = Z95) -> dict[str, float | None]:
    """``sum(y)`` over units with the normal interval of a sum, ``± z·sqrt(n)·s``."""
    n = len(y)
    total = float(np.sum(y)) if n else 0.0
    if n < 2:
        return ci(total)
    with np.errstate(over="ignore", invalid="ignore"):
        half = z * math.sqrt(n) * float(np.std(y, ddof=1))
    return ci(total, total - half, total + half)


def _p_value(zscore: float) -> float:
    return math.erfc(abs(zscore) / math.sqrt(2))  # two-sided normal tail


def two_proportion_test(
    x_a: float, n_a: float, x_b: float, n_b: float, z: float = Z95, *, deff_a: float = 1.0, deff_b: float = 1.0
) -> dict[str, Any]:
    """Difference ``x_b/n_b − x_a/n_a``: z-test with the pooled standard error for the p-value,
    interval of the difference with the unpooled one; each arm's variance times its design effect."""
    out = {"difference": None, "low": None, "high": None, "p_value": None, "significant": False}
    if n_a <= 0 or n_b <= 0:
        return out
    p_a, p_b = x_a / n_a, x_b / n_b
    diff = p_b - p_a
    pooled = (x_a + x_b) / (n_a + n_b)
    se0 = math.sqrt(pooled * (1 - pooled) * (deff_a / n_a + deff_b / n_b))
    se1 = math.sqrt(deff_a * p_a * (1 - p_a) / n_a + deff_b * p_b * (1 - p_b) / n_b)
    p_value = (0.0 if diff else 1.0) if se0 == 0 else _p_value(diff / se0)
    out.update(difference=_num(diff), low=_num(diff - z * se1), high=_num(diff + z * se1), p_value=_num(p_value))
    out["significant"] = p_value < ALPHA
    return out


def welch_z_test(value_a, var_a, value_b, var_b, z: float = Z95) -> dict[str, Any]:
    """Difference ``value_b − value_a`` of two independent estimates with known variances."""
    out = {"difference": None, "low": None, "high": None, "p_value": None, "significant": False}
    if value_a is None or value_b is None:
        return out
    diff = value_b - value_a
    out["difference"] = _num(diff)
    if var_a is None or var_b is None:
        return out
    se = math.sqrt(var_a + var_b)
    p_value = (0.0 if diff else 1.0) if se == 0 else _p_value(diff / se)
    out.update(low=_num(diff - z * se), high=_num(diff + z * se), p_value=_num(p_value))
    out["significant"] = bool(p_value < ALPHA)
    return out


# ----------------------------------------------------------------------------- per arm


def floor_no_bids(frame: pd.DataFrame) -> np.ndarray:
    """1.0 where the decision is a no-bid because the run's price did not clear the floor, else 0.0."""
    if "no_bid_reason" not in frame:
        return np.zeros(len(frame))
    return ((frame["no_bid_reason"] == FLOOR_NO_BID_REASON) & ~frame["bid"].astype(bool)).to_numpy(dtype=float)


def _units(frame: pd.DataFrame) -> pd.DataFrame:
    """Per randomization unit (user hash, else request id) the sums the metrics need: impressions,
    bids, wins, clicks and spend (CPM) of the unit's impressions."""
    unit = frame["user_hash"].where(frame["user_hash"].notna(), "r:" + frame["request_id"].astype(str))
    won = frame["won"].to_numpy(dtype=bool)
    spend_cpm = np.where(won, np.nan_to_num(frame["price_cpm"].to_numpy(dtype=float)), 0.0)
    parts = pd.DataFrame(
        {
            "unit": unit.to_numpy(),
            "impressions": np.ones(len(frame)),
            "bids": frame["bid"].to_numpy(dtype=float),
            "priced": frame["bid"].to_numpy(dtype=float) + floor_no_bids(frame),
            "no_bids": 1.0 - frame["bid"].to_numpy(dtype=float),
            "spend_cpm": spend_cpm,
            "wins": won.astype(float),
            "clicks": frame["clicked"].to_numpy(dtype=float),
        }
    )
    return parts.groupby("unit", sort=False).sum()


def _arm_frames(frame: pd.DataFrame, arm: ArmSpec) -> pd.DataFrame:
    return frame.loc[frame["run_id"] == arm.run_id]


def arm_result(frame: pd.DataFrame, arm: ArmSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """The arm's report entry, and what the comparisons need (counts and the eCPM variance)."""
    impressions = len(frame)
    bid = frame["bid"].astype(bool)
    bids = int(bid.sum())
    wins = int(frame["won"].sum())
    clicks = int(frame["clicked"].sum())
    all_units = _units(frame)
    no_bid = clustered_proportion(all_units["no_bids"].to_numpy(), all_units["impressions"].to_numpy())
    units = all_units.loc[all_units["bids"] > 0]
    spend_cpm, bid_units, win_units, click_units = (
        units[c].to_numpy() for c in ("spend_cpm", "bids", "wins", "clicks")
    )
    win = clustered_proportion(win_units, bid_units)
    priced_units = all_units.loc[all_units["priced"] > 0]
    priced = int(priced_units["priced"].sum())
    priced_win = clustered_proportion(priced_units["wins"].to_numpy(), priced_units["priced"].to_numpy())["ci"]
    won_units = units["wins"].to_numpy() > 0
    ctr = clustered_proportion(click_units[won_units], win_units[won_units])
    win_rate = win["ci"]
    ecpm_value, ecpm_var = ratio_with_variance(spend_cpm, win_units)
    spend = sum_interval(spend_cpm / 1000.0)
    target = arm.target_win_rate
    gap = None if priced_win["value"] is None or target is None else _num(priced_win["value"] - target)
    entry = {
        "arm": arm.arm,
        "run_id": arm.run_id,
        "traffic_pct": arm.traffic_pct,
        "target_win_rate": target,
        "requests": int(frame["request_id"].nunique()),
        "impressions": impressions,
        "bids": bids,
        "no_bid_share": no_bid["ci"],
        "wins": wins,
        "win_rate": win_rate,
        "floor_no_bids": priced - bids,
        "priced_win_rate": priced_win,
        "win_rate_gap": gap,  # priced_win_rate - target: the target's basis (module docstring)
        "spend": spend,
        "ecpm": ratio_interval(spend_cpm, win_units),
        "clicks": clicks,
        "ctr": ctr["ci"],
        "ecpc": ratio_interval(spend_cpm / 1000.0, click_units),
    }
    stat = {"bids": bids, "wins": wins, "clicks": clicks, "ecpm": ecpm_value, "ecpm_var": ecpm_var}
    return entry, stat | {"win_deff": win["deff"], "ctr_deff": ctr["deff"]}


def comparisons(arms: Sequence[ArmSpec], stats: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every pair of arms (a before b in arm order): win rate, CTR and eCPM of b minus a."""
    out = []
    for (arm_a, a), (arm_b, b) in combinations(list(zip(arms, stats)), 2):
        tests = {
            "win_rate": (
                two_proportion_test(
                    a["wins"], a["bids"], b["wins"], b["bids"], deff_a=a["win_deff"], deff_b=b["win_deff"]
                ),
                "two-proportion z-test, per-user design effect",
            ),
            "ctr": (
                two_proportion_test(
                    a["clicks"], a["wins"], b["clicks"], b["wins"], deff_a=a["ctr_deff"], deff_b=b["ctr_deff"]
                ),
                "two-proportion z-test, per-user design effect",
            ),
            "ecpm": (
                welch_z_test(a["ecpm"], a["ecpm_var"], b["ecpm"], b["ecpm_var"]),
                "Welch z-test on delta-method variances (per user)",
            ),
        }
        for metric, (result, method) in tests.items():
            out.append({"metric": metric, "run_a": arm_a.run_id, "run_b": arm_b.run_id, **result, "method": method})
    return out


def hourly_series(frame: pd.DataFrame, arms: Sequence[ArmSpec]) -> list[dict[str, Any]]:
    """Per hour of the decisions and arm: counts, the win rate per bid and on the target's basis
    (``priced_win_rate``, floor no-bids as losses: module docstring) with their intervals, spend and
    its running total. The hourly intervals are Wilson on the hour's raw counts, not clustered per
    user like the arms' (so narrower than they should be where users repeat within the hour)."""
    out = []
    if frame.empty:
        return out
    hours = frame["event_time"].dt.floor("h")
    for arm in arms:
        mine = frame.loc[frame["run_id"] == arm.run_id]
        cumulative = 0.0
        for hour, rows in mine.groupby(hours.loc[mine.index], sort=True):
            bids = int(rows["bid"].astype(bool).sum())
            wins = int(rows["won"].sum())
            floored = int(floor_no_bids(rows).sum())
            spend = float(np.nansum(np.where(rows["won"], rows["price_cpm"].to_numpy(dtype=float), 0.0))) / 1000.0
            cumulative += spend
            out.append(
                {
                    "hour": pd.Timestamp(hour).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "arm": arm.arm,
                    "run_id": arm.run_id,
                    "requests": int(rows["request_id"].nunique()),
                    "bids": bids,
                    "wins": wins,
                    "win_rate": wilson_interval(wins, bids),
                    "floor_no_bids": floored,
                    "priced_win_rate": wilson_interval(wins, bids + floored),
                    "spend": _num(spend),
                    "cumulative_spend": _num(cumulative),
                    "clicks": int(rows["clicked"].sum()),
                }
            )
    out.sort(key=lambda r: (r["hour"], r["arm"]))
    return out


def _iso(ts) -> str | None:
    return None if ts is None or pd.isna(ts) else pd.Timestamp(ts).strftime("%Y-%m-%dT%H:%M:%SZ")


def split_readout(decisions: pa.Table, notices: pa.Table, split_id: int, arms: Sequence[ArmSpec]) -> dict[str, Any]:
    """The readout of ``split_id`` from its events: window, exclusions, ``arms``, ``comparisons``, ``hourly``.

    ``decisions`` and ``notices`` may hold other splits' events (they are filtered by ``split_id``);
    decisions of runs not among ``arms`` are ignored.
    """
    decisions = decisions.filter(pc.equal(decisions["split_id"], split_id))
    notice_split = notices["split_id"]
    notices = notices.filter(pc.fill_null(pc.equal(notice_split, split_id), True))
    outcomes: Outcomes = impression_outcomes(decisions, notices)
    frame = outcomes.frame
    frame = frame.loc[frame["run_id"].isin([a.run_id for a in arms])]
    entries, stats = [], []
    for arm in arms:
        entry, stat = arm_result(_arm_frames(frame, arm), arm)
        entries.append(entry)
        stats.append(stat)
    times = frame["event_time"]
    return {
        "window": {
            "start": _iso(times.min()) if len(times) else None,
            "end": _iso(times.max()) if len(times) else None,
        },
        "test_requests_excluded": outcomes.test_requests_excluded,
        "duplicates_dropped": outcomes.duplicates_dropped,
        "orphan_notices": outcomes.orphan_notices,
        "arms": entries,
        "comparisons": comparisons(arms, stats),
        "hourly": hourly_series(frame, arms),
    }

"""Guardrails: judging each arm of an A/B report against the entity's guardrail settings, and
planning the split that replaces a split with a breaching arm. Pure: no database, Ray or I/O
(``bidopt.service.check_guardrails`` reads the report and applies the plan).

Two rules, each judged on the 95% interval of the A/B report (``bidopt.service.split_report``),
never on the point estimate alone, so that noise at the minimum sample does not trip them:

* **win rate**: an arm breaches when its whole win-rate interval lies outside
  ``target ± guardrail_max_win_rate_gap`` (the run's own ``target_win_rate``). The rate is the
  report's ``priced_win_rate``: wins over bids plus the impressions whose floor the run's price did
  not clear, which the target counts as losses (``bidopt.readout``; per bid placed, an arm on target
  over floored traffic reads target / share cleared, and a correct arm would breach). Judged only once
  the arm has ``guardrail_min_bids`` of those priced impressions and ``guardrail_min_wins`` wins, where
  the wins counted are the larger of the arm's own and those it would have had on target
  (``target x priced``): an
  arm that underbids so badly that it never wins is exactly the one to stop, and waiting for its
  own wins would shield it for ever;
* **no-bid share**: an arm breaches when its whole interval of the share of impressions it did
  not bid on lies above ``guardrail_max_no_bid_share``; judged once the arm has seen
  ``guardrail_min_bids`` impressions (its sample is impressions: an arm that bids on nothing
  would otherwise never reach a minimum of bids and never be judged).

Before both minimums an arm is ``waiting``, never breached.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

GUARDRAIL_ACTOR = "guardrail"  # deployed_by of the splits the guardrail deploys

KEEP = "none"
DROP_ARMS = "drop_arms"
RESTORE_PREVIOUS = "restore_previous"
NO_SAFE_SPLIT = "no_safe_split"


@dataclass(frozen=True)
class GuardrailSettings:
    """An entity's guardrail settings (its ``guardrail_*`` static configs)."""

    enabled: bool = True
    min_bids: int = 1000
    min_wins: int = 20
    max_win_rate_gap: float = 0.15
    max_no_bid_share: float = 0.8

    @classmethod
    def from_configs(cls, configs: Mapping[str, Any]) -> GuardrailSettings:
        """From an entity's typed static configs (``get_entity_configs``: every key present)."""
        return cls(
            enabled=bool(configs["guardrail_enabled"]),
            min_bids=int(configs["guardrail_min_bids"]),
            min_wins=int(configs["guardrail_min_wins"]),
            max_win_rate_gap=float(configs["guardrail_max_win_rate_gap"]),
            max_no_bid_share=float(configs["guardrail_max_no_bid_share"]),
        )


@dataclass(frozen=True)
class Breach:
    """One rule an arm broke: its interval ``[low, high]`` against the allowed ``[allowed_low, allowed_high]``."""

    metric: str  # win_rate | no_bid_share
    value: float | None
    low: float
    high: float
    allowed_low: float | None
    allowed_high: float | None
    text: str


@dataclass(frozen=True)
class ArmVerdict:
    """``status``: ``ok`` (judged, inside its bounds), ``waiting`` (not enough sample, or no interval
    yet) or ``breach``; ``note`` says why in words."""

    arm: int
    run_id: str
    status: str
    note: str
    breaches: tuple[Breach, ...] = field(default_factory=tuple)


def _interval(ci: Any) -> tuple[float | None, float | None, float | None]:
    if not isinstance(ci, Mapping):
        return None, None, None
    return ci.get("value"), ci.get("low"), ci.get("high")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def judge_arm(arm: Mapping[str, Any], settings: GuardrailSettings) -> ArmVerdict:
    """Judge one arm of an A/B report (``arms[i]``: ``bids``, ``floor_no_bids``, ``wins``,
    ``impressions``, ``target_win_rate``, ``priced_win_rate`` and ``no_bid_share`` intervals; a
    report without floor no-bids may give ``win_rate`` alone, the same rate then). It breaches only
    when a whole 95% interval is out of bounds, and only past the minimums (see the module docstring)."""
    run_id, index = str(arm["run_id"]), int(arm["arm"])
    bids, wins, impressions = int(arm.get("bids") or 0), int(arm.get("wins") or 0), int(arm.get("impressions") or 0)
    floor_no_bids = int(arm.get("floor_no_bids") or 0)
    priced = bids + floor_no_bids
    breaches: list[Breach] = []
    notes: list[str] = []
    waiting = False  # a rule could not be judged yet

    target = arm.get("target_win_rate")
    wins_counted = max(wins, (target or 0.0) * priced)  # see the module docstring: on-target wins count too
    if priced < settings.min_bids or wins_counted < settings.min_wins:
        waiting = True
        notes.append(
            f"win rate waits for {settings.min_bids} bids (with floor no-bids) and {settings.min_wins} wins "
            f"(has {priced}, {wins})"
        )
    else:
        value, low, high = _interval(arm.get("priced_win_rate", arm.get("win_rate")))
        if low is None or high is None or target is None:
            waiting = True
            notes.append("win rate has no interval yet")
        else:
            lo_ok, hi_ok = target - settings.max_win_rate_gap, target + settings.max_win_rate_gap
            if high < lo_ok or low > hi_ok:
                breaches.append(
                    Breach(
                        "win_rate",
                        value,
                        low,
                        high,
                        lo_ok,
                        hi_ok,
                        f"win rate {_fmt(value)} [{_fmt(low)}, {_fmt(high)}] is outside target {target:g} ± "
                        f"{settings.max_win_rate_gap:g} ({bids} bids, {floor_no_bids} floor no-bids, {wins} wins)",
                    )
                )
            else:
                notes.append(
                    f"win rate [{_fmt(low)}, {_fmt(high)}] overlaps target {target:g} ± {settings.max_win_rate_gap:g}"
                )

    if impressions < settings.min_bids:
        waiting = True
        notes.append(f"no-bid share waits for {settings.min_bids} impressions (has {impressions})")
    else:
        value, low, high = _interval(arm.get("no_bid_share"))
        if low is None or high is None:
            waiting = True
            notes.append("no-bid share has no interval yet")
        elif low > settings.max_no_bid_share:
            breaches.append(
                Breach(
                    "no_bid_share",
                    value,
                    low,
                    high,
                    None,
                    settings.max_no_bid_share,
                    f"no-bid share {_fmt(value)} [{_fmt(low)}, {_fmt(high)}] is above {settings.max_no_bid_share:g} "
                    f"({impressions} impressions)",
                )
            )
        else:
            notes.append(f"no-bid share [{_fmt(low)}, {_fmt(high)}] is not above {settings.max_no_bid_share:g}")

    if breaches:
        return ArmVerdict(index, run_id, "breach", "; ".join(b.text for b in breaches), tuple(breaches))
    return ArmVerdict(index, run_id, "waiting" if waiting else "ok", "; ".join(notes))


def judge_report(report: Mapping[str, Any], settings: GuardrailSettings) -> list[ArmVerdict]:
    """A verdict per arm of the report, in arm order."""
    return [judge_arm(arm, settings) for arm in report.get("arms", [])]


def renormalise(pairs: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """Scale the remaining arms' whole percentages to add up to 100 again, keeping their ratios as
    closely as whole numbers can (largest remainder; ties to the bigger arm, then the run id).

    Every arm keeps at least 1: each had at least 1 of at most 100."""
    if not pairs:
        raise ValueError("nothing to renormalise")
    total = sum(pct for _, pct in pairs)
    if total > 100 or any(pct < 1 for _, pct in pairs):
        raise ValueError(f"renormalise takes arms of one split (each >= 1, together <= 100), got {list(pairs)}")
    shares = [(run_id, pct, pct * 100 // total, pct * 100 % total) for run_id, pct in pairs]
    left = 100 - sum(floor for _, _, floor, _ in shares)
    order = sorted(range(len(shares)), key=lambda i: (-shares[i][3], -shares[i][1], shares[i][0]))
    bonus = set(order[:left])
    return [(run_id, floor + (1 if i in bonus else 0)) for i, (run_id, _, floor, _) in enumerate(shares)]


def _runs(split: Mapping[str, Any]) -> list[tuple[str, int]]:
    return [(r["run_id"], int(r["traffic_pct"])) for r in split["runs"]]


def runs_taken_out_by_guardrail(history: Iterable[Mapping[str, Any]]) -> set[str]:
    """Runs the guardrail removed before: for each split it deployed, the runs of the split before
    it that it left out. ``history`` is ``split_history``'s shape (any order)."""
    ordered = sorted(history, key=lambda h: h["split_id"])
    removed: set[str] = set()
    for before, after in zip(ordered, ordered[1:]):
        if after.get("deployed_by") == GUARDRAIL_ACTOR:
            removed |= {r for r, _ in _runs(before)} - {r for r, _ in _runs(after)}
    return removed


def _split_text(pairs: Sequence[tuple[str, int]]) -> str:
    return ", ".join(f"{run_id}={pct}" for run_id, pct in pairs)


@dataclass(frozen=True)
class Plan:
    """What replaces the judged split: ``action`` ``none`` (no breach), ``drop_arms`` (the others,
    renormalised), ``restore_previous`` (an earlier split, ``restored_split_id``) or
    ``no_safe_split`` (every arm breached and no earlier split is safe: nothing changes);
    ``split`` is the new split for the two that change it; ``reason`` in words."""

    action: str
    split: tuple[tuple[str, int], ...] = ()
    restored_split_id: int | None = None
    reason: str = ""


def plan_replacement(
    active_split_id: int,
    active: Sequence[tuple[str, int]],
    verdicts: Sequence[ArmVerdict],
    history: Sequence[Mapping[str, Any]],
    deployable: set[str],
) -> Plan:
    """The split that replaces ``active`` (split ``active_split_id``, ``(run_id, pct)`` pairs) given the
    arms' verdicts.

    Breaching arms are dropped and the rest (those still ``deployable``) renormalised. When no arm is
    left, the newest earlier
    split (``history``, ``split_history``'s shape) is restored whose runs are all ``deployable`` and
    include no breaching run and no run the guardrail took out before (so two bad runs never take
    turns); when there is none, nothing changes (``no_safe_split``): an entity is never left without
    a split, nor with one the guardrail made up."""
    breaching = [v for v in verdicts if v.status == "breach"]
    if not breaching:
        return Plan(KEEP)
    bad = {v.run_id for v in breaching}
    why = "; ".join(f"run {v.run_id} (arm {v.arm}): {v.note}" for v in breaching)
    remaining = [(run_id, pct) for run_id, pct in active if run_id not in bad and run_id in deployable]
    if remaining:
        split = tuple(renormalise(remaining))
        return Plan(DROP_ARMS, split, None, f"guardrail: {why}; dropped, now {_split_text(split)}")
    excluded = bad | runs_taken_out_by_guardrail(history)
    for earlier in sorted(history, key=lambda h: h["split_id"], reverse=True):
        if earlier["split_id"] >= active_split_id:
            continue
        pairs = _runs(earlier)
        run_ids = {r for r, _ in pairs}
        if pairs and run_ids <= deployable and not run_ids & excluded:
            return Plan(
                RESTORE_PREVIOUS,
                tuple(pairs),
                earlier["split_id"],
                f"guardrail: {why}; every arm breached, restored split {earlier['split_id']} ({_split_text(pairs)})",
            )
    return Plan(
        NO_SAFE_SPLIT,
        (),
        None,
        f"guardrail: {why}; every arm breached and no earlier split of deployable runs is safe to restore: "
        f"split {active_split_id} left as it is",
    )

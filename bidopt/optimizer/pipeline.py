"""One optimizer run from warehouse aggregates to a validated bid table (no Ray, no database).

``optimize(warehouse, spec)`` is what a Ray task runs for one run; the job layer
(``bidopt.jobs.optimize``) reads ``RunSpec`` from the database, writes the
``RunResult`` to the artifact store and the database.

A ``StageClock`` passed in (``clock=``) is told how long each stage of ``STAGES`` took; the job layer
turns that into metrics, so this module needs neither Ray nor a metrics client.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import pandas as pd

from bidopt.configs import parse_run_configs
from bidopt.errors import InvalidConfig
from bidopt.optimizer import bids as B
from bidopt.optimizer import features as F
from bidopt.optimizer import floors as FL
from bidopt.optimizer import models as M
from bidopt.warehouse import BidLogWarehouse, Window
from bidopt.warehouse.contract import FEATURE_COLUMNS, segment_key

Progress = Callable[[str], None]
MAX_ADJUST_DOMAINS = 1000  # most domains with a category of their own in the win model
# training bids a domain needs for a category of its own in the win model (a multiplier needs
# min_domain_bids): the domains lumped into "(other)" confound its bid curve, see optimize()
MODEL_DOMAIN_MIN_BIDS = 100
# the unchosen features the win model adjusts for may multiply its cells (the bid search prices
# every cell) by at most this much over the segment x domain cells: see adjustment_columns()
MAX_ADJUST_CELL_FACTOR = 3.0

# The stages of a run, in order. ``read``: the run's inputs and every warehouse query (wherever it
# is made); ``features``: scoring candidate features; ``training``: the win-rate and CTR models and
# the bid landscape; ``bids``: the bid table, curves and domain multipliers; ``validation``: the
# metrics and checks; ``artifacts``: serialising and writing the run's files (the job layer's).
STAGES = ("read", "features", "training", "bids", "validation", "artifacts")


class StageClock:
    """Seconds spent per stage of one run, each counted exclusively: a ``read`` inside
    ``features`` (a warehouse query while scoring) is the read's time, not the scoring's.
    ``seconds`` holds only the stages entered; a stage left by an exception keeps its time."""

    def __init__(self, timer: Callable[[], float] = time.perf_counter) -> None:
        self.seconds: dict[str, float] = {}
        self._timer = timer
        self._stack: list[str] = []
        self._mark = 0.0

    def _charge(self) -> None:
        now = self._timer()
        if self._stack:
            top = self._stack[-1]
            self.seconds[top] = self.seconds.get(top, 0.0) + (now - self._mark)
        self._mark = now

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r} (one of {', '.join(STAGES)})")
        self._charge()
        self._stack.append(stage)
        try:
            yield
        finally:
            self._charge()
            self._stack.pop()


@dataclass
class RunSpec:
    run_id: str
    entity_code: str
    anchor_feature: str
    macro_ids: dict[str, int | None]  # active macros: feature name -> macro id
    static: dict  # floor_available, npi_enabled, domain_enabled
    configs: dict  # run configs (validated again here)
    thresholds: dict  # min_win_auc, max_win_ece, min_bid_coverage
    # active macros: feature name -> bid-request field, as read when the run started; recorded with
    # the run's features so that the bidder builds its keys the way it was trained
    request_fields: dict[str, str] = field(default_factory=dict)


@dataclass
class RunResult:
    features: list[F.FeatureChoice]
    metrics: dict[str, dict[str, float | None]]
    bids: pd.DataFrame
    multipliers: pd.DataFrame | None
    win_model: bytes
    ctr_model: bytes | None
    validation_status: str
    validation_reasons: list[str]
    window: Window
    feature_scores: list[dict] = field(default_factory=list)
    curves: dict = field(default_factory=dict)
    holdout_from: object = None
    validation_from: object = None  # where the validation slice that scored features starts
    model: M.WinRateModel | None = field(default=None, repr=False)  # in memory only, for evaluation

    @property
    def segment_bids(self) -> pd.Series:
        return self.bids.loc[self.bids["level"] == "segment", "bid_cpm"]


def candidate_features(spec: RunSpec) -> list[str]:
    """Columns the run may segment by. ``domain`` is priced by multipliers, not segments;
    ``npi_matched`` only with ``npi_enabled``; ``floor_bucket`` only with ``floor_available``."""
    names = [n for n in spec.macro_ids if n in FEATURE_COLUMNS and n != "domain"]
    if not spec.static.get("npi_enabled"):
        names = [n for n in names if n != "npi_matched"]
    if spec.static.get("floor_available"):
        names.append("floor_bucket")
    return names


def run_window(warehouse: BidLogWarehouse, entity_code: str, cfg: dict) -> tuple[Window, object]:
    """``lookback_days`` back from the newest log row; the latest ``holdout_fraction`` of its rows is
    held out (from the time quantile of the window's rows, not a share of its duration: the platform's
    own rows come in bursts, the hours a split ran, and a share of the duration could hold out every
    one of them)."""
    summary = warehouse.summary(entity_code)
    if not summary["bids"]:
        raise InvalidConfig(f"the warehouse has no bid logs for {entity_code}")
    end = summary["last_time"] + timedelta(microseconds=1)
    start = max(summary["first_time"], end - timedelta(days=cfg["lookback_days"]))
    window = Window(start, end)
    holdout_from = warehouse.time_quantile(entity_code, window, 1.0 - cfg["holdout_fraction"])
    if holdout_from is None:
        raise InvalidConfig(f"the warehouse has no bid logs for {entity_code} in {start} .. {end}")
    return window, holdout_from


def selection_slices(
    warehouse: BidLogWarehouse, entity_code: str, window: Window, holdout_from, cfg: dict
) -> tuple[Window, object]:
    """The training part of ``window`` (before ``holdout_from``) and, inside it, where the
    validation slice that scores features starts: the latest ``holdout_fraction`` of the training
    rows. Features are chosen on it so that the held-out slice, which then reports AUC, ECE and
    coverage, has played no part in choosing them."""
    if holdout_from <= window.start:
        raise InvalidConfig("no training rows before the holdout slice: lower holdout_fraction")
    training = Window(window.start, holdout_from)
    validation_from = warehouse.time_quantile(entity_code, training, 1.0 - cfg["holdout_fraction"])
    if validation_from is None or validation_from <= training.start:
        raise InvalidConfig("too few training rows to carve a validation slice from: lower holdout_fraction")
    return training, validation_from


def adjustment_columns(train: pd.DataFrame, features: list[str], unchosen: list[str], scores: list[dict]) -> list[str]:
    """The unchosen candidate features the win model adjusts for: in the order of their latest
    signal score (the information left in them once the chosen features are known), each taken
    while the model's training cells (``train``'s distinct rows over the features, the adjustment
    so far and ``domain``) stay within ``MAX_ADJUST_CELL_FACTOR`` times the cells without any.
    A feature never scored (``max_features`` 1 scores none) counts as 0: then the candidates' order."""
    if train.empty or not unchosen:  # no cells to count (adjust_unchosen_features off)
        return []
    latest = {s["feature"]: s["signal_score"] for s in scores}
    ordered = sorted(unchosen, key=lambda c: -latest.get(c, 0.0))

    def cells(columns: list[str]) -> int:
        return len(train[[*features, *columns, "domain"]].drop_duplicates())

    bound = MAX_ADJUST_CELL_FACTOR * max(cells([]), 1)
    adjust: list[str] = []
    for column in ordered:
        if cells([*adjust, column]) <= bound:
            adjust.append(column)
    return adjust


def optimize(
    warehouse: BidLogWarehouse,
    spec: RunSpec,
    progress: Progress = lambda _: None,
    clock: StageClock | None = None,
) -> RunResult:
    """``clock``: told the seconds of each stage (``STAGES``; all but ``artifacts`` happen here)."""
    clock = clock if clock is not None else StageClock()
    with clock("read"):
        cfg = parse_run_configs(spec.configs)  # fails before any work on a bad config
        candidates = candidate_features(spec)
        if spec.anchor_feature not in candidates:
            raise InvalidConfig(
                f"anchor feature {spec.anchor_feature} is not an active feature of "
                f"{spec.entity_code} (candidates: {', '.join(candidates) or 'none'})"
            )
        window, holdout_from = run_window(warehouse, spec.entity_code, cfg)
    bucket = cfg["bid_bucket_cpm"]

    def aggregate(group_by: list[str]) -> pd.DataFrame:
        with clock("read"):
            return warehouse.aggregate_bids(
                spec.entity_code, window, group_by, bid_bucket_cpm=bucket, holdout_from=holdout_from
            ).to_pandas()

    with clock("read"):
        selection_window, validation_from = selection_slices(warehouse, spec.entity_code, window, holdout_from, cfg)

    def aggregate_for_selection(group_by: list[str]) -> pd.DataFrame:
        with clock("read"):
            return warehouse.aggregate_bids(
                spec.entity_code, selection_window, group_by, bid_bucket_cpm=bucket, holdout_from=validation_from
            ).to_pandas()

    progress(f"selecting features from {', '.join(candidates)}")
    scores: list[dict] = []
    with clock("features"):
        chosen = F.select_features(
            aggregate_for_selection,
            spec.anchor_feature,
            candidates,
            max_features=cfg["max_features"],
            min_segment_bids=cfg["min_segment_bids"],
            on_score=lambda name, score, support: scores.append(
                {"feature": name, "signal_score": score, "support": support}
            ),
        )
    features = [c.name for c in chosen]

    # The model adjusts for the domain, and with adjust_unchosen_features for the candidate features
    # not chosen as segments (see bidopt.optimizer.bids): the logging policy's bids follow the
    # market through them, so within a
    # segment higher bids meet dearer requests, and a curve that does not condition on them comes out
    # too flat (the bids too low at low targets, too high at high ones). A segment's bid is then the
    # traffic-weighted mixture of its cells. Domains with MODEL_DOMAIN_MIN_BIDS training bids keep
    # their own category (the biggest MAX_ADJUST_DOMAINS), the rest share "(other)". Measured on the
    # simulator (market A, target 0.3, predicted minus true win rate at the suggested bids): +0.020
    # with domains from min_domain_bids (500), +0.014 from 100, +0.0105 adjusting for the unchosen
    # features too, +0.006 with that and a learning rate of 0.3 instead of 0.1 (the trees were
    # under-fit: 600 rounds at 0.1 gave +0.005). Both are the defaults; they cost run time (more
    # cells to price: 1.23x at 1M bids, 1.6x at 10M), which is why the adjustment is a config.
    # The adjustment is bounded by the cells it adds (adjustment_columns): with one chosen feature,
    # every other candidate crossed with it made a 10-round 80k-row run 2.7x slower (0.35 -> 0.95 s).
    unchosen = [c for c in candidates if c not in features] if cfg["adjust_unchosen_features"] else []
    agg = aggregate([*features, *unchosen, "domain"])
    with clock("training"):
        train_bids = agg.loc[~agg["is_holdout"]].groupby("domain")["bids"].sum().sort_values(ascending=False)
        keep = [
            d
            for d in train_bids.index[train_bids >= min(cfg["min_domain_bids"], MODEL_DOMAIN_MIN_BIDS)]
            if d != "unknown"
        ]
        keep = set(keep[:MAX_ADJUST_DOMAINS])
        agg = B.lump_rare(agg, "domain", keep)
        adjust = adjustment_columns(agg.loc[~agg["is_holdout"]], features, unchosen, scores)
        model_columns = [*features, *adjust, "domain"]
        agg = agg.groupby([*model_columns, "is_holdout", "bid_bucket"], as_index=False, observed=True)[
            ["bids", "wins", "clicks", "spend_cpm", "bid_sum", "cleared_bids", "cleared_bid_sum"]
        ].sum()
        train, test = agg[~agg["is_holdout"]], agg[agg["is_holdout"]]
        if train.empty:
            raise InvalidConfig("no training rows before the holdout slice: lower holdout_fraction")
        # With floors, the market is learnt from the bids that cleared them and each cell's curve is
        # multiplied by the share of its requests whose floor the bid clears (bidopt.optimizer.floors)
        floor_aware = bool(spec.static.get("floor_available")) and cfg["floor_aware_win_model"]
        progress(
            f"training the win-rate model on {'+'.join(features)} x bid, adjusted for "
            f"{''.join(c + ', ' for c in adjust)}{len(keep)} domains"
            + (", on the bids that cleared their floor" if floor_aware else "")
        )
        win = M.train_win_model(train, model_columns, cfg, floor_cleared=floor_aware)
        win_metrics = M.evaluate_win_model(win, test)

        progress("training the CTR model")
        ctr = M.train_ctr_model(train, model_columns, cfg)
        ctr_metrics = M.evaluate_ctr_model(ctr, train, test)

        progress("fitting the bid landscape")
        landscape = M.fit_bid_landscape(train, spec.anchor_feature)

    progress("writing suggested bids")
    with clock("bids"):
        policy = B.BidPolicy.from_configs(cfg, use_floors=bool(spec.static.get("floor_available")))
        cells = train.groupby(model_columns, as_index=False, observed=True)["bids"].sum()
        floors = None
        if policy.use_floors:
            with clock("read"):
                floors = warehouse.typical_floors(spec.entity_code, window, features).to_pandas()
        # every cell's curve read from the trees once, for the bids, the plots and the multipliers
        cell_curves = M.CellCurves.of(win, cells)
        if floor_aware:
            with clock("read"):
                histogram = warehouse.floor_histogram(
                    spec.entity_code,
                    Window(window.start, holdout_from),
                    model_columns,
                    lowest_cpm=cfg["min_bid_cpm"],
                    highest_cpm=cfg["max_bid_cpm"],
                    bins=FL.FLOOR_BINS,
                ).to_pandas()
            cell_curves = FL.apply_clearing_shares(
                cell_curves,
                histogram,
                cells,
                model_columns,
                FL.FloorBins(cfg["min_bid_cpm"], cfg["max_bid_cpm"]),
                domain_keep=keep,
            )
        bid_table, model_bids = B.suggest_bids(win, cells, features, policy, floors, curves=cell_curves)
        curves = B.top_segment_curves(win, cells, features, policy, curves=cell_curves)

        multipliers = None
        if spec.static.get("domain_enabled"):
            progress("computing domain multipliers")
            multipliers = B.domain_multipliers(
                win,
                cells,
                features,
                model_bids,
                policy,
                min_domain_bids=cfg["min_domain_bids"],
                lower=cfg["domain_multiplier_min"],
                upper=cfg["domain_multiplier_max"],
                curves=cell_curves,
            )

    with clock("validation"):
        total_bids, total_wins = float(agg["bids"].sum()), float(agg["wins"].sum())
        seg_bids = bid_table.loc[bid_table["level"] == "segment"]
        metrics = {
            "win_rate_model": win_metrics
            | {
                "features": float(len(features)),
                "adjusted_features": float(len(adjust)),
                "adjusted_domains": float(len(keep)),
                "floor_aware": float(floor_aware),
            },
            "ctr_model": ctr_metrics,
            "bid_landscape": landscape,
            "global_stats": {
                "bids": total_bids,
                "wins": total_wins,
                "win_rate": total_wins / total_bids if total_bids else None,
                "clicks": float(agg["clicks"].sum()),
                "avg_clearing_price_cpm": float(agg["spend_cpm"].sum()) / total_wins if total_wins else None,
                "segments": float(len(seg_bids)),
                "explored_segments": float(seg_bids["explored"].sum()),
                "capped_segments": float(seg_bids["capped"].sum()),
                "domain_multipliers": float(len(multipliers)) if multipliers is not None else None,
            },
        }
        coverage = _coverage(bid_table, test, features)
        status, reasons = validate(bid_table, multipliers, metrics, coverage, cfg, spec.thresholds)
        metrics["validation"] = {"bid_coverage": coverage}
        return RunResult(
            features=chosen,
            metrics=metrics,
            bids=bid_table,
            multipliers=multipliers,
            win_model=bytes(win.booster.save_raw("ubj")),
            ctr_model=bytes(ctr.booster.save_raw("ubj")) if ctr is not None else None,
            validation_status=status,
            validation_reasons=reasons,
            window=window,
            feature_scores=scores,
            holdout_from=holdout_from,
            validation_from=validation_from,
            model=win,
            curves=curves,
        )


def _coverage(bid_table: pd.DataFrame, test: pd.DataFrame, features: list[str]) -> float | None:
    """Share of held-out bids whose full segment key has a row of its own."""
    if test.empty:
        return None
    keys = set(bid_table.loc[bid_table["level"] == "segment", "segment_key"])
    test_keys = [segment_key(v) for v in test[features].astype(str).itertuples(index=False)]
    hit = np.array([k in keys for k in test_keys])
    w = test["bids"].to_numpy(float)
    return float((w * hit).sum() / w.sum())


def validate(
    bid_table: pd.DataFrame,
    multipliers: pd.DataFrame | None,
    metrics: dict,
    coverage: float | None,
    cfg: dict,
    thresholds: dict,
) -> tuple[str, list[str]]:
    """Checks on bids and models; ``("passed" | "failed", reasons)``. Every check adds a line.
    ``coverage``: the held-out traffic share with a full segment key of its own (``_coverage``)."""
    reasons: list[str] = []
    failed = False

    def check(ok: bool, text: str) -> None:
        nonlocal failed
        failed |= not ok
        reasons.append(("ok: " if ok else "FAILED: ") + text)

    bids = bid_table["bid_cpm"].to_numpy(float)
    check(bool(np.isfinite(bids).all()), "every bid is finite")
    check(
        bool(((bids >= cfg["min_bid_cpm"] - 1e-9) & (bids <= cfg["max_bid_cpm"] + 1e-9)).all()),
        f"every bid within [{cfg['min_bid_cpm']}, {cfg['max_bid_cpm']}]",
    )
    check(bool((bid_table["level"] == "default").sum() == 1), "one entity default row")
    check(not bid_table["segment_key"].duplicated().any(), "segment keys are unique")
    check(
        coverage is not None and coverage >= thresholds["min_bid_coverage"],
        f"bid coverage of held-out traffic {_fmt(coverage)} >= {thresholds['min_bid_coverage']}",
    )
    auc = metrics["win_rate_model"].get("auc")
    check(
        auc is not None and auc >= thresholds["min_win_auc"],
        f"win-rate model AUC {_fmt(auc)} >= {thresholds['min_win_auc']}",
    )
    ece = metrics["win_rate_model"].get("ece")
    check(
        ece is not None and ece <= thresholds["max_win_ece"],
        f"win-rate model ECE {_fmt(ece)} <= {thresholds['max_win_ece']}",
    )
    if multipliers is not None and len(multipliers):
        m = multipliers["multiplier"].to_numpy(float)
        check(
            bool(
                np.isfinite(m).all()
                and (m >= cfg["domain_multiplier_min"] - 1e-9).all()
                and (m <= cfg["domain_multiplier_max"] + 1e-9).all()
            ),
            f"domain multipliers within [{cfg['domain_multiplier_min']}, {cfg['domain_multiplier_max']}]",
        )
    return ("failed" if failed else "passed"), reasons


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"

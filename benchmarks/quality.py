"""Quality benchmark: the optimizer on markets with known truth, and on the real iPinYou sample.

Simulated markets (``bidopt.simulator``): the optimizer runs through the same
pipeline as a real run. On the held-out time slice (raw rows) it prints

* the win-rate model's AUC next to the Bayes-limit AUC (the AUC of the true win
  probabilities on the same rows) and its ECE;
* per segment of the run's features, the true win rate at the suggested bid
  against the target (traffic-weighted mean absolute gap) and the suggested /
  oracle bid ratio (traffic-weighted mean |ratio - 1| and median ratio),

each next to two baselines computed in the same run from the same training rows:
a single global bid (the lowest bid whose pooled, isotonic-smoothed empirical win
rate reaches the target) and per-segment empirical win rates without a model (the
same rule per segment, falling back to the global bid). Bids are measured with
exploration off, so that what is measured is the estimate itself.

iPinYou 2259 (``../shared/data/ipinyou_2259_DLF``, skipped if absent): trains on
the train file and prints the win AUC and ANLP on the test file next to the
published anchors (Wu et al., the survival tree) and the bid-only AUC our harness
computes on the same rows; the ANLP split into the test rows priced within the
train file's bids and those above them; and uncensored references: per-cell
histograms of the train rows' true prices (which the censored file hides for lost
rows), showing what the contract's features carry about the price at best.

    python benchmarks/quality.py [--rows 1000000] [--targets 0.3,0.4,0.5,0.65] [--markets A,B,ipinyou]
                                 [--floor-lift-share 0.6]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bidopt.optimizer.models import PRICE_MASS_FLOOR, expected_calibration_error, market_price_anlp, weighted_auc
from bidopt.optimizer.pipeline import RunSpec, optimize
from bidopt.simulator import MarketSpec, oracle_bid, simulate_market, true_win_probability
from bidopt.warehouse import open_warehouse
from bidopt.warehouse.contract import floor_bucket_label

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MACROS = {
    n: i
    for i, n in enumerate(
        ["geo_region_name", "os_code", "browser_code", "device_type", "domain", "npi_matched"], start=1
    )
}
THRESHOLDS = {"min_win_auc": 0.55, "max_win_ece": 0.05, "min_bid_coverage": 0.95}


def isotonic(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Pool-adjacent-violators: the non-decreasing fit of ``y`` with weights ``w``."""
    vals, wts, sizes = [], [], []
    for yi, wi in zip(y, w):
        vals.append(yi)
        wts.append(wi)
        sizes.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            tw = wts[-2] + wts[-1]
            v = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / tw if tw else 0.0
            vals[-2:], wts[-2:], sizes[-2:] = [v], [tw], [sizes[-2] + sizes[-1]]
    return np.repeat(vals, sizes)


def empirical_bid(rows: pd.DataFrame, target: float, max_bid: float) -> float:
    """Lowest mean bid of a bucket whose isotonic empirical win rate reaches ``target``."""
    by = rows.groupby("bid_bucket")[["bids", "wins", "bid_sum"]].sum().sort_index()
    if by.empty:
        return float("nan")
    rate = isotonic((by.wins / by.bids).to_numpy(), by.bids.to_numpy(float))
    hit = np.flatnonzero(rate >= target)
    return float(by.bid_sum.iloc[hit[0]] / by.bids.iloc[hit[0]]) if len(hit) else max_bid


def model_rows(table) -> pd.DataFrame:
    """The simulator's raw rows with the columns a model reads, valued as the warehouse's aggregates
    value them (strings, ``npi_matched`` as true/false, ``floor_bucket`` from ``floor_cpm``)."""
    df = table.to_pandas()
    for col in ("geo_region_name", "os_code", "browser_code", "device_type", "domain"):
        df[col] = df[col].astype(str)
    df["npi_matched"] = np.where(df.npi_matched, "true", "false")
    df["floor_bucket"] = [floor_bucket_label(None if np.isnan(f) else f) for f in df.floor_cpm]
    return df


def segment_keys(rows: pd.DataFrame, features: list[str]) -> pd.Series:
    """Each row's segment key over ``features`` (the bid table's ``segment_key``)."""
    return rows[features].astype(str).agg("|".join, axis=1)


def run_spec(entity_code: str, static: dict, target: float) -> RunSpec:
    """The run the benchmark scores: exploration off (to measure the estimate itself), the default configs."""
    configs = {"target_win_rate": target, "max_bid_cpm": 50.0, "exploration_mode": "none"}  # else defaults
    return RunSpec("bench", entity_code, "geo_region_name", MACROS, static, configs, THRESHOLDS)


def _held_out_rows(table, result) -> pd.DataFrame:
    """The simulator's raw rows of the run's held-out slice, with the columns its model reads."""
    df = model_rows(table)
    test = df[df.event_time >= result.holdout_from].copy()
    test["key"] = segment_keys(test, [c.name for c in result.features])
    return test


def score_bids(test: pd.DataFrame, train: pd.DataFrame, result, target: float) -> pd.DataFrame:
    """Per held-out segment and approach: traffic, |true win rate - target| and bid / oracle bid."""
    features = [c.name for c in result.features]
    table_bids = result.bids.set_index("segment_key")["bid_cpm"]
    global_bid = empirical_bid(train, target, 50.0)
    train_keys = train[features].astype(str).agg("|".join, axis=1)
    per_segment = {k: empirical_bid(rows, target, 50.0) for k, rows in train.groupby(train_keys)}
    rows = []
    for key, seg in test.groupby("key"):
        mu, sigma, fl = seg.truth_mu.to_numpy(), seg.truth_sigma.to_numpy(), seg.floor_cpm.to_numpy()
        oracle = oracle_bid(target, mu, sigma, fl)
        bids = {
            "optimizer": table_bids.get(key, np.nan),
            "global bid": global_bid,
            "segment empirical": per_segment.get(key, global_bid),
        }
        for approach, bid in bids.items():
            if np.isnan(bid):
                continue
            rows.append(
                {
                    "approach": approach,
                    "weight": len(seg),
                    "gap": abs(true_win_probability(bid, mu, sigma, fl).mean() - target),
                    "ratio": bid / oracle if np.isfinite(oracle) else np.nan,
                }
            )
    return pd.DataFrame(rows)


def summarise(part: pd.DataFrame) -> dict[str, float]:
    ok = part[np.isfinite(part.ratio)]
    w = ok.weight.to_numpy(float)
    return {
        "gap": float(np.average(part.gap, weights=part.weight)),
        "within": float(part.weight[part.gap <= 0.05].sum() / part.weight.sum()),
        "ratio_err": float(np.average(np.abs(ok.ratio - 1), weights=w)),
        "median": float(np.median(np.repeat(ok.ratio.to_numpy(), ok.weight.to_numpy()))),
    }


def evaluate_market(name: str, spec: MarketSpec, targets: list[float], static: dict) -> list[dict]:
    """One optimizer run per target on the same simulated logs; prints the model's quality once
    and a row per target. Returns the optimizer's figures per target."""
    print(
        f"\n== {name}: {spec.rows:,} simulated bids, {spec.auction_type}, "
        f"floors {'on' if spec.floor_available else 'off'}, targets {', '.join(map(str, targets))}"
    )
    table = simulate_market(spec)
    out, lines = [], []
    with tempfile.TemporaryDirectory() as tmp:
        wh = open_warehouse(f"duckdb:///{tmp}")
        wh.load_bid_logs(table)
        for i, target in enumerate(targets):
            t0 = time.perf_counter()
            result = optimize(wh, run_spec(spec.entity_code, static, target))
            seconds = time.perf_counter() - t0
            features = [c.name for c in result.features]
            train = wh.aggregate_bids(
                spec.entity_code, result.window, features, bid_bucket_cpm=0.25, holdout_from=result.holdout_from
            ).to_pandas()
            train = train[~train.is_holdout]
            if i == 0:
                test = _held_out_rows(table, result)
                print_model_quality(test, result, seconds)
                first = result
            res = score_bids(test, train, result, target)
            figures = {a: summarise(part) for a, part in res.groupby("approach", sort=False)}
            out.append({"target": target} | figures["optimizer"])
            lines.append((target, figures, len(result.segment_bids), seconds))
        wh.close()
    print("per held-out segment, traffic-weighted (goal: |true WR - target| < 0.02, median bid/oracle 0.97-1.03):")
    print(
        f"  {'target':>6s} {'|true WR - target|':>18s} {'within 0.05':>11s} {'median bid/oracle':>17s} "
        f"{'mean |bid/oracle-1|':>19s} | {'global bid':>10s} {'segment emp.':>12s} | {'segments':>8s} {'run s':>6s}"
    )
    for target, f, segments, seconds in lines:
        o = f["optimizer"]
        ok = "ok" if o["gap"] < 0.02 and abs(o["median"] - 1) <= 0.03 else "MISSED"
        print(
            f"  {target:>6.2f} {o['gap']:>18.4f} {o['within']:>10.1%} {o['median']:>17.3f} {o['ratio_err']:>19.4f} | "
            f"{f['global bid']['gap']:>10.4f} {f['segment empirical']['gap']:>12.4f} | "
            f"{segments:>8d} {seconds:>6.1f}  {ok}"
        )
    if first.multipliers is not None and len(first.multipliers):
        compare_multipliers(test, first, targets[0])
    if spec.floor_available:
        print_floor_bands(test, first, targets[0])
    return out


def print_model_quality(test: pd.DataFrame, result, seconds: float) -> None:
    features = [c.name for c in result.features]
    true_p = true_win_probability(
        test.bid_cpm.to_numpy(), test.truth_mu.to_numpy(), test.truth_sigma.to_numpy(), test.floor_cpm.to_numpy()
    )
    model_p = result.model.predict_at_floors(
        test[result.model.encoder.features], test.bid_cpm.to_numpy(), test.floor_cpm.to_numpy(float)
    )
    won, ones = test.won.to_numpy(int), np.ones(len(test))
    scores = ", ".join(f"{s['feature']} {s['signal_score']:.2f}" for s in result.feature_scores)
    print(
        f"run: features {'+'.join(features)}, {len(result.segment_bids)} segments, "
        f"validation {result.validation_status}, {seconds:.1f} s; signal scores per round: {scores}"
    )
    print(
        f"win-rate AUC on {len(test):,} held-out rows: model {weighted_auc(model_p, won, ones):.4f} | "
        f"Bayes limit {weighted_auc(true_p, won, ones):.4f} | bid only {weighted_auc(test.bid_cpm, won, ones):.4f}"
    )
    print(
        f"win-rate ECE: model {expected_calibration_error(model_p, won, ones):.4f} | "
        f"truth {expected_calibration_error(true_p, won, ones):.4f}"
    )


def print_floor_bands(test: pd.DataFrame, result, target: float) -> None:
    """Per floor band of the held-out requests: traffic, the share whose floor is above their
    segment's suggested bid (a no-bid: the bidder cannot win them), and the true against the model's
    predicted win rate at that bid. Where the logging policy lifts bids to the floor, the model's
    error grows with the blocked share (README, "Bid quality at every target")."""
    bids = test["key"].map(result.bids.set_index("segment_key")["bid_cpm"])
    part = test.loc[bids.notna()].copy()
    b = bids.loc[part.index].to_numpy(float)
    part["true"] = true_win_probability(
        b, part.truth_mu.to_numpy(), part.truth_sigma.to_numpy(), part.floor_cpm.to_numpy()
    )
    part["pred"] = result.model.predict_at_floors(
        part[result.model.encoder.features], b, part.floor_cpm.to_numpy(float)
    )
    part["blocked"] = part.floor_cpm.notna() & (part.floor_cpm.to_numpy() > b)
    print(
        f"at target {target}, per floor band of the held-out requests: predicted - true "
        f"{part.pred.mean() - part.true.mean():+.4f} overall"
    )
    print(f"  {'floor band':>10s} {'traffic':>8s} {'floor above bid':>15s} {'true':>7s} {'predicted':>9s}")
    groups = part.groupby("floor_bucket", sort=False)
    for band, rows in sorted(groups, key=lambda g: np.nan_to_num(g[1].floor_cpm.median(), nan=-1.0)):
        if len(rows) >= 0.005 * len(part):  # from no floor up to the highest band
            print(
                f"  {band:>10s} {len(rows) / len(part):>8.1%} {rows.blocked.mean():>15.1%} "
                f"{rows.true.mean():>7.4f} {rows.pred.mean():>9.4f}"
            )


def compare_multipliers(test: pd.DataFrame, result, target: float, top: int = 40) -> None:
    """Each big domain's true multiplier: the traffic-weighted geometric mean over segments of
    oracle bid on the domain / oracle bid of the whole segment."""
    mult = result.multipliers.set_index("domain")["multiplier"]
    domains = [d for d in test.domain.value_counts().index[:top] if d in mult.index]
    seg_oracle = {
        k: oracle_bid(target, g.truth_mu.to_numpy(), g.truth_sigma.to_numpy(), g.floor_cpm.to_numpy())
        for k, g in test.groupby("key")
    }
    errors, flat = [], []
    for d in domains:
        part = test[test.domain == d]
        logs, weights = [], []
        for k, g in part.groupby("key"):
            if len(g) < 30:
                continue
            o = oracle_bid(target, g.truth_mu.to_numpy(), g.truth_sigma.to_numpy(), g.floor_cpm.to_numpy())
            if np.isfinite(o) and np.isfinite(seg_oracle[k]):
                logs.append(np.log(o / seg_oracle[k]))
                weights.append(len(g))
        if weights:
            truth = np.average(logs, weights=weights)
            errors.append(abs(np.log(mult[d]) - truth))
            flat.append(abs(truth))
    print(
        f"domain multipliers, {len(errors)} biggest domains: mean |ln(multiplier / true)| "
        f"{np.mean(errors):.4f} vs {np.mean(flat):.4f} without multipliers"
    )


# pseudo-rows of the global histogram in each cell's histogram. Slot-price band + domain, measured: weight 5
# gives AUC 0.816 / ANLP 5.60, 20 gives 0.801 / 5.30, 50 gives 0.788 / 5.20; none meets both goals
REF_SHRINK = 20.0
PRICE_BINS = 301  # iPinYou's prices are whole fen up to its 300 cap


def uncensored_histogram_reference(train: pd.DataFrame, test: pd.DataFrame, columns: list[str]) -> tuple[float, float]:
    """(win AUC at the logged bid, ANLP) of a price histogram per cell of ``columns`` made from the train
    rows' true market prices, every row's, which the censored file shows for won rows only: what the
    contract's features can say about the price with no censoring at all. A reference, not a model."""
    z_train = np.round(train.truth_market_cpm.to_numpy() * 100).astype(int)
    z_test = np.round(test.truth_market_cpm.to_numpy() * 100).astype(int)
    overall = (np.bincount(z_train, minlength=PRICE_BINS) + 0.5) / (len(z_train) + 0.5 * PRICE_BINS)

    def keys(frame: pd.DataFrame) -> pd.Series:
        if not columns:
            return pd.Series("", index=frame.index)
        return frame[columns].astype(object).where(frame[columns].notna(), "unknown").astype(str).agg("|".join, axis=1)

    counts: dict[str, np.ndarray] = {}
    for key, prices in pd.Series(z_train).groupby(keys(train).to_numpy()):
        counts[key] = np.bincount(prices.to_numpy(), minlength=PRICE_BINS)
    bids = np.ceil(np.round(test.bid_cpm.to_numpy() * 100, 6)).astype(int)  # won iff z < bid
    log_p, p_win = np.empty(len(test)), np.empty(len(test))
    for i, key in enumerate(keys(test).to_numpy()):
        h = counts.get(key)
        p = overall if h is None else (h + REF_SHRINK * overall) / (h.sum() + REF_SHRINK)
        log_p[i], p_win[i] = np.log(p[z_test[i]]), p[: bids[i]].sum()
    won = (z_test < test.bid_cpm.to_numpy() * 100).astype(int)
    return float(weighted_auc(p_win, won, np.ones(len(test)))), float(-log_p.mean())


def evaluate_ipinyou(target: float) -> dict | None:
    """Prints the iPinYou figures and returns them (``auc``, ``anlp``, ``floored``); None when absent."""
    folder = SHARED / "ipinyou_2259_DLF"
    if not folder.is_dir():
        print(f"\n== iPinYou 2259: skipped, {folder} is absent")
        return None
    from bidopt.warehouse.imports import read_ipinyou_dlf

    print("\n== iPinYou 2259 (real): train on train.yzbx.txt, evaluate on test.yzbx.txt")
    with tempfile.TemporaryDirectory() as tmp:
        wh = open_warehouse(f"duckdb:///{tmp}")
        train = read_ipinyou_dlf(folder, "train", entity_code="ipinyou_2259")
        test = read_ipinyou_dlf(folder, "test", entity_code="ipinyou_2259")
        wh.load_bid_logs(train)
        wh.load_bid_logs(test)
        # the holdout slice is exactly the test file: the latest len(test) rows (the held-out share is
        # of rows; PERCENTILE_DISC(1 - f) is the row at position ceil((1 - f)·n), the first test row)
        fraction = (test.num_rows - 0.5) / (train.num_rows + test.num_rows)
        configs = {
            "target_win_rate": target,
            "min_bid_cpm": 0.01,
            "max_bid_cpm": 3.0,
            "bid_bucket_cpm": 0.01,
            "holdout_fraction": fraction,
            "lookback_days": 30,
            "min_segment_bids": 50,
            "min_domain_bids": 50,
            "xgb_num_rounds": 200,
            "xgb_max_depth": 4,
            "xgb_learning_rate": 0.1,
            "adjust_unchosen_features": True,
            "exploration_mode": "none",
        }
        run = RunSpec(
            "bench",
            "ipinyou_2259",
            "geo_region_name",
            MACROS,
            {"floor_available": True, "npi_enabled": False, "domain_enabled": True},
            configs,
            THRESHOLDS,
        )
        result = optimize(wh, run)
        wh.close()
    df = test.to_pandas()
    # the held-out slice is exactly the test file
    assert df.event_time.min() >= result.holdout_from > train.column("event_time").to_pandas().max()
    won, ones = df.won.to_numpy(int), np.ones(len(df))
    features = [c.name for c in result.features]
    for col in ("geo_region_name", "os_code", "browser_code", "device_type"):
        df[col] = df[col].fillna("unknown")
    if "floor_bucket" in features:
        df["floor_bucket"] = [floor_bucket_label(None if np.isnan(f) else f) for f in df.floor_cpm]
    df["domain"] = df["domain"].fillna("unknown")
    rows = df[result.model.encoder.features]
    floors = df.floor_cpm.to_numpy(float)  # a floor-cleared model's P(win) is 0 under the floor
    model_auc = weighted_auc(result.model.predict_at_floors(rows, df.bid_cpm.to_numpy(), floors), won, ones)
    # market prices in the data's integer units (fen per CPM; the table holds CNY per CPM)
    z_test = np.round(df.truth_market_cpm.to_numpy() * 100)
    anlp, floored = market_price_anlp(result.model, rows, z_test, 0.01, floors=floors)
    print(f"features {'+'.join(features)}; test rows {len(df):,}, test win rate {won.mean():.3f}")
    print(f"  {'':28s} {'win AUC (C-index at the bid)':>28s} {'ANLP':>7s}")
    print(
        f"  {'optimizer (goal > 0.80, < 5.3)':28s} {model_auc:>28.4f} {anlp:>7.3f}"
        f"   ({floored:.1%} of rows at the P(z) floor of {PRICE_MASS_FLOOR:g})"
    )
    print(f"  {'Wu et al. KDD15 (published)':28s} {0.6807:>28.4f} {7.372:>7.3f}")
    print(f"  {'survival tree STM (published)':28s} {0.6255:>28.4f} {5.594:>7.3f}")
    print(f"  {'bid only, same rows here':28s} {weighted_auc(df.bid_cpm, won, ones):>28.4f} {'':>7s}")
    # P(z) = F(z + 1) - F(z): inside the train bids' range when z + 1 is at most the highest bid
    inside = z_test < np.round(train.column("bid_cpm").to_numpy().max() * 100)
    body, _ = market_price_anlp(result.model, rows[inside], z_test[inside], 0.01, floors=floors[inside])
    tail, _ = market_price_anlp(result.model, rows[~inside], z_test[~inside], 0.01, floors=floors[~inside])
    print(
        f"  the optimizer's ANLP: {body:.3f} on the {inside.mean():.1%} of test rows priced within the train file's"
        f" bids, {tail:.3f} on those at or above its highest bid (their price's shape is censored away)"
    )
    print("  uncensored references (histograms of the train file's TRUE prices, lost rows' included, which")
    print(
        f"  no model of the censored file sees; per feature cell, shrunk to the global one with weight {REF_SHRINK:g}):"
    )
    train_rows = train.to_pandas()
    for label, columns in (
        ("no features", []),
        ("slot-price band", ["floor_cpm"]),  # the sample's floors: its 5 bands' lower edges (None: none)
        ("slot-price band + domain", ["floor_cpm", "domain"]),
    ):
        auc_ref, anlp_ref = uncensored_histogram_reference(train_rows, df, columns)
        print(f"    {label:26s} {auc_ref:>28.4f} {anlp_ref:>7.3f}")
    print(
        f"run metrics: holdout AUC {result.metrics['win_rate_model']['auc']:.4f}, "
        f"ECE {result.metrics['win_rate_model']['ece']:.4f}, validation {result.validation_status}"
    )
    return {"auc": model_auc, "anlp": anlp, "floored": floored}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--targets", default="0.3,0.4,0.5,0.65", help="comma-separated target win rates")
    ap.add_argument("--markets", default="A,B,ipinyou", help="which of A, B, ipinyou to run")
    ap.add_argument(
        "--floor-lift-share",
        type=float,
        default=0.6,
        help="market B: the share of the logging policy's bids below a floor that it lifts to the floor "
        "(0: none; the bias this causes is README's 'Bid quality at every target')",
    )
    args = ap.parse_args()
    targets = [float(t) for t in args.targets.split(",")]
    markets = set(args.markets.split(","))
    if "A" in markets:
        evaluate_market(
            "market A",
            MarketSpec("bench_a", rows=args.rows, seed=101, npi_enabled=True),
            targets,
            {"floor_available": False, "npi_enabled": True, "domain_enabled": True},
        )
    if "B" in markets:
        evaluate_market(
            "market B",
            MarketSpec(
                "bench_b",
                rows=args.rows,
                seed=202,
                auction_type="second_price",
                floor_available=True,
                floor_lift_share=args.floor_lift_share,
            ),
            targets,
            {"floor_available": True, "npi_enabled": False, "domain_enabled": False},
        )
    if "ipinyou" in markets:
        evaluate_ipinyou(targets[0])


if __name__ == "__main__":
    main()

"""The floor fix for market B, prototyped outside the optimizer, against the optimizer as it is.

Market B's policy lifts most bids that fall below a floor to just over it, so among the logged bids near
a price b the requests whose floor is above b (which a bid of b cannot win) are under-represented, and
the win curve learnt from won/lost at b is too high where floors block (README, "Bid quality at every
target"). The fix it calls for, measured here before it is built into the optimizer:

* the win model learns the market part only from bids that cleared their floor (the optimizer's own
  run, on the logs without the bids left below a floor), so it means P(win | the bid clears the floor);
* each segment's bid b solves mean over its training requests of [floor <= b] * P(win | cleared, b) =
  target, by bisection, over ``--requests`` of them (the floors do not depend on the policy).

Both are scored like ``benchmarks/quality.py`` scores the optimizer: per held-out segment of the
optimizer's own run that both priced, the true win rate at the bid (the simulator's truth, floors
included) against the target, traffic-weighted, on the requests after both runs' holdout starts.

    python benchmarks/floor_prototype.py [--rows 1000000] [--target 0.3] [--requests 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import pandas as pd
import pyarrow.compute as pc
from quality import model_rows, run_spec, segment_keys

from bidopt.optimizer.pipeline import optimize
from bidopt.simulator import MarketSpec, simulate_market, true_win_probability
from bidopt.warehouse import open_warehouse

STATIC = {"floor_available": True, "npi_enabled": False, "domain_enabled": False}


def run_optimizer(spec: MarketSpec, table, target: float):
    with tempfile.TemporaryDirectory() as tmp:
        wh = open_warehouse(f"duckdb:///{tmp}")
        wh.load_bid_logs(table)
        result = optimize(wh, run_spec(spec.entity_code, STATIC, target))
        wh.close()
    return result


def floor_aware_bid(model, requests: pd.DataFrame, target: float, lo: float = 0.01, hi: float = 50.0) -> float:
    """The lowest bid (to 22 halvings of the log range) whose mean of [floor <= b] * P(win | cleared, b)
    over ``requests`` reaches ``target``; ``hi`` when none does."""
    floors, rows = requests.floor_cpm.to_numpy(), requests[model.encoder.features]

    def rate(b: float) -> float:
        p = model.predict(rows, np.full(len(rows), b))
        return float(np.mean(np.where(np.isnan(floors) | (b >= floors), p, 0.0)))

    if rate(hi) < target:
        return hi
    for _ in range(22):
        mid = float(np.sqrt(lo * hi))
        lo, hi = (mid, hi) if rate(mid) < target else (lo, mid)
    return hi


def score(test: pd.DataFrame, bids: pd.Series, target: float) -> dict[str, float]:
    weights, rates = [], []
    for key, seg in test.groupby("key"):
        if key in bids.index:
            b = bids[key]
            fl = seg.floor_cpm.to_numpy()
            rates.append(true_win_probability(b, seg.truth_mu.to_numpy(), seg.truth_sigma.to_numpy(), fl).mean())
            weights.append(len(seg))
    w, t = np.array(weights, float), np.array(rates)
    return {
        "gap": float(np.average(np.abs(t - target), weights=w)),
        "signed": float(np.average(t - target, weights=w)),
        "within": float(w[np.abs(t - target) <= 0.05].sum() / w.sum()),
        "segments": len(t),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--target", type=float, default=0.3)
    ap.add_argument("--requests", type=int, default=200, help="training requests per segment in the bid search")
    args = ap.parse_args()
    spec = MarketSpec("bench_b", rows=args.rows, seed=202, auction_type="second_price", floor_available=True)
    table = simulate_market(spec)
    floor = table["floor_cpm"]
    cleared = pc.or_kleene(pc.is_null(floor), pc.greater_equal(table["bid_cpm"], floor))
    t0 = time.perf_counter()
    base = run_optimizer(spec, table, args.target)
    fixed = run_optimizer(spec, table.filter(cleared), args.target)  # the market part, from cleared bids only
    print(f"market B, {args.rows:,} bids, target {args.target}: two runs in {time.perf_counter() - t0:.0f} s")

    df = model_rows(table)
    features = [c.name for c in base.features]  # both scored on the optimizer's own segments
    df["key"] = segment_keys(df, features)
    # the two runs place their holdout at their own time quantile: the later one is held out for both
    holdout_from = max(base.holdout_from, fixed.holdout_from)
    train, test = df[df.event_time < holdout_from], df[df.event_time >= holdout_from]
    t0 = time.perf_counter()
    prototype = {
        key: floor_aware_bid(fixed.model, seg.sample(min(len(seg), args.requests), random_state=0), args.target)
        for key, seg in train.groupby("key")
    }
    print(f"segments {'+'.join(features)}; floor-aware bid search {time.perf_counter() - t0:.0f} s")
    print(f"  {'':28s} {'|true WR - target|':>18s} {'signed':>8s} {'within 0.05':>11s} {'segments':>8s}")
    optimizer, prototype = base.bids.set_index("segment_key")["bid_cpm"], pd.Series(prototype)
    both = optimizer.index.intersection(prototype.index)  # scored on the same segments
    for name, bids in (("optimizer", optimizer[both]), ("floor-aware prototype", prototype[both])):
        s = score(test, bids, args.target)
        print(f"  {name:28s} {s['gap']:>18.4f} {s['signed']:>+8.4f} {s['within']:>11.1%} {s['segments']:>8d}")


if __name__ == "__main__":
    main()

"""The closed loop on a floored market, without Serve: what the platform's own rows teach a new run.

Market B of ``benchmarks/quality.py`` (second price, floors on three requests in four). Two runs
trained on its imported logs (every bid, the floors included) share a 50/50 split at targets
``--split-targets``; fresh requests of the market (``sample_requests``) go through the bidder's own
``decide``, each bid's auction is run against the market's true competing bid
(``bidopt.exchange.run_auction``), the decisions are rendered by the bidder's event render and
joined with their notices by ``bid_log_rows``, exactly as ``bidopt events compact`` loads them. A
new run then trains on those platform rows alone at ``--target``, twice:

* **with the floor no-bids** as bids lost to their floor, at the price the run would have bid
  (what compaction writes);
* **without them**: the bids placed only (what it wrote before: a bid the bidder placed has always
  cleared its floor).

Each retrained run is scored on other fresh requests through ``decide`` again, on the target's
basis (a floor no-bid wins nothing): per segment the true win rate at the price quoted against
the target, traffic-weighted, and in total, next to the run's own predicted win rate.

    python benchmarks/platform_floors.py [--rows 500000] [--requests 300000] [--score 100000]
                                         [--target 0.4] [--split-targets 0.3,0.5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import run_spec  # noqa: E402

from bidopt.bidder.app import decision_rows  # noqa: E402
from bidopt.bidder.core import BidderState, EntityServing, RunTables, decide  # noqa: E402
from bidopt.bidder.fields import DEFAULT_REQUEST_FIELDS, feature_reader  # noqa: E402
from bidopt.events.compact import bid_log_rows  # noqa: E402
from bidopt.events.schema import NOTICES, rows_to_table  # noqa: E402
from bidopt.exchange import build_bid_request, run_auction  # noqa: E402
from bidopt.optimizer.pipeline import optimize  # noqa: E402
from bidopt.simulator import MarketSpec, sample_requests, simulate_market, true_win_probability  # noqa: E402
from bidopt.warehouse import open_warehouse  # noqa: E402

ENTITY = "bench_b"
STATIC = {"floor_available": True, "npi_enabled": False, "domain_enabled": False}
HOURS = 24  # the platform's traffic spread over a day, compacted hour by hour
FLOOR_BANDS = [-2.0, 0.0, 1.0, 2.0, 4.0, np.inf]  # CPM; -1 stands for no floor
BAND_LABELS = ["no floor", "< 1", "1-2", "2-4", ">= 4"]


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc).replace(tzinfo=None)


def tables_of(result, run_id: str, max_bid: float) -> RunTables:
    """A run's tables as the bidder's loader builds them (``bidopt.bidder.loader.load_run_tables``)."""
    features = tuple(c.name for c in result.features)
    bids = dict(zip(result.bids["segment_key"], result.bids["bid_cpm"].astype(float)))
    multipliers = {}
    if result.multipliers is not None and len(result.multipliers):
        multipliers = dict(zip(result.multipliers["domain"], result.multipliers["multiplier"].astype(float)))
    readers = tuple(feature_reader(f, DEFAULT_REQUEST_FIELDS.get(f, "")) for f in features)
    return RunTables(run_id, features, readers, bids, multipliers, max_bid, "bench", min_bid_cpm=0.10)


def through_the_bidder(state: BidderState, requests: pa.Table, seed: int, start: datetime | None = None):
    """Each request through ``decide``; the auction of each bid against the true competing bid.
    Returns the decisions with their times, the notices, and per impression what the true win
    probability of its price was (0 for a no-bid) and its segment key."""
    rows = requests.to_pylist()
    rng = np.random.default_rng(seed)
    competing = np.exp(
        requests["truth_mu"].to_numpy() + requests["truth_sigma"].to_numpy() * rng.standard_normal(len(rows))
    )
    items, notices, truth = [], [], []
    t0 = (start or datetime(2000, 1, 1)).replace(tzinfo=timezone.utc).timestamp()  # naive UTC, as events are
    for i, row in enumerate(rows):
        body = orjson.dumps(build_bid_request(row, f"r{seed}-{i}", auction_type="second_price", tmax_ms=60_000))
        _, _, decisions, _ = decide(state, ENTITY, body)
        (d,) = decisions
        at = t0 + HOURS * 3600 * i / len(rows)
        items.append((at, d))
        floor = row["floor_cpm"]
        p = 0.0 if d.price is None else float(true_win_probability(d.price, row["truth_mu"], row["truth_sigma"], floor))
        truth.append((d.segment_key, d.run_id, p, d.price is not None, floor))
        if d.price is None:
            continue
        result = run_auction(d.price, float(competing[i]), floor, "second_price")
        note = {
            "entity_code": ENTITY,
            "request_id": d.request_id,
            "imp_id": d.impid,
            "split_id": d.split_id,
            "run_id": d.run_id,
            "bid_cpm": d.price,
            "bid_time": utc(at),
            "test": False,
            "event_time": utc(at + 1),
            "kind": "win" if result.won else "loss",
            "price_cpm": result.clearing_price,
        }
        notices.append(note)
    return items, notices, pd.DataFrame(truth, columns=["segment_key", "run_id", "p_true", "bid", "floor_cpm"])


def platform_rows(items, notices, start: datetime) -> pa.Table:
    """The hours' bid-log rows as ``bidopt events compact`` makes them."""
    render = decision_rows("bench")
    decisions = render([(ENTITY, ts, d) for ts, d in items])
    notes = rows_to_table(NOTICES, notices)
    hours = []
    for h in range(HOURS):
        hour = start + timedelta(hours=h)
        lo, hi = pa.scalar(hour, pa.timestamp("us")), pa.scalar(hour + timedelta(hours=1), pa.timestamp("us"))
        dec = decisions.filter(
            pc.and_(pc.greater_equal(decisions["event_time"], lo), pc.less(decisions["event_time"], hi))
        )
        hours.append(bid_log_rows(ENTITY, hour, dec, notes).table)
    return pa.concat_tables(hours)


def retrain(rows: pa.Table, start: datetime, target: float):
    with tempfile.TemporaryDirectory() as tmp:
        wh = open_warehouse(f"duckdb:///{tmp}")
        for h in range(HOURS):
            hour = start + timedelta(hours=h)
            part = rows.filter(
                pc.and_(
                    pc.greater_equal(rows["event_time"], pa.scalar(hour, pa.timestamp("us"))),
                    pc.less(rows["event_time"], pa.scalar(hour + timedelta(hours=1), pa.timestamp("us"))),
                )
            )
            wh.replace_platform_hour(ENTITY, hour, part)
        result = optimize(wh, run_spec(ENTITY, STATIC, target))
        wh.close()
    return result


def score(result, requests: pa.Table, target: float) -> dict:
    run = tables_of(result, "retrained", 50.0)
    state = BidderState({ENTITY: EntityServing(ENTITY, 9, (run,), (100,))})
    _, _, truth = through_the_bidder(state, requests, seed=99)
    per = truth.groupby("segment_key").agg(n=("p_true", "size"), true=("p_true", "mean"))
    predicted = result.bids.set_index("segment_key")["predicted_win_rate"]
    per["predicted"] = predicted.reindex(per.index).to_numpy(dtype=float)
    w = per["n"].to_numpy(float)
    # by the request's floor, whatever the run's segments (the runs compared segment differently)
    band = pd.cut(truth["floor_cpm"].fillna(-1.0), FLOOR_BANDS, labels=BAND_LABELS, right=False)
    by_band = truth.groupby(band, observed=False)["p_true"].agg(["size", "mean"])
    return {
        "gap": float(np.average(np.abs(per["true"] - target), weights=w)),
        "within": float(w[np.abs(per["true"] - target) <= 0.05].sum() / w.sum()),
        "true": float(truth["p_true"].mean()),
        # every key decide answers with is a row of the table (segment, anchor or default)
        "predicted": float(np.average(per["predicted"], weights=w)) if per["predicted"].notna().all() else np.nan,
        "bid_share": float(truth["bid"].mean()),
        "segments": int(len(result.segment_bids)),
        "features": "+".join(c.name for c in result.features),
        "bands": by_band,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=500_000, help="imported logs the split's runs train on")
    ap.add_argument("--requests", type=int, default=300_000, help="requests of the split: the platform rows")
    ap.add_argument("--score", type=int, default=100_000, help="fresh requests the retrained runs are scored on")
    ap.add_argument("--target", type=float, default=0.4)
    ap.add_argument("--split-targets", default="0.3,0.5")
    args = ap.parse_args()
    spec = MarketSpec(ENTITY, rows=args.rows, seed=202, auction_type="second_price", floor_available=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        wh = open_warehouse(f"duckdb:///{tmp}")
        wh.load_bid_logs(simulate_market(spec))
        runs = [
            tables_of(optimize(wh, run_spec(ENTITY, STATIC, float(t))), f"split_{t}", 50.0)
            for t in args.split_targets.split(",")
        ]
        wh.close()
    print(
        f"market B: {args.rows:,} imported bids; split runs at {args.split_targets} trained in "
        f"{time.perf_counter() - t0:.0f} s"
    )
    state = BidderState({ENTITY: EntityServing(ENTITY, 1, tuple(runs), tuple(100 // len(runs) for _ in runs))})
    start = datetime.now(timezone.utc).replace(tzinfo=None, minute=0, second=0, microsecond=0)
    start -= timedelta(hours=HOURS + 1)
    t0 = time.perf_counter()
    items, notices, truth = through_the_bidder(state, sample_requests(spec, args.requests, seed=1), seed=1, start=start)
    rows = platform_rows(items, notices, start)
    floored = pc.and_(pc.is_valid(rows["floor_cpm"]), pc.less(rows["bid_cpm"], rows["floor_cpm"]))
    n_floored = int(pc.sum(floored.cast(pa.int64())).as_py() or 0)
    wins = int(pc.sum(rows["won"].cast(pa.int64())).as_py())
    print(
        f"{args.requests:,} requests through decide and the auction in {time.perf_counter() - t0:.0f} s: "
        f"{rows.num_rows:,} platform rows, {rows.num_rows - n_floored:,} bids placed ({wins:,} won), "
        f"{n_floored:,} floor no-bids"
    )
    for name, split_run in truth.groupby("run_id"):
        print(f"  split arm {name}: true win rate on the target's basis {split_run['p_true'].mean():.4f}")
    fresh = sample_requests(spec, args.score, seed=2)
    print(f"retrained on the platform rows alone at target {args.target}, scored on {args.score:,} fresh requests:")
    print(
        f"  {'platform rows':<28s} {'|true WR - target|':>18s} {'within 0.05':>11s} {'true WR':>8s} "
        f"{'predicted':>9s} {'bid share':>9s} {'segments':>8s} {'run s':>6s}"
    )
    scored = {}
    for name, part in (
        ("with the floor no-bids", rows),
        ("bids placed only (before)", rows.filter(pc.invert(floored))),
    ):
        t0 = time.perf_counter()
        result = retrain(part, start, args.target)
        seconds = time.perf_counter() - t0
        s = scored[name] = score(result, fresh, args.target)
        print(
            f"  {name:<28s} {s['gap']:>18.4f} {s['within']:>10.1%} {s['true']:>8.4f} {s['predicted']:>9.4f} "
            f"{s['bid_share']:>8.1%} {s['segments']:>8d} {seconds:>6.1f}  features {s['features']}"
        )
    print("  true win rate (target's basis) by the request's floor, CPM:")
    first = next(iter(scored.values()))["bands"]
    print(f"  {'':<28s} " + " ".join(f"{b:>9s}" for b in BAND_LABELS))
    print(f"  {'share of requests':<28s} " + " ".join(f"{n / first['size'].sum():>9.1%}" for n in first["size"]))
    for name, s in scored.items():
        print(f"  {name:<28s} " + " ".join(f"{v:>9.4f}" for v in s["bands"]["mean"]))


if __name__ == "__main__":
    main()

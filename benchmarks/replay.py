"""Replay benchmark: Ray Data against a single process, the same pure replay over the same Parquet.

Trains one run (the optimizer's own code, ``--train-rows`` simulated bids) and simulates ``--rows``
logged requests of the same market (default 10M) into Parquet files of 1M rows. For each size in
``--sizes`` (the first N rows), in one run, side by side:

* ``local``: ``pyarrow`` reads the files in batches and ``replay_partials`` runs on each, here;
* ``ray read_parquet``: ``ray.data.read_parquet -> map_batches -> partial sums`` on a local Ray
  started once beforehand (its start-up time is printed on its own: a cluster is already up);
* ``ray from_arrow`` (the path ``bidopt runs replay`` takes from the warehouse's Arrow batches),
  at the sizes up to ``--arrow-max``.

Prints each time, the ratio ray/local and the smallest measured size where Ray Data was faster.
Both engines are checked to give the same totals.

    python benchmarks/replay.py [--rows 10000000] [--sizes 100000,1000000,10000000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bidopt.bidder.core import RunTables
from bidopt.bidder.fields import DEFAULT_REQUEST_FIELDS, feature_reader
from bidopt.jobs.replay import BATCH_ROWS, replay_arrow_on_ray, replay_local, replay_parquet_on_ray
from bidopt.optimizer.pipeline import RunSpec, optimize
from bidopt.optimizer.replay import ReplayRun, combine_partials, required_columns
from bidopt.simulator import MarketSpec, iter_market_chunks
from bidopt.warehouse import open_warehouse
from bidopt.warehouse.contract import CONTRACT_COLUMNS, FEATURE_COLUMNS

SEED = 7
FILE_ROWS = 1_000_000


def train_run(tmp: Path, rows: int) -> ReplayRun:
    """One run of the simulated market, trained by the optimizer's own code, as the bidder holds it."""
    wh = open_warehouse(f"duckdb:///{tmp / 'train'}")
    for chunk in iter_market_chunks(MarketSpec("bench", rows=rows, seed=SEED, npi_enabled=True)):
        wh.load_bid_logs(chunk)
    fields = {f: DEFAULT_REQUEST_FIELDS[f] for f in FEATURE_COLUMNS}
    spec = RunSpec(
        "bench_run", "bench", "geo_region_name", {f: None for f in FEATURE_COLUMNS},
        {"npi_enabled": True, "domain_enabled": True}, {"target_win_rate": 0.4, "xgb_num_rounds": 100},
        {"min_win_auc": 0.5, "max_win_ece": 1.0, "min_bid_coverage": 0.0}, request_fields=fields,
    )  # fmt: skip
    result = optimize(wh, spec)
    wh.close()
    features = tuple(c.name for c in result.features)
    mult = result.multipliers if result.multipliers is not None else pd.DataFrame(columns=["domain", "multiplier"])
    tables = RunTables(
        "bench_run",
        features,
        tuple(feature_reader(f, fields.get(f)) for f in features),
        dict(zip(result.bids["segment_key"], result.bids["bid_cpm"].astype(float))),
        dict(zip(mult["domain"], mult["multiplier"].astype(float))),
        max_bid_cpm=20.0,
        checksum="bench",
    )
    return ReplayRun(tables, result.model)


def write_logs(folder: Path, rows: int) -> list[Path]:
    """``rows`` simulated requests of the same market in files of FILE_ROWS rows (contract columns)."""
    folder.mkdir(parents=True)
    spec = MarketSpec("bench", rows=rows, seed=SEED + 1, npi_enabled=True, chunk_rows=FILE_ROWS)
    paths = []
    for k, chunk in enumerate(iter_market_chunks(spec)):
        path = folder / f"part-{k:05d}.parquet"
        pq.write_table(chunk.select(list(CONTRACT_COLUMNS)), path, row_group_size=BATCH_ROWS, compression="zstd")
        paths.append(path)
    return paths


def first_rows(paths: list[Path], n: int, folder: Path) -> list[Path]:
    """Files holding the first ``n`` rows (the whole files, and a cut of the last one)."""
    out, left = [], n
    for path in paths:
        if left <= 0:
            break
        rows = pq.ParquetFile(path).metadata.num_rows
        if rows <= left:
            out.append(path)
        else:
            cut = folder / f"first-{n}.parquet"
            pq.write_table(pq.read_table(path).slice(0, left), cut, row_group_size=BATCH_ROWS, compression="zstd")
            out.append(cut)
        left -= rows
    return out


def local_batches(paths: list[Path], columns: list[str]):
    for path in paths:
        yield from pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=columns)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--sizes", default="100000,1000000,3000000,10000000")
    ap.add_argument("--train-rows", type=int, default=200_000)
    ap.add_argument("--arrow-max", type=int, default=3_000_000)
    args = ap.parse_args()
    sizes = sorted({min(int(s), args.rows) for s in args.sizes.split(",")})

    import ray

    with tempfile.TemporaryDirectory(prefix="bidopt-replay-bench-") as tmp_name:
        tmp = Path(tmp_name)
        t, run = timed(lambda: train_run(tmp, args.train_rows))
        print(f"trained a run on {args.train_rows:,} simulated bids in {t:.1f} s: features {run.tables.features}, "
              f"{len(run.tables.bids):,} bid rows, {len(run.tables.multipliers)} multipliers")  # fmt: skip
        t, paths = timed(lambda: write_logs(tmp / "logs", args.rows))
        print(f"simulated {args.rows:,} logged requests into {len(paths)} Parquet files in {t:.1f} s")
        columns = required_columns([run])
        t, _ = timed(lambda: ray.init(address="local", include_dashboard=False, configure_logging=False))
        cpus = int(ray.cluster_resources().get("CPU", 1))
        print(f"local Ray started in {t:.1f} s ({cpus} CPUs; replay tasks of 1 CPU, XGBoost on 1 thread each)")
        try:
            # warm both paths once (imports, actor start-up inside Ray Data are then measured per run)
            small = first_rows(paths, 20_000, tmp)
            replay_local(local_batches(small, columns), [run])
            replay_parquet_on_ray([str(p) for p in small], [run])
            print(f"{'requests':>12}  {'local s':>8}  {'ray read_parquet s':>18}  {'ratio':>6}  "
                  f"{'ray from_arrow s':>16}  {'ratio':>6}")  # fmt: skip
            crossover = None
            for n in sizes:
                files = first_rows(paths, n, tmp)
                t_local, local = timed(lambda: replay_local(local_batches(files, columns), [run]))
                t_ray, on_ray = timed(lambda: replay_parquet_on_ray([str(p) for p in files], [run]))
                a = combine_partials(local, ["bench_run"])[0]["total"]
                b = combine_partials(on_ray, ["bench_run"])[0]["total"]
                assert a["requests"] == b["requests"] == n and a["bids"] == b["bids"], (a, b)
                assert np.isclose(a["expected_wins"], b["expected_wins"], rtol=1e-4), (a, b)
                gap = abs(a["expected_wins"] - b["expected_wins"]) / a["expected_wins"]
                arrow = "-"
                if n <= args.arrow_max:
                    tables = [pa.Table.from_batches([b]) for b in local_batches(files, columns)]
                    t_arrow, _ = timed(lambda: replay_arrow_on_ray(tables, [run]))
                    arrow = f"{t_arrow:16.2f}  {t_arrow / t_local:6.2f}"
                print(
                    f"{n:12,}  {t_local:8.2f}  {t_ray:18.2f}  {t_ray / t_local:6.2f}  {arrow}  (sums differ {gap:.0e})",
                    flush=True,
                )
                if crossover is None and t_ray < t_local:
                    crossover = n
            last = sizes[-1]
            print(
                f"expected win rate at {last:,} requests: {a['expected_win_rate']:.4f}, bid share {a['bid_share']:.4f}"
            )
            print(
                "Ray Data was faster from "
                + (f"{crossover:,} requests on" if crossover else "none of the sizes measured")
            )
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()

"""Warehouse benchmark: the optimizer's segment aggregation over simulated bid logs.

Simulates ROWS bids (default 10M) into a DuckDB/Parquet warehouse in a temp folder, then in
one run times (a) ``aggregate_bids`` of the warehouse layer and (b) a bare DuckDB ``GROUP BY``
written by hand over the same Parquet files, and prints rows/s of each and their ratio.
Also prints how long simulating and loading took.

    python benchmarks/warehouse.py [--rows 10000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import duckdb

from bidopt.data import generate_into_warehouse
from bidopt.simulator import MarketSpec
from bidopt.warehouse import Window, open_warehouse

GROUP_BY = ["geo_region_name", "device_type", "os_code"]
BUCKET = 0.25


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bidopt-bench-") as tmp:
        wh = open_warehouse(f"duckdb:///{tmp}")
        spec = MarketSpec("bench", rows=args.rows, seed=1, npi_enabled=True, floor_available=True)
        t0 = time.perf_counter()
        generate_into_warehouse(wh, spec)
        gen_s = time.perf_counter() - t0
        print(f"simulated and loaded {args.rows:,} rows in {gen_s:.1f} s ({args.rows / gen_s:,.0f} rows/s)")

        summary = wh.summary("bench")
        window = Window(summary["first_time"], summary["last_time"])
        glob = str(Path(tmp) / "bid_logs" / "entity_code=bench" / "*.parquet")
        bare_sql = (
            "SELECT geo_region_name, device_type, os_code, CAST(FLOOR(bid_cpm / 0.25) AS BIGINT) AS b, "
            "COUNT(*), SUM(CASE WHEN won THEN 1 ELSE 0 END), SUM(CASE WHEN won AND clicked THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN won THEN COALESCE(clearing_price_cpm, 0) ELSE 0 END), SUM(bid_cpm) "
            f"FROM read_parquet('{glob}') WHERE event_time >= ? AND event_time < ? GROUP BY 1, 2, 3, 4"
        )
        con = duckdb.connect()

        def ours():
            return wh.aggregate_bids("bench", window, GROUP_BY, bid_bucket_cpm=BUCKET).num_rows

        def bare():
            return con.sql(bare_sql, params=[window.start, window.end]).to_arrow_table().num_rows

        ours(), bare()  # warm the file cache once for both
        times = {"warehouse layer": [], "bare duckdb": []}
        groups = {}
        for _ in range(args.repeat):  # interleaved so that both see the same machine state
            for name, fn in (("warehouse layer", ours), ("bare duckdb", bare)):
                t = time.perf_counter()
                groups[name] = fn()
                times[name].append(time.perf_counter() - t)
        print(
            f"aggregation by {'+'.join(GROUP_BY)} x bid bucket {BUCKET}: {groups['warehouse layer']:,} groups "
            f"(bare: {groups['bare duckdb']:,})"
        )
        med = {k: statistics.median(v) for k, v in times.items()}
        for name, s in med.items():
            print(f"  {name:16s} median {s * 1000:8.1f} ms  {args.rows / s:>14,.0f} rows/s")
        print(f"  ratio warehouse layer / bare duckdb time: {med['warehouse layer'] / med['bare duckdb']:.2f}")
        wh.close()


if __name__ == "__main__":
    main()

"""Scale benchmark: one full optimizer run on 1M and on 10M simulated bids.

Each size gets a fresh embedded platform in a temp folder (SQLite metadata DB,
DuckDB/Parquet warehouse, local artifacts) and one pending run for an entity
like ``drugs_hcp`` (NPI and domains on), processed by the job's own
``process_run`` (the body of the Ray task). Prints the run's wall time, rows/s,
the time of each step, and how time grows from the smallest to the largest size.

    python benchmarks/optimizer.py [--sizes 1000000 10000000] [-c KEY=VALUE ...]

``-c`` sets a run config, as ``bidopt runs create -c`` does (e.g. ``-c adjust_unchosen_features=true``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from bidopt.data import generate_into_warehouse, get_warehouse
from bidopt.db import queries as q
from bidopt.db.engine import dispose_engines, session_scope
from bidopt.db.seed import prepare_demo_database
from bidopt.jobs.optimize import new_worker_id, process_run
from bidopt.settings import get_settings, reset_settings_cache
from bidopt.simulator import MarketSpec


def one_run(rows: int, configs: dict | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="bidopt-scale-") as home:
        os.environ["BIDOPT_HOME"] = home
        for key in ("BIDOPT_DATABASE_URL", "BIDOPT_WAREHOUSE_URL", "BIDOPT_ARTIFACT_URL"):
            os.environ.pop(key, None)
        reset_settings_cache()
        engine = prepare_demo_database(get_settings().database_url)
        with session_scope(engine) as s:
            run_id = q.create_run(s, "drugs_hcp", dict(configs or {}), triggered_by="bench").run_id
        with get_warehouse() as wh:
            generate_into_warehouse(wh, MarketSpec("drugs_hcp", rows=rows, seed=3, npi_enabled=True))
        worker = new_worker_id()
        with session_scope(engine) as s:
            attempt = q.claim_next_pending_run(s, worker).attempts
        steps: list[tuple[float, str]] = []
        t0 = time.perf_counter()
        result = process_run(run_id, worker, attempt, progress=lambda text: steps.append((time.perf_counter(), text)))
        total = time.perf_counter() - t0
        dispose_engines()
    if result["status"] != "completed":
        raise SystemExit(f"run failed: {result}")
    marks = [t0] + [t for t, _ in steps] + [t0 + total]
    step_times = [
        (text[:44], marks[i + 2] - marks[i + 1])
        for i, (_, text) in enumerate(steps)
        if not text.startswith("completed")
    ]
    return {"rows": rows, "seconds": total, "steps": step_times, "segments": result["segments_count"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("-c", "--config", action="append", default=[], metavar="KEY=VALUE", help="a run config")
    args = ap.parse_args()
    configs = dict(item.split("=", 1) for item in args.config)
    results = [one_run(n, configs) for n in args.sizes]
    for r in results:
        print(
            f"{r['rows']:>12,} rows: full run {r['seconds']:6.1f} s  {r['rows'] / r['seconds']:>12,.0f} rows/s  "
            f"({r['segments']} segments)"
        )
        for name, secs in r["steps"]:
            print(f"{'':16s}{name:44s} {secs:6.2f} s")
    first, last = results[0], results[-1]
    if len(results) > 1:
        print(
            f"growth {first['rows']:,} -> {last['rows']:,} rows (x{last['rows'] / first['rows']:.0f}): "
            f"time x{last['seconds'] / first['seconds']:.2f}"
        )


if __name__ == "__main__":
    main()

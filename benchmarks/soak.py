"""Soak: the bidder on Ray Serve under load while the traffic split changes every few seconds.

Builds an embedded platform (three completed runs of ``drugs_hcp``), starts the Serve apps
as ``bidopt serve`` does (in a child process, stopped by its PID), and for ``--seconds``
sends bid requests from ``--concurrency`` asyncio clients on loopback while an operator
replaces the split every ``--split-every`` seconds. Prints requests served, errors (any
answer other than 200/204, or a transport error: must be 0), and for every split the
share of bids per run against its weights, counting only requests answered under that
split (the response names its ``split_id``).

    python benchmarks/soak.py [--seconds 60] [--split-every 3] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from bidder import free_port, wait_bidding  # noqa: E402 - the benchmark next door

SPLITS = [(80, 20, 0), (50, 30, 20), (0, 0, 100), (0, 60, 40), (34, 33, 33)]


def setup(home: Path) -> list[str]:
    os.environ.update({"BIDOPT_HOME": str(home), "BIDOPT_BIDDER_REFRESH_SECONDS": "1",
                       "RAY_AUTH_MODE": "disabled"})
    from bidopt.data import generate_into_warehouse, get_warehouse
    from bidopt.db import queries as q
    from bidopt.db.engine import session_scope
    from bidopt.db.seed import prepare_demo_database
    from bidopt.jobs.optimize import run_optimizer
    from bidopt.settings import get_settings, reset_settings_cache
    from bidopt.simulator import MarketSpec

    reset_settings_cache()
    engine = prepare_demo_database(get_settings().database_url)
    with session_scope(engine) as s:
        ids = [q.create_run(s, "drugs_hcp", {"target_win_rate": t, "xgb_num_rounds": 60}, triggered_by="soak").run_id
               for t in (0.3, 0.45, 0.6)]
    with get_warehouse() as wh:
        generate_into_warehouse(wh, MarketSpec("drugs_hcp", rows=200_000, seed=8, npi_enabled=True))
    run_optimizer(once=True, use_ray=False, on_result=lambda r: None)
    return ids


def set_split(ids: list[str], pcts: tuple[int, ...]) -> int:
    from bidopt import service
    from bidopt.db.engine import get_engine, session_scope
    from bidopt.settings import get_settings

    with session_scope(get_engine(get_settings().database_url)) as s:
        view = service.set_traffic_split(s, "drugs_hcp", {r: p for r, p in zip(ids, pcts) if p},
                                         deployed_by="soak")
    return view["split_id"]


async def load(url: str, seconds: float, concurrency: int, stats: dict) -> None:
    counter = itertools.count()
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:
        async def worker() -> None:
            while time.monotonic() < deadline:
                n = next(counter)
                body = {"id": f"soak-{n}", "imp": [{"id": "1"}], "user": {"id": f"user-{n}"},
                        "device": {"geo": {"region": ["CA", "TX", "NY", "FL"][n % 4]}, "os": "iOS"}}
                try:
                    r = await client.post(url, json=body)
                except httpx.HTTPError as exc:
                    stats["errors"][type(exc).__name__] += 1
                    continue
                stats["requests"] += 1
                if r.status_code == 200:
                    data = r.json()
                    stats["per_split"][data["ext"]["split_id"]][data["seatbid"][0]["bid"][0]["ext"]["run_id"]] += 1
                elif r.status_code != 204:
                    stats["errors"][f"HTTP {r.status_code}"] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def rotate(ids: list[str], seconds: float, every: float, weights: dict) -> None:
    deadline = time.monotonic() + seconds
    for pcts in itertools.cycle(SPLITS[1:]):
        await asyncio.sleep(every)
        if time.monotonic() >= deadline - 1:
            return
        split_id = await asyncio.to_thread(set_split, ids, pcts)
        weights[split_id] = dict(zip(ids, pcts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--split-every", type=float, default=3)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bidopt-soak-") as tmp:
        ids = setup(Path(tmp))
        weights = {set_split(ids, SPLITS[0]): dict(zip(ids, SPLITS[0]))}
        port = free_port()
        code = ("import signal, sys, time; from ray import serve; from bidopt.serve.apps import run_apps; "
                f"run_apps(port={port}); signal.signal(signal.SIGTERM, lambda *a: (serve.shutdown(), sys.exit(0))); "
                "print('up', flush=True); time.sleep(100000)")
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 text=True)
        try:
            assert child.stdout.readline().strip() == "up", "serve did not start"
            url = f"http://127.0.0.1:{port}/openrtb2/drugs_hcp"
            wait_bidding(url)
            stats = {"requests": 0, "errors": Counter(), "per_split": defaultdict(Counter)}

            async def soak() -> None:
                await asyncio.gather(load(url, args.seconds, args.concurrency, stats),
                                     rotate(ids, args.seconds, args.split_every, weights))

            started = time.monotonic()
            asyncio.run(soak())
            elapsed = time.monotonic() - started
        finally:
            child.terminate()  # the child shuts Serve down and its own Ray; never `ray stop`
            child.wait(timeout=120)
    print(f"{elapsed:.0f} s, concurrency {args.concurrency}, split changed every {args.split_every:g} s "
          f"({len(weights)} splits)")
    print(f"requests served: {stats['requests']:,} ({stats['requests'] / elapsed:,.0f}/s)")
    print(f"errors: {sum(stats['errors'].values())} {dict(stats['errors']) or ''}")
    print("share of bids per run under each split (observed vs weight):")
    worst = 0.0
    for split_id in sorted(stats["per_split"]):
        counts = stats["per_split"][split_id]
        total = sum(counts.values())
        expected = weights.get(split_id, {})
        parts = []
        for run_id in ids:
            share, want = counts.get(run_id, 0) / total, expected.get(run_id, 0) / 100
            worst = max(worst, abs(share - want)) if total >= 1000 else worst
            parts.append(f"{run_id[-9:]} {share:6.1%} vs {want:4.0%}")
        print(f"  split {split_id:>3} ({total:>6,} bids): " + " | ".join(parts))
    print(f"largest gap between share and weight (splits with 1,000+ bids): {worst:.1%}")


if __name__ == "__main__":
    main()

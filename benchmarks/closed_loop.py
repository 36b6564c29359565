"""Closed-loop benchmark: the A/B readout against the exchange's own count, a guardrail rollback,
retraining on the platform's own traffic, and the notice route's throughput through Serve.

Builds an embedded platform in a temp folder (SQLite, simulated logs of ``drugs_hcp``, three
optimizer runs: targets 0.4 and 0.65, and one that underbids with ``max_bid_cpm`` 0.05), then:

1. ``bidopt serve``'s apps (HAProxy ingress, throughput-optimised mode) in a child process, a 50/50
   split of the first two runs, and ``--requests`` requests from ``bidopt.exchange`` (the same
   market the logs came from; auctions against each request's true competing bid; 2% of notices
   late, 3% replayed, 1% forged, 1% test requests). Prints, per arm, what the exchange counted
   next to what the readout (``service.split_report``) says, with intervals, and the tests.
2. ``compact_events`` loads those events into the warehouse as platform rows (twice: the second
   adds nothing) and a new run trains on them alone: its validation and model metrics.
3. The underbidding run joins at 20%: how long until the control loop's guardrail replaces the
   split, and until every bidder replica serves the replacement.
4. The notice route's throughput: ``wrk`` sends signed win notices (each once) to the bidder on
   Serve, then to the same handler under bare uvicorn, at concurrency 8 (``benchmarks/bidder.py``'s
   method: side by side in one run, the ratio printed).

    apt-get install wrk
    python benchmarks/closed_loop.py [--requests 20000] [--seconds 8]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bidder import LUA_STATUS_TALLY, free_port, start_serve, wrk  # noqa: E402 - the bidder benchmark's helpers

SECRET = "closed-loop-benchmark-secret"
NOTICE_LUA = r"""
local paths = {}
local n = 0
init = function(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
end
request = function()
  n = n + 1
  return wrk.format("GET", paths[(n - 1) % #paths + 1])
end
"""
NOTICE_LUA += LUA_STATUS_TALLY


def setup_platform(home: Path) -> tuple[list[str], object]:
    os.environ.update(
        {
            "BIDOPT_HOME": str(home),
            "BIDOPT_BIDDER_REFRESH_SECONDS": "1",
            "BIDOPT_EVENTS_FLUSH_SECONDS": "1",
            "BIDOPT_CONTROL_LOOP_SECONDS": "2",
            "BIDOPT_NOTICE_SECRET": SECRET,
            "RAY_AUTH_MODE": "disabled",
        }
    )
    from bidopt import service
    from bidopt.data import generate_into_warehouse, get_warehouse
    from bidopt.db import queries as q
    from bidopt.db.engine import session_scope
    from bidopt.db.seed import prepare_demo_database
    from bidopt.jobs.optimize import run_optimizer
    from bidopt.logs import configure_logging
    from bidopt.settings import get_settings, reset_settings_cache
    from bidopt.simulator import MarketSpec

    reset_settings_cache()
    engine = prepare_demo_database(get_settings().database_url)
    small = {"xgb_num_rounds": 60}
    with session_scope(engine) as s:
        ids = [
            q.create_run(s, "drugs_hcp", {**small, **extra}, triggered_by="bench").run_id
            for extra in (
                {"target_win_rate": 0.4},
                {"target_win_rate": 0.65},
                {"target_win_rate": 0.4, "min_bid_cpm": 0.01, "max_bid_cpm": 0.05},
            )
        ]
        service.set_entity_configs(s, "drugs_hcp", {"guardrail_min_bids": 500, "guardrail_min_wins": 20})
    with get_warehouse() as wh:
        generate_into_warehouse(wh, MarketSpec("drugs_hcp", rows=300_000, seed=4, npi_enabled=True))
    configure_logging()
    run_optimizer(once=True, use_ray=False, on_result=lambda r: None)
    return ids, engine


def wait_for(predicate, seconds: float):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    return None


def split_is_live(engine, split_id: int) -> bool:
    from bidopt import service
    from bidopt.db.engine import session_scope

    with session_scope(engine) as s:
        view = service.split_view(s, "drugs_hcp")
    return view["split_id"] == split_id and view["bidders"]["live"]


def ci(c: dict, digits: int = 3, scale: float = 1.0) -> str:
    if c.get("value") is None:
        return "-"
    return f"{c['value'] * scale:.{digits}f} [{c['low'] * scale:.{digits}f}, {c['high'] * scale:.{digits}f}]"


def signed_win_paths(n: int, run_id: str, split_id: int, prefix: str) -> list[str]:
    """``n`` distinct, validly signed win notice paths (price and min-to-win filled in)."""
    from bidopt.notices import NoticeSigner

    signer = NoticeSigner(SECRET.encode())
    now_ms = int(time.time() * 1000)
    paths = []
    for i in range(n):
        url = signer.urls("http://x", "drugs_hcp", f"{prefix}-{i}", "1", run_id, split_id, 2.5, now_ms, False)["nurl"]
        paths.append(url[len("http://x") :].replace("${AUCTION_PRICE}", "1.75").replace("${AUCTION_MIN_TO_WIN}", "1.7"))
    return paths


def notice_throughput(name: str, base: str, paths_file: Path, seconds: int, script: Path) -> dict:
    r = wrk(base, 8, seconds, script, str(paths_file))
    others = {k: v for k, v in r["statuses"].items() if k not in (200,) and v}
    print(
        f"  {name:14s} c=8  {r['rps']:>9,.0f} notices/s  p50 {r['p50']:6.2f} ms  p99 {r['p99']:7.2f} ms  "
        f"not 200: {others or 'none'}",
        flush=True,
    )
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--seconds", type=int, default=8, help="seconds per notice-throughput point")
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    with tempfile.TemporaryDirectory(prefix="bidopt-loop-") as tmp:
        t0 = time.time()
        (run_a, run_b, run_c), engine = setup_platform(Path(tmp))
        from bidopt import service
        from bidopt.data import get_warehouse
        from bidopt.db import queries as q
        from bidopt.db.engine import session_scope
        from bidopt.db.models import utcnow
        from bidopt.exchange import simulate_exchange
        from bidopt.jobs.optimize import run_optimizer
        from bidopt.simulator import MarketSpec

        market = MarketSpec("drugs_hcp", seed=4, npi_enabled=True)
        with session_scope(engine) as s:
            split = service.set_traffic_split(s, "drugs_hcp", {run_a: 50, run_b: 50}, deployed_by="bench")
        port = free_port()
        from bidopt.serve.apps import SERVE_MODE_ENV

        serve = start_serve(port, SERVE_MODE_ENV)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: split_is_live(engine, split["split_id"]), 60)
            print(f"{os.cpu_count()} cores; platform, 3 runs and Serve up in {time.time() - t0:.0f} s", flush=True)

            # 1. the readout against the exchange's own count
            seen = simulate_exchange(
                market,
                base + "/openrtb2/drugs_hcp",
                args.requests,
                concurrency=args.concurrency,
                seed=21,
                late_fraction=0.02,
                late_seconds=1.0,
                duplicate_fraction=0.03,
                forged_fraction=0.01,
                test_fraction=0.01,
            ).as_dict()
            time.sleep(3)  # flushed by every replica
            t = time.perf_counter()
            with session_scope(engine) as s:
                report = service.split_report(s, "drugs_hcp", split["split_id"])
            report_s = time.perf_counter() - t
            print(
                f"\n1. {seen['requests']:,} requests through Serve in {seen['seconds']:.0f} s "
                f"({seen['requests_per_second']:.0f}/s with their notices); answers {seen['answers']}"
            )
            truth = {a["run_id"]: a for a in seen["arms"]}
            print(
                f"   {'arm':10s} {'target':>6s} | {'exchange: bids':>14s} {'wins':>6s} {'rate':>6s} {'true P':>6s} | "
                f"{'readout: bids':>13s} {'wins':>6s} win rate [95%]        spend [95%]           eCPM   CTR [95%]"
            )
            for arm in report["arms"]:
                ex = truth.get(arm["run_id"], {})
                print(
                    f"   {arm['run_id'][-10:]:10s} {arm['target_win_rate']:6.2f} | {ex.get('bids', 0):14,d} "
                    f"{ex.get('wins', 0):6,d} {ex.get('wins', 0) / max(ex.get('bids', 1), 1):6.3f} "
                    f"{ex.get('true_win_probability') or 0:6.3f} | {arm['bids']:13,d} {arm['wins']:6,d} "
                    f"{ci(arm['win_rate']):22s} {ci(arm['spend'], 2):21s} {arm['ecpm']['value'] or 0:6.3f} "
                    f"{ci(arm['ctr'], 2, 100)} %"
                )
            for c in report["comparisons"]:
                print(
                    f"   {c['metric']:8s} {c['run_b'][-6:]} - {c['run_a'][-6:]}: {c['difference']:+.4f} "
                    f"[{c['low']:+.4f}, {c['high']:+.4f}], p = {c['p_value']:.2g}, "
                    f"{'significant' if c['significant'] else 'not significant'} ({c['method']})"
                )
            n = seen["notices"]
            print(
                f"   forged notices: {n['forged']['sent']} sent, {n['forged']['rejected_4xx']} refused with a 4xx "
                f"(by kind: { {k: (v['sent'], v['rejected_4xx']) for k, v in n['forged']['by_kind'].items()} }); "
                f"replays: {n['duplicates']['sent']} sent, {n['duplicates']['answers'].get('409', 0)} refused at "
                f"the door, {report['duplicates_dropped']} dropped by the readout; late: {n['late']['sent']}; "
                f"test requests excluded: {report['test_requests_excluded']}"
            )
            exact = all(
                (a["bids"], a["wins"], a["clicks"])
                == (truth[a["run_id"]]["bids"], truth[a["run_id"]]["wins"], truth[a["run_id"]]["clicks"])
                for a in report["arms"]
            )
            print(f"   readout equals the exchange's count in every arm: {exact}; report built in {report_s:.2f} s")

            # 2. back into training: the first split's events
            with session_scope(engine) as s:
                until = (utcnow() + timedelta(hours=2)).isoformat()
                t = time.perf_counter()
                first = service.compact_events(s, "drugs_hcp", until=until, compacted_by="bench")
                compact_s = time.perf_counter() - t
                second = service.compact_events(s, "drugs_hcp", until=until, compacted_by="bench")
                retrain = q.create_run(
                    s, "drugs_hcp", {"xgb_num_rounds": 60, "target_win_rate": 0.5}, triggered_by="bench"
                ).run_id
            with get_warehouse() as wh:
                sources = wh.traffic_sources("drugs_hcp")
            t = time.perf_counter()
            run_optimizer(once=True, use_ray=False, on_result=lambda r: None)
            train_s = time.perf_counter() - t
            with session_scope(engine) as s:
                run = q.get_run(s, retrain)
                metrics = q.get_run_metrics(s, retrain)
            print(
                f"\n2. compaction: {first['rows_loaded']:,} platform rows in {compact_s:.1f} s; again: "
                f"{second['rows_loaded']:,} rows (replaced, warehouse now {sources}); a new run on them: "
                f"{run.status}, validation {run.validation_status}, win AUC "
                f"{metrics['win_rate_model'].get('auc', float('nan')):.3f}, ECE "
                f"{metrics['win_rate_model'].get('ece', float('nan')):.3f}, trained on "
                f"{metrics['global_stats']['bids']:,.0f} bids in {train_s:.1f} s"
            )

            # 3. a guardrail rollback
            with session_scope(engine) as s:
                trial = service.set_traffic_split(
                    s, "drugs_hcp", {run_a: 40, run_b: 40, run_c: 20}, deployed_by="bench"
                )
            wait_for(lambda: split_is_live(engine, trial["split_id"]), 60)
            started = time.time()
            simulate_exchange(market, base + "/openrtb2/drugs_hcp", 5_000, concurrency=args.concurrency, seed=22)

            def newest():
                with session_scope(engine) as s:
                    h = service.split_history(s, "drugs_hcp")[0]
                return h if h["split_id"] != trial["split_id"] else None

            rollback = wait_for(newest, 120)
            tripped = time.time() - started
            live = wait_for(lambda: split_is_live(engine, rollback["split_id"]), 60) if rollback else None
            print(
                f"\n3. underbidding run at 20%: guardrail replaced the split {tripped:.0f} s after its traffic began "
                f"(by {rollback and rollback['deployed_by']}: {rollback and rollback['reason']}); "
                f"every replica served the replacement {time.time() - started - tripped:.1f} s later: {bool(live)}"
            )

            # 4. notice throughput: Serve, then the same handler under bare uvicorn
            script = Path(tmp) / "notices.lua"
            script.write_text(NOTICE_LUA)
            print(f"\n4. notice route (GET win notices, each once), wrk -t1 -c8, {args.seconds} s per point")
            results = {}
            for name, prefix in (("serve haproxy", "s"), ("bare uvicorn", "b")):
                paths = Path(tmp) / f"paths-{prefix}.txt"
                paths.write_text(
                    "\n".join(
                        signed_win_paths(
                            25_000 * args.seconds,
                            run_a,
                            rollback["split_id"] if rollback else split["split_id"],
                            prefix,
                        )
                    )
                    + "\n"
                )
                if name == "serve haproxy":
                    results[name] = notice_throughput(name, base, paths, args.seconds, script)
                    serve.terminate()
                    serve.wait(timeout=120)
                    serve = None
                    time.sleep(2)
                    continue
                bare_port = free_port()
                bare = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "--factory",
                        "bidopt.bidder.app:bare_app",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(bare_port),
                        "--no-access-log",
                        "--log-level",
                        "warning",
                    ],
                    env=os.environ.copy(),
                )
                try:
                    wait_for(lambda: _answers(f"http://127.0.0.1:{bare_port}/openrtb2/_status"), 60)
                    results[name] = notice_throughput(
                        name, f"http://127.0.0.1:{bare_port}", paths, args.seconds, script
                    )
                finally:
                    bare.terminate()
                    bare.wait(timeout=30)
            s8, b8 = results["serve haproxy"], results["bare uvicorn"]
            print(f"   ratio serve / bare: throughput {s8['rps'] / b8['rps']:.2f}, p99 {s8['p99'] / b8['p99']:.2f}x")
        finally:
            if serve is not None:
                serve.terminate()
                serve.wait(timeout=120)


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()

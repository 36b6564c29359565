"""Bidder fleet benchmark: the tiered bidder (memcached behind a near cache bounded in bytes) against the
all-in-memory bidder, on the same fleet, through Serve, side by side in one run.

**The fleet** (``--entities`` 500 x ``--segments`` 20,000): each entity has two completed runs over two
features, ``geo_region_name`` (the anchor, read from ``device.geo.region``) and ``domain``
(``site.domain``): 50 regions x 400 domains of full keys, the 50 anchor rows and the entity default.
The runs' artifacts are **written directly** in the artifact store's format (``suggested_bids.csv``,
``domain_multipliers.csv`` and the manifest, through ``write_run_artifacts``) and recorded as completed
in the database (features with their request fields, validation passed): a thousand optimizer runs
would take hours here and would measure the optimizer, not the bidder. Every entity serves its first
run; the second is for the split change.

**Traffic**: wrk (``-t1``) with a Lua script drawing the entity and the segment from Zipf distributions
(exponent ``--zipf``, several values measured in one run; rank 1 the most requested). Each point:
``--warm`` seconds at c=32 to fill the near caches, then ``--seconds`` at c=8: req/s, p50, p99, the
share of bids answered at ``segment`` level (the rest came from a back-off row: the accuracy cost of a
miss), and the near-cache hit ratio over the measured interval (the replicas' counters, read from their
status rows).

**Modes**, each a fresh Serve in a child process with two replicas (min = max: no autoscaling) and a
fresh memcached: ``memory`` (``BIDOPT_CACHE_URL=memory://``: every table in every replica),
``tiered`` (``memcached://``, ``BIDOPT_BIDDER_NEAR_MISS=backoff``, near cache ``--near-mb``), ``tiered-fetch`` (a
miss read from memcached on the request path) and ``tiered-small`` (backoff with a near cache of
``--small-near-mb``, small enough to evict). Per mode also: the time until Serve is up (Ray start and the first load
of every table), each replica's RSS, and the time from a split change of one entity until every
replica reports serving it (refresh interval 1 s).

``--one-entity``: after the warm-up, ``--rounds`` rounds of a point of the fleet's traffic and a point
of the same traffic to ``fleet000`` alone, on the same replicas, alternated, and their medians side by
side: what spreading the traffic over the fleet costs a request (each entity's events, metric series
and near-cache keys), apart from what the host costs any request that day.

First, in this process, the request-path options for a miss, measured alone: a near-cache hit, a miss
queued for the background fill, a synchronous ``get_many`` from memcached, and the same in a thread pool
awaited from an event loop (what the replica's loop would spend, and wait).

    apt-get install wrk memcached
    flock /tmp/bidopt-serve.lock python benchmarks/bidder_fleet.py [--entities 500 --segments 20000]
                                         [--modes tiered --zipf 1.6 --one-entity --rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bidder import free_port, start_serve, wait_for_port, wrk  # noqa: E402 - the Serve machinery of benchmarks/bidder.py

REGION_CODES = [
    "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "FL", "GA", "HI", "ID", "IL", "IN", "IA", "KS", "KY",
    "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH", "NJ", "NM", "NY", "NC", "ND",
    "OH", "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT", "VT", "VA", "WA", "WV", "WI", "WY",
]  # fmt: skip
N_REGIONS = len(REGION_CODES)

LUA = r"""
local E, S, D, s = 500, 20000, 400, 1.0
local ecdf, scdf = {}, {}
local regions = {%(regions)s}
counter = 0
local function cdf(n, s)
  local c, total = {}, 0
  for i = 1, n do total = total + 1 / (i ^ s); c[i] = total end
  for i = 1, n do c[i] = c[i] / total end
  return c
end
function init(args)
  E, S, s = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  D = math.ceil(S / #regions)
  math.randomseed(tonumber(args[4]))
  ecdf, scdf = cdf(E, s), cdf(S, s)
end
local function draw(c, n)
  local u, lo, hi = math.random(), 1, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if c[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo - 1
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  counter = counter + 1
  local e, g = draw(ecdf, E), draw(scdf, S)
  local body = string.format('{"id":"r%%d","imp":[{"id":"1","bidfloor":0.01}],"site":{"domain":"pub%%05d.com"},' ..
    '"device":{"geo":{"region":"%%s"}},"user":{"id":"u%%d"}}', counter, g %% D, regions[math.floor(g / D) + 1], counter)
  return wrk.format(nil, string.format("/openrtb2/fleet%%03d", e), nil, body)
end
threads = {}
setup = function(thread) table.insert(threads, thread) end
counts = {}
segments = 0
response = function(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
  if status == 200 and string.find(body, '"level":"segment"', 1, true) then segments = segments + 1 end
end
done = function(summary, latency, requests)
  local total, seg = {}, 0
  for _, t in ipairs(threads) do
    for st, n in pairs(t:get("counts")) do total[st] = (total[st] or 0) + n end
    seg = seg + t:get("segments")
  end
  for st, n in pairs(total) do io.write(string.format("status %%d %%d\n", st, n)) end
  io.write(string.format("segment %%d\n", seg))
end
""" % {"regions": ", ".join(f'"{c}"' for c in REGION_CODES)}


def table_csv(entity: int, run: int, segments: int) -> bytes:
    """A run's bid table: full keys (region x domain), anchor rows, the default; prices differ per run."""
    per_region = -(-segments // N_REGIONS)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["segment_key", "bid_cpm"])
    base = 1.0 + run + (entity % 7) * 0.1
    w.writerow(["*|*", f"{base:.4f}"])
    from bidopt.bidder.fields import US_STATES

    n = 0
    for r, code in enumerate(REGION_CODES):
        region = US_STATES[code]
        w.writerow([f"{region}|*", f"{base + 0.01 * r:.4f}"])
        for d in range(per_region):
            if n == segments:
                break
            w.writerow([f"{region}|pub{d:05d}.com", f"{base + 0.5 + 0.0001 * d + 0.001 * r:.4f}"])
            n += 1
    return out.getvalue().encode()


def build_fleet(home: Path, entities: int, segments: int, guardrails: bool = False) -> dict:
    """The database, the artifacts and the first splits; returns ``{"runs": {code: (run a, run b)}}``.
    ``guardrails``: whether the entities' guardrails are on (the control loop judges each split)."""
    os.environ.update({"BIDOPT_HOME": str(home), "RAY_AUTH_MODE": "disabled"})
    from sqlalchemy import update

    from bidopt import catalogue
    from bidopt.artifacts import run_output_url, write_run_artifacts
    from bidopt.db import queries as q
    from bidopt.db.engine import session_scope
    from bidopt.db.models import OptRun
    from bidopt.db.seed import prepare_demo_database
    from bidopt.settings import get_settings, reset_settings_cache

    reset_settings_cache()
    s = get_settings()
    engine = prepare_demo_database(s.database_url)
    features = [
        q.FeatureRecord("geo_region_name", 0, True, None, None, "device.geo.region"),
        q.FeatureRecord("domain", 1, False, None, None, "site.domain"),
    ]
    runs: dict[str, tuple[str, str]] = {}
    started = time.perf_counter()
    t0 = datetime(2026, 1, 1)
    with session_scope(engine) as session:
        for i in range(entities):
            code = f"fleet{i:03d}"
            catalogue.create_entity(
                session,
                code=code,
                name=code,
                source="ADX",
                version="v1",
                configs={"guardrail_enabled": guardrails},
                actor="bench",
            )
            ids = []
            for run in range(2):
                run_id = q.create_run(
                    session, code, {"max_bid_cpm": 50.0}, triggered_by="bench", now=t0 + timedelta(seconds=2 * i + run)
                ).run_id
                url = run_output_url(s.artifact_url, code, run_id)
                write_run_artifacts(
                    url,
                    {
                        "suggested_bids.csv": table_csv(i, run, segments),
                        "domain_multipliers.csv": b"domain,multiplier\npub00000.com,1.1\n",
                    },
                    meta={"run_id": run_id, "entity": code},
                )
                q.record_run_features(session, run_id, features)
                session.execute(
                    update(OptRun)
                    .where(OptRun.run_id == run_id)
                    .values(status="completed", s3_output_path=url, validation_status="passed", segments_count=segments)
                )
                ids.append(run_id)
            runs[code] = (ids[0], ids[1])
    with session_scope(engine) as session:
        for code, (a, _) in runs.items():
            q.replace_traffic_split(session, code, {a: 100}, deployed_by="bench")
    took = time.perf_counter() - started
    print(f"fleet: {entities} entities x {segments:,} segments written in {took:.0f} s", flush=True)
    return {"runs": runs, "engine": engine}


def start_memcached(megabytes: int) -> tuple[subprocess.Popen, int]:
    exe = shutil.which("memcached")
    if exe is None:
        raise SystemExit("memcached is not installed: apt-get install memcached")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", str(megabytes), "-u", "nobody", "-t", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if wait_for_port(port, 10):
        return proc, port
    proc.kill()
    raise SystemExit("memcached did not start")


def replica_rows(engine) -> list[dict]:
    from bidopt.db import bidder_status
    from bidopt.db.engine import session_scope

    with session_scope(engine) as s:
        return [
            {
                "replica_id": r.replica_id,
                "pid": r.pid,
                "ready": r.ready,
                "serving": json.loads(r.serving or "{}"),
                "counters": json.loads(r.counters or "{}"),
            }
            for r in bidder_status.list_replicas(s)
        ]


def live_rows(engine, pids: set[int]) -> list[dict]:
    return [r for r in replica_rows(engine) if r["pid"] in pids]


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def near_totals(rows: list[dict]) -> tuple[int, int]:
    hits = sum(r["counters"].get("near_cache", {}).get("hits", 0) for r in rows)
    misses = sum(r["counters"].get("near_cache", {}).get("misses", 0) for r in rows)
    return hits, misses


def wrk_point(url: str, connections: int, seconds: int, script: Path, args: list[str]) -> dict:
    """``benchmarks/bidder.py``'s wrk point, plus the requests the script saw bid at segment level."""
    import re

    point = wrk(url, connections, seconds, script, *args)
    point["segment"] = int(re.search(r"^segment (\d+)$", point["output"], re.M).group(1))
    return point


def measure_point(engine, pids: set[int], url: str, seconds: int, script: Path, wargs: list[str]) -> dict:
    """One c=8 point, with the near-cache hit ratio over it (the replicas' status rows before and after)."""
    before = near_totals(live_rows(engine, pids))
    p = wrk_point(url, 8, seconds, script, wargs)
    time.sleep(2.5)  # a refresh or two: the counters in the rows are current
    after = near_totals(live_rows(engine, pids))
    hits, misses = after[0] - before[0], after[1] - before[1]
    p["hit_ratio"] = hits / (hits + misses) if hits + misses else None
    total = sum(p["statuses"].values()) or 1
    p["segment_share"] = p["segment"] / total
    p["other"] = {k: v for k, v in p["statuses"].items() if k != 200}
    p["load"] = os.getloadavg()[0]  # the host's 1-minute load: other work shares these 2 cores
    return p


def wait_replicas(engine, want: int, timeout: float = 120) -> list[dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = [r for r in replica_rows(engine) if r["ready"]]
        if len(rows) >= want:
            return rows
        time.sleep(0.5)
    raise SystemExit(f"fewer than {want} ready replicas reported")


def run_mode(name: str, env: dict, fleet: dict, args, script: Path, results: dict) -> None:
    from bidopt.db import queries as q
    from bidopt.db.engine import session_scope
    from bidopt.db.models import OptBidderReplica
    from bidopt.serve.apps import SERVE_MODE_ENV

    engine = fleet["engine"]
    with session_scope(engine) as s:  # rows of earlier modes' replicas
        s.query(OptBidderReplica).delete()
    memcached = None
    if name != "memory":
        memcached, port = start_memcached(args.memcached_mb)
        env = {**env, "BIDOPT_CACHE_URL": f"memcached://127.0.0.1:{port}"}
    serve_port = free_port()
    started = time.perf_counter()
    proc = start_serve(
        serve_port,
        {
            **SERVE_MODE_ENV,
            "BIDOPT_BIDDER_REFRESH_SECONDS": "1",
            "BIDOPT_BIDDER_MIN_REPLICAS": "2",
            "BIDOPT_BIDDER_MAX_REPLICAS": "2",
            "BIDOPT_BIDDER_READY_TIMEOUT_SECONDS": "600",
            **env,
        },
    )
    up = time.perf_counter() - started
    r: dict = {"up_s": up, "points": {}}
    results[name] = r
    try:
        rows = wait_replicas(engine, 2)
        pids = {row["pid"] for row in rows}
        r["rss_start"] = [rss_mb(p) for p in sorted(pids)]
        url = f"http://127.0.0.1:{serve_port}/openrtb2/fleet000"
        print(
            f"  {name:12s} Serve up in {up:5.1f} s; replica RSS {' / '.join(f'{m:,.0f}' for m in r['rss_start'])} MB",
            flush=True,
        )
        for zipf in args.zipf:
            wargs = [str(args.entities), str(args.segments), str(zipf), "7"]
            wrk_point(url, 32, args.warm, script, wargs)
            time.sleep(1.5)  # one refresh: the counters in the rows are current
            # with --one-entity, rounds of the fleet's traffic and of fleet000's alone on the same replicas,
            # alternated (fleet first in odd rounds): what spreading the traffic over the fleet costs
            order = ["fleet"]
            if args.one_entity:
                order = [t for k in range(args.rounds) for t in (("fleet", "one") if k % 2 == 0 else ("one", "fleet"))]
            for traffic in order:
                targs = wargs if traffic == "fleet" else ["1", *wargs[1:]]
                label = name if traffic == "fleet" else f"{name} 1 entity"
                p = measure_point(engine, pids, url, args.seconds, script, targs)
                r.setdefault("rounds", {}).setdefault((zipf, traffic), []).append(p)
                if traffic == "fleet":
                    r["points"].setdefault(zipf, p)  # the first: what the side-by-side against memory reads
                hr = f"{p['hit_ratio']:6.1%}" if p["hit_ratio"] is not None else "     -"
                label = f"{label:{21 if args.one_entity else 12}s}"
                print(
                    f"  {label} zipf {zipf:<4} c=8 {p['rps']:>7,.0f} req/s  p50 {p['p50']:5.2f} ms  "
                    f"p99 {p['p99']:6.2f} ms  segment-level bids {p['segment_share']:6.1%}  near-cache hit ratio {hr}  "
                    f"non-200 {p['other'] or 'none'}  host load {p['load']:.1f}",
                    flush=True,
                )
            if args.one_entity:
                fleet_runs, one_runs = r["rounds"][(zipf, "fleet")], r["rounds"][(zipf, "one")]
                rps = statistics.median(p["rps"] for p in fleet_runs) / statistics.median(p["rps"] for p in one_runs)
                p99s = statistics.median(p["p99"] for p in fleet_runs), statistics.median(p["p99"] for p in one_runs)
                print(
                    f"  {name:12s} zipf {zipf:<4} the fleet's traffic against fleet000's alone, medians of "
                    f"{args.rounds}: throughput {rps:.2f}x, p99 {p99s[0]:.2f} vs {p99s[1]:.2f} ms "
                    f"({p99s[0] / p99s[1]:.2f}x)",
                    flush=True,
                )
        r["rss_end"] = [rss_mb(p) for p in sorted(pids)]
        rows = live_rows(engine, pids)
        r["near"] = [row["counters"].get("near_cache") for row in rows]
        # a split change of one entity: until every replica reports serving it
        code = "fleet000"
        a, b = fleet["runs"][code]
        with session_scope(engine) as s:
            current = q.get_current_traffic_split(s, code)
            new_run = b if current[0].run_id == a else a
            t0 = time.perf_counter()
            q.replace_traffic_split(s, code, {new_run: 100}, deployed_by="bench")
        with session_scope(engine) as s:
            split_id = q.get_current_traffic_split(s, code)[0].split_id
        while True:
            rows = live_rows(engine, pids)
            if len(rows) >= 2 and all(row["serving"].get(code, {}).get("split_id") == split_id for row in rows):
                break
            if time.perf_counter() - t0 > 120:
                raise SystemExit("the split change never reached every replica")
            time.sleep(0.02)
        r["split_s"] = time.perf_counter() - t0
        print(
            f"  {name:12s} split change served by every replica after {r['split_s']:.2f} s; replica RSS after "
            f"traffic {' / '.join(f'{m:,.0f}' for m in r['rss_end'])} MB",
            flush=True,
        )
        if r["near"] and r["near"][0]:
            n = r["near"][0]
            print(
                f"  {name:12s} near cache (one replica): {n['bytes'] / 2**20:.1f} of {n['max_bytes'] / 2**20:.1f} "
                f"MiB, {n['entries']:,} entries, {n['evictions']:,} evictions, pinned rows "
                f"{n['pinned_bytes'] / 2**20:.1f} MiB, published here {n['published_versions']} run versions",
                flush=True,
            )
    finally:
        proc.terminate()  # this child's Ray only (never `ray stop`)
        proc.wait(timeout=180)
        if memcached is not None:
            memcached.kill()
            memcached.wait()
        time.sleep(2)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def miss_options(calls: int = 3000) -> None:
    """The request-path cost of each way to answer a near-cache miss, in this process, against a
    real memcached: microseconds per call, p50 / p99, and what the event loop's thread spends."""
    from bidopt.bidder.tiers import Fetcher, NearCache, TieredBids
    from bidopt.cache import MemcachedCache

    proc, port = start_memcached(64)
    cache = MemcachedCache(f"memcached://127.0.0.1:{port}", "127.0.0.1", port)
    try:
        version = "run.000000000000"
        cache.set_many({f"bidopt:e:{version}:bid:k{i}": "1.5" for i in range(calls)})
        cache.set_many({f"bidopt:e:{version}:published": "1"})
        near = NearCache(1 << 30)
        fetcher = Fetcher(cache, near, start=False)
        bids = TieredBids("e", version, {}, near, fetcher, calls)
        near.put_many([((version, "hot"), 2.0)])
        out = {}

        def timed(fn, n):
            ts = []
            for i in range(n):
                t = time.perf_counter()
                fn(i)
                ts.append((time.perf_counter() - t) * 1e6)
            return ts

        out["near-cache hit"] = timed(lambda i: bids.get("hot"), calls)
        out["miss, queued for the background fill"] = timed(lambda i: bids.get(f"q{i}"), calls)
        keys = [[f"bidopt:e:{version}:bid:k{i}", f"bidopt:e:{version}:published"] for i in range(calls)]
        out["miss, sync get_many on the loop"] = timed(lambda i: cache.get_many(keys[i]), calls)

        pool = ThreadPoolExecutor(4)

        async def via_pool():
            loop = asyncio.get_running_loop()
            ts, cpu = [], []
            for i in range(calls):
                t, c = time.perf_counter(), time.thread_time()
                await loop.run_in_executor(pool, cache.get_many, keys[i])
                ts.append((time.perf_counter() - t) * 1e6)
                cpu.append((time.thread_time() - c) * 1e6)
            return ts, cpu

        out["miss, get_many in a thread pool (awaited)"], pool_cpu = asyncio.run(via_pool())
        pool.shutdown()
        # the background fill's own cost per key (it shares the replica's GIL): batches of FETCH_BATCH
        from bidopt.bidder.tiers import FETCH_BATCH

        fill_near = NearCache(1 << 30)
        filler = Fetcher(cache, fill_near, start=False)
        fill_bids = TieredBids("e", version, {}, fill_near, filler, calls)
        batches = [[(fill_bids, f"k{i}") for i in range(j, min(j + FETCH_BATCH, calls))] for j in range(0, calls, 256)]
        t, c = time.perf_counter(), time.thread_time()
        for batch in batches:
            filler._fill(batch)
        fill_wall, fill_cpu = (time.perf_counter() - t) / calls * 1e6, (time.thread_time() - c) / calls * 1e6
        print(f"miss options in process ({calls:,} calls each; memcached on loopback), microseconds per call:")
        for label, ts in out.items():
            print(f"  {label:44s} p50 {statistics.median(ts):8.2f}  p99 {pct(ts, 0.99):8.2f}")
        print(
            f"  {'(thread pool: CPU of the loop thread)':44s} p50 {statistics.median(pool_cpu):8.2f}  "
            f"p99 {pct(pool_cpu, 0.99):8.2f}"
        )
        print(
            f"  background fill, per key in batches of {FETCH_BATCH}: {fill_wall:.2f} wall, {fill_cpu:.2f} CPU",
            flush=True,
        )
        decide_memory_vs_tiered(cache)
    finally:
        cache.close()
        proc.kill()
        proc.wait()


def decide_memory_vs_tiered(cache, keys: int = 2000, calls: int = 40_000, block: int = 500) -> None:
    """``decide`` per request with a run's table in memory and the same table tiered (every key in the near
    cache), in alternating blocks of calls: what the near cache costs a request that hits."""
    from bidopt.bidder.core import BidderState, EntityServing, RunTables, decide
    from bidopt.bidder.fields import US_STATES, feature_reader
    from bidopt.bidder.tiers import Fetcher, NearCache, TieredBids

    features = (("geo_region_name", "device.geo.region"), ("domain", "site.domain"))
    codes = REGION_CODES[:10]
    bids = {"*|*": 1.0} | {f"{US_STATES[c]}|*": 1.5 for c in codes}
    bids |= {f"{US_STATES[c]}|pub{d:05d}.com": 2.0 + d / 1e4 for c in codes for d in range(keys // len(codes))}
    pinned = {k: v for k, v in bids.items() if k.endswith("*")}
    near = NearCache(1 << 30)
    near.put_many([(("v", k), v) for k, v in bids.items() if k not in pinned])
    tiered = TieredBids("e", "v", pinned, near, Fetcher(cache, near, start=False), len(bids))
    readers = tuple(feature_reader(f, p) for f, p in features)
    names = tuple(f for f, _ in features)
    states = {
        name: BidderState(
            {"e": EntityServing("e", 1, (RunTables("r", names, readers, table, {}, 50.0, "x", pinned=p),), (100,))}
        )
        for name, table, p in (("memory", bids, None), ("tiered", tiered, pinned))
    }
    bodies = [
        json.dumps(
            {"id": f"r{i}", "imp": [{"id": "1"}], "device": {"geo": {"region": codes[i % 10]}},
             "site": {"domain": f"pub{(i // 10) % (keys // 10):05d}.com"}, "user": {"id": f"u{i}"}}
        ).encode()
        for i in range(calls // 2)
    ]  # fmt: skip
    times: dict[str, list[float]] = {"memory": [], "tiered": []}
    for start in range(0, len(bodies), block):
        for name in ("memory", "tiered") if (start // block) % 2 == 0 else ("tiered", "memory"):
            state, out = states[name], times[name]
            for body in bodies[start : start + block]:
                t = time.perf_counter()
                decide(state, "e", body)
                out.append((time.perf_counter() - t) * 1e6)
    m, t = statistics.median(times["memory"]), statistics.median(times["tiered"])
    print(
        f"decide() per request, in process, alternating blocks ({len(times['memory']):,} calls each): table in memory "
        f"p50 {m:.2f} us, tiered with every key in the near cache p50 {t:.2f} us ({t / m - 1:+.1%}); "
        f"p99 {pct(times['memory'], 0.99):.2f} vs {pct(times['tiered'], 0.99):.2f} us",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entities", type=int, default=500)
    ap.add_argument("--segments", type=int, default=20_000)
    ap.add_argument("--zipf", type=float, nargs="+", default=[1.0, 1.6], help="Zipf exponents of the traffic")
    ap.add_argument("--seconds", type=int, default=10, help="seconds of each measured point (c=8)")
    ap.add_argument("--warm", type=int, default=30, help="seconds of warm-up (c=32) before each point")
    ap.add_argument("--near-mb", type=float, default=64, help="BIDOPT_BIDDER_NEAR_CACHE_BYTES, in MiB")
    ap.add_argument("--memcached-mb", type=int, default=4096)
    ap.add_argument("--small-near-mb", type=float, default=1, help="the near cache of mode tiered-small, in MiB")
    ap.add_argument(
        "--modes",
        nargs="+",
        default=["memory", "tiered", "tiered-fetch"],
        choices=["memory", "tiered", "tiered-fetch", "tiered-small"],
        help="in this order (reverse it in a second run: the host's load drifts)",
    )
    ap.add_argument(
        "--one-entity",
        action="store_true",
        help="after each point, the same traffic to one entity (fleet000) alone on the same replicas, alternated "
        "with the fleet's over --rounds: the fleet's cost as ratios measured side by side",
    )
    ap.add_argument("--rounds", type=int, default=2, help="rounds of fleet and one-entity points (--one-entity)")
    ap.add_argument(
        "--guardrails",
        action="store_true",
        help="turn the entities' guardrails on: the control loop then judges 500 splits per tick beside the "
        "bidders (off by default: on 2 cores it took half a core, which measures the control loop, not the bidder)",
    )
    ap.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for every mode's Serve (repeatable), e.g. BIDOPT_EVENTS_FLUSH_SECONDS=10",
    )
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    near_bytes = str(int(args.near_mb * 2**20))
    envs = {
        "memory": {"BIDOPT_CACHE_URL": "memory://"},
        "tiered": {"BIDOPT_BIDDER_NEAR_CACHE_BYTES": near_bytes, "BIDOPT_BIDDER_NEAR_MISS": "backoff"},
        "tiered-fetch": {"BIDOPT_BIDDER_NEAR_CACHE_BYTES": near_bytes, "BIDOPT_BIDDER_NEAR_MISS": "fetch"},
        "tiered-small": {
            "BIDOPT_BIDDER_NEAR_CACHE_BYTES": str(int(args.small_near_mb * 2**20)),
            "BIDOPT_BIDDER_NEAR_MISS": "backoff",
        },
    }
    print(
        f"{os.cpu_count()} cores; {args.entities} entities x {args.segments:,} segments; near cache "
        f"{args.near_mb:g} MiB; Zipf {args.zipf}; warm-up {args.warm} s at c=32, then {args.seconds} s at c=8; "
        f"2 bidder replicas; guardrails {'on' if args.guardrails else 'off'}; settings {args.env or 'defaults'}",
        flush=True,
    )
    miss_options()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bidopt-fleet-") as tmp:
        fleet = build_fleet(Path(tmp), args.entities, args.segments, args.guardrails)
        script = Path(tmp) / "fleet.lua"
        script.write_text(LUA)
        for name in args.modes:
            run_mode(name, envs[name] | dict(kv.split("=", 1) for kv in args.env), fleet, args, script, results)
    if "memory" not in results:
        return
    m = results["memory"]
    print("side by side, against memory (all tables in every replica):")
    for name, r in results.items():
        if name == "memory":
            continue
        rss = max(r["rss_end"]) / max(m["rss_end"])
        print(
            f"  {name:12s} replica RSS {max(r['rss_end']):,.0f} vs {max(m['rss_end']):,.0f} MB ({rss:.2f}x); Serve up "
            f"{r['up_s']:.0f} vs {m['up_s']:.0f} s; split change {r['split_s']:.2f} vs {m['split_s']:.2f} s"
        )
        for zipf, p in r["points"].items():
            q = m["points"][zipf]
            goal = p["rps"] >= 0.8 * q["rps"] and p["p99"] < 10
            print(
                f"  {name:12s} zipf {zipf:<4} throughput {p['rps'] / q['rps']:.2f}x  p99 {p['p99']:.2f} vs "
                f"{q['p99']:.2f} ms  hit ratio {p['hit_ratio'] or 0:.1%}  segment-level bids {p['segment_share']:.1%} "
                f"vs {q['segment_share']:.1%}  goal (p99 < 10 ms, throughput >= 0.8x): {'met' if goal else 'NOT met'}"
            )


if __name__ == "__main__":
    main()

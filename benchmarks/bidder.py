"""Bidder benchmark: the Serve path we run in production against the same handler under bare uvicorn.

Builds an embedded platform in a temp folder (SQLite, simulated logs, two optimizer
runs, an 80/20 split), then, in one run, drives with ``wrk`` on loopback:

(a) ``serve haproxy``: the ``bidder`` Ray Serve app as ``bidopt serve`` deploys it
    (``SERVE_MODE_ENV``: HAProxy ingress, throughput-optimised mode; two replicas, one
    per core; a plain ``async __call__``);
(b) ``bare uvicorn``: the same ``http_handler`` in one plain uvicorn process;
(c) ``bare raw asgi``: the handler's core without Starlette, a lower bound;
(d) with ``--default-proxy``, also Serve's default Python proxy, for reference;
(e) ``serve metrics off`` and ``bare metrics off``: (a) and (b) with ``BIDOPT_METRICS=0``, printed
    side by side with metrics on (``bidopt.metrics``: what counting and exporting cost the handler).
    ``--metrics-rounds N`` alternates Serve on/off N times (on, off, off, on, ...) and compares medians;
    and first, in this process, the handler alone (``BidderCore.handle``, the time ``decision_seconds``
    measures) with metrics on and off, in alternating blocks of calls: its p50 and p99 per call.

Each at concurrency 1, 8 and 32 (``wrk -t1 -cN``) for ``--seconds`` each, printing
requests/s, p50 and p99 latency, the share of 200 answers (the rest are 204:
impressions whose floor the bid does not clear), and the ratios serve / bare.
Requests vary the user id so that both runs of the split are exercised.

    apt-get install wrk   # the load generator
    python benchmarks/bidder.py [--seconds 10] [--default-proxy] [--metrics-rounds 1]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

LUA = r"""
counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local regions = {"CA", "TX", "NY", "FL", "IL", "OH", "GA", "WA"}
local oses = {"iOS", "Android", "Windows", "Mac OS X"}
request = function()
  counter = counter + 1
  local body = string.format('{"id":"req-%d","imp":[{"id":"1","bidfloor":0.2,"banner":{"w":300,"h":250}}],' ..
    '"site":{"domain":"pub%05d.com"},"device":{"os":"%s","devicetype":4,"geo":{"region":"%s"},' ..
    '"ua":"Mozilla/5.0 (iPhone) AppleWebKit/605.1.15 Version/17.0 Safari/604.1"},' ..
    '"user":{"id":"user-%d","ext":{"npi_matched":%d}}}',
    counter, counter % 50 + 1, oses[counter % 4 + 1], regions[counter % 8 + 1], counter, counter % 7 == 0 and 1 or 0)
  return wrk.format(nil, nil, nil, body)
end
"""

# wrk Lua that counts answers by status; its done() prints the "status N count" lines wrk() reads
LUA_STATUS_TALLY = r"""
-- each wrk thread has its own Lua state: count per thread, add up in done()
threads = {}
setup = function(thread) table.insert(threads, thread) end
counts = {}
response = function(status, headers, body) counts[status] = (counts[status] or 0) + 1 end
done = function(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for s, n in pairs(t:get("counts")) do total[s] = (total[s] or 0) + n end
  end
  for s, n in pairs(total) do io.write(string.format("status %d %d\n", s, n)) end
end
"""
LUA += LUA_STATUS_TALLY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, seconds: float) -> bool:
    """Whether something listens on 127.0.0.1:``port`` within ``seconds``."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def setup_platform(home: Path) -> None:
    os.environ.update({"BIDOPT_HOME": str(home), "BIDOPT_BIDDER_REFRESH_SECONDS": "1", "RAY_AUTH_MODE": "disabled"})
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
    with session_scope(engine) as s:
        ids = [q.create_run(s, "drugs_hcp", {"target_win_rate": t}, triggered_by="bench").run_id for t in (0.4, 0.5)]
    with get_warehouse() as wh:
        generate_into_warehouse(wh, MarketSpec("drugs_hcp", rows=300_000, seed=4, npi_enabled=True))
    configure_logging()  # the optimizer's progress lines, as before it logged
    run_optimizer(once=True, use_ray=False, on_result=lambda r: None)
    with session_scope(engine) as s:
        q.replace_traffic_split(s, "drugs_hcp", {ids[0]: 80, ids[1]: 20}, deployed_by="bench")


def wait_bidding(url: str, timeout: float = 60) -> None:
    body = {"id": "warm", "imp": [{"id": "1"}], "device": {"geo": {"region": "CA"}, "os": "iOS"}}
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.post(url, json=body, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} never answered with a bid")


def wrk(url: str, connections: int, seconds: int, script: Path, *script_args: str) -> dict:
    """One ``wrk -t1`` point: req/s, p50/p99 (ms), the statuses the script's ``done`` printed as
    ``status N count`` lines, socket errors, and wrk's output. ``script_args`` go to the script's ``init``."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s", "-s", str(script), url]
        + list(script_args),
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def latency_ms(label: str) -> float:
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    statuses = {int(s): int(n) for s, n in re.findall(r"^status (\d+) (\d+)$", out, re.M)}
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": latency_ms("50"),
        "p99": latency_ms("99"),
        "statuses": statuses,
        "socket_errors": errors.group(1) if errors else "",
        "output": out,  # wrk's own text, for scripts that print more lines (benchmarks/bidder_fleet.py)
    }


def measure(name: str, url: str, seconds: int, script: Path, results: dict) -> None:
    wait_bidding(url)
    wrk(url, 8, 2, script)  # warm-up
    for c in (1, 8, 32):
        r = wrk(url, c, seconds, script)
        results[(name, c)] = r
        total = sum(r["statuses"].values()) or 1
        others = {k: v for k, v in r["statuses"].items() if k not in (200, 204) and v}
        print(
            f"  {name:14s} c={c:<3d} {r['rps']:>9,.0f} req/s  p50 {r['p50']:6.2f} ms  p99 {r['p99']:7.2f} ms  "
            f"200s {r['statuses'].get(200, 0) / total:5.1%}  other statuses {others or 'none'}"
            f"{'  socket errors: ' + r['socket_errors'] if r['socket_errors'] else ''}",
            flush=True,
        )


def start_serve(port: int, env: dict) -> subprocess.Popen:
    """``run_apps`` in a child process with ``env`` (its own fresh Ray), returned once it is up. On
    SIGTERM the child shuts Serve down (which stops HAProxy) and its Ray with it."""
    code = (
        "import signal, sys, time; from ray import serve; from bidopt.serve.apps import run_apps; "
        f"run_apps(port={port}); "
        "signal.signal(signal.SIGTERM, lambda *a: (serve.shutdown(), sys.exit(0))); "
        "print('up', flush=True); time.sleep(100000)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    if proc.stdout.readline().strip() != "up":
        proc.terminate()
        raise SystemExit("serve did not start")
    return proc


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def print_metrics_cost(results: dict, on: list[str], off: list[str], label: str) -> None:
    """The runs named in ``on`` (metrics on) against ``off``, side by side: medians over the runs."""
    print(f"metrics on vs off, {label} (median of {len(on)} run(s) each):")
    for c in (1, 8, 32):
        a = {k: median([results[(n, c)][k] for n in on]) for k in ("rps", "p50", "p99")}
        b = {k: median([results[(n, c)][k] for n in off]) for k in ("rps", "p50", "p99")}
        print(
            f"  c={c:<3d} on {a['rps']:>7,.0f} req/s p50 {a['p50']:5.2f} p99 {a['p99']:6.2f} ms | "
            f"off {b['rps']:>7,.0f} req/s p50 {b['p50']:5.2f} p99 {b['p99']:6.2f} ms | "
            f"p99 {a['p99'] / b['p99'] - 1:+.1%}  throughput {a['rps'] / b['rps'] - 1:+.1%}"
        )


def bodies(n: int) -> list[bytes]:
    """The Lua script's requests, in Python."""
    regions, oses = ["CA", "TX", "NY", "FL", "IL", "OH", "GA", "WA"], ["iOS", "Android", "Windows", "Mac OS X"]
    ua = "Mozilla/5.0 (iPhone) AppleWebKit/605.1.15 Version/17.0 Safari/604.1"
    return [
        (
            f'{{"id":"req-{i}","imp":[{{"id":"1","bidfloor":0.2,"banner":{{"w":300,"h":250}}}}],'
            f'"site":{{"domain":"pub{i % 50 + 1:05d}.com"}},"device":{{"os":"{oses[i % 4]}","devicetype":4,'
            f'"geo":{{"region":"{regions[i % 8]}"}},"ua":"{ua}"}},'
            f'"user":{{"id":"user-{i}","ext":{{"npi_matched":{1 if i % 7 == 0 else 0}}}}}}}'
        ).encode()
        for i in range(1, n + 1)
    ]


def handler_alone(calls: int = 60_000, block: int = 500) -> None:
    """``BidderCore.handle`` with metrics on and off, two replicas' worth of state in this process
    (refresh and event writer threads running), called in alternating blocks; p50/p99 per call."""
    from bidopt.bidder.app import BidderCore
    from bidopt.settings import reset_settings_cache

    cores = {}
    for metrics in ("1", "0"):
        os.environ["BIDOPT_METRICS"] = metrics
        reset_settings_cache()
        cores[metrics] = BidderCore()
    os.environ.pop("BIDOPT_METRICS")
    reset_settings_cache()
    requests = bodies(calls // 2)
    times: dict[str, list[float]] = {"1": [], "0": []}
    try:
        for start in range(0, len(requests), block):
            for metrics in ("1", "0") if (start // block) % 2 == 0 else ("0", "1"):
                core, out = cores[metrics], times[metrics]
                for body in requests[start : start + block]:
                    t0 = time.perf_counter()
                    core.handle("drugs_hcp", body, None, "http://127.0.0.1")
                    out.append(time.perf_counter() - t0)
    finally:
        for core in cores.values():
            core.close()
    stats = {}
    for metrics, values in times.items():
        values.sort()
        stats[metrics] = [values[len(values) // 2] * 1e6, values[int(len(values) * 0.99)] * 1e6]
    (on50, on99), (off50, off99) = stats["1"], stats["0"]
    print(
        f"handler alone (BidderCore.handle, in process, {len(times['1']):,} calls each): metrics on p50 {on50:.1f} "
        f"p99 {on99:.1f} us | off p50 {off50:.1f} p99 {off99:.1f} us | p50 {on50 / off50 - 1:+.1%} "
        f"p99 {on99 / off99 - 1:+.1%}",
        flush=True,
    )


def run_serve(name: str, env: dict, seconds: int, script: Path, results: dict) -> None:
    """Ray and Serve in a child process, so that each Serve mode gets a fresh Ray with its own env."""
    port = free_port()
    proc = start_serve(port, env)
    try:
        measure(name, f"http://127.0.0.1:{port}/openrtb2/drugs_hcp", seconds, script, results)
    finally:
        proc.terminate()  # this child's Ray only (never `ray stop`, which stops every Ray on the host)
        proc.wait(timeout=120)
        time.sleep(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--default-proxy", action="store_true", help="also measure Serve's default proxy")
    ap.add_argument("--metrics-rounds", type=int, default=1, help="Serve runs with metrics on, and off, each")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bidopt-bidder-") as tmp:
        setup_platform(Path(tmp))
        script = Path(tmp) / "bid.lua"
        script.write_text(LUA)
        print(f"{os.cpu_count()} cores; wrk -t1, {args.seconds} s per point, bid requests with varying users")
        handler_alone()

        bare_runs = (("bare uvicorn", "bare_app", "1"), ("bare metrics off", "bare_app", "0"))
        for name, factory, metrics in (*bare_runs, ("bare raw asgi", "bare_raw_app", "1")):
            port = free_port()
            bare = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--factory",
                    f"bidopt.bidder.app:{factory}",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--no-access-log",
                    "--log-level",
                    "warning",
                ],
                env={**os.environ, "BIDOPT_METRICS": metrics},
            )
            try:
                measure(name, f"http://127.0.0.1:{port}/openrtb2/drugs_hcp", args.seconds, script, results)
            finally:
                bare.terminate()
                bare.wait(timeout=30)

        from bidopt.serve.apps import SERVE_MODE_ENV

        on, off = [], []
        for i in range(args.metrics_rounds):  # on, off, off, on, ...: drift over the run falls on both
            for metrics in ("1", "0") if i % 2 == 0 else ("0", "1"):
                name = ("serve haproxy" if metrics == "1" else "serve metrics off") + (f" #{i + 1}" if i else "")
                (on if metrics == "1" else off).append(name)
                run_serve(name, {**SERVE_MODE_ENV, "BIDOPT_METRICS": metrics}, args.seconds, script, results)
        if args.default_proxy:
            run_serve(
                "serve default",
                {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"},
                args.seconds,
                script,
                results,
            )

    print_metrics_cost(results, on, off, "Serve (HAProxy)")
    print_metrics_cost(results, ["bare uvicorn"], ["bare metrics off"], "bare uvicorn (no Ray: counting only)")
    p99_on = median([results[(n, 8)]["p99"] for n in on])
    p99_off = median([results[(n, 8)]["p99"] for n in off])
    spread = [results[(n, 8)]["p99"] for n in off]
    noise = f"; the metrics-off runs alone range {min(spread):.2f}-{max(spread):.2f} ms" if len(off) > 1 else ""
    print(
        f"goal: Serve p99 at c=8 rises by less than 5% with metrics on: {p99_on / p99_off - 1:+.1%} "
        f"({'met' if p99_on < 1.05 * p99_off else 'NOT met'}{noise})"
    )
    print("ratios, serve haproxy / bare uvicorn:")
    for c in (1, 8, 32):
        s, b = results[("serve haproxy", c)], results[("bare uvicorn", c)]
        print(
            f"  c={c:<3d} throughput {s['rps'] / b['rps']:.2f}  p50 {s['p50'] / b['p50']:.2f}x  "
            f"p99 {s['p99'] / b['p99']:.2f}x"
        )
    s8 = results[("serve haproxy", 8)]
    print(
        f"goal at c=8: p99 {s8['p99']:.2f} ms (< 10 ms: {'met' if s8['p99'] < 10 else 'NOT met'}), "
        f"throughput {s8['rps'] / results[('bare uvicorn', 8)]['rps']:.2f} of bare (>= 0.5: "
        f"{'met' if s8['rps'] >= 0.5 * results[('bare uvicorn', 8)]['rps'] else 'NOT met'})"
    )


if __name__ == "__main__":
    main()

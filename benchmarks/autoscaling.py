"""Autoscaling benchmark: a step load (idle -> light -> overload -> after -> idle) on the bidder as
``bidopt serve`` runs it, printing over time what was offered and answered and how many replicas served.

Builds the bidder benchmark's embedded platform (``benchmarks/bidder.py``: SQLite, simulated logs, two
runs in an 80/20 split), starts ``run_apps`` (what ``bidopt serve`` runs: HAProxy ingress,
throughput-optimised mode, the bidder's autoscaling policy) in a child process with its own Ray, and
drives ``POST /openrtb2/drugs_hcp`` with ``wrk`` in back-to-back windows of ``--window`` seconds. Each
window prints:

* ``offered``: the nominal rate, connections x 1000 / the per-connection delay (``wrk``'s ``delay()``:
  a connection waits that long after each answer, so under overload it offers less than nominal);
  ``max`` for unpaced connections;
* ``achieved`` req/s, p50 and p99 latency, and every answer that was not a 200, by status (a 204 is a
  no-bid, not an error; socket errors are listed apart);
* replicas: ``running/target`` at the window's end (Serve's status), ``+Ns`` for N replicas still
  draining (STOPPING: Serve keeps a removed replica serving 30 s behind HAProxy before it exits);
* the signals the policy reads, mean over replicas of their latest report (up to one push interval,
  2 s, old): ``cpu`` (cores per replica) and ``lag`` (event-loop lag, ms); and ``serve-ongoing``, what
  Serve's default policy would read (its aggregated ongoing requests), for comparison.

Then the summary: the peak replica count, whether it returned to the minimum, and the non-200 answers
during the windows where the replica count changed (scale-up and scale-down under load).

    apt-get install wrk
    python benchmarks/autoscaling.py [--overload-seconds 60] [--target-cpu 0.6] [--downscale-delay 30]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bidder import LUA, free_port, setup_platform, wait_bidding, wrk  # noqa: E402 - the bidder benchmark's helpers

# The bid script with an optional per-connection pause (ms) after each answer: `wrk ... -- <ms>`.
PACED_LUA = (
    LUA
    + r"""
pause_ms = 0
init = function(args) if args[1] then pause_ms = tonumber(args[1]) end end
delay = function() return pause_ms end
"""
)

# In the child: run_apps as `bidopt serve` runs it, then a line of JSON a second with what Serve says.
CHILD = r"""
import json, sys, threading, time
import ray
from ray import serve
from bidopt.serve.apps import run_apps

run_apps(port=int(sys.argv[1]))
from ray.serve._private.common import DeploymentID
from ray.serve.context import _get_global_client

client = _get_global_client()
deployment = DeploymentID(name="bidder", app_name="bidder")


def latest(series_by_replica):
    values = [s[-1].value for s in series_by_replica if s]
    return sum(values) / len(values) if values else None


def poll():
    while True:
        try:
            details = client.get_serve_details()["applications"]["bidder"]["deployments"]["bidder"]
            running = sum(1 for r in details["replicas"] if r["state"] == "RUNNING")
            stopping = sum(1 for r in details["replicas"] if r["state"] == "STOPPING")
            # private, for this benchmark only: the metrics Serve's autoscaler holds per replica
            metrics = ray.get(client._controller._get_metrics_for_deployment_for_testing.remote(deployment))
            ongoing = ray.get(client._controller._get_total_num_requests_for_deployment_for_testing.remote(deployment))
            print(json.dumps({
                "t": time.time(), "running": running, "stopping": stopping, "target": details["target_num_replicas"],
                "cpu": latest(metrics.get("cpu", [])), "lag": latest(metrics.get("loop_lag_ms", [])),
                "serve_ongoing": ongoing,
            }), flush=True)
        except Exception as e:  # noqa: BLE001 - a benchmark's poller keeps polling
            print(json.dumps({"t": time.time(), "error": repr(e)[:200]}), flush=True)
        time.sleep(1)


print("up", flush=True)
threading.Thread(target=poll, daemon=True).start()
time.sleep(10**6)
"""


class ServeChild:
    """``run_apps`` in a child process with its own Ray; ``at(t)`` is its last status line before t."""

    def __init__(self, port: int, env: dict) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(port)],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        if self.proc.stdout.readline().strip() != "up":
            self.proc.terminate()
            raise SystemExit("serve did not start")
        self.lines: list[dict] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                pass

    def at(self, t: float) -> dict:
        before = [x for x in self.lines if x["t"] <= t and "error" not in x]
        return before[-1] if before else {}

    def stop(self) -> None:
        self.proc.terminate()  # this child's Ray only (never `ray stop`)
        self.proc.wait(timeout=180)


def phases(args) -> list[tuple[str, float, int, int | None]]:
    """(name, seconds, connections, pause ms or None for unpaced) in order. ``after``, a steady load
    well under the target, lasts until the replicas are back at the minimum (or ``--settle-seconds``),
    so that replicas are removed while requests arrive."""
    return [
        ("idle", args.window * 2, 0, None),
        ("light", args.window * 3, 4, 20),
        ("overload", args.overload_seconds, args.connections, None),
        ("after", args.settle_seconds, 16, 10),
        ("idle", args.window * 2, 0, None),
    ]


def run_window(url: str, script: Path, seconds: float, connections: int, pause: int | None) -> dict:
    if connections == 0:
        time.sleep(seconds)
        return {"rps": 0.0, "p50": 0.0, "p99": 0.0, "statuses": {}, "socket_errors": ""}
    return wrk(url, connections, int(seconds), script, *([str(pause)] if pause is not None else []))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=int, default=5, help="seconds per wrk window (one printed row)")
    ap.add_argument("--overload-seconds", type=int, default=60)
    ap.add_argument("--connections", type=int, default=128, help="unpaced connections during the overload")
    ap.add_argument("--settle-seconds", type=int, default=180, help="most time for the replicas to return")
    ap.add_argument("--min-replicas", type=int, default=2)
    ap.add_argument("--max-replicas", type=int, default=4)
    ap.add_argument("--target-cpu", type=float, default=0.6)
    ap.add_argument("--upscale-delay", type=float, default=10.0)
    ap.add_argument("--downscale-delay", type=float, default=30.0)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    from bidopt.serve.apps import SERVE_MODE_ENV

    env = {
        **SERVE_MODE_ENV,
        "BIDOPT_BIDDER_MIN_REPLICAS": str(args.min_replicas),
        "BIDOPT_BIDDER_MAX_REPLICAS": str(args.max_replicas),
        "BIDOPT_BIDDER_TARGET_CPU": str(args.target_cpu),
        "BIDOPT_BIDDER_UPSCALE_DELAY_SECONDS": str(args.upscale_delay),
        "BIDOPT_BIDDER_DOWNSCALE_DELAY_SECONDS": str(args.downscale_delay),
    }
    with tempfile.TemporaryDirectory(prefix="bidopt-autoscaling-") as tmp:
        setup_platform(Path(tmp))
        script = Path(tmp) / "paced.lua"
        script.write_text(PACED_LUA)
        port = free_port()
        child = ServeChild(port, env)
        rows = []
        try:
            url = f"http://127.0.0.1:{port}/openrtb2/drugs_hcp"
            wait_bidding(url)
            print(
                f"{os.cpu_count()} cores; replicas {args.min_replicas}..{args.max_replicas}, target cpu "
                f"{args.target_cpu}, upscale delay {args.upscale_delay:g} s, downscale delay {args.downscale_delay:g} s"
            )
            print(
                f"{'t s':>5} {'phase':8} {'offered':>8} {'achieved':>9} {'p50 ms':>7} {'p99 ms':>8} "
                f"{'replicas':>8} {'cpu':>5} {'lag ms':>7} {'serve-ongoing':>13}  non-200"
            )
            t0 = time.time()
            for name, seconds, connections, pause in phases(args):
                phase_end = time.time() + seconds
                while phase_end - time.time() >= 1:
                    start = time.time()
                    r = run_window(url, script, round(min(args.window, phase_end - start)), connections, pause)
                    status = child.at(time.time())
                    row = {"t": time.time() - t0, "phase": name, "connections": connections, "pause": pause, **r}
                    row.update(
                        {k: status.get(k) for k in ("running", "stopping", "target", "cpu", "lag", "serve_ongoing")}
                    )
                    row["start_status"] = child.at(start)
                    rows.append(row)
                    print_row(row)
                    # back at the minimum, and the removed replicas have drained and exited (Serve
                    # keeps one STOPPING for 30 s behind HAProxy): only then has scale-down happened
                    back = status.get("running") == status.get("target") == args.min_replicas
                    back = back and status.get("stopping") == 0
                    if name == "after" and back and went_up(rows, args):
                        phase_end = time.time()  # back at the minimum: the step is over
        finally:
            child.stop()
    summarize(rows, args)


def offered(row: dict) -> str:
    if not row["connections"]:
        return "0"
    if row["pause"] is None:
        return "max"
    return f"{row['connections'] * 1000 / row['pause']:,.0f}"


def non_200(row: dict) -> dict:
    bad = {k: v for k, v in row["statuses"].items() if k != 200 and v}
    if row["socket_errors"]:
        bad["socket"] = row["socket_errors"]
    return bad


def print_row(row: dict) -> None:
    def f(value, spec):
        return format(value, spec) if isinstance(value, (int, float)) else "-"

    replicas = f"{row.get('running', '-')}/{row.get('target', '-')}"
    if row.get("stopping"):
        replicas += f"+{row['stopping']}s"
    print(
        f"{row['t']:5.0f} {row['phase']:8} {offered(row):>8} {row['rps']:9,.0f} {row['p50']:7.2f} {row['p99']:8.2f} "
        f"{replicas:>8} {f(row.get('cpu'), '5.2f'):>5} {f(row.get('lag'), '7.2f'):>7} "
        f"{f(row.get('serve_ongoing'), '13.1f'):>13}  {non_200(row) or 'none'}",
        flush=True,
    )


def went_up(rows: list[dict], args) -> bool:
    return max((x.get("target") or 0) for x in rows) > args.min_replicas


def summarize(rows: list[dict], args) -> None:
    peak = max((x.get("running") or 0) for x in rows)
    final = rows[-1].get("running") if rows else None

    def moved(x: dict) -> bool:  # a replica started, was removed, or exited during the window
        before = x["start_status"]
        return (before.get("running"), before.get("stopping")) != (x.get("running"), x.get("stopping"))

    changing = [x for x in rows if moved(x) and x["connections"]]
    bad_when_changing = [non_200(x) for x in changing if non_200(x)]
    five_xx = sum(v for x in rows for k, v in x["statuses"].items() if isinstance(k, int) and k >= 500)
    total = sum(sum(x["statuses"].values()) for x in rows)
    back = peak > args.min_replicas and final == args.min_replicas
    print(
        f"replicas: min {args.min_replicas}, peak {peak}, at the end {final} "
        f"({'scaled up and back' if back else 'did NOT scale up and back'})"
    )
    print(
        f"answers: {total:,}, 5xx {five_xx}; windows where the replica count changed under load: {len(changing)}, "
        f"their non-200 answers: {bad_when_changing or 'none'}"
    )


if __name__ == "__main__":
    main()

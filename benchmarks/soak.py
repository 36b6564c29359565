"""Soak: the bidder on Ray Serve under load while the split changes, a replica is killed and an
optimizer worker is paused past the stale limit.

Builds an embedded platform (three completed runs of ``drugs_hcp``), starts ``bidopt serve``
in a child process (stopped with SIGTERM, which shuts Serve and its Ray down), and for
``--seconds`` sends bid requests from ``--concurrency`` asyncio clients on loopback while:

* an operator replaces the split every ``--split-every`` seconds;
* one bidder replica is killed with SIGKILL (Serve starts a new one, which must load its
  tables before it takes traffic);
* an optimizer worker (``bidopt optimizer run --once --no-ray``) claims a new run and is
  paused with SIGSTOP past ``BIDOPT_STALE_AFTER_SECONDS``; a second worker requeues,
  completes it, the operator deploys it, and then the first worker is resumed (it must
  neither complete the run nor touch the artifacts of the attempt that did).

Prints requests served, answers by status (any 5xx or transport error is a failure), no-bids
by reason, for every split the share of bids per run against its weights, how long after a
split change the bidders still answered from the split it replaced (must stay within one
refresh), and whether every completed run's artifacts still load. Exits 1 when a check fails.

    python benchmarks/soak.py [--seconds 60] [--split-every 3] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from bidder import free_port, wait_bidding  # noqa: E402 - the benchmark next door

SPLITS = [(80, 20, 0), (50, 30, 20), (0, 0, 100), (0, 60, 40), (34, 33, 33)]
REFRESH_SECONDS = 1.0
HEARTBEAT_SECONDS, STALE_AFTER_SECONDS = 0.5, 4.0
BIN = Path(sys.executable).parent


def setup(home: Path) -> list[str]:
    os.environ.update(
        {
            "BIDOPT_HOME": str(home),
            "BIDOPT_BIDDER_REFRESH_SECONDS": str(REFRESH_SECONDS),
            "BIDOPT_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
            "BIDOPT_STALE_AFTER_SECONDS": str(STALE_AFTER_SECONDS),
            "RAY_AUTH_MODE": "disabled",
        }
    )
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
        ids = [
            q.create_run(s, "drugs_hcp", {"target_win_rate": t, "xgb_num_rounds": 60}, triggered_by="soak").run_id
            for t in (0.3, 0.45, 0.6)
        ]
    with get_warehouse() as wh:
        generate_into_warehouse(wh, MarketSpec("drugs_hcp", rows=200_000, seed=8, npi_enabled=True))
    configure_logging()  # the optimizer's progress lines, as before it logged
    run_optimizer(once=True, use_ray=False, on_result=lambda r: None)
    return ids


def _session():
    from bidopt.db.engine import get_engine, session_scope
    from bidopt.settings import get_settings

    return session_scope(get_engine(get_settings().database_url))


def set_split(pcts: dict[str, int]) -> tuple[float, int]:
    """Replace the split; returns the monotonic time it was committed and its id."""
    from bidopt import service

    with _session() as s:
        view = service.set_traffic_split(s, "drugs_hcp", {r: p for r, p in pcts.items() if p}, deployed_by="soak")
    return time.monotonic(), view["split_id"]


def run_status(run_id: str) -> tuple[str, int, str | None]:
    from bidopt.db import queries as q

    with _session() as s:
        run = q.get_run(s, run_id)
        return run.status, run.attempts, run.worker_id


async def load(url: str, seconds: float, concurrency: int, stats: dict) -> None:
    counter = itertools.count()
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:

        async def worker() -> None:
            while time.monotonic() < deadline:
                n = next(counter)
                body = {
                    "id": f"soak-{n}",
                    "imp": [{"id": "1"}],
                    "user": {"id": f"user-{n}"},
                    "device": {"geo": {"region": ["CA", "TX", "NY", "FL"][n % 4]}, "os": "iOS"},
                }
                sent = time.monotonic()
                try:
                    r = await client.post(url, json=body)
                except httpx.HTTPError as exc:
                    stats["transport"].append((sent, time.monotonic(), type(exc).__name__))
                    continue
                stats["requests"] += 1
                stats["status"][r.status_code] += 1
                if r.status_code == 200:
                    data = r.json()
                    split_id = data["ext"]["split_id"]
                    stats["per_split"][split_id][data["seatbid"][0]["bid"][0]["ext"]["run_id"]] += 1
                    stats["answers"].append((sent, split_id))
                elif r.status_code == 204:
                    stats["no_bid"][r.headers.get("x-bidopt-reason", "?")] += 1
                else:
                    stats["errors"][f"HTTP {r.status_code}"] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def bidder_replica_pids() -> list[int]:
    import psutil

    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any("ServeReplica:bidder" in part for part in (p.info["cmdline"] or [])):
                pids.append(p.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pids


def optimizer_worker() -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "bidopt"), "optimizer", "run", "--once", "--no-ray"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ.copy(),
    )


class PausedWorkerScenario:
    """Worker A claims a run and is SIGSTOPped past the stale limit; worker B requeues and completes it;
    the run joins the splits; then A is resumed. Runs in a thread beside the load."""

    def __init__(self, ids: list[str]) -> None:
        self.ids, self.log, self.run_id, self.done = ids, [], None, threading.Event()
        self.attempts = None

    def say(self, text: str) -> None:
        self.log.append(text)

    def __call__(self) -> None:
        from bidopt.db import queries as q

        try:
            with _session() as s:
                self.run_id = q.create_run(
                    s, "drugs_hcp", {"target_win_rate": 0.5, "xgb_num_rounds": 60}, triggered_by="soak"
                ).run_id
            a = optimizer_worker()
            deadline = time.monotonic() + 60
            while run_status(self.run_id)[0] != "running":
                assert time.monotonic() < deadline, "worker A never claimed the run"
                time.sleep(0.05)
            time.sleep(1.0)  # let A get into its work (reading logs, training)
            os.kill(a.pid, signal.SIGSTOP)
            paused = time.monotonic()
            self.say(f"worker A (pid {a.pid}) claimed {self.run_id} and was paused")
            time.sleep(STALE_AFTER_SECONDS + 1)
            b = optimizer_worker()
            out_b, _ = b.communicate(timeout=300)
            status, attempts, _ = run_status(self.run_id)
            self.say(f"worker B exited {b.returncode}: run {status} on attempt {attempts}")
            if status == "completed":
                self.ids.append(self.run_id)  # the rotation now deploys it too
            time.sleep(3)  # deployed in the splits while A is still paused
            os.kill(a.pid, signal.SIGCONT)
            out_a, _ = a.communicate(timeout=300)
            self.say(
                f"worker A resumed after {time.monotonic() - paused:.0f} s and exited {a.returncode}; "
                f"its last line: {out_a.strip().splitlines()[-1] if out_a.strip() else '(none)'}"
            )
            self.attempts = run_status(self.run_id)
        except Exception as exc:  # noqa: BLE001 - reported with the figures
            self.say(f"scenario failed: {type(exc).__name__}: {exc}")
        finally:
            self.done.set()


async def rotate(ids: list[str], seconds: float, every: float, changes: list) -> None:
    deadline = time.monotonic() + seconds
    for n in itertools.count(1):
        await asyncio.sleep(every)
        if time.monotonic() >= deadline - 1:
            return
        pcts = SPLITS[n % len(SPLITS)]
        weights = dict(zip(ids, pcts))
        if len(ids) > 3 and n % 2:  # the run completed by the requeued attempt takes a share
            weights = {**{r: p // 2 for r, p in weights.items()}}
            weights[ids[3]] = 100 - sum(weights.values())
        at, split_id = await asyncio.to_thread(set_split, weights)
        changes.append((at, split_id, {r: p for r, p in weights.items() if p}))


async def kill_replica_later(after: float, events: list, kills: list) -> None:
    await asyncio.sleep(after)
    pids = bidder_replica_pids()
    if not pids:
        events.append("no bidder replica process found to kill")
        return
    kills.append(time.monotonic())
    os.kill(pids[0], signal.SIGKILL)
    events.append(f"killed bidder replica pid {pids[0]} at {after:.0f} s")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = bidder_replica_pids()
        if len(now) >= len(pids) and pids[0] not in now:
            events.append(f"replacement replica up {time.monotonic() - deadline + 60:.1f} s after the kill")
            return
    events.append("no replacement replica within 60 s")


def stale_answers(
    answers: list[tuple[float, int]], changes: list[tuple[float, int, dict]], allowance: float
) -> tuple[int, float]:
    """Answers from a split that had been replaced more than ``allowance`` seconds before the request
    was sent, and the longest such lag seen at all."""
    changes = sorted(changes)
    stale, worst = 0, 0.0
    for sent, split_id in answers:
        newer = [at for at, sid, _ in changes if sid > split_id and at <= sent]
        if newer:
            lag = sent - min(newer)
            worst = max(worst, lag)
            stale += lag > allowance
    return stale, worst


def completed_runs_loadable() -> tuple[int, list[str]]:
    from sqlalchemy import select

    from bidopt.artifacts import read_run_artifacts
    from bidopt.db.models import OptRun

    broken = []
    with _session() as s:
        runs = list(s.scalars(select(OptRun).where(OptRun.status == "completed")))
        paths = [(r.run_id, r.s3_output_path) for r in runs]
    for run_id, path in paths:
        try:
            read_run_artifacts(path, ["suggested_bids.csv", "domain_multipliers.csv", "win_model.ubj"])
        except Exception as exc:  # noqa: BLE001 - counted
            broken.append(f"{run_id}: {type(exc).__name__}: {exc}")
    return len(paths), broken


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--split-every", type=float, default=3)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bidopt-soak-") as tmp:
        ids = setup(Path(tmp))
        first = dict(zip(ids, SPLITS[0]))
        changes = [(*set_split(first), first)]
        port = free_port()
        child = subprocess.Popen(
            [str(BIN / "bidopt"), "serve", "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        scenario = PausedWorkerScenario(ids)
        events: list[str] = []
        try:
            for line in child.stdout:
                if line.startswith("management API"):
                    break
            else:
                raise SystemExit("bidopt serve did not start")
            url = f"http://127.0.0.1:{port}/openrtb2/drugs_hcp"
            wait_bidding(url)
            stats = {
                "requests": 0,
                "status": Counter(),
                "errors": Counter(),
                "no_bid": Counter(),
                "per_split": defaultdict(Counter),
                "answers": [],
                "transport": [],
            }
            kills: list[float] = []

            async def soak() -> None:
                threading.Thread(target=scenario, daemon=True).start()
                await asyncio.gather(
                    load(url, args.seconds, args.concurrency, stats),
                    rotate(ids, args.seconds, args.split_every, changes),
                    kill_replica_later(args.seconds / 2, events, kills),
                )

            started = time.monotonic()
            asyncio.run(soak())
            elapsed = time.monotonic() - started
            scenario.done.wait(timeout=600)
        finally:
            child.send_signal(signal.SIGTERM)  # bidopt serve shuts Serve and its own Ray down
            try:
                child.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)  # this child's group only; never `ray stop`
        n_completed, broken = completed_runs_loadable()
    allowance = REFRESH_SECONDS + 1.0
    stale, worst_lag = stale_answers(stats["answers"], changes, allowance)
    # A request in flight on the replica that was SIGKILLed loses its connection: a crash cannot
    # answer what it was doing. Any other transport error is a failure like a 5xx.
    lost_in_kill = [t for t in stats["transport"] if any(t[0] <= k <= t[1] for k in kills)]
    for t in stats["transport"]:
        if t not in lost_in_kill:
            stats["errors"][t[2]] += 1
    errors = sum(stats["errors"].values())
    print(
        f"{elapsed:.0f} s, concurrency {args.concurrency}, split changed every {args.split_every:g} s "
        f"({len(changes)} splits), bidder refresh every {REFRESH_SECONDS:g} s"
    )
    print(
        f"requests served: {stats['requests']:,} ({stats['requests'] / elapsed:,.0f}/s); "
        f"by status: {dict(sorted(stats['status'].items()))}"
    )
    print(f"errors (5xx, other non-200/204, transport): {errors} {dict(+stats['errors']) or ''}")
    print(f"requests in flight on the killed replica whose connection closed: {len(lost_in_kill)}")
    print(f"no-bids by reason: {dict(stats['no_bid']) or '{}'}")
    for line in events + scenario.log:
        print(f"  {line}")
    print(
        f"answers from a replaced split, sent more than {allowance:g} s after the change: {stale} "
        f"(longest lag seen: {worst_lag:.2f} s)"
    )
    print(f"completed runs whose artifacts load: {n_completed - len(broken)} of {n_completed}")
    for line in broken:
        print(f"  BROKEN {line}")
    print("share of bids per run under each split (observed vs weight):")
    weights = {sid: w for _, sid, w in changes}  # (committed at, split id, weights)
    worst = 0.0
    for split_id in sorted(stats["per_split"]):
        counts = stats["per_split"][split_id]
        total = sum(counts.values())
        expected = weights.get(split_id, {})
        parts = []
        for run_id in sorted(set(counts) | set(expected)):
            share, want = counts.get(run_id, 0) / total, expected.get(run_id, 0) / 100
            worst = max(worst, abs(share - want)) if total >= 1000 else worst
            parts.append(f"{run_id[-9:]} {share:6.1%} vs {want:4.0%}")
        print(f"  split {split_id:>3} ({total:>6,} bids): " + " | ".join(parts))
    print(f"largest gap between share and weight (splits with 1,000+ bids): {worst:.1%}")
    ok = (
        errors == 0
        and stale == 0
        and not broken
        and scenario.attempts is not None
        and scenario.attempts[0] == "completed"
        and not stats["no_bid"].get("no active split for drugs_hcp")
    )
    print("soak:", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

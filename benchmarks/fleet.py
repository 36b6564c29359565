"""Fleet benchmark: many entities' runs queued at once, drained by the optimizer job on Ray.

One fresh embedded platform in a temp folder (SQLite metadata DB, DuckDB/Parquet
warehouse, local artifacts) gets ``--entities`` entities like ``drugs_hcp`` (NPI and
domains on), each with its own simulated bid log of a size drawn deterministically
(seeded) between ``--min-rows`` and ``--max-rows``. Then, for each configuration of
``--configs``, one pending run per entity is queued at once and the real job,
``run_optimizer(once=True, parallel=P)`` (what ``bidopt optimizer run --once
--parallel P`` runs), drains the queue:

* ``local:P``   -- a local Ray (``ray.init``) with this machine's CPUs;
* ``cluster:P`` -- a two-node ``ray.cluster_utils.Cluster``, 1 CPU per node (two raylets,
  two object stores, tasks placed across nodes by Ray; 1 CPU each so that the two
  nodes together have the CPUs of this machine and the comparison with ``local``
  measures the cost of spreading over nodes, not extra cores).

Ray is started here as ``ensure_ray`` starts it (the settings passed to the workers with
``worker_env``), without the workers' progress lines on the console; ``run_optimizer`` then
finds it connected. An optimizer task takes 1 CPU, so Ray runs at most (CPUs) tasks at once whatever
``--parallel`` is: on a 2-CPU Ray ``parallel=4`` holds 4 leases and 2 tasks wait; and Ray
sets ``OMP_NUM_THREADS=1`` in a 1-CPU task, so XGBoost trains on one thread per task (the
``--probe``, in process, uses every core). Ray starts its workers at nice 15
(``RAY_worker_niceness``): on a machine shared with other work, run with
``RAY_worker_niceness=0`` to compare configurations on equal terms.

Per configuration: wall time, entities per hour, the runs' own durations (median and
p90, ``began`` -> ``ended`` inside the task), where the task time went (``read``: the
warehouse queries, which Snowflake would run; the rest is Python: feature scoring,
XGBoost training, the bid search, validation, artifacts), the peak RSS of each Ray
worker process that ran a task (``VmHWM``, read every ``--sample-seconds`` while it lives)
and the throughput relative to ``parallel=1`` of the same kind (or ``local:1``).

``--probe`` instead times one entity at ``--min-rows`` and one at ``--max-rows`` in
process (the body of the Ray task, no Ray): wall and CPU seconds (all threads), the stages,
the peak RSS of the run, and the fleet's time projected from them.

    python benchmarks/fleet.py [--entities 50] [--min-rows 200000] [--max-rows 1000000]
                               [--configs local:1,local:2,local:4,cluster:2] [--probe]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bidopt.data import generate_into_warehouse, get_warehouse
from bidopt.db import queries as q
from bidopt.db.engine import dispose_engines, session_scope
from bidopt.db.seed import DEMO_ENTITIES, prepare_demo_database
from bidopt.settings import get_settings, reset_settings_cache
from bidopt.simulator import MarketSpec

KINDS = ("local", "cluster")
OBJECT_STORE_BYTES = 256 * 1024**2  # tasks return small dicts; keep each node's store small
PYTHON_STAGES = ("features", "training", "bids", "validation", "artifacts")


def parse_configs(text: str) -> list[tuple[str, int]]:
    """``local:1,cluster:2`` -> [("local", 1), ("cluster", 2)]; a clear error for anything else."""
    configs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, _, par = item.partition(":")
        if kind not in KINDS or not par.isdigit() or int(par) < 1:
            raise argparse.ArgumentTypeError(f"bad configuration {item!r}: expected local:P or cluster:P with P >= 1")
        configs.append((kind, int(par)))
    if not configs:
        raise argparse.ArgumentTypeError("no configuration given")
    return configs


def entity_sizes(n: int, lo: int, hi: int, seed: int) -> list[int]:
    """``n`` sizes spread evenly over [lo, hi] (so the mean is the midpoint), in a seeded random order."""
    sizes = np.linspace(lo, hi, n).round().astype(int) if n > 1 else np.array([lo])
    return [int(x) for x in np.random.default_rng(seed).permutation(sizes)]


def fresh_platform(home: str):
    os.environ["BIDOPT_HOME"] = home
    for key in ("BIDOPT_DATABASE_URL", "BIDOPT_WAREHOUSE_URL", "BIDOPT_ARTIFACT_URL", "BIDOPT_RAY_ADDRESS"):
        os.environ.pop(key, None)
    reset_settings_cache()
    return prepare_demo_database(get_settings().database_url)


def make_fleet(engine, sizes: list[int], seed: int) -> list[str]:
    """One entity per size (configs of ``drugs_hcp``) with its simulated logs; returns the codes."""
    from bidopt import catalogue

    configs = DEMO_ENTITIES["drugs_hcp"][1]
    codes = [f"fleet_{i:03d}" for i in range(len(sizes))]
    with session_scope(engine) as s:
        for code in codes:
            catalogue.create_entity(s, code=code, name=code, source="ADX", version="v1", configs=configs, actor="bench")
    t0 = time.perf_counter()
    with get_warehouse() as wh:
        for i, (code, rows) in enumerate(zip(codes, sizes, strict=True)):
            generate_into_warehouse(wh, MarketSpec(code, rows=rows, seed=seed + i, npi_enabled=True))
    secs = time.perf_counter() - t0
    print(f"simulated {sum(sizes):,} bids for {len(codes)} entities in {secs:.0f} s", flush=True)
    return codes


def queue_runs(engine, codes: list[str]) -> list[str]:
    with session_scope(engine) as s:
        return [q.create_run(s, code, {}, triggered_by="bench-fleet").run_id for code in codes]


class WorkerMemory:
    """The peak RSS (``VmHWM``, the kernel's high-water mark) of every process below this one, read
    every ``every`` seconds and once more at the end: exact for a process still alive at a read."""

    def __init__(self, every: float) -> None:
        import psutil

        self._psutil, self._every = psutil, every
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> WorkerMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.sample()  # the last word, before the workers go
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            self.sample()

    def sample(self) -> None:
        # every process below this one (raylets, GCS, workers): a worker retitles itself
        # (``ray::IDLE``, ``ray::_process_run_task``), so the caller picks the task pids afterwards
        for proc in self._psutil.Process().children(recursive=True):
            try:
                hwm = _vm_hwm(proc.pid)
            except OSError:
                continue
            if hwm:
                self.peak[proc.pid] = max(self.peak.get(proc.pid, 0), hwm)


def _vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process, all threads (XGBoost's and DuckDB's included).
    Less sensitive than wall time to other work on the cores, not immune: OpenMP threads that
    spin while waiting for a core count too."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _reset_peak_rss() -> None:
    """Reset this process's ``VmHWM`` to its current RSS (Linux: ``5`` into ``clear_refs``), so that
    the next read is the peak of what ran since; without the permission, the peak since start."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def run_config(engine, codes: list[str], kind: str, parallel: int, sample_seconds: float) -> dict:
    import ray

    from bidopt.jobs.optimize import run_optimizer
    from bidopt.jobs.ray_runtime import worker_env

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cluster = None
    try:
        if kind == "cluster":
            from ray.cluster_utils import Cluster

            node = {"num_cpus": 1, "object_store_memory": OBJECT_STORE_BYTES}
            cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
            cluster.add_node(**node)
            ray.init(address=cluster.address, runtime_env={"env_vars": worker_env()}, log_to_driver=False)
        else:
            ray.init(
                address="local",
                num_cpus=os.cpu_count(),
                object_store_memory=OBJECT_STORE_BYTES,
                include_dashboard=False,
                runtime_env={"env_vars": worker_env()},
                log_to_driver=False,
            )
        nodes = sum(1 for n in ray.nodes() if n["Alive"])
        cpus = int(ray.cluster_resources().get("CPU", 0))
        run_ids = set(queue_runs(engine, codes))
        with WorkerMemory(sample_seconds) as memory:
            t0 = time.perf_counter()
            report = run_optimizer(once=True, parallel=parallel, poll_seconds=1.0)
            wall = time.perf_counter() - t0
        load = os.getloadavg()[1]  # the host's 5-minute load: other work shares these cores
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
    results = [r for r in report.processed if r["run_id"] in run_ids]
    done = [r for r in results if r["status"] == "completed"]
    pids = {r["pid"] for r in done}
    stages: dict[str, float] = {}
    for r in done:
        for name, secs in r.get("stage_seconds", {}).items():
            stages[name] = stages.get(name, 0.0) + secs
    return {
        "name": f"{kind}:{parallel}",
        "kind": kind,
        "parallel": parallel,
        "nodes": nodes,
        "cpus": cpus,
        "wall": wall,
        "runs": len(results),
        "completed": len(done),
        "durations": sorted(r["ended"] - r["began"] for r in done),
        "stages": stages,
        "worker_peaks": sorted(memory.peak[p] for p in pids if p in memory.peak),
        "workers": len(pids),
        "load": load,
    }


def pct(sorted_values: list[float], p: float) -> float:
    """The p-quantile (nearest rank) of sorted values."""
    return sorted_values[min(len(sorted_values) - 1, max(0, int(np.ceil(p * len(sorted_values))) - 1))]


def report(results: list[dict], total_rows: int) -> None:
    mib = 1024**2
    base = {}
    for r in results:
        if r["parallel"] == 1:
            base.setdefault(r["kind"], r)
    print()
    print(
        f"{'config':10s} {'nodes':>5s} {'CPUs':>4s} {'wall s':>7s} {'ent/h':>6s} {'run p50 s':>9s} {'run p90 s':>9s} "
        f"{'read %':>6s} {'worker peak MiB (max / median, n)':>34s} {'scaling':>16s}"
    )
    for r in results:
        if not r["completed"]:
            print(f"{r['name']:10s} no run completed ({r['runs']} processed)")
            continue
        per_hour = r["completed"] / r["wall"] * 3600
        ref = base.get(r["kind"]) or base.get("local")
        scaling = (
            f"x{per_hour / (ref['completed'] / ref['wall'] * 3600):.2f} vs {ref['name']}"
            if ref is not None and ref["completed"]
            else "-"
        )
        task_secs = sum(r["stages"].values())
        read_share = r["stages"].get("read", 0.0) / task_secs * 100 if task_secs else 0.0
        peaks = r["worker_peaks"]
        mem = f"{peaks[-1] / mib:.0f} / {statistics.median(peaks) / mib:.0f}, {len(peaks)}" if peaks else "-"
        print(
            f"{r['name']:10s} {r['nodes']:5d} {r['cpus']:4d} {r['wall']:7.1f} {per_hour:6.0f} "
            f"{statistics.median(r['durations']):9.2f} {pct(r['durations'], 0.9):9.2f} {read_share:6.1f} "
            f"{mem:>34s} {scaling:>16s}"
            + (f"  ({r['runs'] - r['completed']} of {r['runs']} not completed)" if r["completed"] < r["runs"] else "")
        )
    print()
    print("task seconds by stage, summed over the runs (read = warehouse queries; the rest is Python):")
    for r in results:
        if r["completed"]:
            parts = "  ".join(f"{k} {v:.0f}" for k, v in sorted(r["stages"].items(), key=lambda kv: -kv[1]))
            print(f"  {r['name']:10s} {sum(r['stages'].values()):7.0f} s = {parts}")
    first = next((r for r in results if r["completed"]), None)
    if first is not None:
        print(
            f"\nper entity ({first['name']}): {first['wall'] / first['completed']:.2f} s wall, "
            f"{total_rows / first['completed']:,.0f} bids on average"
        )


def probe(lo: int, hi: int, entities: int, configs: list[tuple[str, int]], seed: int) -> None:
    """One entity at ``lo`` and one at ``hi`` rows, in process; the fleet's serial time projected."""
    from bidopt.jobs.optimize import new_worker_id, process_run

    timed = {}
    with tempfile.TemporaryDirectory(prefix="bidopt-fleet-probe-") as home:
        engine = fresh_platform(home)
        for rows in dict.fromkeys((lo, hi)):
            t0 = time.perf_counter()
            (code,) = make_fleet_probe(engine, rows, seed)
            gen = time.perf_counter() - t0
            (run_id,) = queue_runs(engine, [code])
            worker = new_worker_id()
            with session_scope(engine) as s:
                attempt = q.claim_next_pending_run(s, worker).attempts
            _reset_peak_rss()
            cpu0, t0 = _cpu_seconds(), time.perf_counter()
            result = process_run(run_id, worker, attempt, progress=lambda _: None)
            secs, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
            peak = _vm_hwm(os.getpid())
            if result["status"] != "completed":
                raise SystemExit(f"run failed: {result}")
            timed[rows] = secs
            stages = "  ".join(f"{k} {v:.2f}" for k, v in result["stage_seconds"].items())
            print(
                f"{rows:>12,} bids: simulated in {gen:5.1f} s, run {secs:6.2f} s wall, {cpu:6.2f} s CPU, "
                f"peak RSS {peak / 1024**2:.0f} MiB "
                f"({stages})",
                flush=True,
            )
        dispose_engines()
    mean_run = (timed[lo] + timed[hi]) / 2  # sizes are spread evenly, so the mean size is the midpoint
    serial = entities * mean_run
    print(
        f"projection for {entities} entities of {lo:,}-{hi:,} bids: {mean_run:.1f} s per run, "
        f"{serial / 60:.1f} min per configuration at parallel=1 ({len(configs)} configurations: "
        f"at most {serial * len(configs) / 60:.0f} min, less where parallel runs overlap)"
    )


def make_fleet_probe(engine, rows: int, seed: int) -> list[str]:
    from bidopt import catalogue

    code = f"probe_{rows}"
    with session_scope(engine) as s:
        catalogue.create_entity(
            s, code=code, name=code, source="ADX", version="v1", configs=DEMO_ENTITIES["drugs_hcp"][1], actor="bench"
        )
    with get_warehouse() as wh:
        generate_into_warehouse(wh, MarketSpec(code, rows=rows, seed=seed, npi_enabled=True))
    return [code]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entities", type=int, default=50)
    ap.add_argument("--min-rows", type=int, default=200_000)
    ap.add_argument("--max-rows", type=int, default=1_000_000)
    ap.add_argument("--configs", type=parse_configs, default=parse_configs("local:1,local:2,local:4,cluster:2"))
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--sample-seconds", type=float, default=0.5, help="how often worker memory is read")
    ap.add_argument("--probe", action="store_true", help="time one entity at --min-rows and one at --max-rows")
    args = ap.parse_args()
    if args.entities < 1:
        ap.error("--entities must be >= 1")
    if not 1 <= args.min_rows <= args.max_rows:
        ap.error("need 1 <= --min-rows <= --max-rows")
    if args.probe:
        probe(args.min_rows, args.max_rows, args.entities, args.configs, args.seed)
        return
    sizes = entity_sizes(args.entities, args.min_rows, args.max_rows, args.seed)
    names = ", ".join(f"{k}:{p}" for k, p in args.configs)
    print(
        f"{args.entities} entities, {args.min_rows:,}-{args.max_rows:,} bids each "
        f"(mean {statistics.mean(sizes):,.0f}); configurations {names}; {os.cpu_count()} CPUs on this machine",
        flush=True,
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="bidopt-fleet-") as home:
        engine = fresh_platform(home)
        codes = make_fleet(engine, sizes, args.seed)
        for kind, parallel in args.configs:
            r = run_config(engine, codes, kind, parallel, args.sample_seconds)
            results.append(r)
            print(
                f"{r['name']}: {r['completed']}/{r['runs']} runs completed in {r['wall']:.1f} s "
                f"on {r['nodes']} node(s), {r['cpus']} CPUs; host load average (5 min) {r['load']:.1f}",
                flush=True,
            )
        dispose_engines()
    report(results, sum(sizes))


if __name__ == "__main__":
    main()

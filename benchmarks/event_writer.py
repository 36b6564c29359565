"""Event writer at fleet size: one flush of a replica that served many entities in its interval.

A flush writes one part per (kind, entity, hour) with traffic, so a replica serving 500 entities
writes 500 parts a second at the default ``BIDOPT_EVENTS_FLUSH_SECONDS`` of 1. This measures one
such flush, with ``write_threads`` 1 (one part after another) and N (``BIDOPT_EVENTS_WRITE_THREADS``),
side by side in one run (on the local folder the threads are forced: the writer itself uses one
there), against

* ``file``: the local folder (the embedded default);
* ``s3``: S3 as moto's server in a process of its own (on loopback: no network latency);
* ``s3+20ms``: the same with 20 ms added to each write, standing for an object store across a
  network (an assumption, not a measurement of S3).

It prints each flush's wall time, this process's CPU time during it (Parquet encoding, boto3; not
the moto server's), and the CPU per part, which is what a replica pays per entity per flush
whatever the threads.

A second table compares the two layouts at the writer's own threads (``--threads`` on S3, one on
the local folder): a part per entity at every flush (``BIDOPT_EVENTS_SPLIT_SECONDS=0``), and the
bidder's default, a mixed part per flush split into per-entity parts every ``--split-every``
flushes (60: a minute at one flush a second). For the mixed layout it measures that many flushes
and the split after them, and prints what a second of traffic costs the replica in CPU (the
flushes and a share of the split) and how long the split holds the writer.

    python benchmarks/event_writer.py [--entities 500] [--rows 4] [--threads 8] [--flushes 3]
                                      [--split-every 60]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bidopt.events.schema import DECISIONS
from bidopt.events.store import open_event_store
from bidopt.events.writer import EventWriter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bidder import free_port, wait_for_port  # noqa: E402 - the benchmark next door


def decision(ts: float, rid: str, entity: str) -> dict:
    return {
        "event_time": datetime.fromtimestamp(ts, timezone.utc).replace(tzinfo=None),
        "entity_code": entity,
        "request_id": rid,
        "imp_id": "1",
        "test": False,
        "bid": True,
        "bid_cpm": 1.5,
        "segment_key": "us-ca|ios",
        "level": "segment",
        "npi_matched": False,
    }


class Latency:
    """An events store whose every part write first waits ``seconds`` (the one DeleteObjects call of a
    split does not)."""

    def __init__(self, real, seconds: float) -> None:
        self.real, self.seconds, self.url = real, seconds, real.url

    def __getattr__(self, name):
        return getattr(self.real, name)

    def write_part(self, *args, **kwargs):
        time.sleep(self.seconds)
        return self.real.write_part(*args, **kwargs)

    def write_mixed_part(self, *args, **kwargs):
        time.sleep(self.seconds)
        return self.real.write_mixed_part(*args, **kwargs)

    def write_split_part(self, *args, **kwargs):
        time.sleep(self.seconds)
        return self.real.write_split_part(*args, **kwargs)


def one_flush(store, threads: int, entities: int, rows: int, tag: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one flush of ``entities`` parts."""
    real = getattr(store, "real", store)
    forced = threads > 1 and not real.concurrent_puts
    if forced:  # the writer would use one thread on the local folder: give it the threads, to measure them
        real.store.concurrent_puts = True
    try:
        w = EventWriter(real, f"bench-{tag}-{threads}", write_threads=threads, start=False)
    finally:
        if forced:
            del real.store.concurrent_puts
    w.store = store  # a wrapped store: EventWriter opens only URLs and EventStores
    now = time.time()
    for e in range(entities):
        for i in range(rows):
            w.add(DECISIONS, f"e{e:04d}", now, decision(now, f"{tag}-{e}-{i}", f"e{e:04d}"))
    cpu, wall = time.process_time(), time.perf_counter()
    written = w.flush()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    w.close()
    if written != entities * rows:
        raise SystemExit(f"flush wrote {written} rows, expected {entities * rows}: {w.stats()}")
    return wall, cpu


def fill(w: EventWriter, entities: int, rows: int, tag: str, now: float) -> None:
    for e in range(entities):
        for i in range(rows):
            w.add(DECISIONS, f"e{e:04d}", now, decision(now, f"{tag}-{e}-{i}", f"e{e:04d}"))


def timed(work) -> tuple[float, float, object]:
    cpu, wall = time.process_time(), time.perf_counter()
    out = work()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def mixed_layout(store, threads: int, entities: int, rows: int, every: int, tag: str) -> dict[str, float]:
    """``every`` flushes of the mixed layout and the split after them: the flushes' median wall and
    CPU, the split's wall and CPU."""
    real = getattr(store, "real", store)
    w = EventWriter(real, f"bench-mixed-{tag}", write_threads=threads, split_seconds=3600, start=False)
    w.store = store
    flushes = []
    now = time.time()  # one hour for every flush: a split of two hours writes two parts per entity
    for k in range(every):
        fill(w, entities, rows, f"{tag}-{k}", now)
        wall, cpu, written = timed(w.flush)
        if written != entities * rows:
            raise SystemExit(f"mixed flush wrote {written} rows, expected {entities * rows}: {w.stats()}")
        flushes.append((wall, cpu))
    split_wall, split_cpu, parts = timed(w.split)
    w.close()
    if parts != entities or w.unsplit:
        raise SystemExit(f"the split wrote {parts} parts, expected {entities}: {w.stats()}")
    walls, cpus = sorted(f[0] for f in flushes), sorted(f[1] for f in flushes)
    return {
        "flush": walls[len(walls) // 2],
        "flush_cpu": cpus[len(cpus) // 2],
        "split": split_wall,
        "split_cpu": split_cpu,
        "cpu_per_flush": (sum(cpus) + split_cpu) / every,
    }


def compare_layouts(stores: dict, args) -> None:
    print(
        f"\nlayouts: a part per entity each flush, against a mixed part per flush split every {args.split_every} "
        f"flushes ({args.entities} entities x {args.rows} decisions a flush)"
    )
    print(
        f"  {'store':9s} {'layout':10s} {'flush ms':>9s} {'flush CPU ms':>12s} {'split ms':>9s} {'split CPU ms':>12s}"
        f" {'CPU ms/flush':>12s}  CPU vs per entity"
    )
    for name, store in stores.items():
        real = getattr(store, "real", store)
        threads = args.threads if real.concurrent_puts else 1  # what the writer itself uses
        per_entity = [one_flush(store, threads, args.entities, args.rows, f"{name}-pe{k}") for k in range(3)]
        wall = sorted(w for w, _ in per_entity)[1]
        cpu = sorted(c for _, c in per_entity)[1]
        mixed = mixed_layout(store, threads, args.entities, args.rows, args.split_every, name)
        print(
            f"  {name:9s} {'per entity':10s} {wall * 1000:>9.0f} {cpu * 1000:>12.0f} {'-':>9s} {'-':>12s}"
            f" {cpu * 1000:>12.1f}  x1.00"
        )
        print(
            f"  {name:9s} {'mixed':10s} {mixed['flush'] * 1000:>9.1f} {mixed['flush_cpu'] * 1000:>12.1f}"
            f" {mixed['split'] * 1000:>9.0f} {mixed['split_cpu'] * 1000:>12.0f}"
            f" {mixed['cpu_per_flush'] * 1000:>12.1f}  x{mixed['cpu_per_flush'] / cpu:.3f}"
        )


def moto_server() -> tuple[subprocess.Popen, str] | None:
    try:
        import moto.server  # noqa: F401
    except ImportError:
        return None
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if wait_for_port(port, 30):
        return proc, f"http://127.0.0.1:{port}"
    proc.kill()
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entities", type=int, default=500, help="entities with traffic in the flush interval")
    ap.add_argument("--rows", type=int, default=4, help="decisions per entity in the flush")
    ap.add_argument("--threads", type=int, default=8, help="write_threads to compare with 1")
    ap.add_argument("--flushes", type=int, default=3, help="flushes per setting, alternated")
    ap.add_argument("--split-every", type=int, default=60, help="flushes per split in the mixed layout")
    ap.add_argument("--layouts-only", action="store_true", help="skip the threads table")
    args = ap.parse_args()
    stores = {}
    with tempfile.TemporaryDirectory(prefix="bidopt-events-") as tmp:
        stores["file"] = open_event_store(f"file://{tmp}")
        moto = moto_server()
        if moto is not None:
            import boto3

            os.environ.update(
                AWS_ACCESS_KEY_ID="testing",
                AWS_SECRET_ACCESS_KEY="testing",
                AWS_DEFAULT_REGION="us-east-1",
                BIDOPT_S3_ENDPOINT_URL=moto[1],
            )
            boto3.client("s3", endpoint_url=moto[1]).create_bucket(Bucket="bench")
            stores["s3"] = open_event_store("s3://bench/events")
            stores["s3+20ms"] = Latency(stores["s3"], 0.020)
        else:
            print("s3: skipped, moto is not installed")
        print(
            f"{os.cpu_count()} cores; one flush of {args.entities} entities x {args.rows} decisions "
            f"({args.entities} parts); write_threads 1 and {args.threads}, {args.flushes} flushes each, alternated"
        )
        print(
            f"  {'store':9s} {'threads':>7s} {'flush ms (each)':>28s} {'CPU ms':>8s} {'CPU ms/part':>11s}"
            "  wall vs 1 thread"
        )
        try:
            for name, store in stores.items():
                if args.layouts_only:
                    break
                figures: dict[int, list[tuple[float, float]]] = {1: [], args.threads: []}
                for k in range(args.flushes):
                    for threads in (1, args.threads) if k % 2 == 0 else (args.threads, 1):
                        figures[threads].append(one_flush(store, threads, args.entities, args.rows, f"{name}{k}"))
                base = sorted(w for w, _ in figures[1])[len(figures[1]) // 2]
                for threads, runs in figures.items():
                    walls = sorted(w for w, _ in runs)
                    median, cpu = walls[len(walls) // 2], sorted(c for _, c in runs)[len(runs) // 2]
                    each = " / ".join(f"{w * 1000:.0f}" for w, _ in runs)
                    print(
                        f"  {name:9s} {threads:>7d} {each:>28s} {cpu * 1000:>8.0f} {cpu * 1000 / args.entities:>11.2f}"
                        f"  x{base / median:.2f}"
                    )
            compare_layouts(stores, args)
        finally:
            if moto is not None:
                moto[0].kill()
                moto[0].wait()


if __name__ == "__main__":
    main()

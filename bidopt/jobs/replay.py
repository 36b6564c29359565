"""Replaying runs over an entity's logged requests, in this process or on Ray Data.

Both engines call the same pure function (``bidopt.optimizer.replay.replay_partials``) on the same
batches and add up the same partial sums, so they give the same figures:

* ``local``: a loop over the batches in this process;
* ``ray``: ``ray.data.from_arrow`` (the warehouse's Arrow batches) or ``ray.data.read_parquet``
  (Parquet files, e.g. the embedded warehouse's) -> ``map_batches`` (``replay_batch``: tasks, one
  CPU and one XGBoost thread each) -> the partial sums, added up by the driver.

``auto`` takes ``ray`` from ``RAY_MIN_ROWS`` rows on and ``local`` below (``benchmarks/replay.py``
measures where Ray Data starts to pay on a machine; see the README's *Replay*).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import datetime

import pandas as pd
import pyarrow as pa

from bidopt.errors import InvalidConfig
from bidopt.optimizer.replay import ReplayRun, combine_partials, empty_partials, replay_partials, required_columns
from bidopt.warehouse import BidLogWarehouse, Window

ENGINES = ("auto", "local", "ray")
# Below this many requests the replay runs in this process: on 2 cores Ray Data reached parity only at
# 10M (benchmarks/replay.py; README, Replay); from there it is no slower and spreads over a cluster.
RAY_MIN_ROWS = 10_000_000
BATCH_ROWS = 100_000


def choose_engine(engine: str, rows: int, min_rows: int = RAY_MIN_ROWS) -> str:
    """``local`` or ``ray`` for ``engine`` (``auto``: by the number of rows)."""
    if engine not in ENGINES:
        raise InvalidConfig(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine != "auto":
        return engine
    return "ray" if rows >= min_rows else "local"


def replay_local(
    batches: Iterable[pa.RecordBatch | pa.Table | pd.DataFrame], runs: Sequence[ReplayRun]
) -> pd.DataFrame:
    """The partial sums of every batch, in this process."""
    parts = [empty_partials()]
    for batch in batches:
        frame = batch if isinstance(batch, pd.DataFrame) else batch.to_pandas()
        parts.append(replay_partials(frame, runs))
    return pd.concat(parts, ignore_index=True)


def replay_batch(batch: pd.DataFrame, runs: Sequence[ReplayRun]) -> pd.DataFrame:
    """The Ray Data UDF: ``replay_partials`` with XGBoost on one thread (the tasks are the parallelism).

    Tasks, not an actor pool: Ray Data fuses them with the read tasks, so a batch is read and replayed
    in one task where it was read, and no pool of actors can hold every CPU while reads wait for one."""
    for run in runs:
        run.model.booster.set_param({"nthread": 1})
    return replay_partials(batch, runs)


def replay_dataset(ds, runs: Sequence[ReplayRun], *, batch_rows: int = BATCH_ROWS) -> pd.DataFrame:
    """``map_batches`` of the replay over a Ray Dataset of logged requests; the partial sums."""
    out = ds.map_batches(replay_batch, fn_kwargs={"runs": list(runs)}, batch_format="pandas", batch_size=batch_rows)
    return pd.concat([empty_partials(), out.to_pandas()], ignore_index=True)


def _ensure_ray() -> None:
    """Join ``BIDOPT_RAY_ADDRESS`` (or the Ray this process runs in), else start a local Ray without
    its dashboard (the dashboard's port is the shared one of ``bidopt serve``)."""
    from bidopt.jobs.ray_runtime import ensure_ray, starts_local_ray

    ensure_ray(**({"include_dashboard": False} if starts_local_ray() else {}))


def replay_arrow_on_ray(tables: Sequence[pa.Table], runs: Sequence[ReplayRun], *, batch_rows: int = BATCH_ROWS):
    """Ray Data over Arrow tables already read (``ray.data.from_arrow``)."""
    import ray.data

    _ensure_ray()
    return replay_dataset(ray.data.from_arrow(list(tables)), runs, batch_rows=batch_rows)


def replay_parquet_on_ray(paths, runs: Sequence[ReplayRun], *, batch_rows: int = BATCH_ROWS):
    """Ray Data reading Parquet itself (``ray.data.read_parquet``: the files are read by the workers,
    spread over a cluster's nodes), only the columns the replay needs."""
    import ray.data

    _ensure_ray()
    ds = ray.data.read_parquet(paths, columns=required_columns(runs))
    return replay_dataset(ds, runs, batch_rows=batch_rows)


def replay_window(
    warehouse: BidLogWarehouse,
    entity_code: str,
    window: Window,
    runs: Sequence[ReplayRun],
    *,
    engine: str = "auto",
    top_segments: int | None = 50,
    batch_rows: int = BATCH_ROWS,
) -> dict:
    """Replay ``runs`` over the entity's logged requests in ``window`` (the warehouse's Arrow batches).

    Returns ``{"engine", "requests", "seconds", "runs": [...]}`` (``combine_partials``)."""
    if not runs:
        raise InvalidConfig("nothing to replay: no runs")
    choose_engine(engine, 0)  # refuses an unknown engine before reading anything
    began = time.perf_counter()
    batches = list(warehouse.bid_log_batches(entity_code, window, required_columns(runs), batch_rows=batch_rows))
    rows = sum(b.num_rows for b in batches)
    if rows == 0:
        raise InvalidConfig(
            f"the warehouse has no bid logs for {entity_code} in {_fmt(window.start)} .. {_fmt(window.end)}"
        )
    chosen = choose_engine(engine, rows)
    if chosen == "local":
        partials = replay_local(batches, runs)
    else:
        partials = replay_arrow_on_ray([pa.Table.from_batches([b]) for b in batches], runs, batch_rows=batch_rows)
    return {
        "engine": chosen,
        "requests": rows,
        "seconds": round(time.perf_counter() - began, 3),
        "runs": combine_partials(partials, [r.run_id for r in runs], top_segments=top_segments),
    }


def _fmt(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")

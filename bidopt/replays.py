"""Offline replay of runs before deploying them: the service function the CLI, the API and the UI call.

``replay_run(session, run_id, against=..., since=..., until=...)`` replays the entity's logged
requests (its bid logs in the warehouse) through the run, and through the runs it is compared with
(``against``, default: the entity's active split), each exactly as a bidder would load and price it
(``bidopt.bidder.loader.load_run_tables``; ``bidopt.optimizer.replay``), and returns per run and per
segment the bid share, expected win rate (the run's own win model at the price it would bid),
expected spend and eCPM. Reads only: nothing is written anywhere.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from bidopt.db import queries as q
from bidopt.errors import Conflict, InvalidConfig, NotFound
from bidopt.service import parse_utc_time
from bidopt.settings import get_settings

MAX_AGAINST = 10


def load_replay_run(session: Session, run_id: str, auction_type: str):
    """A completed run as ``ReplayRun``: its tables by the bidder's own loading code (manifest,
    checksums, pinned request fields, price bounds) and its win model; with its manifest."""
    from bidopt.artifacts import read_run_artifacts
    from bidopt.bidder.loader import load_run_tables, plan_run
    from bidopt.optimizer.replay import WIN_ENCODER, WIN_MODEL, ReplayRun, load_win_model

    run = q.get_run(session, run_id)
    if run.status != "completed" or not run.s3_output_path:
        raise Conflict(f"run {run_id} is {run.status}: it has no artifacts to replay")
    tables = load_run_tables(plan_run(session, run_id, 100, run.s3_output_path))
    try:
        manifest, files = read_run_artifacts(run.s3_output_path, [WIN_MODEL, WIN_ENCODER])
    except NotFound as exc:
        raise Conflict(f"run {run_id} cannot be replayed: {exc} (runs made before replays existed lack it)") from None
    return ReplayRun(tables, load_win_model(files[WIN_MODEL], files[WIN_ENCODER]), auction_type), manifest


WINDOWS = ("all", "training", "holdout")


def _iso(t: datetime) -> str:
    return t.isoformat() + "Z"


def _window(manifest: dict, part: str, since: Any, until: Any) -> tuple[datetime, datetime]:
    """``[since, until)``: given, else ``part`` of the window the run recorded in its manifest
    (``all`` of it, its ``training`` rows before the held-out slice, or the ``holdout`` slice)."""
    if part not in WINDOWS:
        raise InvalidConfig(f"window must be one of {', '.join(WINDOWS)}, got {part!r}")
    recorded = manifest.get("window") or [None, None]
    lo, hi = recorded
    if part != "all":
        cut = manifest.get("holdout_from")
        if not cut:
            raise InvalidConfig(f"the run's manifest records no held-out slice: window {part} is unknown")
        lo, hi = (lo, cut) if part == "training" else (cut, hi)
    start = parse_utc_time(since, "since") if since not in (None, "") else None
    end = parse_utc_time(until, "until") if until not in (None, "") else None
    if start is None:
        if not lo:
            raise InvalidConfig("the run's manifest records no window: give since")
        start = datetime.fromisoformat(lo)
    if end is None:
        if not hi:
            raise InvalidConfig("the run's manifest records no window: give until")
        end = datetime.fromisoformat(hi)
    if start >= end:
        raise InvalidConfig(f"since must be before until, got {_iso(start)} .. {_iso(end)}")
    return start, end


def replay_run(
    session: Session,
    run_id: str,
    *,
    against: list[str] | tuple[str, ...] | None = None,
    since: Any = None,
    until: Any = None,
    window: str = "all",
    engine: str = "auto",
    top_segments: int = 50,
) -> dict[str, Any]:
    """Replay ``run_id`` and the runs it is compared with over the entity's logged requests.

    ``against``: run ids of the same entity (default: the runs of the entity's active split other
    than ``run_id``). ``since``/``until``: ISO 8601 UTC, ``until`` exclusive; each defaults to the
    ``window`` the run recorded in its manifest: ``all`` (what it was trained and evaluated on),
    ``training`` (before its held-out slice) or ``holdout``. ``engine``: ``auto``, ``local`` or ``ray``
    (``bidopt.jobs.replay``)."""
    from bidopt.jobs.replay import choose_engine, replay_window
    from bidopt.warehouse import Window, open_warehouse

    choose_engine(engine, 0)
    if not isinstance(top_segments, int) or not 1 <= top_segments <= 1000:
        raise InvalidConfig(f"top_segments must be between 1 and 1000, got {top_segments!r}")
    run = q.get_run(session, run_id)
    entity = run.entity
    auction_type = q.get_master(session, entity.master_id).auction_type
    split_rows = q.get_current_traffic_split(session, entity.entity_code)
    split = {d.run_id: d.traffic_pct for d in split_rows}
    others = list(dict.fromkeys(against)) if against else [r for r in split if r != run_id]
    others = [r for r in others if r != run_id]
    if len(others) > MAX_AGAINST:
        raise InvalidConfig(f"at most {MAX_AGAINST} runs to compare with, got {len(others)}")
    for other in others:
        if q.get_run(session, other).entity_id != run.entity_id:
            raise InvalidConfig(f"run {other} is not a run of {entity.entity_code}")
    replayed, manifest = load_replay_run(session, run_id, auction_type)
    runs, skipped = [replayed], []
    for other in others:
        try:
            runs.append(load_replay_run(session, other, auction_type)[0])
        except Conflict as exc:
            if against:  # named by the caller: say why it cannot be
                raise
            # a run of the active split made before replays existed: compare with the others
            skipped.append({"run_id": other, "reason": str(exc)})
    start, end = _window(manifest, window, since, until)
    with open_warehouse(get_settings().warehouse_url) as wh:
        result = replay_window(
            wh, entity.entity_code, Window(start, end), runs, engine=engine, top_segments=top_segments
        )
    for r in result["runs"]:
        r["role"] = "replayed" if r["run_id"] == run_id else ("active split" if r["run_id"] in split else "against")
        r["traffic_pct"] = split.get(r["run_id"])
    return {
        "run_id": run_id,
        "entity_code": entity.entity_code,
        "auction_type": auction_type,
        "since": _iso(start),
        "until": _iso(end),
        "split_id": split_rows[0].split_id if split_rows else None,
        "spend_model": "first price: P(win) x bid"
        if auction_type == "first_price"
        else "second price: bid x F(bid) - integral of F from the floor to the bid (F: the win model's curve)",
        # each run is scored by its own win model: in-sample on its own training window
        "scored_by": "each run's own win model",
        "not_replayable": skipped,
        **result,
    }

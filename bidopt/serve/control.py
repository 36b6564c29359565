"""The control loop: guardrails and optimizer schedules, every ``BIDOPT_CONTROL_LOOP_SECONDS``, and
once an hour the sweep of the mixed event parts bidders left (``service.sweep_event_parts``).

``ControlLoop`` is the loop without Ray (a daemon thread; ``tick`` is one pass).
``ControlLoopDeployment`` runs it as the Ray Serve application ``control``: one replica, no CPU
reserved, no HTTP route (a ``DeploymentHandle`` can ask it ``status()``).

Why a Serve background deployment rather than a Ray task (or a detached actor):

* Serve keeps it running: a replica whose process dies, or whose loop thread died
  (``check_health``), is replaced by the controller, with no driver of ours that must outlive it;
  a Ray task ends, and something would have to resubmit it.
* It lives exactly as long as the bidder it guards: ``bidopt serve`` and ``serve deploy
  serve_config.yaml`` deploy it with the bidder, ``serve shutdown`` stops both.
* One place to see it: ``serve status`` and the dashboard list it next to the other apps.

Concurrent copies are harmless (two clusters' loops on one database, a replica the controller
is replacing while the old one still ticks, ``bidopt deploy guard`` or ``bidopt schedules tick``
at the same time): every action is a compare-and-set, a guardrail's split replacement on the
split id it judged, a schedule's run on ``next_due_at`` backed by a unique index; two sweeps write
the same per-entity parts with the same rows.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ray import serve

from bidopt import service
from bidopt.db.engine import get_engine, session_scope

log = logging.getLogger("bidopt.control")
SWEEP_EVERY_SECONDS = 3600


class ControlLoop:
    """Every ``interval`` seconds (default ``BIDOPT_CONTROL_LOOP_SECONDS``) on a daemon thread:
    ``service.check_guardrails`` and then ``service.create_due_scheduled_runs``, each in its own
    transaction. An error (a database outage above all) is logged and the step is tried again at
    the next tick: the loop never dies of one."""

    def __init__(self, *, database_url: str | None = None, interval: float | None = None) -> None:
        from bidopt.settings import get_settings

        settings = get_settings()
        self.database_url = database_url or settings.database_url
        self.interval = float(interval if interval is not None else settings.control_loop_seconds)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ticks = 0
        self.last_tick_at: float | None = None
        self.last_error: str | None = None
        self._last_sweep: float | None = None  # time.monotonic() of the last sweep of the events' mixed parts

    def tick(self) -> dict[str, Any]:
        """One pass: ``{"guardrails": [...entries...], "scheduled_runs": [run ids], "errors": [...]}``, and
        ``"swept"`` (``service.sweep_event_parts``) in the first tick and then once an hour."""
        engine = get_engine(self.database_url)
        out: dict[str, Any] = {"guardrails": [], "scheduled_runs": [], "errors": []}
        try:
            # reports are built from the events outside any transaction (on SQLite a transaction holds
            # the write lock, and bidders, optimizers and operators would wait on it), then judged and
            # acted on in one short transaction, each action a compare-and-set on the judged split
            reports = service.guardrail_reports(engine)
            with session_scope(engine) as s:
                out["guardrails"] = service.check_guardrails(s, reports=reports)
        except Exception as exc:  # noqa: BLE001 - the loop outlives any one failure
            out["errors"].append(f"guardrails: {type(exc).__name__}: {exc}".splitlines()[0])
        try:
            with session_scope(engine) as s:
                out["scheduled_runs"] = service.create_due_scheduled_runs(s)
        except Exception as exc:  # noqa: BLE001
            out["errors"].append(f"schedules: {type(exc).__name__}: {exc}".splitlines()[0])
        now = time.monotonic()
        if self._last_sweep is None or now - self._last_sweep >= SWEEP_EVERY_SECONDS:
            self._last_sweep = now  # (an events store down: tried again in an hour, not every tick)
            try:
                out["swept"] = service.sweep_event_parts()
            except Exception as exc:  # noqa: BLE001 - an events store outage: tried again next tick
                out["errors"].append(f"sweep: {type(exc).__name__}: {exc}".splitlines()[0])
        for entry in out["guardrails"]:
            if entry["action"] not in ("none", "disabled"):
                log.warning(
                    "control: %s split %s: %s: %s",
                    entry["entity_code"],
                    entry["split_id"],
                    entry["action"],
                    entry["reason"],
                )
        for run_id in out["scheduled_runs"]:
            log.info("control: created scheduled run %s", run_id)
        for error in out["errors"]:
            log.warning("control: %s (retried next tick)", error)
        self.ticks += 1
        self.last_tick_at = time.time()
        self.last_error = out["errors"][-1] if out["errors"] else None
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - tick catches its own; this is a last resort
                log.exception("control: tick failed")
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bidopt-control-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def check_health(self) -> None:
        """Raise when the loop thread has died (Serve then replaces the replica)."""
        if not self.is_alive():
            raise RuntimeError("the control loop thread is not running")

    def status(self) -> dict[str, Any]:
        last = time.gmtime(self.last_tick_at) if self.last_tick_at else None
        return {
            "alive": self.is_alive(),
            "interval_seconds": self.interval,
            "ticks": self.ticks,
            "last_tick_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", last) if last else None,
            "last_error": self.last_error,
        }


@serve.deployment(name="control", num_replicas=1, max_ongoing_requests=4, ray_actor_options={"num_cpus": 0})
class ControlLoopDeployment:
    """The control loop as a Serve replica: started by the constructor, stopped by a clean stop
    (``__del__``), replaced by Serve when its thread dies (``check_health``)."""

    def __init__(self) -> None:
        self.loop = ControlLoop()
        self.loop.start()

    def status(self) -> dict[str, Any]:
        return self.loop.status()

    def check_health(self) -> None:
        self.loop.check_health()

    def __del__(self) -> None:
        loop = getattr(self, "loop", None)
        if loop is not None:
            loop.stop(timeout=1.0)

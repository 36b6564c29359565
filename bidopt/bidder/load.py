"""How loaded a bidder replica is: the signals its autoscaling policy reads (``bidopt.serve.autoscaling``).

Serve's default policy scales on the requests a replica is executing. For this bidder that number is
zero whenever it is sampled, even at 100% CPU (measured: ``benchmarks/autoscaling.py --signals``): a
decision takes a fraction of a millisecond without awaiting anything, so a request is counted and
uncounted inside one event-loop step, and the queue of requests waiting for the replica lies before
the handler (HAProxy, the sockets, the event loop's ready callbacks) where Serve does not count.

So each replica reports, over the time since its previous report:

* ``cpu``: the cores its process used (CPU seconds per wall second, every thread: the event loop,
  the event writer rendering each decision's row, the refresh thread, Ray's own threads, about 0.02
  of a core idle). The loop itself can use one core at most; for a handler that never waits, the
  process's CPU is proportional to the request rate, and it says how far from saturation the replica
  is before requests queue. It does not see a loop starved by a core shared with others: the lag does.
* ``loop_lag_ms``: how late the event loop ran a timer, on average (a probe every
  ``LAG_PROBE_SECONDS``). Near zero until the replica saturates, then about as long as a request
  waits before its handler starts: the queueing itself, also when the cause is a core the replica
  shares with others.
* ``loop_lag_max_ms`` and ``requests_per_s``: reported for operators (``bidopt serve``'s replica
  view, the autoscaling benchmark); the policy does not use them.

Pure Python and Ray-free: the Serve deployment calls ``note_request`` per request, starts
``watch_loop_lag`` on its event loop, and returns ``sample()`` from ``record_autoscaling_stats``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

LAG_PROBE_SECONDS = 0.05
# Serve records the first sample as soon as the replica is up: a sample over milliseconds would turn
# a little start-up CPU into cores. Shorter samples return nothing (Serve then records no point).
MIN_SAMPLE_SECONDS = 1.0


class LoadMeter:
    """Counts requests and event-loop lag; ``sample`` returns the signals since the previous sample.

    ``note_request`` and the lag probe run on the replica's event loop, ``sample`` too (Serve calls
    ``record_autoscaling_stats`` there); the counters are plain attributes, so a sample taken from
    another thread could only be off by the request being counted."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.process_time,
        probe_seconds: float = LAG_PROBE_SECONDS,
    ) -> None:
        self._clock = clock
        self._cpu_clock = cpu_clock
        self.probe_seconds = probe_seconds
        self.requests = 0
        self._lag_sum = 0.0
        self._lag_count = 0
        self._lag_max = 0.0
        self._last_wall = clock()
        self._last_cpu = cpu_clock()
        self._last_requests = 0
        self._watcher: asyncio.Task | None = None

    def note_request(self) -> None:
        self.requests += 1

    def record_lag(self, seconds: float) -> None:
        lag = max(0.0, seconds)
        self._lag_sum += lag
        self._lag_count += 1
        if lag > self._lag_max:
            self._lag_max = lag

    async def watch_loop_lag(self) -> None:
        """Forever: sleep ``probe_seconds`` and record how much later than asked the loop woke."""
        while True:
            asked = self._clock()
            await asyncio.sleep(self.probe_seconds)
            self.record_lag(self._clock() - asked - self.probe_seconds)

    def ensure_watching(self) -> None:
        """Start the lag probe on the running event loop, once (again if it ever ended)."""
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self.watch_loop_lag())

    def sample(self) -> dict[str, float]:
        """The signals since the previous sample (or since the meter was made), then start anew; empty
        when less than ``MIN_SAMPLE_SECONDS`` have passed (the next sample covers that time too)."""
        wall, cpu, requests = self._clock(), self._cpu_clock(), self.requests
        elapsed = wall - self._last_wall
        if elapsed < MIN_SAMPLE_SECONDS:
            return {}
        signals = {
            "cpu": max(0.0, cpu - self._last_cpu) / elapsed,
            "requests_per_s": (requests - self._last_requests) / elapsed,
            "loop_lag_ms": 1000.0 * self._lag_sum / self._lag_count if self._lag_count else 0.0,
            "loop_lag_max_ms": 1000.0 * self._lag_max,
        }
        self._last_wall, self._last_cpu, self._last_requests = wall, cpu, requests
        self._lag_sum, self._lag_count, self._lag_max = 0.0, 0, 0.0
        return signals

"""The bidder's application metrics: an in-process aggregate, flushed to Ray's metrics agent.

The request path only adds to plain Python counters (``BidderMetrics``: one lock, a few dict
increments per request, no Ray call). Under Ray, a ``MetricsFlusher`` thread exports what was
added since its last flush to ``ray.util.metrics`` every ``FLUSH_SECONDS`` (Ray's agent serves them
to Prometheus with the prefix ``PROMETHEUS_PREFIX``); outside Ray nothing is exported, and the
aggregate still feeds the replica's status row.

Labels are bounded (``BIDDER_METRICS`` lists every name and its labels): ``entity`` is an entity
this replica serves or knows from the catalogue, anything else ``UNKNOWN_ENTITY``; ``run`` a run of
a loaded split; ``reason`` one of ``NO_BID_REASONS`` (``no_bid_label`` maps ``decide``'s free-text
reasons onto them, in one table), notice ``kind`` and rejection ``reason`` the fixed codes of
``bidopt.notices``; never a user or request id.

Counting: a bid request is one ``requests``; each impression ``decide`` decided is one bid (by run)
or one no-bid (by reason); a request with no impression read (malformed, too large, an entity
this replica does not know) is one no-bid by its reason. So ``bids + no_bids`` per entity is the
impressions decided plus the requests refused whole.

``traffic(now)`` is the rolling window the replica reports (``counters["traffic"]``): per entity,
the requests, bids and no-bids by reason over the last ``WINDOW_MINUTES`` minutes, in per-minute
buckets (counts are put in the minute they are folded in, every flush or status report)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field

from bidopt.events.schema import FLOOR_NO_BID_REASON, INVALID_PRICE_REASON

log = logging.getLogger("bidopt.metrics")

PROMETHEUS_PREFIX = "ray_"  # what Ray's metrics agent puts before every application metric's name
FLUSH_SECONDS = 2.0
WINDOW_MINUTES = 5
UNKNOWN_ENTITY = "unknown"
NO_BID_REASONS = ("no_split", "floor", "currency", "malformed", "too_large", "tmax", "invalid_price", "other")
REFRESH_OUTCOMES = ("ok", "error")

# decide()'s free-text no-bid reasons (bidopt.bidder.core) -> the reason label: the one table.
REASON_LABELS = {
    FLOOR_NO_BID_REASON: "floor",  # one impression
    "no impression clears its floor": "floor",  # the whole request
    "currency not USD": "currency",  # an impression's bidfloorcur
    "request does not accept USD": "currency",  # the request's cur
    "tmax passed": "tmax",
    INVALID_PRICE_REASON: "invalid_price",
}
NO_SPLIT_PREFIX = "no active split for "  # + the entity code
STATUS_LABELS = {400: "malformed", 413: "too_large"}  # a request refused whole, by its HTTP status

PRICE_BOUNDS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0)  # CPM
SECONDS_BOUNDS = (25e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3)

REQUESTS = "bidopt_bidder_requests_total"
BIDS = "bidopt_bidder_bids_total"
NO_BIDS = "bidopt_bidder_no_bids_total"
TEST_REQUESTS = "bidopt_bidder_test_requests_total"
BID_PRICE = "bidopt_bidder_bid_price_cpm"
DECISION_SECONDS = "bidopt_bidder_decision_seconds"
REFRESHES = "bidopt_bidder_refreshes_total"
SECONDS_SINCE_REFRESH = "bidopt_bidder_seconds_since_refresh"
SERVING_SPLIT = "bidopt_bidder_serving_split"
NOTICES = "bidopt_notices_total"
NOTICES_REJECTED = "bidopt_notices_rejected_total"


@dataclass(frozen=True)
class MetricSpec:
    kind: str  # counter | histogram | gauge
    labels: tuple[str, ...]
    description: str
    attr: str = ""  # the BidderMetrics dict it is exported from (counters and histograms)
    bounds: tuple[float, ...] = ()


# Every metric the bidder exports, by the name given to ray.util.metrics. Prometheus sees
# PROMETHEUS_PREFIX + name (a counter's name ends in _total already, so Ray adds no suffix; a
# histogram adds _bucket, _count and _sum).
BIDDER_METRICS: dict[str, MetricSpec] = {
    REQUESTS: MetricSpec("counter", ("entity",), "Bid requests received", "requests"),
    BIDS: MetricSpec("counter", ("entity", "run"), "Impressions bid on", "bids"),
    NO_BIDS: MetricSpec(
        "counter", ("entity", "reason"), "Impressions not bid on, or requests refused whole, by reason", "no_bids"
    ),
    TEST_REQUESTS: MetricSpec("counter", ("entity",), 'Bid requests with "test": 1 (also in requests)', "tests"),
    BID_PRICE: MetricSpec("histogram", ("entity", "run"), "Bid prices (CPM, USD)", "prices", PRICE_BOUNDS),
    DECISION_SECONDS: MetricSpec(
        "histogram", ("entity",), "Seconds in the bid handler (decide and the event append)", "seconds", SECONDS_BOUNDS
    ),
    REFRESHES: MetricSpec("counter", ("outcome",), "Table refreshes: ok, or error (any split failed)", "refreshes"),
    SECONDS_SINCE_REFRESH: MetricSpec("gauge", (), "Seconds since the replica last read the active splits"),
    SERVING_SPLIT: MetricSpec("gauge", ("entity",), "The split id this replica serves (0: none any more)"),
    NOTICES: MetricSpec("counter", ("entity", "kind"), "Notices accepted, by kind", "notices"),
    NOTICES_REJECTED: MetricSpec("counter", ("reason",), "Notices rejected, by reason", "rejected"),
}
COUNTED = tuple((name, spec) for name, spec in BIDDER_METRICS.items() if spec.kind == "counter")
HISTOGRAMS = tuple((name, spec) for name, spec in BIDDER_METRICS.items() if spec.kind == "histogram")


def no_bid_label(reason: str | None, status: int = 204) -> str:
    """The ``NO_BID_REASONS`` label of a decision's (or a refused request's) free-text reason."""
    label = REASON_LABELS.get(reason)  # type: ignore[arg-type]
    if label is not None:
        return label
    label = STATUS_LABELS.get(status)
    if label is not None:
        return label
    if reason is not None and reason.startswith(NO_SPLIT_PREFIX):
        return "no_split"
    return "other"


def entity_label(state, entity_code: str) -> str:
    """``entity_code`` if the replica serves it or knows it from the catalogue, else ``UNKNOWN_ENTITY``."""
    return entity_code if entity_code in state.entities or entity_code in state.known else UNKNOWN_ENTITY


def under_ray() -> bool:
    """Whether this process is connected to Ray (a Serve replica, an actor, a driver after ``ray.init``),
    without importing Ray where nothing has."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _observe(hists: dict, key: tuple, bounds: tuple[float, ...], value: float) -> None:
    """One value into a histogram: counts per bucket, then sums per bucket (``bounds`` are upper bounds,
    inclusive, as in Prometheus and Ray; the last bucket is +Inf)."""
    h = hists.get(key)
    n = len(bounds) + 1
    if h is None:
        h = hists[key] = [0] * n + [0.0] * n
    i = bisect_left(bounds, value)
    h[i] += 1
    h[n + i] += value


@dataclass
class Snapshot:
    """Copies of a ``BidderMetrics``' cumulative counts: ``{(label values, ...): n}`` per counter and
    ``{(label values, ...): [count per bucket..., sum per bucket...]}`` per histogram."""

    requests: dict = field(default_factory=dict)
    bids: dict = field(default_factory=dict)
    no_bids: dict = field(default_factory=dict)
    tests: dict = field(default_factory=dict)
    prices: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    refreshes: dict = field(default_factory=dict)
    notices: dict = field(default_factory=dict)
    rejected: dict = field(default_factory=dict)


class BidderMetrics:
    """One replica's counts since it started (see the module docstring). Safe from any thread."""

    enabled = True

    def __init__(self, started_at: float | None = None) -> None:
        self._lock = threading.Lock()
        self._data = Snapshot()
        self.started_at = time.time() if started_at is None else started_at
        self._fold_lock = threading.Lock()
        self._folded = Snapshot()  # what the window has taken in so far
        self._minutes: dict[int, dict[str, list]] = {}  # minute -> entity -> [requests, bids, {reason: n}]

    def request(
        self, state, entity_code: str, decisions, status: int, reason: str | None, seconds: float | None
    ) -> None:
        """One bid request answered (``decide``'s status, decisions and reason); ``seconds`` in the
        handler (None: refused before it ran)."""
        entity = entity_label(state, entity_code)
        d = self._data
        with self._lock:
            key = (entity,)
            d.requests[key] = d.requests.get(key, 0) + 1
            if decisions:
                bids, no_bids = d.bids, d.no_bids
                for dec in decisions:
                    if dec.price is not None:
                        k = (entity, dec.run_id)
                        bids[k] = bids.get(k, 0) + 1
                        _observe(d.prices, k, PRICE_BOUNDS, dec.price)
                    else:
                        k = (entity, no_bid_label(dec.reason))
                        no_bids[k] = no_bids.get(k, 0) + 1
                if decisions[0].test:
                    d.tests[key] = d.tests.get(key, 0) + 1
            else:
                k = (entity, no_bid_label(reason, status))
                d.no_bids[k] = d.no_bids.get(k, 0) + 1
            if seconds is not None:
                _observe(d.seconds, key, SECONDS_BOUNDS, seconds)

    def notice(self, state, entity_code: str, kind: str) -> None:
        """An accepted notice."""
        key = (entity_label(state, entity_code), kind)
        with self._lock:
            self._data.notices[key] = self._data.notices.get(key, 0) + 1

    def notice_rejected(self, reason: str) -> None:
        """A rejected notice (``reason``: a ``bidopt.notices.REJECTIONS`` code)."""
        key = (reason,)
        with self._lock:
            self._data.rejected[key] = self._data.rejected.get(key, 0) + 1

    def refresh(self, outcome: dict[str, str]) -> None:
        """A refresh's outcome (``Refresher.refresh_once``): ok, or error when anything failed."""
        key = ("error" if any(v.startswith("failed") for v in outcome.values()) else "ok",)
        with self._lock:
            self._data.refreshes[key] = self._data.refreshes.get(key, 0) + 1

    def snapshot(self) -> Snapshot:
        """The counts so far (copies: the request path goes on adding to the originals)."""
        d = self._data
        with self._lock:
            return Snapshot(
                **{
                    name: {k: list(v) for k, v in value.items()} if name in ("prices", "seconds") else dict(value)
                    for name, value in vars(d).items()
                }
            )

    def fold(self, now: float) -> None:
        """Put what was counted since the last fold into the minute of ``now``, and drop the minutes
        that have left the window."""
        with self._fold_lock:
            snap = self.snapshot()
            last = self._folded
            minute = int(now // 60)
            bucket = self._minutes.setdefault(minute, {})

            def row(entity: str) -> list:
                r = bucket.get(entity)
                if r is None:
                    r = bucket[entity] = [0, 0, {}]
                return r

            for (entity,), n in snap.requests.items():
                if n != last.requests.get((entity,), 0):
                    row(entity)[0] += n - last.requests.get((entity,), 0)
            for key, n in snap.bids.items():
                if n != last.bids.get(key, 0):
                    row(key[0])[1] += n - last.bids.get(key, 0)
            for (entity, reason), n in snap.no_bids.items():
                if n != last.no_bids.get((entity, reason), 0):
                    reasons = row(entity)[2]
                    reasons[reason] = reasons.get(reason, 0) + n - last.no_bids.get((entity, reason), 0)
            self._folded = snap
            for old in [m for m in self._minutes if m <= minute - WINDOW_MINUTES]:
                del self._minutes[old]

    def traffic(self, now: float | None = None) -> dict[str, dict]:
        """``{entity: {"window_seconds", "requests", "bids", "no_bids": {reason: n}}}`` over the last
        ``WINDOW_MINUTES`` minutes (``window_seconds``: how much of them this replica has counted)."""
        now = time.time() if now is None else now
        self.fold(now)
        minute = int(now // 60)
        start = max((minute - WINDOW_MINUTES + 1) * 60, self.started_at)
        covered = round(min(max(now - start, 0.0), WINDOW_MINUTES * 60.0), 3)
        out: dict[str, dict] = {}
        with self._fold_lock:  # fold has dropped the minutes that left the window
            for m, rows in self._minutes.items():
                if m > minute:  # the clock went back: not in this window yet
                    continue
                for entity, (requests, bids, reasons) in rows.items():
                    t = out.setdefault(entity, {"window_seconds": covered, "requests": 0, "bids": 0, "no_bids": {}})
                    t["requests"] += requests
                    t["bids"] += bids
                    for reason, n in reasons.items():
                        t["no_bids"][reason] = t["no_bids"].get(reason, 0) + n
        return out


class NoMetrics(BidderMetrics):
    """``BIDOPT_METRICS=0``: records nothing, reports an empty window."""

    enabled = False

    def request(self, state, entity_code, decisions, status, reason, seconds) -> None:
        pass

    def notice(self, state, entity_code, kind) -> None:
        pass

    def notice_rejected(self, reason) -> None:
        pass

    def refresh(self, outcome) -> None:
        pass

    def traffic(self, now: float | None = None) -> dict[str, dict]:
        return {}


def bucket_label(bound: float) -> str:
    """A bucket's ``le`` label, as Ray's own histograms write it (``2.0``, ``2.5e-05``)."""
    return repr(float(bound))


def histogram_series(bounds: tuple[float, ...], counts: list) -> tuple[list[tuple[str, int]], int, float]:
    """``([(le, cumulative count), ..., ("+Inf", count)], count, sum)`` of one of ``_observe``'s lists:
    the ``_bucket``, ``_count`` and ``_sum`` series of a Prometheus histogram."""
    n = len(bounds) + 1
    running, buckets = 0, []
    for i in range(n):
        running += counts[i]
        buckets.append((bucket_label(bounds[i]) if i < len(bounds) else "+Inf", running))
    return buckets, running, float(sum(counts[n:]))


class RayExporter:
    """The ``ray.util.metrics`` objects of ``BIDDER_METRICS``, kept equal to the snapshots exported.
    ``metrics_module``: ``ray.util.metrics`` (default), or anything with the same classes.

    Counters get each snapshot's increments. A histogram is exported as the three series Prometheus
    reads a histogram from, each a Ray gauge set to the cumulative values (``<name>_bucket`` with
    ``le``, ``<name>_count``, ``<name>_sum``): a flush costs the same at any traffic. A
    ``ray.util.metrics.Histogram`` takes one call per observation, and Ray 2.60's agent records each
    again (at its bucket's midpoint): measured, that cost the bidder 8 to 11% of its throughput
    through Serve (``benchmarks/bidder.py``), these gauges nothing beyond noise. Queries are those of a histogram
    (``histogram_quantile(0.99, sum by (le) (rate(..._bucket[5m])))``), and ``_sum`` is exact."""

    def __init__(self, metrics_module=None) -> None:
        if metrics_module is None:
            from ray.util import metrics as metrics_module
        self.objects: dict = {}
        for name, spec in BIDDER_METRICS.items():
            if spec.kind == "counter":
                self.objects[name] = metrics_module.Counter(name, spec.description, tag_keys=spec.labels)
            elif spec.kind == "histogram":
                for series, labels in (
                    ("_bucket", (*spec.labels, "le")),
                    ("_count", spec.labels),
                    ("_sum", spec.labels),
                ):
                    self.objects[name + series] = metrics_module.Gauge(
                        name + series, f"{spec.description} (histogram {series[1:]})", tag_keys=labels
                    )
            else:
                self.objects[name] = metrics_module.Gauge(name, spec.description, tag_keys=spec.labels)
        self._last = Snapshot()
        self._served: set[str] = set()

    def export(self, snap: Snapshot, serving: dict[str, int], seconds_since_refresh: float | None) -> None:
        """Add ``snap`` minus the previous snapshot exported to the counters; set the gauges."""
        last = self._last
        for name, spec in COUNTED:
            before = getattr(last, spec.attr)
            for key, n in getattr(snap, spec.attr).items():
                delta = n - before.get(key, 0)
                if delta > 0:
                    self.objects[name].inc(delta, tags=dict(zip(spec.labels, key)))
                    # per key, as it is exported: a flush that fails part-way must not add the
                    # increments it did export again at the next one
                    before[key] = n
        for name, spec in HISTOGRAMS:
            bucket, count, total = (self.objects[name + s] for s in ("_bucket", "_count", "_sum"))
            for key, counts in getattr(snap, spec.attr).items():  # all, every flush: gauges age out unset
                tags = dict(zip(spec.labels, key))
                buckets, n, value_sum = histogram_series(spec.bounds, counts)
                for le, cumulative in buckets:
                    bucket.set(cumulative, tags={**tags, "le": le})
                count.set(n, tags=tags)
                total.set(value_sum, tags=tags)
        for entity, split_id in serving.items():
            self.objects[SERVING_SPLIT].set(split_id, tags={"entity": entity})
        for entity in self._served - set(serving):
            self.objects[SERVING_SPLIT].set(0, tags={"entity": entity})
        self._served |= set(serving)
        if seconds_since_refresh is not None:
            self.objects[SECONDS_SINCE_REFRESH].set(seconds_since_refresh)


class MetricsFlusher:
    """A daemon thread that exports ``metrics`` every ``interval`` seconds through ``exporter`` (a
    ``RayExporter`` by default) and folds the status window; ``stop`` flushes once more.
    ``gauges()``: ``({entity: split id served}, seconds since the splits were last read or None)``."""

    def __init__(
        self,
        metrics: BidderMetrics,
        gauges: Callable[[], tuple[dict[str, int], float | None]],
        *,
        interval: float = FLUSH_SECONDS,
        exporter: RayExporter | None = None,
    ) -> None:
        self.metrics, self.gauges, self.interval = metrics, gauges, interval
        self.exporter = exporter if exporter is not None else RayExporter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def flush(self, lock_timeout: float = -1) -> None:
        if not self._lock.acquire(timeout=lock_timeout):
            log.warning("bidder: metrics flush skipped: the previous one has not ended")
            return
        try:
            try:  # the status window first, apart: a failing export must not leave it unfolded
                self.metrics.fold(time.time())
            except Exception:  # noqa: BLE001 - metrics are for operators
                log.exception("bidder: metrics window fold failed")
            try:
                self.exporter.export(self.metrics.snapshot(), *self.gauges())
            except Exception:  # noqa: BLE001 - metrics are for operators; the next flush retries
                log.exception("bidder: metrics flush failed")
        finally:
            self._lock.release()

    def start(self) -> None:
        if self.running or self._stop.is_set():  # once: a second thread would export everything twice
            return

        def loop() -> None:
            while not self._stop.wait(self.interval):
                self.flush()

        self._thread = threading.Thread(target=loop, name="bidder-metrics", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop the thread and export what is left, waiting at most a few seconds: a flush stuck in a
        Ray call must not hold up the replica's stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush(lock_timeout=5)

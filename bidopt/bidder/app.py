"""The bidder as a service: ``BidderCore`` (refresher + decisions + notices + events) and
``http_handler`` (Starlette request in, response out), behind two front doors: the Ray Serve
deployment (``bidopt.serve.apps.Bidder``) and ``bare_app`` under plain uvicorn, which the benchmark
compares it with. ``raw_asgi_app`` skips Starlette too, as a lower bound (bids only).

Routes of ``http_handler``:

* ``POST /openrtb2/{entity_code}``: a bid request, at most ``MAX_BODY_BYTES`` (a longer body is
  refused with 413 without being read to its end). Every bid carries signed ``nurl``, ``lurl``,
  ``burl`` and ``ext.click_url`` (``bidopt.notices``) under ``BIDOPT_NOTICE_BASE_URL``, else the
  request's own scheme (``X-Forwarded-Proto`` where a proxy says it) and ``Host``.
* ``GET`` or ``POST /openrtb2/_notice/{kind}/{entity_code}?...``: a win, loss, billing or click
  notice. 200 ``{"accepted": kind}``, or a 4xx ``{"error", "reason"}`` (``x-bidopt-reason``): never
  a 5xx, and nothing is written for a rejected notice. A notice this replica has accepted before
  (``(entity, request, imp, kind)``, the last ``DEDUPE_ENTRIES``) is a 409 ``duplicate``; a replay
  that reaches another replica is written and dropped by readers (``dedupe_notices``).
* ``GET /openrtb2/_status``: what this replica serves (split per entity, runs, when loaded, last
  error, ready) and its counters (notices accepted by kind and rejected by reason, events).

Decisions (one per impression of every request for a known entity) and accepted notices go to the
events store (``BIDOPT_EVENTS_URL``) through an ``EventWriter``: a replica that crashes loses at
most its last ``BIDOPT_EVENTS_FLUSH_SECONDS`` of events.

Every request, bid, no-bid (by reason), notice and refresh is counted in ``BidderCore.metrics``
(``bidopt.metrics``, unless ``BIDOPT_METRICS=0``): exported to Ray's metrics agent under Ray, and
reported as the last minutes' traffic in the replica's status counters."""

from __future__ import annotations

import gc
import hashlib
import logging
import re
import threading
import time
from collections import ChainMap, Counter, OrderedDict
from urllib.parse import parse_qsl

import orjson
import pyarrow as pa
from starlette.requests import Request
from starlette.responses import Response

from bidopt.bidder.core import MAX_BODY_BYTES, Decision, decide
from bidopt.bidder.fields import UNKNOWN, read_event_features
from bidopt.bidder.loader import Refresher, new_replica_id
from bidopt.bidder.notice_key import load_notice_key
from bidopt.bidder.tiers import Tiers
from bidopt.cache import open_cache
from bidopt.events.schema import DECISION_SCHEMA, DECISIONS, NOTICES
from bidopt.events.writer import EventWriter
from bidopt.metrics import BidderMetrics, MetricsFlusher, NoMetrics, under_ray
from bidopt.notices import (
    MAX_PARAMS,
    MAX_QUERY_BYTES,
    NOTICE_PREFIX,
    Limits,
    NoticeRejected,
    NoticeSigner,
    verify_notice,
)
from bidopt.settings import Settings, get_settings
from bidopt.warehouse.contract import FEATURE_COLUMNS

log = logging.getLogger("bidopt.bidder")
PATH_PREFIX = "/openrtb2/"
STATUS_PATH = PATH_PREFIX + "_status"
JSON = [(b"content-type", b"application/json")]
TOO_LARGE = f"bid request over the {MAX_BODY_BYTES}-byte limit"
DEDUPE_ENTRIES = 200_000
_HOST = re.compile(r"^[A-Za-z0-9.\-]{1,253}(?::[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]{2,45}\](?::[0-9]{1,5})?$")


def header_text(text: str) -> str:
    """``text`` as a header value: printable ASCII (a reason can quote the path's entity code or an
    impression id, which may hold any character; a header that cannot be encoded was a 500)."""
    return text if text.isascii() and text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _user_hash(key: str) -> str:
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _text(value: str | None) -> str | None:
    return None if value is None or value == UNKNOWN else value  # absent is null, as in the bid logs


_NO_FEATURES = [None] * len(FEATURE_COLUMNS)


def _features(d: Decision) -> list:
    try:
        return read_event_features(d.readers, d.values, d.req, d.imp) if d.readers else _NO_FEATURES
    except Exception:  # noqa: BLE001 - a reader bug must not lose the whole batch
        log.exception("bidder: cannot read the features of request %s", d.request_id)
        return _NO_FEATURES


def decision_rows(replica_id: str):
    """The decision render of the event writer: reads each decision's request features (its
    ``readers``, reusing what the bid's lookup read) off the request path, straight into columns.
    ``items``: (entity code, unix time, decision), of one entity or of many."""

    def render(items: list[tuple[str, float, Decision]]) -> pa.Table:
        n = len(items)
        decisions = [d for _, _, d in items]
        hashes: dict[str, str] = {}
        cols = {
            "event_time": [int(ts * 1_000_000) for _, ts, _ in items],  # microseconds: cheaper than datetimes
            "entity_code": [entity for entity, _, _ in items],
            "request_id": [d.request_id for d in decisions],
            "imp_id": [d.impid for d in decisions],
            "split_id": [d.split_id for d in decisions],
            "run_id": [d.run_id for d in decisions],
            "arm": [d.arm for d in decisions],
            "user_hash": [
                hashes.get(d.user_key) or hashes.setdefault(d.user_key, _user_hash(d.user_key)) for d in decisions
            ],
            "test": [d.test for d in decisions],
            "bid": [d.price is not None for d in decisions],
            "bid_cpm": [d.price for d in decisions],
            "no_bid_reason": [d.reason for d in decisions],
            "segment_key": [d.segment_key for d in decisions],
            "level": [d.level for d in decisions],
            "domain_multiplier": [d.multiplier for d in decisions],
            "floor_cpm": [d.floor for d in decisions],
            "unfloored_cpm": [d.unfloored for d in decisions],
            "replica_id": [replica_id] * n,
        }
        values = [_features(d) for d in decisions]
        for i, name in enumerate(FEATURE_COLUMNS):
            column = [v[i] for v in values]
            cols[name] = [v == "true" for v in column] if name == "npi_matched" else [_text(v) for v in column]
        return pa.table(cols, schema=DECISION_SCHEMA)

    return render


PARSED_BYTES_PER_BODY_BYTE = 8  # a parsed bid request's memory per byte of its JSON (measured 6.2, with margin)
CONTRADICTING = {"win": ("loss",), "billing": ("loss",), "loss": ("win", "billing")}


class BidderCore:
    """One replica's bidder. With ``start`` (the default) the constructor loads the active splits
    before it returns (retrying an unreachable database for ``bidder_ready_timeout_seconds``, then
    raising ``BidderNotReady``), so a replica never takes traffic with empty tables; then it
    refreshes in the background and reports its status to the database."""

    def __init__(self, settings: Settings | None = None, *, start: bool = True) -> None:
        s = settings or get_settings()
        self.replica_id = new_replica_id()
        cache = open_cache(s.cache_url)
        # a shared cache (memcached) is the bidder's second tier: a near cache bounded in bytes in front of
        # it (bidopt.bidder.tiers); memory:// keeps every table in memory
        tiers = (
            Tiers(cache, s.bidder_near_cache_bytes, miss=s.bidder_near_miss, owner=self.replica_id, start=start)
            if cache.shared
            else None
        )
        self.refresher = Refresher(
            s.database_url, cache, s.bidder_refresh_seconds, replica_id=self.replica_id, tiers=tiers
        )
        self.signer = NoticeSigner(load_notice_key(s), s.notice_base_url)
        self.window_seconds = s.attribution_window_seconds
        self.accepted: Counter = Counter()  # notices accepted, by kind
        self.rejected: Counter = Counter()  # notices rejected, by reason
        self._seen: OrderedDict = OrderedDict()  # accepted (entity, request, imp, kind), oldest first
        self._seen_lock = threading.Lock()
        self.events = EventWriter(
            s.events_url,
            self.replica_id,
            s.events_flush_seconds,
            render={DECISIONS: decision_rows(self.replica_id)},
            write_threads=s.events_write_threads,
            split_seconds=s.events_split_seconds,
            start=start,
        )
        self.refresher.counters = self.counters
        self.metrics = BidderMetrics() if s.metrics else NoMetrics()  # bidopt.metrics; BIDOPT_METRICS
        self.refresher.on_refresh = self.metrics.refresh
        self.metrics_flusher: MetricsFlusher | None = None
        if start:
            try:
                self.refresher.first_load(s.bidder_ready_timeout_seconds)
            except BaseException:
                self.events.close()
                raise
            self.refresher.start()
            if self.metrics.enabled and under_ray():  # outside Ray nothing is exported
                try:
                    self.metrics_flusher = MetricsFlusher(self.metrics, self.metric_gauges)
                    self.metrics_flusher.start()
                except Exception:  # metrics are for operators: never a reason not to bid
                    log.exception("bidder: metrics export could not start; bidding without it")
                    self.metrics_flusher = None
            # Everything loaded so far (Ray, Serve, the tables) lives as long as the replica: frozen, the
            # garbage collector no longer walks it. Without this, each full collection, made frequent
            # by the requests and notices buffered for the event writer, held the GIL for tens of
            # milliseconds (the bidder's p99 went from 6 to 80 ms at 5,000 requests/s).
            gc.freeze()

    def handle(
        self, entity_code: str, body: bytes, received_at: float | None = None, base_url: str = ""
    ) -> tuple[int, bytes, dict[str, str]]:
        """``received_at``: ``time.monotonic()`` when the request arrived, so that reading its body
        counts against its ``tmax`` (default: now). ``base_url``: the scheme and host notice URLs
        point at, unless ``BIDOPT_NOTICE_BASE_URL`` says."""
        started = time.perf_counter()
        now = time.time()
        state = self.refresher.state
        try:
            status, payload, decisions, reason = decide(
                state, entity_code, body, received_at, signer=self.signer, base_url=base_url, now=now
            )
        except Exception:  # a bug, not bad input (decide answers any body): make it visible
            log.exception("bidder: unexpected error")
            self._count(
                self.metrics.request, state, entity_code, (), 500, "internal error", time.perf_counter() - started
            )
            return 500, b'{"error": "internal error"}', {}
        if decisions:
            # the decisions keep the parsed request alive until the flush: about 6x its JSON here
            self.events.add_many(DECISIONS, entity_code, now, decisions, nbytes=PARSED_BYTES_PER_BODY_BYTE * len(body))
        self._count(self.metrics.request, state, entity_code, decisions, status, reason, time.perf_counter() - started)
        return status, payload, ({"x-bidopt-reason": header_text(reason)} if reason else {})

    def refused(self, entity_code: str, status: int, reason: str) -> None:
        """Count a bid request refused before ``handle`` (a body over the limit)."""
        self._count(self.metrics.request, self.refresher.state, entity_code, (), status, reason, None)

    def _count(self, record, *args) -> None:
        """A metrics call that can never cost an answer: a failure is logged, at most once a minute."""
        try:
            record(*args)
        except Exception:
            now = time.monotonic()
            if now - getattr(self, "_metrics_failed_at", -60.0) >= 60:
                self._metrics_failed_at = now
                log.exception("bidder: counting failed (the answer is unaffected)")

    def metric_gauges(self) -> tuple[dict[str, int], float | None]:
        """The split served per entity, and seconds since the splits were last read (the flusher's gauges)."""
        refresher = self.refresher
        served = {code: e.split_id for code, e in refresher.state.entities.items()}
        return served, (time.time() - refresher.refreshed_at if refresher.refreshed_at is not None else None)

    def handle_notice(
        self, kind: str, entity_code: str, params: list[tuple[str, str]], now: float | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        """A notice with its decoded query parameters: 200, or the rejection's 4xx with its reason.
        Accepted once per replica (a replay is 409 ``duplicate``); only an accepted notice is written."""
        now = time.time() if now is None else now
        state = self.refresher.state
        try:
            row = verify_notice(
                self.signer.key,
                kind,
                entity_code,
                params,
                now=now,
                limits=Limits(self.window_seconds, ChainMap(state.entities, state.known)),
                replica_id=self.replica_id,
            )
            key = (entity_code, row["request_id"], row["imp_id"], kind)
            with self._seen_lock:
                if key in self._seen:
                    raise NoticeRejected("duplicate", f"this {kind} notice was taken already")
                # a win after the impression's loss (or a loss after its win): the first one decides,
                # as readers decide (bidopt.events.compact), so the contradiction is refused here too
                for other in CONTRADICTING.get(kind, ()):
                    if key[:3] + (other,) in self._seen:
                        raise NoticeRejected("contradicts", f"a {other} notice was taken for this impression")
                self._seen[key] = True
                if len(self._seen) > DEDUPE_ENTRIES:
                    self._seen.popitem(last=False)
        except NoticeRejected as rejected:
            return self.reject(rejected)
        except Exception:  # a bug, not the notice's fault; still a 4xx: exchanges retry 5xx forever
            log.exception("bidder: unexpected error verifying a %s notice", kind[:20])
            return self.reject(NoticeRejected("malformed", "notice could not be read"))
        self.events.add(NOTICES, entity_code, now, row)
        self.accepted[kind] += 1
        self._count(self.metrics.notice, state, entity_code, kind)
        return 200, orjson.dumps({"accepted": kind}), {}

    def reject(self, rejected: NoticeRejected) -> tuple[int, bytes, dict[str, str]]:
        """Count a rejected notice and answer it."""
        self.rejected[rejected.reason] += 1
        self._count(self.metrics.notice_rejected, rejected.reason)
        body = orjson.dumps({"error": rejected.detail, "reason": rejected.reason})
        return rejected.status, body, {"x-bidopt-reason": rejected.reason}

    def counters(self) -> dict:
        """Since the replica started: notices accepted by kind, rejected by reason, and the event writer's
        counts; and ``traffic``, the last minutes' requests, bids and no-bids per entity (``bidopt.metrics``)."""
        return {
            "accepted": dict(self.accepted),
            "rejected": dict(self.rejected),
            "events": self.events.stats(),
            "traffic": self.metrics.traffic(),
            **({"near_cache": self.refresher.tiers.stats()} if self.refresher.tiers is not None else {}),
        }

    def status(self) -> dict:
        return self.refresher.status()

    def check_health(self) -> None:
        """Raises unless the first load is done and the refresh and event writer threads are alive
        (Serve then replaces the replica), or while a replica that serves nothing has a refresh that
        does not end.

        A database or store that is down or hangs is not a reason: every replica would see it at
        once and Serve would stop them all, while a replica with tables keeps bidding from its last
        good split (the split view shows it lagging: it stops reporting)."""
        if not self.refresher.ready:
            raise RuntimeError("bidder replica has not finished its first load")
        if not self.refresher.running:
            raise RuntimeError("bidder refresh thread is not running")
        if not self.events.running:
            raise RuntimeError("bidder event writer thread is not running")
        if self.refresher.tiers is not None and not self.refresher.tiers.fetcher.running:
            raise RuntimeError("bidder near-cache fill thread is not running")
        stuck = self.refresher.stuck_for()
        if stuck is not None and not self.refresher.state.entities:
            raise RuntimeError(f"bidder refresh has not ended for {stuck:.0f} s and this replica serves nothing")

    def close(self) -> None:
        self.refresher.stop()
        self.events.close()  # the events first: they matter more than the last metrics
        if self.metrics_flusher is not None:
            self.metrics_flusher.stop()  # exports what is left


async def read_body_within_limit(request: Request, limit: int = MAX_BODY_BYTES) -> bytes | None:
    """The request body, or None as soon as it is known to exceed ``limit`` bytes: a declared
    ``Content-Length`` over the limit reads nothing, a streamed (chunked) body stops at the
    chunk that passes the limit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def request_base_url(scheme: str, headers) -> str:
    """``scheme://host`` of a request: ``X-Forwarded-Proto`` (http or https) over the connection's
    scheme, and the ``Host`` header when it is a host name or address (else "", which makes the
    notice URLs relative)."""
    proto = headers.get("x-forwarded-proto")
    if proto in ("http", "https"):
        scheme = proto
    host = headers.get("host") or ""
    return f"{scheme}://{host}" if _HOST.match(host) else ""


def notice_params(query_string: bytes) -> list[tuple[str, str]]:
    """The decoded query parameters of a notice; ``NoticeRejected("malformed")`` when too long,
    too many or not UTF-8."""
    if len(query_string) > MAX_QUERY_BYTES:
        raise NoticeRejected("malformed", f"query string over {MAX_QUERY_BYTES} bytes")
    try:
        return parse_qsl(
            query_string.decode("ascii"), keep_blank_values=True, errors="strict", max_num_fields=MAX_PARAMS
        )
    except ValueError as exc:  # non-ASCII bytes, bad percent-encoding of UTF-8, too many fields
        raise NoticeRejected("malformed", f"query string cannot be read: {str(exc)[:80]}") from None


def handle_notice_request(core: BidderCore, method: str, path: str, query_string: bytes) -> Response:
    """``GET|POST /openrtb2/_notice/{kind}/{entity_code}?...`` (the body of a POST is not read)."""
    try:
        if method not in ("GET", "POST"):
            raise NoticeRejected("unknown_kind", "notices are GET or POST")
        parts = path[len(NOTICE_PREFIX) :].strip("/").split("/")
        if len(parts) != 2 or not all(parts):
            raise NoticeRejected("unknown_kind", "notice paths are /openrtb2/_notice/{kind}/{entity_code}")
        status, payload, headers = core.handle_notice(parts[0], parts[1], notice_params(query_string))
    except NoticeRejected as rejected:
        status, payload, headers = core.reject(rejected)
    return Response(payload, status_code=status, headers=headers, media_type="application/json")


async def http_handler(core: BidderCore, request: Request) -> Response:
    """The one HTTP handler of the bidder, used by the Serve deployment and the bare app alike."""
    path = request.scope["path"]  # not request.url: it decodes the query string, and fails on non-UTF-8 bytes
    if path.startswith(NOTICE_PREFIX):
        return handle_notice_request(core, request.method, path, request.scope.get("query_string", b""))
    if request.method == "GET" and path.rstrip("/") == STATUS_PATH:
        return Response(orjson.dumps(core.status()), media_type="application/json")
    entity = entity_from_path(path)
    if request.method != "POST" or entity is None:
        return Response(
            b'{"error": "POST /openrtb2/{entity_code}, GET|POST /openrtb2/_notice/{kind}/{entity_code} '
            b'or GET /openrtb2/_status"}',
            status_code=404,
            media_type="application/json",
        )
    received_at = time.monotonic()
    body = await read_body_within_limit(request)
    if body is None:
        core.refused(entity, 413, TOO_LARGE)
        return Response(
            orjson.dumps({"error": TOO_LARGE}),
            status_code=413,
            headers={"x-bidopt-reason": TOO_LARGE},
            media_type="application/json",
        )
    status, payload, headers = core.handle(
        entity, body, received_at, request_base_url(request.scope.get("scheme", "http"), request.headers)
    )
    return Response(payload, status_code=status, headers=headers, media_type="application/json")


def entity_from_path(path: str) -> str | None:
    """``/openrtb2/drugs_hcp`` -> ``drugs_hcp``; None for any other path."""
    if not path.startswith(PATH_PREFIX):
        return None
    entity = path[len(PATH_PREFIX) :].strip("/")
    return entity if entity and "/" not in entity else None


def raw_asgi_app(core: BidderCore):
    """The bidder as a bare ASGI app without Starlette: a lower bound for the benchmark."""

    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await _lifespan(receive, send)
        entity = entity_from_path(scope["path"])
        if scope["method"] != "POST" or entity is None:
            return await _send(send, 404, b'{"error": "POST /openrtb2/{entity_code}"}', {})
        received_at = time.monotonic()
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= MAX_BODY_BYTES + 1:  # read past the limit no further than needed to reject it
                chunks.append(chunk)
            if not message.get("more_body"):
                break
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope["headers"]
            if k in (b"host", b"x-forwarded-proto")
        }
        base_url = request_base_url(scope.get("scheme", "http"), headers)
        status, payload, headers = core.handle(entity, b"".join(chunks), received_at, base_url)
        await _send(send, status, payload, headers)

    return app


async def _send(send, status: int, payload: bytes, headers: dict[str, str]) -> None:
    raw = JSON + [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def bare_app():
    """``uvicorn --factory bidopt.bidder.app:bare_app``: ``http_handler`` without Ray (settings from BIDOPT_*)."""
    core = BidderCore()

    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await _lifespan(receive, send)
        response = await http_handler(core, Request(scope, receive))
        await response(scope, receive, send)

    return app


def bare_raw_app():
    """``uvicorn --factory bidopt.bidder.app:bare_raw_app``: ``raw_asgi_app`` without Ray."""
    return raw_asgi_app(BidderCore())

"""The bidder as a service: ``BidderCore`` (refresher + decisions + log) and ``http_handler``
(Starlette request in, response out), behind two front doors: the Ray Serve deployment
(``bidopt.serve.apps.Bidder``) and ``bare_app`` under plain uvicorn, which the benchmark
compares it with. ``raw_asgi_app`` skips Starlette too, as a lower bound.

Routes of ``http_handler``: ``POST /openrtb2/{entity_code}`` (a bid request, at most
``MAX_BODY_BYTES``: a longer body is refused with 413 without being read to its end) and
``GET /openrtb2/_status`` (what this replica serves: split per entity, runs, when loaded,
last error, ready)."""

from __future__ import annotations

import logging
import time

import orjson
from starlette.requests import Request
from starlette.responses import Response

from bidopt.bidder.core import MAX_BODY_BYTES, decide
from bidopt.bidder.loader import DecisionLog, Refresher, new_replica_id
from bidopt.cache import open_cache
from bidopt.settings import Settings, get_settings

log = logging.getLogger("bidopt.bidder")
PATH_PREFIX = "/openrtb2/"
STATUS_PATH = PATH_PREFIX + "_status"
JSON = [(b"content-type", b"application/json")]
TOO_LARGE = f"bid request over the {MAX_BODY_BYTES}-byte limit"


class BidderCore:
    """One replica's bidder. With ``start`` (the default) the constructor loads the active splits
    before it returns (retrying an unreachable database for ``bidder_ready_timeout_seconds``, then
    raising ``BidderNotReady``), so a replica never takes traffic with empty tables; then it
    refreshes in the background and reports its status to the database."""

    def __init__(self, settings: Settings | None = None, *, start: bool = True) -> None:
        s = settings or get_settings()
        self.replica_id = new_replica_id()
        self.refresher = Refresher(
            s.database_url, open_cache(s.cache_url), s.bidder_refresh_seconds, replica_id=self.replica_id
        )
        self.decisions = DecisionLog(s.decision_log_dir, self.replica_id.replace(":", "-"))
        if start:
            try:
                self.refresher.first_load(s.bidder_ready_timeout_seconds)
            except BaseException:
                self.decisions.close()
                raise
            self.refresher.start()

    def handle(
        self, entity_code: str, body: bytes, received_at: float | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        """``received_at``: ``time.monotonic()`` when the request arrived, so that reading its body
        counts against its ``tmax`` (default: now)."""
        try:
            status, payload, decisions, reason = decide(self.refresher.state, entity_code, body, received_at)
        except Exception:  # a bug, not bad input (decide answers any body): make it visible
            log.exception("bidder: unexpected error")
            return 500, b'{"error": "internal error"}', {}
        if decisions:
            self.decisions.record(entity_code, decisions)
        return status, payload, ({"x-bidopt-reason": reason} if reason else {})

    def status(self) -> dict:
        return self.refresher.status()

    def check_health(self) -> None:
        """Raises unless the first load is done and the refresh thread is alive (Serve then replaces
        the replica), or while a replica that serves nothing has a refresh that does not end.

        A database or store that is down or hangs is not a reason: every replica would see it at
        once and Serve would stop them all, while a replica with tables keeps bidding from its last
        good split (the split view shows it lagging: it stops reporting)."""
        if not self.refresher.ready:
            raise RuntimeError("bidder replica has not finished its first load")
        if not self.refresher.running:
            raise RuntimeError("bidder refresh thread is not running")
        stuck = self.refresher.stuck_for()
        if stuck is not None and not self.refresher.state.entities:
            raise RuntimeError(f"bidder refresh has not ended for {stuck:.0f} s and this replica serves nothing")

    def close(self) -> None:
        self.refresher.stop()
        self.decisions.close()


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


async def http_handler(core: BidderCore, request: Request) -> Response:
    """The one HTTP handler of the bidder, used by the Serve deployment and the bare app alike."""
    path = request.url.path
    if request.method == "GET" and path.rstrip("/") == STATUS_PATH:
        return Response(orjson.dumps(core.status()), media_type="application/json")
    entity = entity_from_path(path)
    if request.method != "POST" or entity is None:
        return Response(
            b'{"error": "POST /openrtb2/{entity_code} or GET /openrtb2/_status"}',
            status_code=404,
            media_type="application/json",
        )
    received_at = time.monotonic()
    body = await read_body_within_limit(request)
    if body is None:
        return Response(
            orjson.dumps({"error": TOO_LARGE}),
            status_code=413,
            headers={"x-bidopt-reason": TOO_LARGE},
            media_type="application/json",
        )
    status, payload, headers = core.handle(entity, body, received_at)
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
        status, payload, headers = core.handle(entity, b"".join(chunks), received_at)
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

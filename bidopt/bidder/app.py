"""The bidder as a service: ``BidderCore`` (refresher + decisions + log) and ``http_handler``
(Starlette request in, response out), behind two front doors: the Ray Serve deployment
(``bidopt.serve.apps.Bidder``) and ``bare_app`` under plain uvicorn, which the benchmark
compares it with. ``raw_asgi_app`` skips Starlette too, as a lower bound."""

from __future__ import annotations

import logging
import os
import socket

from bidopt.bidder.core import MAX_BODY_BYTES, decide
from bidopt.bidder.loader import DecisionLog, Refresher
from bidopt.cache import open_cache
from bidopt.settings import Settings, get_settings
from starlette.requests import Request
from starlette.responses import Response

log = logging.getLogger("bidopt.bidder")
PATH_PREFIX = "/openrtb2/"
JSON = [(b"content-type", b"application/json")]


class BidderCore:
    def __init__(self, settings: Settings | None = None, *, start: bool = True) -> None:
        s = settings or get_settings()
        self.refresher = Refresher(s.database_url, open_cache(s.cache_url), s.bidder_refresh_seconds)
        self.decisions = DecisionLog(s.decision_log_dir, f"{socket.gethostname()}-{os.getpid()}")
        if start:
            self.refresher.start()

    def handle(self, entity_code: str, body: bytes) -> tuple[int, bytes, dict[str, str]]:
        try:
            status, payload, decisions, reason = decide(self.refresher.state, entity_code, body)
        except Exception:  # a bug, not bad input (decide answers any body): make it visible
            log.exception("bidder: unexpected error")
            return 500, b'{"error": "internal error"}', {}
        if decisions:
            self.decisions.record(entity_code, decisions)
        return status, payload, ({"x-bidopt-reason": reason} if reason else {})

    def close(self) -> None:
        self.refresher.stop()
        self.decisions.close()


async def http_handler(core: BidderCore, request: Request) -> Response:
    """The one HTTP handler of the bidder, used by the Serve deployment and the bare app alike."""
    entity = entity_from_path(request.url.path)
    if request.method != "POST" or entity is None:
        return Response(b'{"error": "POST /openrtb2/{entity_code}"}', status_code=404, media_type="application/json")
    status, payload, headers = core.handle(entity, await request.body())
    return Response(payload, status_code=status, headers=headers, media_type="application/json")


def entity_from_path(path: str) -> str | None:
    """``/openrtb2/drugs_hcp`` -> ``drugs_hcp``; None for any other path."""
    if not path.startswith(PATH_PREFIX):
        return None
    entity = path[len(PATH_PREFIX):].strip("/")
    return entity if entity and "/" not in entity else None


def raw_asgi_app(core: BidderCore):
    """The bidder as a bare ASGI app without Starlette: a lower bound for the benchmark."""

    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await _lifespan(receive, send)
        entity = entity_from_path(scope["path"])
        if scope["method"] != "POST" or entity is None:
            return await _send(send, 404, b'{"error": "POST /openrtb2/{entity_code}"}', {})
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= MAX_BODY_BYTES + 1:  # read past the limit no further than needed to reject it
                chunks.append(chunk)
            if not message.get("more_body"):
                break
        status, payload, headers = core.handle(entity, b"".join(chunks))
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

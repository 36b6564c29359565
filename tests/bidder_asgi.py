"""Drive the bidder's HTTP handler in process, without Serve or a socket: one ASGI request through
``bidopt.bidder.app.http_handler``, and a notice URL fired as the exchange would (shared by the unit
tests of the bidder's events and metrics)."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from starlette.requests import Request

from bidopt.bidder.app import http_handler


def call(core, method, path, body=b"", query=b"", headers=(("host", "bidder.test:8000"),)):
    """The handler's response to one request; ``headers`` are all the request's headers. ``body``:
    the bytes sent in one message, or an ASGI ``receive`` of the caller's (chunks, counted reads)."""
    sent = []

    async def one_message():
        if sent:
            return {"type": "http.disconnect"}
        sent.append(1)
        return {"type": "http.request", "body": body, "more_body": False}

    receive = body if callable(body) else one_message

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode("utf-8", "surrogatepass"),
        "query_string": query,
        "headers": [(k.encode(), v.encode()) for k, v in headers],
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1234),
        "root_path": "",
    }
    return asyncio.run(http_handler(core, Request(scope, receive)))


def fire(core, url, *, send=call, **macros):
    """GET a notice URL after filling its ``${MACRO}`` placeholders, as an exchange would
    (``send``: the ``call`` to make it with)."""
    for macro, value in macros.items():
        url = url.replace("${" + macro + "}", value)
    parts = urlsplit(url)
    return send(core, "GET", parts.path, query=parts.query.encode())

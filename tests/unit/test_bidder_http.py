"""The bidder's Starlette handler (``http_handler``), driven through ASGI in-process: the body
limit is enforced while reading, and the per-replica status route. No Ray, no database."""

import asyncio
import json

import bidder_asgi
import orjson
import pytest

from bidopt.bidder.app import BidderCore
from bidopt.bidder.core import MAX_BODY_BYTES, BidderState, EntityServing, RunTables
from bidopt.bidder.fields import feature_reader

CHUNK = 64 * 1024


class Body:
    """An ASGI ``receive`` that hands out ``chunks`` chunks of ``CHUNK`` bytes and counts reads."""

    def __init__(self, chunks: int, payload: bytes | None = None) -> None:
        self.parts = [payload] if payload is not None else [b"x" * CHUNK] * chunks
        self.reads = 0

    async def __call__(self):
        self.reads += 1
        if self.reads > len(self.parts):
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": self.parts[self.reads - 1], "more_body": self.reads < len(self.parts)}


def _call(core, method, path, body: Body, headers=()):
    return bidder_asgi.call(core, method, path, body, headers=headers)


@pytest.fixture
def core():
    c = BidderCore(start=False)
    tables = RunTables(
        "r1",
        ("geo_region_name",),
        (feature_reader("geo_region_name", "device.geo.region"),),
        {"california": 3.0, "*": 1.0},
        {},
        20.0,
        "sha",
    )
    c.refresher.state = BidderState({"drugs_hcp": EntityServing("drugs_hcp", 7, (tables,), (100,))})
    yield c
    c.close()


def test_a_declared_body_over_the_limit_is_refused_unread(core):
    body = Body(chunks=10 * 1024 * 1024 // CHUNK)  # 10 MiB
    res = _call(core, "POST", "/openrtb2/drugs_hcp", body, [("content-length", str(10 * 1024 * 1024))])
    assert res.status_code == 413 and str(MAX_BODY_BYTES) in json.loads(res.body)["error"]
    assert body.reads == 0


def test_a_chunked_body_over_the_limit_stops_being_read_at_the_limit(core):
    body = Body(chunks=10 * 1024 * 1024 // CHUNK)  # 10 MiB, no content-length
    res = _call(core, "POST", "/openrtb2/drugs_hcp", body)
    assert res.status_code == 413 and "limit" in res.headers["x-bidopt-reason"]
    assert body.reads == MAX_BODY_BYTES // CHUNK + 1  # the chunk that passes the limit is the last one read


def test_a_body_within_the_limit_is_answered(core):
    request = {"id": "q", "imp": [{"id": "1"}], "device": {"geo": {"region": "CA"}}}
    body = Body(1, orjson.dumps(request))
    res = _call(core, "POST", "/openrtb2/drugs_hcp", body)
    assert res.status_code == 200 and json.loads(res.body)["seatbid"][0]["bid"][0]["price"] == 3.0
    padded = orjson.dumps(request | {"ext": {"pad": "x" * (MAX_BODY_BYTES - len(orjson.dumps(request)) - 20)}})
    assert len(padded) <= MAX_BODY_BYTES
    assert _call(core, "POST", "/openrtb2/drugs_hcp", Body(1, padded)).status_code == 200


def test_status_route_says_what_this_replica_serves(core):
    res = _call(core, "GET", "/openrtb2/_status", Body(1, b""))
    status = json.loads(res.body)
    assert res.status_code == 200 and status["replica_id"] == core.replica_id
    assert status["serving"]["drugs_hcp"]["split_id"] == 7
    assert status["serving"]["drugs_hcp"]["runs"] == [{"run_id": "r1", "traffic_pct": 100}]
    assert status["ready"] is False and status["last_error"] is None  # start=False: no first load
    assert _call(core, "GET", "/openrtb2/drugs_hcp", Body(1, b"")).status_code == 404


def test_the_time_spent_reading_the_body_counts_against_tmax(core):
    """The deadline runs from the request's arrival, not from when its body was read."""
    request = orjson.dumps({"id": "q", "tmax": 5, "imp": [{"id": "1"}], "device": {"geo": {"region": "CA"}}})

    class SlowBody(Body):
        async def __call__(self):
            await asyncio.sleep(0.05)  # a slow client: 50 ms to send a body, past a 5 ms tmax
            return await super().__call__()

    res = _call(core, "POST", "/openrtb2/drugs_hcp", SlowBody(1, request))
    assert res.status_code == 204 and res.headers["x-bidopt-reason"] == "tmax passed"


def test_a_reason_quoting_any_character_is_still_a_header(core):
    """The reason can quote the path's entity code or an impression id: a character a header cannot
    carry is escaped, not a 500 (found by tests/unit/test_metrics.py's fuzz)."""
    res = _call(core, "POST", "/openrtb2/caf\u00e9\u0100\n", Body(1, orjson.dumps({"id": "q", "imp": [{"id": "1"}]})))
    assert res.status_code == 204 and res.headers["x-bidopt-reason"] == "no active split for caf\\xe9\\u0100\\n"
    twice = orjson.dumps({"id": "q", "imp": [{"id": "\u0100"}, {"id": "\u0100"}]})
    res = _call(core, "POST", "/openrtb2/drugs_hcp", Body(1, twice))
    assert res.status_code == 400 and res.headers["x-bidopt-reason"] == "imp id '\\u0100' appears twice"

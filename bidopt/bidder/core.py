"""The bidder's decision path: pure, in-process, no I/O.

``decide(state, entity_code, body)`` answers one OpenRTB bid request from the
tables loaded into ``state`` (see ``bidopt.bidder.loader``): validate, choose the
run by the A/B weights with a hash of the user, build each impression's segment
key from the run's features, look the bid up (falling back to the anchor's row
and the entity default), apply the domain multiplier, cap at the run's max bid,
and bid only where the price clears the impression's floor.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import accumulate

import orjson

from bidopt.bidder.fields import FeatureReader, request_domain
from bidopt.warehouse.contract import backoff_key, segment_key

MAX_BODY_BYTES = 256 * 1024
MAX_IMPS = 100
HASH_BUCKETS = 10_000


class BadRequest(ValueError):
    """A malformed bid request; the message says what is wrong (answered with HTTP 400)."""

    status = 400


class TooLarge(BadRequest):
    status = 413


@dataclass(frozen=True)
class RunTables:
    """One run's bid table and multipliers, as the bidder holds them in memory."""

    run_id: str
    features: tuple[str, ...]
    readers: tuple[FeatureReader, ...]
    bids: dict[str, float]  # full keys and back-off keys -> CPM
    multipliers: dict[str, float]
    max_bid_cpm: float
    checksum: str  # sha256 of suggested_bids.csv, from the manifest
    min_bid_cpm: float = 0.0  # the run's config floor: no quoted price goes below it

    def lookup(self, req: dict, imp: dict) -> tuple[float, str, str]:
        """``(bid, key found, level)``: the full key, else the anchor's row, else the default."""
        values = [read(req, imp) for read in self.readers]
        key = segment_key(values)
        bid = self.bids.get(key)
        if bid is not None:
            return bid, key, "segment"
        n = len(values)
        if n > 1:
            anchor_key = backoff_key(values[:1], n)
            bid = self.bids.get(anchor_key)
            if bid is not None:
                return bid, anchor_key, "anchor"
        default_key = backoff_key([], n)
        return self.bids[default_key], default_key, "default"


@dataclass(frozen=True)
class EntityServing:
    """The active split of one entity: runs with cumulative hash-bucket bounds."""

    entity_code: str
    split_id: int
    runs: tuple[RunTables, ...]
    weights: tuple[int, ...]  # traffic_pct, same order as runs
    bounds: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bounds", tuple(w * HASH_BUCKETS // 100 for w in accumulate(self.weights)))

    def choose(self, user_key: str) -> RunTables:
        """Deterministic: the same user key gets the same run while the split is unchanged."""
        digest = hashlib.blake2b(f"{self.entity_code}:{user_key}".encode(), digest_size=8).digest()
        bucket = int.from_bytes(digest, "big") % HASH_BUCKETS
        return self.runs[min(bisect_right(self.bounds, bucket), len(self.runs) - 1)]


@dataclass(frozen=True)
class BidderState:
    """Everything the request path reads; replaced as a whole (never mutated) on refresh."""

    entities: dict[str, EntityServing]
    loaded_at: float = 0.0


EMPTY_STATE = BidderState({})


def parse_request(body: bytes) -> dict:
    if len(body) > MAX_BODY_BYTES:
        raise TooLarge(f"bid request of {len(body)} bytes is over the {MAX_BODY_BYTES}-byte limit")
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(req, dict):
        raise BadRequest("a bid request is a JSON object")
    rid = req.get("id")
    if not isinstance(rid, str) or not rid or len(rid) > 256:
        raise BadRequest("id must be a non-empty string (at most 256 characters)")
    imps = req.get("imp")
    if not isinstance(imps, list) or not imps:
        raise BadRequest("imp must be a non-empty array")
    if len(imps) > MAX_IMPS:
        raise BadRequest(f"at most {MAX_IMPS} impressions per request, got {len(imps)}")
    seen = set()
    for i, imp in enumerate(imps):
        if not isinstance(imp, dict):
            raise BadRequest(f"imp[{i}] must be an object")
        iid = imp.get("id")
        if not isinstance(iid, str) or not iid:
            raise BadRequest(f"imp[{i}].id must be a non-empty string")
        if iid in seen:
            raise BadRequest(f"imp id {iid!r} appears twice")
        seen.add(iid)
        floor = imp.get("bidfloor", 0)
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not floor >= 0 or floor > 1e6:
            raise BadRequest(f"imp[{i}].bidfloor must be a non-negative number")
        cur = imp.get("bidfloorcur", "USD")
        if not isinstance(cur, str):
            raise BadRequest(f"imp[{i}].bidfloorcur must be a string")
    for name in ("site", "app", "device", "user"):  # null counts as absent, as exchanges send it
        if req.get(name) is not None and not isinstance(req[name], dict):
            raise BadRequest(f"{name} must be an object")
    geo = (req.get("device") or {}).get("geo")
    if geo is not None and not isinstance(geo, dict):
        raise BadRequest("device.geo must be an object")
    if "cur" in req and not (isinstance(req["cur"], list) and all(isinstance(c, str) for c in req["cur"])):
        raise BadRequest("cur must be an array of currency codes")
    return req


def user_key(req: dict) -> str:
    """``user.id``, else ``device.ifa``, else the request id."""
    user, device = req.get("user"), req.get("device")
    for candidate in ((user or {}).get("id"), (device or {}).get("ifa")):
        if isinstance(candidate, str) and candidate:
            return candidate
    return req["id"]


@dataclass(frozen=True)
class Decision:
    """What was bid, for the response and the decision log."""

    request_id: str
    run_id: str
    impid: str
    segment_key: str
    level: str
    price: float
    multiplier: float


def decide(state: BidderState, entity_code: str, body: bytes) -> tuple[int, bytes, list[Decision], str]:
    """``(HTTP status, body, decisions, reason)``: 200 with a BidResponse, 204 (no bid, with the reason)
    or 400/413 (malformed, with the reason). Never raises for any body."""
    try:
        req = parse_request(body)
    except BadRequest as exc:
        return exc.status, orjson.dumps({"error": str(exc)}), [], str(exc)
    serving = state.entities.get(entity_code)
    if serving is None:
        return 204, b"", [], f"no active split for {entity_code}"
    allowed = req.get("cur")
    if allowed and "USD" not in allowed:
        return 204, b"", [], "request does not accept USD"
    run = serving.choose(user_key(req))
    domain = request_domain(req)
    multiplier = run.multipliers.get(domain, 1.0) if domain is not None and run.multipliers else 1.0
    bids, decisions = [], []
    for imp in req["imp"]:
        cur = imp.get("bidfloorcur", "USD")
        if cur != "USD":
            continue  # we price in USD only; never guess an exchange rate
        base, key, level = run.lookup(req, imp)
        price = round(min(base * multiplier, run.max_bid_cpm), 4)
        if price < imp.get("bidfloor", 0) or price <= 0:
            continue
        decisions.append(Decision(req["id"], run.run_id, imp["id"], key, level, price, multiplier))
        bids.append({"id": f"{req['id']}-{imp['id']}", "impid": imp["id"], "price": price,
                     "ext": {"run_id": run.run_id, "segment_key": key, "level": level,
                             "domain_multiplier": multiplier}})
    if not bids:
        return 204, b"", [], "no impression clears its floor"
    response = {"id": req["id"], "seatbid": [{"seat": "bidopt", "bid": bids}], "cur": "USD",
                "ext": {"split_id": serving.split_id}}
    return 200, orjson.dumps(response), decisions, ""

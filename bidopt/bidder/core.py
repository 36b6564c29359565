"""The bidder's decision path: pure, in-process, no I/O.

``decide(state, entity_code, body, received_at)`` answers one OpenRTB bid request
from the tables loaded into ``state`` (see ``bidopt.bidder.loader``): validate,
choose the run by the A/B weights with a hash of the split and the user, build
each impression's segment key from the run's features, look the bid up (falling
back to the anchor's row and the entity default), price it (``quote``: domain
multiplier, floor, the run's min and max bid) and bid only where the price
clears the impression's floor; no answer but 204 once the request's ``tmax`` has
passed.

OpenRTB fields that are ``null`` count as absent and take the spec's default
(``bidfloor`` 0, ``bidfloorcur`` and ``cur`` USD, ``at`` 2, no ``tmax``), as
exchanges send them; currency codes compare case-insensitively (ASCII only).
"""

from __future__ import annotations

import hashlib
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import orjson

from bidopt.bidder.fields import FeatureReader, request_domain
from bidopt.configs import PRICE_DECIMALS, price_ceil, price_floor
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
    # The bounds as prices with PRICE_DECIMALS decimals, rounded inwards (derived, not passed).
    price_cap: float = field(init=False)
    price_minimum: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "price_cap", price_floor(self.max_bid_cpm))
        object.__setattr__(self, "price_minimum", price_ceil(self.min_bid_cpm))

    def quote(self, base: float, multiplier: float, floor: float) -> float | None:
        """The price to bid for an impression whose table bid is ``base``, or None (no bid).

        ``base x multiplier`` rounded to ``PRICE_DECIMALS``; where the base bid (or the adjusted
        price) clears the floor but the result fell under it (a multiplier below 1, rounding), the
        floor rounded up instead, since the segment's own bid said the impression is worth that;
        never below ``min_bid_cpm``; and the cap over everything, so a floor above the cap is a
        no-bid."""
        if floor > self.price_cap:
            return None
        adjusted = base * multiplier
        price = round(adjusted, PRICE_DECIMALS)
        if price < floor <= max(base, adjusted):
            price = price_ceil(floor)
        price = min(max(price, self.price_minimum), self.price_cap)
        if not (price >= floor and price > 0):  # written so that a NaN (a corrupt table) is no bid too
            return None
        return price

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
        """Deterministic: the same user key gets the same run while the split is unchanged. The
        split id salts the hash, so each new split draws its arms from fresh users instead of
        giving the first arm to the same users in every experiment."""
        digest = hashlib.blake2b(f"{self.split_id}:{self.entity_code}:{user_key}".encode(), digest_size=8).digest()
        bucket = int.from_bytes(digest, "big") % HASH_BUCKETS
        return self.runs[min(bisect_right(self.bounds, bucket), len(self.runs) - 1)]


@dataclass(frozen=True)
class BidderState:
    """Everything the request path reads; replaced as a whole (never mutated) on refresh."""

    entities: dict[str, EntityServing]
    loaded_at: float = 0.0


EMPTY_STATE = BidderState({})


FIRST_PRICE, SECOND_PRICE_PLUS = 1, 2
EXCHANGE_AUCTION_TYPES_ABOVE = 500  # OpenRTB 2.6: at > 500 are exchange-specific auction types


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_usd(code: Any) -> bool:
    """ISO 4217 codes compare case-insensitively; ASCII only, so no other script's letters
    (e.g. the long s, which upper-cases to S) pass for USD."""
    return isinstance(code, str) and code.isascii() and code.upper() == "USD"


def imp_floor(imp: dict) -> float:
    """The impression's ``bidfloor`` (absent or null: 0)."""
    floor = imp.get("bidfloor")
    return 0.0 if floor is None else floor


def imp_currency(imp: dict) -> str:
    """The impression's ``bidfloorcur`` (absent or null: USD)."""
    cur = imp.get("bidfloorcur")
    return "USD" if cur is None else cur


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
        # Any finite size is a price (a floor above our cap is a no-bid, not bad input); JSON
        # holds no NaN or infinity, and orjson refuses a literal that overflows a double.
        floor = imp_floor(imp)
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not floor >= 0:
            raise BadRequest(f"imp[{i}].bidfloor must be a non-negative number")
        if not isinstance(imp_currency(imp), str):
            raise BadRequest(f"imp[{i}].bidfloorcur must be a string")
    for name in ("site", "app", "device", "user"):  # null counts as absent, as exchanges send it
        if req.get(name) is not None and not isinstance(req[name], dict):
            raise BadRequest(f"{name} must be an object")
    geo = (req.get("device") or {}).get("geo")
    if geo is not None and not isinstance(geo, dict):
        raise BadRequest("device.geo must be an object")
    cur = req.get("cur")
    if cur is not None and not (isinstance(cur, list) and all(isinstance(c, str) for c in cur)):
        raise BadRequest("cur must be an array of currency codes")
    at = req.get("at")
    if at is not None and not (
        _is_whole(at) and (at in (FIRST_PRICE, SECOND_PRICE_PLUS) or at > EXCHANGE_AUCTION_TYPES_ABOVE)
    ):
        raise BadRequest("at must be 1 (first price), 2 (second price plus) or above 500 (exchange-specific)")
    tmax = req.get("tmax")
    if tmax is not None and not (_is_whole(tmax) and tmax > 0):
        raise BadRequest("tmax must be a positive whole number of milliseconds")
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


def decide(
    state: BidderState, entity_code: str, body: bytes, received_at: float | None = None
) -> tuple[int, bytes, list[Decision], str]:
    """``(HTTP status, body, decisions, reason)``: 200 with a BidResponse, 204 (no bid, with the reason)
    or 400/413 (malformed, with the reason). Never raises for any body.

    ``received_at``: ``time.monotonic()`` when the request arrived (default: when ``decide`` starts).
    A request with ``tmax`` whose deadline has passed by the time the response is ready gets
    204 ``tmax passed`` instead: the exchange has stopped waiting and a late bid is wasted."""
    if received_at is None:
        received_at = time.monotonic()
    try:
        req = parse_request(body)
    except BadRequest as exc:
        return exc.status, orjson.dumps({"error": str(exc)}), [], str(exc)
    serving = state.entities.get(entity_code)
    if serving is None:
        return 204, b"", [], f"no active split for {entity_code}"
    allowed = req.get("cur")
    if allowed and not any(is_usd(c) for c in allowed):
        return 204, b"", [], "request does not accept USD"
    run = serving.choose(user_key(req))
    domain = request_domain(req)
    multiplier = run.multipliers.get(domain, 1.0) if domain is not None and run.multipliers else 1.0
    bids, decisions = [], []
    for imp in req["imp"]:
        if not is_usd(imp_currency(imp)):
            continue  # we price in USD only; never guess an exchange rate
        base, key, level = run.lookup(req, imp)
        price = run.quote(base, multiplier, imp_floor(imp))
        if price is None:
            continue
        decisions.append(Decision(req["id"], run.run_id, imp["id"], key, level, price, multiplier))
        bids.append(
            {
                "id": f"{req['id']}-{imp['id']}",
                "impid": imp["id"],
                "price": price,
                "ext": {"run_id": run.run_id, "segment_key": key, "level": level, "domain_multiplier": multiplier},
            }
        )
    if not bids:
        return 204, b"", [], "no impression clears its floor"
    response = {
        "id": req["id"],
        "seatbid": [{"seat": "bidopt", "bid": bids}],
        "cur": "USD",
        "ext": {"split_id": serving.split_id},
    }
    payload = orjson.dumps(response)
    tmax = req.get("tmax")
    if tmax is not None and time.monotonic() > received_at + tmax / 1000:
        return 204, b"", [], "tmax passed"
    return 200, payload, decisions, ""

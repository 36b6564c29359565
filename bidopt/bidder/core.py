"""The bidder's decision path: pure, in-process, no I/O.

``decide(state, entity_code, body, received_at)`` answers one OpenRTB bid request
from the tables loaded into ``state`` (see ``bidopt.bidder.loader``): validate,
choose the run by the A/B weights with a hash of the split and the user, build
each impression's segment key from the run's features, look the bid up (falling
back to the anchor's row and the entity default), price it (``quote``: domain
multiplier, floor, the run's min and max bid) and bid only where the price
clears the impression's floor; no answer but 204 once the request's ``tmax`` has
passed.

Every impression of a request that reached a known entity yields a ``Decision`` (bid or not, with
the reason), which the bidder writes as a decision event; every bid carries its signed notice URLs
(``bidopt.notices``) when ``decide`` is given a signer. A request with ``"test": 1`` is answered as
usual; its decisions and its notice URLs say it was a test, so it is never counted.

OpenRTB fields that are ``null`` count as absent and take the spec's default
(``bidfloor`` 0, ``bidfloorcur`` and ``cur`` USD, ``at`` 2, no ``tmax``), as
exchanges send them; currency codes compare case-insensitively (ASCII only).
"""

from __future__ import annotations

import hashlib
import time
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, NamedTuple

import orjson

from bidopt.bidder.fields import EventReaders, FeatureReader, event_readers, request_domain
from bidopt.configs import PRICE_DECIMALS, price_ceil, price_floor
from bidopt.events.schema import FLOOR_NO_BID_REASON, INVALID_PRICE_REASON
from bidopt.notices import MAX_ID_CHARS, NoticeSigner
from bidopt.warehouse.contract import FEATURE_COLUMNS, backoff_key, segment_key

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
    # The back-off rows (anchors' rows and the entity default), always in memory. None: ``bids`` holds
    # every row (the all-in-memory bidder); a tiered run's ``bids`` reads the near cache
    # (``bidopt.bidder.tiers.TieredBids``) and only full segment keys are looked up there.
    pinned: dict[str, float] | None = None
    # The bounds as prices with PRICE_DECIMALS decimals, rounded inwards (derived, not passed).
    price_cap: float = field(init=False)
    price_minimum: float = field(init=False)

    def __post_init__(self) -> None:
        if self.pinned is None:
            object.__setattr__(self, "pinned", self.bids)
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
        return self.lookup_values(req, imp)[:3]

    def lookup_values(self, req: dict, imp: dict) -> tuple[float, str, str, list[str]]:
        """``lookup`` and the feature values it read (the run's feature order)."""
        values = [read(req, imp) for read in self.readers]
        return (*self.lookup_key(values), values)

    def lookup_key(self, values: Sequence[str]) -> tuple[float, str, str]:
        """``(bid, key found, level)`` of feature values already read (the run's feature order):
        the full key, else the anchor's row, else the default. ``lookup`` reads the values from a
        request; the offline replay (``bidopt.optimizer.replay``) passes logged values."""
        key = segment_key(values)
        bid = self.bids.get(key)
        if bid is not None:
            return bid, key, "segment"
        n = len(values)
        if n > 1:
            anchor_key = backoff_key(values[:1], n)
            bid = self.pinned.get(anchor_key)
            if bid is not None:
                return bid, anchor_key, "anchor"
        default_key = backoff_key([], n)
        return self.pinned[default_key], default_key, "default"

    def multiplier(self, domain: str | None) -> float:
        """The domain multiplier of a request whose normalised domain is ``domain`` (None: none sent)."""
        return self.multipliers.get(domain, 1.0) if domain is not None and self.multipliers else 1.0


SourceFields = tuple[tuple[str, "str | None"], ...]  # (feature_name, request_field) of a supply source's active macros


def source_event_readers(source_fields: SourceFields) -> EventReaders:
    """The decision-event readers of an entity without a run (no active split)."""
    return event_readers(FEATURE_COLUMNS, (), (), dict(source_fields))


@dataclass(frozen=True)
class EntityServing:
    """The active split of one entity: runs with cumulative hash-bucket bounds.

    ``source_fields``: the active macros of the entity's supply source when the split was loaded;
    with each run's pinned readers they give ``event_readers`` (per run, ``FEATURE_COLUMNS`` order),
    which read a decision event's features (``bidopt.bidder.fields.event_readers``)."""

    entity_code: str
    split_id: int
    runs: tuple[RunTables, ...]
    weights: tuple[int, ...]  # traffic_pct, same order as runs
    source_fields: SourceFields = ()
    bounds: tuple[int, ...] = field(init=False)
    event_readers: tuple[EventReaders, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bounds", tuple(w * HASH_BUCKETS // 100 for w in accumulate(self.weights)))
        fields = dict(self.source_fields)
        readers = tuple(event_readers(FEATURE_COLUMNS, r.features, r.readers, fields) for r in self.runs)
        object.__setattr__(self, "event_readers", readers)

    def arm(self, user_key: str) -> int:
        """The position of the user's run in the split. Deterministic: the same user key gets the same
        run while the split is unchanged. The split id salts the hash, so each new split draws its
        arms from fresh users instead of giving the first arm to the same users in every experiment."""
        digest = hashlib.blake2b(f"{self.split_id}:{self.entity_code}:{user_key}".encode(), digest_size=8).digest()
        bucket = int.from_bytes(digest, "big") % HASH_BUCKETS
        return min(bisect_right(self.bounds, bucket), len(self.runs) - 1)

    def choose(self, user_key: str) -> RunTables:
        """The user's run (see ``arm``)."""
        return self.runs[self.arm(user_key)]


@dataclass(frozen=True)
class BidderState:
    """Everything the request path reads; replaced as a whole (never mutated) on refresh.

    ``known``: every entity of the catalogue, with the readers of its decision events when it has no
    active split (its requests still get decision rows: no bid, "no active split"); an entity
    in neither map is not ours and gets no rows."""

    entities: dict[str, EntityServing]
    loaded_at: float = 0.0
    known: dict[str, EventReaders] = field(default_factory=dict)


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
    if not isinstance(rid, str) or not rid or len(rid) > MAX_ID_CHARS:
        raise BadRequest(f"id must be a non-empty string (at most {MAX_ID_CHARS} characters)")
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
        if not isinstance(iid, str) or not iid or len(iid) > MAX_ID_CHARS:
            raise BadRequest(f"imp[{i}].id must be a non-empty string (at most {MAX_ID_CHARS} characters)")
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


class Decision(NamedTuple):
    """One impression of a request that reached a known entity: what was bid (``price``), or why not
    (``reason``). A tuple, cheap to make on the request path; the event writer reads the request's
    features (``readers`` over ``req`` and ``imp``) off the request path."""

    request_id: str
    run_id: str | None
    impid: str
    segment_key: str | None
    level: str | None
    price: float | None  # None: no bid
    multiplier: float | None
    split_id: int | None = None
    arm: int | None = None
    reason: str | None = None  # why no bid
    floor: float = 0.0
    test: bool = False
    user_key: str = ""
    req: dict | None = None
    imp: dict | None = None
    readers: EventReaders = ()  # FEATURE_COLUMNS order
    values: Sequence[str] = ()  # what the run's lookup read (run feature order); empty without a lookup
    unfloored: float | None = None  # a floor no-bid's price without the floor (under it): logged as a lost bid


def no_price_reason(run: RunTables, base: float, multiplier: float) -> tuple[str, float | None]:
    """Why ``RunTables.quote`` gave no price, and what the run would have bid without the floor:
    the floor (or the cap under it) with that price, unless even without a floor ``quote`` has no
    positive price (``INVALID_PRICE_REASON``: a NaN always; a zero, or a price that rounds to it, in a
    run whose ``min_bid_cpm`` is 0)."""
    unfloored = run.quote(base, multiplier, 0.0)
    return (FLOOR_NO_BID_REASON, unfloored) if unfloored is not None else (INVALID_PRICE_REASON, None)


def request_no_bid_reason(decisions: Sequence[Decision]) -> str:
    """The reason of a request none of whose impressions was bid on: its impressions' one reason
    (every floor: "no impression clears its floor"), or all of them where they differ."""
    reasons = sorted({d.reason or "" for d in decisions})
    if reasons == [FLOOR_NO_BID_REASON]:
        return "no impression clears its floor"
    return reasons[0] if len(reasons) == 1 else "no impression bid on: " + "; ".join(reasons)


def is_test(req: dict) -> bool:
    """OpenRTB ``test: 1``: the exchange's test traffic, answered but never counted."""
    return req.get("test") == 1


def _no_bid(req: dict, imp: dict, reason: str, readers, test: bool, ukey: str, run=None, split_id=None, arm=None):
    """The decision row of one impression not bid on, for ``reason``."""
    run_id = run.run_id if run is not None else None
    return Decision(
        req["id"], run_id, imp["id"], None, None, None, None, split_id, arm, reason, float(imp_floor(imp)),
        test, ukey, req, imp, readers,
    )  # fmt: skip


def _no_bids(req: dict, reason: str, readers, test: bool, ukey: str, run=None, split_id=None, arm=None):
    return [_no_bid(req, imp, reason, readers, test, ukey, run, split_id, arm) for imp in req["imp"]]


def decide(
    state: BidderState,
    entity_code: str,
    body: bytes,
    received_at: float | None = None,
    *,
    signer: NoticeSigner | None = None,
    base_url: str = "",
    now: float | None = None,
) -> tuple[int, bytes, list[Decision], str]:
    """``(HTTP status, body, decisions, reason)``: 200 with a BidResponse, 204 (no bid, with the reason)
    or 400/413 (malformed, with the reason). Never raises for any body.

    ``decisions``: one per impression (bid or not) of a well-formed request for an entity of
    ``state`` (served, or ``known`` without a split); none for a malformed request or another entity.

    ``received_at``: ``time.monotonic()`` when the request arrived (default: when ``decide`` starts).
    A request with ``tmax`` whose deadline has passed by the time the response is ready gets
    204 ``tmax passed`` instead: the exchange has stopped waiting and a late bid is wasted (the
    decisions of its priced impressions say so: no bid, ``tmax passed``; the others keep their own
    reason, a floor no-bid having lost on time or late alike).

    ``signer``: each bid gets ``nurl``, ``lurl``, ``burl`` and ``ext.click_url``, signed for the bid's
    request, impression, run, split, price, ``now`` (unix seconds; default the clock) and test flag,
    under ``base_url`` (the request's scheme and host) unless the signer has a base URL of its own."""
    if received_at is None:
        received_at = time.monotonic()
    try:
        req = parse_request(body)
    except BadRequest as exc:
        return exc.status, orjson.dumps({"error": str(exc)}), [], str(exc)
    test = is_test(req)
    ukey = user_key(req)
    serving = state.entities.get(entity_code)
    if serving is None:
        reason = f"no active split for {entity_code}"
        readers = state.known.get(entity_code)
        return 204, b"", (_no_bids(req, reason, readers, test, ukey) if readers is not None else []), reason
    arm = serving.arm(ukey)
    run, readers, split_id = serving.runs[arm], serving.event_readers[arm], serving.split_id
    allowed = req.get("cur")
    if allowed and not any(is_usd(c) for c in allowed):
        reason = "request does not accept USD"
        return 204, b"", _no_bids(req, reason, readers, test, ukey, run, split_id, arm), reason
    domain = request_domain(req)
    multiplier = run.multiplier(domain)
    bid_ms = int((time.time() if now is None else now) * 1000)
    rid, run_id = req["id"], run.run_id
    bids, decisions = [], []
    for imp in req["imp"]:
        floor = imp_floor(imp)
        if not is_usd(imp_currency(imp)):  # we price in USD only; never guess an exchange rate
            decisions.append(_no_bid(req, imp, "currency not USD", readers, test, ukey, run, split_id, arm))
            continue
        base, key, level, values = run.lookup_values(req, imp)
        price = run.quote(base, multiplier, floor)
        reason, unfloored = (None, None) if price is not None else no_price_reason(run, base, multiplier)
        decisions.append(
            Decision(
                rid,
                run_id,
                imp["id"],
                key,
                level,
                price,
                multiplier,
                split_id,
                arm,
                reason,
                float(floor),
                test,
                ukey,
                req,
                imp,
                readers,
                values,
                unfloored,
            )
        )
        if price is None:
            continue
        bid = {
            "id": f"{rid}-{imp['id']}",
            "impid": imp["id"],
            "price": price,
            "ext": {"run_id": run_id, "segment_key": key, "level": level, "domain_multiplier": multiplier},
        }
        if signer is not None:
            urls = signer.urls(base_url, entity_code, rid, imp["id"], run_id, split_id, price, bid_ms, test)
            bid["nurl"], bid["lurl"], bid["burl"] = urls["nurl"], urls["lurl"], urls["burl"]
            bid["ext"]["click_url"] = urls["click_url"]
        bids.append(bid)
    if not bids:
        return 204, b"", decisions, request_no_bid_reason(decisions)
    response = {
        "id": rid,
        "seatbid": [{"seat": "bidopt", "bid": bids}],
        "cur": "USD",
        "ext": {"split_id": split_id},
    }
    payload = orjson.dumps(response)
    tmax = req.get("tmax")
    if tmax is not None and time.monotonic() > received_at + tmax / 1000:
        # the priced impressions only: their bids were never seen, so they neither won nor lost. A
        # floored sibling lost on time or late alike (as it does in a request answered 204 before
        # this check), so it stays a floor no-bid, a loss on the target's basis and a training row
        late = [d._replace(price=None, reason="tmax passed") if d.price is not None else d for d in decisions]
        return 204, b"", late, "tmax passed"
    return 200, payload, decisions, ""

"""Signed notice URLs and their verification: pure, no I/O (the bidder's HTTP layer calls these).

Every bid carries four URLs pointing at the bidder's own notice route
``/openrtb2/_notice/{kind}/{entity_code}``: ``nurl`` (win), ``lurl`` (loss), ``burl`` (billing)
and a click URL (``bid.ext.click_url``: OpenRTB has no click macro). Each names the bid
(request id ``r``, impression id ``i``, run ``u``, split ``s``, our price ``b``, bid time in unix
milliseconds ``t``, test flag ``x``) and carries ``sig``: an HMAC-SHA256 over the entity code and
those fields, bound to the URL's kind (``kind_signatures``), so that a loss URL cannot be turned
into a win; 128 bits, hex. Only holders of the key (``BIDOPT_NOTICE_SECRET``, else the key file in
``BIDOPT_HOME``) can sign. The exchange fills in the OpenRTB macros it supports:
``${AUCTION_PRICE}`` (``p``: the clearing price, win and billing), ``${AUCTION_MIN_TO_WIN}`` (``m``,
win and loss) and ``${AUCTION_LOSS}`` (``l``, the loss reason code). A macro left as it was means the
exchange does not send it (absent), except the clearing price of a win or billing notice, which
is required.

``verify_notice`` returns a notice row (``bidopt.events.schema.NOTICE_SCHEMA``'s fields) or raises
``NoticeRejected`` with an HTTP status and a short reason code (``REJECTIONS``). Prices are clear
text: an exchange that encrypts ``${AUCTION_PRICE}`` (e.g. Google's price encryption) needs its
decryption applied to ``p`` before ``parse_price``, with that exchange's keys.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import quote

NOTICE_PREFIX = "/openrtb2/_notice/"
WIN, LOSS, BILLING, CLICK = "win", "loss", "billing", "click"
NOTICE_KINDS = (WIN, LOSS, BILLING, CLICK)  # the same as bidopt.events.schema.NOTICE_KINDS
URL_FIELD = {WIN: "nurl", LOSS: "lurl", BILLING: "burl", CLICK: "click_url"}

AUCTION_PRICE, AUCTION_MIN_TO_WIN, AUCTION_LOSS = "${AUCTION_PRICE}", "${AUCTION_MIN_TO_WIN}", "${AUCTION_LOSS}"
# The macros each kind's URL asks the exchange to fill in (param -> macro), left unencoded so that the
# exchange finds and replaces them.
MACROS = {
    WIN: (("p", AUCTION_PRICE), ("m", AUCTION_MIN_TO_WIN)),
    LOSS: (("l", AUCTION_LOSS), ("m", AUCTION_MIN_TO_WIN)),
    BILLING: (("p", AUCTION_PRICE),),
    CLICK: (),
}

# reason code -> HTTP status
REJECTIONS = {
    "malformed": 400,
    "bad_signature": 403,
    "unknown_kind": 404,
    "unknown_entity": 404,
    "duplicate": 409,
    "contradicts": 409,  # a win after the impression's loss, or a loss after its win, at the same replica
    "expired": 410,
}

SIGNATURE_BYTES = 16
FUTURE_SKEW_SECONDS = 30.0  # a bid time this far ahead of our clock is refused (clocks of replicas differ)
MAX_QUERY_BYTES = 4096
MAX_ID_CHARS = 256  # request and impression ids, as the bidder accepts them
MAX_RUN_ID_CHARS = 64
MAX_NUMBER_CHARS = 32
MAX_PARAMS = 32
_NUMBER = re.compile(r"^(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?$")  # no sign, no _ , no nan/inf
_WHOLE = re.compile(r"^[0-9]{1,18}$")
_SIGNATURE = re.compile(r"^[0-9a-f]{32}$")
_MACRO = re.compile(r"^\$\{[A-Z_]+\}$")  # an unsubstituted macro, URL-decoded
SIGNED = ("r", "i", "u", "s", "b", "t", "x")
_MACRO_QUERY = {kind: "".join(f"&{name}={macro}" for name, macro in MACROS[kind]) for kind in MACROS}


class NoticeRejected(ValueError):
    """A notice that is not accepted; ``status`` is its HTTP status, ``reason`` one of ``REJECTIONS``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.status = reason, detail, REJECTIONS[reason]


_URL_SAFE = re.compile(r"^[A-Za-z0-9_.~-]*$")


def _quote(value: str) -> str:
    return value if _URL_SAFE.match(value) else quote(value, safe="", errors="surrogatepass")


def signed_query(request_id: str, imp_id: str, run_id: str, split: str, bid: str, bid_ms: str, test: str) -> str:
    """The signed part of every notice URL of a bid: ``r=..&i=..&u=..&s=..&b=..&t=..&x=..``, each value
    percent-encoded by one fixed rule, so that the text is a function of the values (no value can pass
    for two others: an encoded value holds no ``&`` or ``=``) and a verifier rebuilds it exactly from
    the decoded values, however the exchange re-encoded them."""
    return f"r={_quote(request_id)}&i={_quote(imp_id)}&u={_quote(run_id)}&s={split}&b={bid}&t={bid_ms}&x={test}"


def bid_tag(key: bytes, entity_code: str, query: str) -> bytes:
    """HMAC-SHA256 over the entity and a bid's ``signed_query``: a secret only holders of ``key`` can
    compute, from which each kind's signature derives."""
    return hmac.digest(key, f"bidopt-notice-v1|{entity_code}?{query}".encode("utf-8", "surrogatepass"), "sha256")


def kind_signatures(tag: bytes) -> dict[str, str]:
    """The signature of each kind's URL (hex, ``SIGNATURE_BYTES`` each): slices of one BLAKE2b output
    keyed with the bid's secret tag. One HMAC and one hash per bid instead of one HMAC per URL (the
    bid path's cost); the kind is still bound: each slice is an independent part of a keyed hash, so
    without the tag no kind's signature follows from another's."""
    text = hashlib.blake2b(b"kinds", key=tag, digest_size=SIGNATURE_BYTES * len(NOTICE_KINDS)).hexdigest()
    width = 2 * SIGNATURE_BYTES
    return {kind: text[i * width : (i + 1) * width] for i, kind in enumerate(NOTICE_KINDS)}


def signature(key: bytes, kind: str, entity_code: str, fields: Iterable[str]) -> str:
    """The signature of the notice URL of ``kind`` for a bid's signed fields (``SIGNED`` order, as text)."""
    return kind_signatures(bid_tag(key, entity_code, signed_query(*fields)))[kind]


class NoticeSigner:
    """Builds the signed notice URLs of bids with one key (shared by every replica)."""

    def __init__(self, key: bytes, base_url: str = "") -> None:
        if not key:
            raise ValueError("a notice key must not be empty")
        self.key = key
        self.base_url = base_url.rstrip("/")  # "" means: the base URL each request brings

    def urls(
        self,
        base_url: str,
        entity_code: str,
        request_id: str,
        imp_id: str,
        run_id: str,
        split_id: int,
        price: float,
        bid_time_ms: int,
        test: bool,
    ) -> dict[str, str]:
        """``{"nurl", "lurl", "burl", "click_url"}`` of one bid. ``base_url`` (scheme and host of the bid
        request) is used unless the signer has its own. The price's text in the URL is ``repr(price)``."""
        query = signed_query(
            request_id, imp_id, run_id, str(split_id), repr(price), str(bid_time_ms), "1" if test else "0"
        )
        sigs = kind_signatures(bid_tag(self.key, entity_code, query))
        root = f"{self.base_url or base_url.rstrip('/')}{NOTICE_PREFIX}"
        return {
            URL_FIELD[kind]: f"{root}{kind}/{entity_code}?{query}&sig={sigs[kind]}{_MACRO_QUERY[kind]}"
            for kind in NOTICE_KINDS
        }


@dataclass(frozen=True)
class Limits:
    """What a replica checks a notice against."""

    window_seconds: float  # notices older than this after their bid are refused
    served_entities: frozenset[str] | None = None  # None: any entity


def parse_price(text: str | None, name: str, *, required: bool) -> float | None:
    """A price macro's value: a finite, non-negative decimal; an unsubstituted macro or no value is
    None where ``required`` is false. Raises ``NoticeRejected("malformed")`` otherwise."""
    if text is None or text == "" or _MACRO.match(text):
        if required:
            raise NoticeRejected("malformed", f"{name} is required and was not filled in ({text or 'absent'})")
        return None
    if len(text) > MAX_NUMBER_CHARS or not _NUMBER.match(text):
        raise NoticeRejected("malformed", f"{name} must be a non-negative decimal number, got {text[:40]!r}")
    value = float(text)
    if not math.isfinite(value):
        raise NoticeRejected("malformed", f"{name} must be finite, got {text[:40]!r}")
    return value


def _one_value_each(params: Iterable[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for count, (name, value) in enumerate(params, 1):
        if count > MAX_PARAMS:
            raise NoticeRejected("malformed", f"more than {MAX_PARAMS} query parameters")
        if name in out:
            raise NoticeRejected("malformed", f"parameter {name!r} appears twice")
        out[name] = value
    return out


def verify_notice(
    key: bytes,
    kind: str,
    entity_code: str,
    params: Mapping[str, str] | Iterable[tuple[str, str]],
    *,
    now: float,
    limits: Limits,
    replica_id: str | None = None,
) -> dict:
    """The notice row of a notice URL's kind, entity and (decoded) query parameters received at
    ``now`` (unix seconds), or ``NoticeRejected``. Checks, in order: the kind, the shape of every
    signed parameter, the signature (constant-time), the age, the macro values, the entity."""
    if kind not in NOTICE_KINDS:
        raise NoticeRejected("unknown_kind", f"notice kind must be one of {', '.join(NOTICE_KINDS)}")
    p = _one_value_each(params.items() if isinstance(params, Mapping) else params)
    for name in (*SIGNED, "sig"):
        if name not in p:
            raise NoticeRejected("malformed", f"parameter {name} is missing")
    rid, imp, run, split, bid, bid_ms, test = (p[name] for name in SIGNED)
    if not (0 < len(rid) <= MAX_ID_CHARS and 0 < len(imp) <= MAX_ID_CHARS and 0 < len(run) <= MAX_RUN_ID_CHARS):
        raise NoticeRejected("malformed", "r, i and u must be non-empty ids of bounded length")
    if not (_WHOLE.match(split) and _WHOLE.match(bid_ms) and test in ("0", "1")):
        raise NoticeRejected("malformed", "s and t must be whole numbers and x 0 or 1")
    if not _SIGNATURE.match(p["sig"]):
        raise NoticeRejected("malformed", "sig is not a signature")
    bid_cpm = parse_price(bid, "b", required=True)
    expected = signature(key, kind, entity_code, (rid, imp, run, split, bid, bid_ms, test))
    if not hmac.compare_digest(expected.encode("ascii"), p["sig"].encode("ascii")):  # constant time
        raise NoticeRejected("bad_signature", "the signature does not match this notice")
    bid_time = int(bid_ms) / 1000
    age = now - bid_time
    if age > limits.window_seconds:
        raise NoticeRejected("expired", f"bid is {age:.0f} s old; notices are taken for {limits.window_seconds:g} s")
    if age < -FUTURE_SKEW_SECONDS:
        raise NoticeRejected("expired", f"bid time is {-age:.0f} s in the future")
    price = min_to_win = loss_reason = None
    if kind in (WIN, BILLING):
        price = parse_price(p.get("p"), "p (${AUCTION_PRICE})", required=True)
        if price > bid_cpm + 1e-6:
            raise NoticeRejected("malformed", f"clearing price {price:g} is above our bid {bid_cpm:g}")
    if kind in (WIN, LOSS):
        min_to_win = parse_price(p.get("m"), "m (${AUCTION_MIN_TO_WIN})", required=False)
    if kind == LOSS:
        code = p.get("l")
        if code is not None and code != "" and not _MACRO.match(code):
            if not _WHOLE.match(code) or int(code) >= 2**31:
                raise NoticeRejected(
                    "malformed", f"l (${{AUCTION_LOSS}}) must be a loss reason code, got {code[:40]!r}"
                )
            loss_reason = int(code)
    if limits.served_entities is not None and entity_code not in limits.served_entities:
        raise NoticeRejected("unknown_entity", f"entity {entity_code} is not served here")
    return {
        "event_time": datetime.fromtimestamp(now, timezone.utc).replace(tzinfo=None),
        "entity_code": entity_code,
        "request_id": rid,
        "imp_id": imp,
        "kind": kind,
        "split_id": int(split),
        "run_id": run,
        "bid_cpm": bid_cpm,
        "bid_time": datetime.fromtimestamp(bid_time, timezone.utc).replace(tzinfo=None),
        "price_cpm": price,
        "min_to_win_cpm": min_to_win,
        "loss_reason": loss_reason,
        "test": test == "1",
        "replica_id": replica_id,
    }

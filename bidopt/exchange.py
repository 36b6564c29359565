"""An exchange to test the bidder against (no Ray): ``simulate_exchange``.

It draws requests from the market simulator's model (``bidopt.simulator.sample_requests``: the
same market an entity's logs were generated from), each with its true highest competing bid
``z = exp(mu + sigma * N(0, 1))``, writes them as OpenRTB 2.6 BidRequests the bidder's readers
(``bidopt.bidder.fields``, with the demo's ADX macros) read back as exactly the sampled feature
values, sends them over HTTP, runs the auction and fires the notices the way exchanges do:

* one impression per request; no bid (204, or no bid for the impression) is a loss the bidder
  hears nothing about; a bid under the floor loses (loss reason 100); otherwise we win when our
  price is above ``z`` (a tie loses, reason 102). First price charges our price, second price
  ``max(z, floor)`` (never more than our price).
* a win calls ``nurl`` with ``${AUCTION_PRICE}`` (the clearing price) and ``${AUCTION_MIN_TO_WIN}``
  (``max(z, floor)``), then ``burl``; a click (with the market's true CTR, on won impressions
  only) calls the bid's ``ext.click_url``; a loss calls ``lurl`` with ``${AUCTION_LOSS}`` and the
  min-to-win. Prices are plain decimals. The exchange depends on nothing in these URLs but the
  macros and, to forge a signature, a ``sig`` query parameter.
* faults: a fraction of notices is sent late (the rest of that impression's notices wait with it,
  so a billing notice never overtakes its win, while other traffic goes on), a fraction is sent
  twice, and a fraction of bids gets one extra forged notice (a changed signature; a win whose
  price is above our bid; a win for an impression that lost, sent after its loss notice). Forged
  and duplicate notices are extra: the true counts never include them. A fraction of requests
  carries ``"test": 1``: answered and notified like the others, but kept out of the true counts.

All random draws are made up front from the seed, so the same seed gives the same auctions
whatever the concurrency. Requests go only to the given URL's origin (notice URLs elsewhere are
counted and skipped unless ``allow_other_hosts``); proxies from the environment are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import numpy as np
import orjson

from bidopt.bidder.fields import US_STATES
from bidopt.errors import InvalidConfig
from bidopt.readout import wilson_interval  # the readout's own: the exchange's count is judged alike
from bidopt.simulator import AUCTION_TYPES, MarketSpec, sample_requests, true_win_probability

# OpenRTB 2.6 loss reason codes (section 5.25) the exchange sends
LOSS_BELOW_FLOOR = 100
LOSS_LOST_TO_HIGHER_BID = 102
AUCTION_TYPE_CODE = {"first_price": 1, "second_price": 2}  # BidRequest.at
FORGE_KINDS = ("bad_signature", "price_above_bid", "win_for_lost")
MAX_REQUESTS = 1_000_000  # the sampled requests are held in memory
MAX_LATE_SECONDS = 3600.0
PRICE_DECIMALS = 6  # in notice macros: plain decimals, never exponents

REGION_CODE = {name: code for code, name in US_STATES.items()}
OS_NAME = {"ios": "iOS", "android": "Android", "windows": "Windows", "macos": "macOS", "linux": "Linux"}
DEVICE_TYPE_CODE = {"mobile": 4, "desktop": 2, "tablet": 5, "ctv": 3}  # OpenRTB 2.6 list 5.21: phone, PC, tablet, CTV
_SAFARI_IOS = "Version/17.4 Mobile/15E148 Safari/604.1"
USER_AGENT = {  # (os, browser) -> a real user agent of that family; browser_from_ua parses each back
    ("ios", "safari"): f"Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    f"(KHTML, like Gecko) {_SAFARI_IOS}",
    ("ios", "chrome"): "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) CriOS/123.0.6312.52 Mobile/15E148 Safari/604.1",
    ("android", "chrome"): "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/123.0.6312.99 Mobile Safari/537.36",
    ("android", "samsung"): "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
    ("android", "firefox"): "Mozilla/5.0 (Android 14; Mobile; rv:124.0) Gecko/124.0 Firefox/124.0",
    ("windows", "chrome"): "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/123.0.0.0 Safari/537.36",
    ("windows", "edge"): "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/123.0.0.0 Safari/537.36 Edg/123.0.2420.65",
    ("windows", "firefox"): "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:124.0) Gecko/20100101 Firefox/124.0",
    ("macos", "safari"): "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    ("macos", "chrome"): "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/123.0.0.0 Safari/537.36",
    ("macos", "firefox"): "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.4; rv:124.0) Gecko/20100101 Firefox/124.0",
    ("linux", "chrome"): "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/123.0.0.0 Safari/537.36",
    ("linux", "firefox"): "Mozilla/5.0 (X11; Linux x86_64; rv:124.0) Gecko/20100101 Firefox/124.0",
    ("other", "other"): "Roku/DVP-12.5 (12.5.0.4174-C2)",
}


def user_agent(device_type: str, os_code: str, browser_code: str) -> str:
    """A user agent of the browser family on that OS (an iPad or Android tablet on tablets)."""
    ua = USER_AGENT[(os_code, browser_code)]
    if device_type == "tablet":
        ua = ua.replace("iPhone; CPU iPhone OS", "iPad; CPU OS").replace(" Mobile Safari/", " Safari/")
    return ua


def build_bid_request(
    row: dict, request_id: str, *, auction_type: str = "first_price", tmax_ms: int = 500, test: bool = False
) -> dict:
    """An OpenRTB 2.6 BidRequest with one impression for a row of ``sample_requests``.

    Fields: ``device.geo.region`` (ISO 3166-2 code), ``device.os``, ``device.ua``,
    ``device.devicetype``, ``site.domain``, ``user.id``, ``user.ext.npi_matched``, ``imp.bidfloor``
    with ``bidfloorcur`` USD where the row has a floor, ``at``, ``tmax`` and ``cur``."""
    device_type, os_code = row["device_type"], row["os_code"]
    req: dict = {
        "id": request_id,
        "at": AUCTION_TYPE_CODE[auction_type],
        "tmax": tmax_ms,
        "cur": ["USD"],
        "imp": [{"id": "1", "banner": {"w": 300, "h": 250}, "secure": 1}],
        "site": {"domain": row["domain"], "page": f"https://{row['domain']}/"},
        "device": {
            "ua": user_agent(device_type, os_code, row["browser_code"]),
            "os": OS_NAME.get(os_code, os_code.capitalize()),
            "devicetype": DEVICE_TYPE_CODE[device_type],
            "geo": {"country": "USA", "region": REGION_CODE[row["geo_region_name"]]},
        },
        "user": {"id": row["user_id"], "ext": {"npi_matched": bool(row["npi_matched"])}},
    }
    floor = row.get("floor_cpm")
    if floor is not None and floor == floor:  # NaN is no floor too
        req["imp"][0].update(bidfloor=float(floor), bidfloorcur="USD")
    if test:
        req["test"] = 1
    return req


@dataclass(frozen=True)
class AuctionResult:
    won: bool
    clearing_price: float | None  # what we pay (won only)
    min_to_win: float  # max(z, floor): the lowest price that would have been charged
    loss_reason: int | None  # OpenRTB loss reason (lost only)


def run_auction(price: float, competing: float, floor: float | None, auction_type: str) -> AuctionResult:
    """One impression's auction against the highest competing bid ``competing``.

    Our price must clear the floor (``price >= floor``, else loss reason 100) and beat the
    competition strictly (a tie loses, 102). First price charges ``price``; second price
    ``max(competing, floor)``, rounded to the macros' decimals and never above ``price``."""
    if auction_type not in AUCTION_TYPES:
        raise InvalidConfig(f"auction_type must be one of {', '.join(AUCTION_TYPES)}")
    floor = 0.0 if floor is None or floor != floor else float(floor)
    min_to_win = round(max(competing, floor), PRICE_DECIMALS)
    if price < floor:
        return AuctionResult(False, None, min_to_win, LOSS_BELOW_FLOOR)
    if not price > competing:
        return AuctionResult(False, None, min_to_win, LOSS_LOST_TO_HIGHER_BID)
    clearing = price if auction_type == "first_price" else min(min_to_win, price)
    return AuctionResult(True, clearing, min_to_win, None)


def format_price(value: float) -> str:
    """A CPM as a plain decimal (``1.25``, ``0.000001``, never ``1e-06``)."""
    text = f"{value:.{PRICE_DECIMALS}f}".rstrip("0").rstrip(".")
    return text or "0"


def substitute_macros(url: str, values: dict[str, str]) -> str:
    """``url`` with each ``${NAME}`` of ``values`` replaced, also where it was percent-encoded
    (``%24%7BNAME%7D``, as a URL builder that quotes everything writes it)."""
    for name, value in values.items():
        url = url.replace("${" + name + "}", value)
        url = re.sub(re.escape("%24%7B" + name + "%7D"), value, url, flags=re.IGNORECASE)
    return url


_SIG = re.compile(r"([?&]sig=)([^&#]*)")


_SIGNATURE_ALPHABETS = ("0123456789abcdef", "0123456789ABCDEF", "ghijklmnopqrstuvwxyz", "GHIJKLMNOPQRSTUVWXYZ")


def forge_signature(url: str) -> str:
    """``url`` with the value of its ``sig`` query parameter changed in its first character, to
    another of the same kind (a hex digit stays a hex digit, so the signature still looks like one
    and fails as a forgery, not as malformed); a ``sig`` is added when there is none. Everything
    else stays byte for byte."""
    match = _SIG.search(url)
    if match is None:
        return url + ("&" if "?" in url else "?") + "sig=forged"
    value = match.group(2)
    first = value[:1]
    alphabet = next((a for a in _SIGNATURE_ALPHABETS if first and first in a), None)
    changed = alphabet[(alphabet.index(first) + 1) % len(alphabet)] if alphabet else "A"
    return url[: match.start(2)] + changed + value[1:] + url[match.end(2) :]


@dataclass
class ArmSeen:
    """What the exchange saw of one run (``ext.run_id`` of its bids), test requests excluded. The
    exchange knows a request's arm only from a bid, so ``requests`` counts requests this run bid
    on; requests without a bid are the report's ``no_bids``."""

    run_id: str
    requests: int = 0
    bids: int = 0
    wins: int = 0
    spend: float = 0.0  # currency units: sum of clearing CPM / 1000
    clicks: int = 0
    expected_wins: float = 0.0  # sum over bids of the market's true P(win) at the bid price

    def as_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "requests": self.requests,
            "bids": self.bids,
            "wins": self.wins,
            "win_rate": wilson_interval(self.wins, self.bids),
            "true_win_probability": self.expected_wins / self.bids if self.bids else None,
            "spend": self.spend,
            "ecpm": self.spend * 1000 / self.wins if self.wins else None,
            "clicks": self.clicks,
            "ctr": wilson_interval(self.clicks, self.wins),
        }


def _status_key(status: int | str) -> str:
    return str(status)


@dataclass
class NoticeTally:
    """Notices the exchange sent and the answers it got. ``sent``/``answers`` are the genuine
    notices (late ones included) by kind; duplicates and forged ones are counted apart."""

    sent: Counter = field(default_factory=Counter)  # kind -> n
    answers: dict = field(default_factory=lambda: defaultdict(Counter))  # kind -> status -> n
    late: Counter = field(default_factory=Counter)  # status -> n
    late_delays: list = field(default_factory=list)  # seconds each late notice actually waited
    duplicates: Counter = field(default_factory=Counter)  # status -> n
    forged: dict = field(default_factory=lambda: defaultdict(Counter))  # forge kind -> status -> n
    missing_url: Counter = field(default_factory=Counter)  # kind -> bids that had no URL for it
    other_host: Counter = field(default_factory=Counter)  # kind -> URLs not on the bid URL's origin

    def as_dict(self) -> dict:
        def rejected(statuses: Counter) -> int:
            return sum(n for s, n in statuses.items() if s.isdigit() and 400 <= int(s) < 500)

        forged_total = Counter()
        for statuses in self.forged.values():
            forged_total.update(statuses)
        return {
            "sent": dict(self.sent),
            "answers": {kind: dict(statuses) for kind, statuses in self.answers.items()},
            "late": {
                "sent": sum(self.late.values()),
                "answers": dict(self.late),
                "max_delay_seconds": max(self.late_delays, default=None),
            },
            "duplicates": {"sent": sum(self.duplicates.values()), "answers": dict(self.duplicates)},
            "forged": {
                "sent": sum(forged_total.values()),
                "rejected_4xx": rejected(forged_total),
                "by_kind": {
                    kind: {"sent": sum(s.values()), "rejected_4xx": rejected(s), "answers": dict(s)}
                    for kind, s in self.forged.items()
                },
            },
            "missing_url": dict(self.missing_url),
            "other_host": dict(self.other_host),
        }


@dataclass
class ExchangeReport:
    """What the exchange sent and saw. ``answers``: bid answers by HTTP status (or
    ``transport_error``); ``no_bids``: non-test requests without a valid bid for their impression;
    ``invalid_bids``: bids with an unusable price (counted as no bid)."""

    entity_code: str
    url: str
    auction_type: str
    requests: int = 0
    test_requests: int = 0
    seconds: float = 0.0
    answers: Counter = field(default_factory=Counter)
    no_bids: int = 0
    invalid_bids: int = 0
    arms: dict = field(default_factory=dict)  # run_id -> ArmSeen
    notices: NoticeTally = field(default_factory=NoticeTally)

    def arm(self, run_id: str) -> ArmSeen:
        if run_id not in self.arms:
            self.arms[run_id] = ArmSeen(run_id)
        return self.arms[run_id]

    def as_dict(self) -> dict:
        return {
            "entity_code": self.entity_code,
            "url": self.url,
            "auction_type": self.auction_type,
            "requests": self.requests,
            "test_requests": self.test_requests,
            "seconds": round(self.seconds, 3),
            "requests_per_second": self.requests / self.seconds if self.seconds > 0 else None,
            "answers": dict(self.answers),
            "no_bids": self.no_bids,
            "invalid_bids": self.invalid_bids,
            "arms": [self.arms[k].as_dict() for k in sorted(self.arms)],
            "notices": self.notices.as_dict(),
        }


@dataclass
class NoticeStep:
    """One notice to send: ``role`` is ``genuine``, ``duplicate`` or ``forged``; ``delay`` seconds
    to wait first (a late notice: it and the rest of its impression's steps wait together)."""

    kind: str
    url: str
    role: str = "genuine"
    forge_kind: str | None = None
    delay: float = 0.0


def _check_fraction(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):  # NaN fails too
        raise InvalidConfig(f"{name} must be a fraction from 0 to 1, got {value}")
    return float(value)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def check_bid_url(url: str) -> str:
    """The bid URL, or ``InvalidConfig`` unless it is an ``http(s)://host[:port]/...`` URL."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a port that is not a number in range
    except ValueError as exc:
        raise InvalidConfig(f"bad --url {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidConfig(f"--url must be an http:// or https:// URL with a host, got {url!r}")
    return url


@dataclass
class _Draws:
    """Every random number of a run, drawn up front from the seed (order of arrival is irrelevant)."""

    competing: np.ndarray  # z per request
    test: np.ndarray  # bool per request
    click: np.ndarray  # uniform per request
    late: np.ndarray  # uniform per request and notice slot (win, billing, click / loss)
    duplicate: np.ndarray
    forge: np.ndarray  # uniform per request
    forge_kind: np.ndarray


class _HttpxClient:
    """The exchange's HTTP calls through an httpx transport (tests: an in-process ``httpx.ASGITransport``)."""

    errors = (httpx.HTTPError,)

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def get_status(self, url: str) -> int:
        return (await self.client.get(url)).status_code

    async def post(self, url: str, body: bytes) -> tuple[int, bytes]:
        answer = await self.client.post(url, content=body, headers={"content-type": "application/json"})
        return answer.status_code, answer.content


class _AiohttpClient:
    """The exchange's HTTP calls over the network through aiohttp. Not httpx here: its connection
    pool scans every connection on every request (py-spy: about 40% of the exchange's CPU at
    concurrency 32), and on a 2-core machine the exchange would then be what limits the test."""

    def __init__(self, session) -> None:
        import aiohttp
        from yarl import URL

        self.session, self._url = session, URL
        self.errors = (aiohttp.ClientError, asyncio.TimeoutError, ValueError)

    async def get_status(self, url: str) -> int:
        # encoded=True: the URL goes out byte for byte as the bidder signed it (yarl would re-quote it)
        async with self.session.get(self._url(url, encoded=True)) as answer:
            await answer.read()
            return answer.status

    async def post(self, url: str, body: bytes) -> tuple[int, bytes]:
        headers = {"content-type": "application/json"}
        async with self.session.post(self._url(url, encoded=True), data=body, headers=headers) as answer:
            return answer.status, await answer.read()


class _Exchange:
    def __init__(
        self,
        client: _HttpxClient | _AiohttpClient,
        report: ExchangeReport,
        *,
        concurrency: int,
        allow_other_hosts: bool,
    ):
        self.client = client
        self.report = report
        self.notice_slots = asyncio.Semaphore(concurrency)
        self.origin = _origin(report.url)
        self.allow_other_hosts = allow_other_hosts
        self.background: set[asyncio.Task] = set()

    async def send(self, step: NoticeStep, *, waited: float | None = None) -> None:
        tally = self.report.notices
        if not self.allow_other_hosts and _origin(step.url) != self.origin:
            tally.other_host[step.kind] += 1
            return
        async with self.notice_slots:
            try:
                status = _status_key(await self.client.get_status(step.url))
            except self.client.errors:
                status = "transport_error"
        if step.role == "genuine":
            tally.sent[step.kind] += 1
            tally.answers[step.kind][status] += 1
            if waited is not None:
                tally.late[status] += 1
                tally.late_delays.append(waited)
        elif step.role == "duplicate":
            tally.duplicates[status] += 1
        else:
            tally.forged[step.forge_kind][status] += 1

    async def play(self, steps: list[NoticeStep]) -> None:
        """Send ``steps`` in order; at a late one, the rest goes on in the background after its delay."""
        for k, step in enumerate(steps):
            if step.delay > 0:
                task = asyncio.create_task(self._later(steps[k:]))
                self.background.add(task)
                task.add_done_callback(self.background.discard)
                return
            await self.send(step)

    async def _later(self, steps: list[NoticeStep]) -> None:
        first, rest = steps[0], steps[1:]
        started = time.monotonic()
        await asyncio.sleep(first.delay)
        await self.send(first, waited=time.monotonic() - started)
        await self.play(rest)

    async def drain(self) -> None:
        while self.background:  # a late task can start another one further down its impression
            await asyncio.gather(*list(self.background))


def _first_bid(payload: bytes, imp_id: str) -> dict | None:
    """The first bid of a BidResponse for impression ``imp_id``, else None; ``ValueError`` when the
    body is not a BidResponse."""
    response = orjson.loads(payload)
    if not isinstance(response, dict):
        raise ValueError("not a JSON object")
    seatbids = response.get("seatbid")
    for seatbid in seatbids if isinstance(seatbids, list) else []:
        bids = seatbid.get("bid") if isinstance(seatbid, dict) else None
        for bid in bids if isinstance(bids, list) else []:
            if isinstance(bid, dict) and bid.get("impid") == imp_id:
                return bid
    return None


def _valid_price(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and value > 0 else None


def notice_steps(
    bid: dict,
    result: AuctionResult,
    price: float,
    clicked: bool,
    *,
    late: np.ndarray,
    duplicate: np.ndarray,
    late_fraction: float,
    late_seconds: float,
    duplicate_fraction: float,
    forge_kind: str | None,
    tally: NoticeTally,
) -> list[NoticeStep]:
    """The notices of one bid, in the order an exchange sends them, with their faults."""
    ext = bid.get("ext") if isinstance(bid.get("ext"), dict) else {}
    if result.won:
        planned = [
            ("win", bid.get("nurl"), _outcome_macros(result)),
            ("billing", bid.get("burl"), {"AUCTION_PRICE": format_price(result.clearing_price)}),
        ]
        if clicked:
            planned.append(("click", ext.get("click_url"), {}))
    else:
        planned = [("loss", bid.get("lurl"), _outcome_macros(result))]
    steps: list[NoticeStep] = []
    for slot, (kind, url, macros) in enumerate(planned):
        if not isinstance(url, str) or not url:
            tally.missing_url[kind] += 1
            continue
        url = substitute_macros(url, macros)
        steps.append(NoticeStep(kind, url, delay=late_seconds if late[slot] < late_fraction else 0.0))
        if duplicate[slot] < duplicate_fraction:
            steps.append(NoticeStep(kind, url, role="duplicate"))
    if forge_kind is not None:
        forged = forged_notice(bid, forge_kind, result, price)
        if forged is not None:
            steps.append(forged)
    return steps


def _outcome_macros(result: AuctionResult) -> dict[str, str]:
    """The macros of the win notice (won) or the loss notice (lost) of an auction."""
    min_to_win = format_price(result.min_to_win)
    if result.won:
        return {"AUCTION_PRICE": format_price(result.clearing_price), "AUCTION_MIN_TO_WIN": min_to_win}
    return {"AUCTION_LOSS": str(result.loss_reason), "AUCTION_MIN_TO_WIN": min_to_win}


def forged_notice(bid: dict, forge_kind: str, result: AuctionResult, price: float) -> NoticeStep | None:
    """An extra notice no honest exchange sends (None when the bid has no URL to forge it from)."""
    min_to_win = format_price(result.min_to_win)
    if forge_kind == "bad_signature":
        kind, url = ("win", bid.get("nurl")) if result.won else ("loss", bid.get("lurl"))
        if not isinstance(url, str) or not url:
            return None
        url = forge_signature(substitute_macros(url, _outcome_macros(result)))
        return NoticeStep(kind, url, role="forged", forge_kind=forge_kind)
    url = bid.get("nurl")
    if not isinstance(url, str) or not url:
        return None
    # price_above_bid: a win charged more than we bid; win_for_lost: a win for an impression that lost
    charged = format_price(price * 2 + 0.01) if forge_kind == "price_above_bid" else format_price(price)
    url = substitute_macros(url, {"AUCTION_PRICE": charged, "AUCTION_MIN_TO_WIN": min_to_win})
    return NoticeStep("win", url, role="forged", forge_kind=forge_kind)


async def simulate_exchange_async(
    spec: MarketSpec,
    url: str,
    requests: int,
    *,
    qps: float | None = None,
    concurrency: int = 8,
    seed: int = 1,
    late_fraction: float = 0.0,
    late_seconds: float = 2.0,
    duplicate_fraction: float = 0.0,
    forged_fraction: float = 0.0,
    forge_kinds: Iterable[str] = FORGE_KINDS,
    test_fraction: float = 0.0,
    tmax_ms: int = 500,
    timeout_seconds: float = 10.0,
    users: int | None = None,
    request_id_prefix: str | None = None,
    allow_other_hosts: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> ExchangeReport:
    """``simulate_exchange`` inside a running event loop.

    ``qps``: start at most this many requests a second (default: as fast as ``concurrency``
    allows); ``concurrency``: bid requests in flight (and, apart, late notices in flight);
    ``seed``: the traffic (the market is ``spec.seed``'s); ``late_fraction`` of genuine notices
    wait ``late_seconds``; ``duplicate_fraction`` of them are sent twice; ``forged_fraction`` of
    bids get one extra forged notice of one of ``forge_kinds``; ``test_fraction`` of requests carry
    ``"test": 1``; ``tmax_ms`` is the requests' ``tmax``; ``timeout_seconds`` bounds each HTTP
    call; ``users`` simulated users (default a quarter of the requests); ``request_id_prefix``
    (default random) starts every request id; ``transport`` replaces the network (tests: an
    ``httpx.ASGITransport``); ``on_progress(done, total)`` is called after each request."""
    check_bid_url(url)
    if isinstance(requests, bool) or not isinstance(requests, int) or not 1 <= requests <= MAX_REQUESTS:
        raise InvalidConfig(f"requests must be a whole number from 1 to {MAX_REQUESTS:,}, got {requests}")
    if not isinstance(concurrency, int) or not 1 <= concurrency <= 1000:
        raise InvalidConfig(f"concurrency must be from 1 to 1000, got {concurrency}")
    if qps is not None and not (isinstance(qps, (int, float)) and 0 < qps < math.inf):
        raise InvalidConfig(f"qps must be a positive number, got {qps}")
    if not (isinstance(late_seconds, (int, float)) and 0 <= late_seconds <= MAX_LATE_SECONDS):
        raise InvalidConfig(f"late seconds must be from 0 to {MAX_LATE_SECONDS:g}, got {late_seconds}")
    if not (isinstance(timeout_seconds, (int, float)) and 0 < timeout_seconds <= 600):
        raise InvalidConfig(f"timeout must be from 0 to 600 seconds, got {timeout_seconds}")
    if isinstance(tmax_ms, bool) or not isinstance(tmax_ms, int) or not 1 <= tmax_ms <= 60_000:
        raise InvalidConfig(f"tmax must be a whole number of milliseconds from 1 to 60000, got {tmax_ms}")
    late_fraction = _check_fraction("late fraction", late_fraction)
    duplicate_fraction = _check_fraction("duplicate fraction", duplicate_fraction)
    forged_fraction = _check_fraction("forged fraction", forged_fraction)
    test_fraction = _check_fraction("test fraction", test_fraction)
    forge_kinds = tuple(dict.fromkeys(forge_kinds))
    unknown = [k for k in forge_kinds if k not in FORGE_KINDS]
    if unknown:
        raise InvalidConfig(f"unknown forge kinds {unknown}; known: {', '.join(FORGE_KINDS)}")

    sample = sample_requests(spec, requests, seed=seed, users=users)
    rows = sample.to_pylist()
    mu, sigma = sample["truth_mu"].to_numpy(), sample["truth_sigma"].to_numpy()
    floors = sample["floor_cpm"].to_numpy(zero_copy_only=False)
    rng = np.random.default_rng([spec.seed, 3, seed])
    draws = _Draws(
        competing=np.exp(mu + sigma * rng.standard_normal(requests)),
        test=rng.random(requests) < test_fraction,
        click=rng.random(requests),
        late=rng.random((requests, 3)),
        duplicate=rng.random((requests, 3)),
        forge=rng.random(requests),
        forge_kind=rng.random(requests),
    )
    prefix = request_id_prefix or f"x{secrets.token_hex(4)}"  # fresh per run: ids never repeat across runs
    report = ExchangeReport(spec.entity_code, url, spec.auction_type)
    async with _http_client(transport, concurrency, timeout_seconds) as client:
        exchange = _Exchange(client, report, concurrency=concurrency, allow_other_hosts=allow_other_hosts)
        next_index = iter(range(requests))
        started = time.monotonic()

        async def one(i: int) -> None:
            row = rows[i]
            is_test = bool(draws.test[i])
            body = orjson.dumps(
                build_bid_request(row, f"{prefix}-{i}", auction_type=spec.auction_type, tmax_ms=tmax_ms, test=is_test)
            )
            report.requests += 1
            report.test_requests += is_test
            try:
                status, content = await client.post(url, body)
            except client.errors:
                report.answers["transport_error"] += 1
                report.no_bids += not is_test
                return
            report.answers[_status_key(status)] += 1
            bid = None
            if status == 200:
                try:
                    bid = _first_bid(content, "1")
                except ValueError:
                    report.invalid_bids += 1
            price = _valid_price(bid.get("price")) if bid is not None else None
            if bid is not None and price is None:
                report.invalid_bids += 1
            if price is None:
                report.no_bids += not is_test
                return
            floor = None if math.isnan(floors[i]) else float(floors[i])
            result = run_auction(price, float(draws.competing[i]), floor, spec.auction_type)
            clicked = result.won and bool(draws.click[i] < row["truth_ctr"])
            if not is_test:
                run_id = bid.get("ext", {}).get("run_id") if isinstance(bid.get("ext"), dict) else None
                arm = report.arm(str(run_id) if run_id is not None else "(none)")
                arm.requests += 1
                arm.bids += 1
                arm.expected_wins += float(true_win_probability(price, mu[i], sigma[i], floors[i]))
                if result.won:
                    arm.wins += 1
                    arm.spend += result.clearing_price / 1000
                    arm.clicks += clicked
            applicable = [k for k in forge_kinds if k != ("win_for_lost" if result.won else "price_above_bid")]
            forge_kind = None
            if applicable and draws.forge[i] < forged_fraction:
                forge_kind = applicable[min(int(draws.forge_kind[i] * len(applicable)), len(applicable) - 1)]
            steps = notice_steps(
                bid,
                result,
                price,
                clicked,
                late=draws.late[i],
                duplicate=draws.duplicate[i],
                late_fraction=late_fraction,
                late_seconds=float(late_seconds),
                duplicate_fraction=duplicate_fraction,
                forge_kind=forge_kind,
                tally=report.notices,
            )
            await exchange.play(steps)

        finished = 0

        async def worker() -> None:
            nonlocal finished
            for i in next_index:  # shared iterator: each index is taken by exactly one worker
                wait = started + i / qps - time.monotonic() if qps else 0.0
                # sleep(0) at least: a transport that never suspends (in-process ASGI) would
                # otherwise keep the late notices' timers from ever running until the end
                await asyncio.sleep(max(wait, 0.0))
                await one(i)
                finished += 1
                if on_progress is not None:
                    on_progress(finished, requests)

        await asyncio.gather(*(worker() for _ in range(min(concurrency, requests))))
        await exchange.drain()
        report.seconds = time.monotonic() - started
    return report


@contextlib.asynccontextmanager
async def _http_client(transport: httpx.AsyncBaseTransport | None, concurrency: int, timeout_seconds: float):
    """httpx over ``transport`` when one is given (tests), else aiohttp over the network; both keep
    twice ``concurrency`` connections alive (bid requests and notices) and ignore proxy settings."""
    if transport is not None:
        limits = httpx.Limits(max_connections=2 * concurrency, max_keepalive_connections=2 * concurrency)
        async with httpx.AsyncClient(transport=transport, timeout=timeout_seconds, limits=limits, trust_env=False) as c:
            yield _HttpxClient(c)
        return
    import aiohttp

    connector = aiohttp.TCPConnector(limit=2 * concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_seconds)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as session:
        yield _AiohttpClient(session)


def simulate_exchange(spec: MarketSpec, url: str, requests: int, **options) -> ExchangeReport:
    """Play an exchange against the bidder at ``url`` (its ``POST /openrtb2/{entity}`` route):
    ``requests`` requests of ``spec``'s market, auctions, notices with faults; see the module
    docstring and ``simulate_exchange_async`` for the options. Stops by itself once every request
    is answered (or failed) and every late notice sent. Not inside a running event loop (use
    ``simulate_exchange_async`` there)."""
    return asyncio.run(simulate_exchange_async(spec, url, requests, **options))

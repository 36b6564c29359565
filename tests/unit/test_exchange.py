"""The exchange simulator (``bidopt.exchange``): requests the bidder's readers read back exactly,
the auction rules, and whole runs against an in-process fake bidder (ASGI through
``httpx.ASGITransport``; one CLI run against it under uvicorn on a loopback port)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import threading
import time
from collections import Counter

import httpx
import orjson
import pytest
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bidopt.bidder.core import parse_request, user_key
from bidopt.bidder.fields import feature_reader, request_domain
from bidopt.cli import exchange as exchange_cli
from bidopt.db.seed import ADX_MACROS
from bidopt.errors import InvalidConfig
from bidopt.exchange import (
    FORGE_KINDS,
    LOSS_BELOW_FLOOR,
    LOSS_LOST_TO_HIGHER_BID,
    USER_AGENT,
    NoticeTally,
    build_bid_request,
    forge_signature,
    forged_notice,
    format_price,
    notice_steps,
    run_auction,
    simulate_exchange,
    simulate_exchange_async,
    substitute_macros,
    wilson_interval,
)
from bidopt.simulator import MarketSpec, sample_requests
from bidopt.warehouse.contract import floor_bucket_label

FEATURES = ("geo_region_name", "os_code", "browser_code", "device_type", "domain", "npi_matched")
KEY = b"test-key"


# --- requests the bidder reads back exactly ---------------------------------------------------


def test_requests_read_back_as_the_sampled_feature_values():
    spec = MarketSpec("drugs_hcp", seed=7, floor_available=True, npi_enabled=True)
    sample = sample_requests(spec, 20_000, seed=3)
    readers = {f: feature_reader(f, ADX_MACROS[f][1]) for f in FEATURES}
    floor_reader = feature_reader("floor_bucket", None)
    seen_agents, seen_devices, floors = set(), set(), 0
    for i, row in enumerate(sample.to_pylist()):
        req = build_bid_request(row, f"r{i}", auction_type="second_price", tmax_ms=300)
        req = parse_request(orjson.dumps(req))  # the bidder takes it as a valid request
        imp = req["imp"][0]
        for feature, read in readers.items():
            expected = str(row[feature]).lower() if feature == "npi_matched" else row[feature]
            assert read(req, imp) == expected, (feature, row, req)
        assert floor_reader(req, imp) == floor_bucket_label(row["floor_cpm"])
        assert request_domain(req) == row["domain"] and user_key(req) == row["user_id"]
        assert req["at"] == 2 and req["tmax"] == 300 and "test" not in req
        region = req["device"]["geo"]["region"]
        assert len(region) == 2 and region.isupper()  # an ISO 3166-2 code, not the name
        floors += row["floor_cpm"] is not None
        seen_agents.add((row["os_code"], row["browser_code"]))
        seen_devices.add(row["device_type"])
    assert seen_agents == set(USER_AGENT) and seen_devices == {"mobile", "desktop", "tablet", "ctv"}
    assert 0.7 < floors / sample.num_rows < 0.8  # three in four carry a floor, as in the logs
    assert build_bid_request(row, "t", test=True)["test"] == 1


def test_sample_requests_is_the_logs_market_and_reproducible():
    spec = MarketSpec("e", seed=7)
    a, b = sample_requests(spec, 3000, seed=1), sample_requests(spec, 3000, seed=1)
    assert a.equals(b) and not a.equals(sample_requests(spec, 3000, seed=2))
    assert "floor_cpm" in a.column_names and a["floor_cpm"].null_count == 3000  # no floors in this market
    users = Counter(a["user_id"].to_pylist())
    assert len(users) <= 750 and max(users.values()) < 20  # users come back, none dominates
    with pytest.raises(InvalidConfig):
        sample_requests(spec, 0)


# --- auction rules ------------------------------------------------------------------------------


def test_first_price_charges_our_price_and_second_price_the_competition():
    fp = run_auction(2.0, 1.5, None, "first_price")
    assert fp.won and fp.clearing_price == 2.0 and fp.min_to_win == 1.5 and fp.loss_reason is None
    sp = run_auction(2.0, 1.5, None, "second_price")
    assert sp.won and sp.clearing_price == 1.5
    sp_floor = run_auction(2.0, 1.5, 1.8, "second_price")  # the floor is above the competition
    assert sp_floor.clearing_price == 1.8 and sp_floor.min_to_win == 1.8


def test_floors_ties_and_rounding():
    below = run_auction(1.0, 0.2, 1.5, "first_price")
    assert not below.won and below.loss_reason == LOSS_BELOW_FLOOR and below.min_to_win == 1.5
    assert run_auction(1.5, 0.2, 1.5, "first_price").won  # at the floor clears it
    tie = run_auction(1.5, 1.5, None, "second_price")
    assert not tie.won and tie.loss_reason == LOSS_LOST_TO_HIGHER_BID
    assert not run_auction(1.0, 3.0, 0.5, "first_price").won
    close = run_auction(2.0, 1.99999999, None, "second_price")  # rounding never charges above our price
    assert close.won and close.clearing_price <= 2.0
    assert run_auction(2.0, 1.0, float("nan"), "first_price").won  # NaN floor: none
    with pytest.raises(InvalidConfig):
        run_auction(2.0, 1.0, None, "vickrey")


def test_macros_prices_and_forged_signatures():
    url = "http://b/n/win?r=1&sig=abc123&p=${AUCTION_PRICE}&m=%24%7BAUCTION_MIN_TO_WIN%7D"
    out = substitute_macros(url, {"AUCTION_PRICE": "1.5", "AUCTION_MIN_TO_WIN": "0.25"})
    assert out == "http://b/n/win?r=1&sig=abc123&p=1.5&m=0.25"
    assert [format_price(x) for x in (1.25, 1e-6, 2.0, 0.0, 1e20)] == [
        "1.25",
        "0.000001",
        "2",
        "0",
        "100000000000000000000",
    ]
    assert forge_signature(out) == "http://b/n/win?r=1&sig=bbc123&p=1.5&m=0.25"
    forged = [forge_signature(f"http://b/n?sig={v}x") for v in ("f", "9", "F", "z", "-")]
    assert forged == [f"http://b/n?sig={v}x" for v in ("0", "a", "0", "g", "A")]
    assert forge_signature("http://b/n?sig=&r=1") == "http://b/n?sig=A&r=1"
    assert forge_signature("http://b/n?r=1") == "http://b/n?r=1&sig=forged"
    assert forge_signature("http://b/n?xsig=1&sig=2") == "http://b/n?xsig=1&sig=3"  # only the sig parameter
    assert wilson_interval(0, 0) == {"value": None, "low": None, "high": None}
    ci = wilson_interval(40, 100)
    assert ci["value"] == 0.4 and 0.30 < ci["low"] < 0.31 and 0.49 < ci["high"] < 0.50


# --- a fake bidder ------------------------------------------------------------------------------


class FakeBidder:
    """Bids a fixed price per arm (A: 2.0, B: 4.0 CPM; the arm by a hash of user.id) where the price
    clears the floor; signed notice URLs like the real bidder's in spirit; notices answer 204
    (accepted), 403 (bad signature), 400 (malformed or a price above the bid), 409 (a replay, or a
    win after a loss of the same impression)."""

    PRICES = {"A": 2.0, "B": 4.0}

    def __init__(self) -> None:
        self.bid_times: dict[str, float] = {}
        self.tests: set[str] = set()
        self.requests = 0
        self.accepted: dict[tuple[str, str], dict] = {}  # (request id, kind) -> notice
        self.answers: Counter = Counter()
        self.app = Starlette(
            routes=[
                Route("/openrtb2/{entity}", self.bid, methods=["POST"]),
                Route("/n/{kind}", self.notice, methods=["GET"]),
            ]
        )

    @staticmethod
    def sign(kind: str, rid: str, run: str, price: str) -> str:
        return hmac.new(KEY, f"{kind}|{rid}|{run}|{price}".encode(), hashlib.sha256).hexdigest()

    async def bid(self, request: Request) -> Response:
        req = orjson.loads(await request.body())
        self.requests += 1
        rid, imp = req["id"], req["imp"][0]
        if req.get("test") == 1:
            self.tests.add(rid)
        run = "A" if int(hashlib.md5(req["user"]["id"].encode()).hexdigest(), 16) % 2 else "B"
        price = self.PRICES[run]
        if imp.get("bidfloor", 0) > price:
            return Response(status_code=204)
        self.bid_times[rid] = time.monotonic()
        base = str(request.base_url).rstrip("/")

        def url(kind: str, macros: str) -> str:
            return f"{base}/n/{kind}?r={rid}&u={run}&b={price}&sig={self.sign(kind, rid, run, str(price))}{macros}"

        bid = {
            "id": "b1",
            "impid": imp["id"],
            "price": price,
            "nurl": url("win", "&p=${AUCTION_PRICE}&m=${AUCTION_MIN_TO_WIN}"),
            "lurl": url("loss", "&l=${AUCTION_LOSS}&m=${AUCTION_MIN_TO_WIN}"),
            "burl": url("billing", "&p=${AUCTION_PRICE}"),
            "ext": {"run_id": run, "click_url": url("click", "")},
        }
        return Response(orjson.dumps({"id": rid, "seatbid": [{"bid": [bid]}]}), media_type="application/json")

    async def notice(self, request: Request) -> Response:
        kind, q = request.path_params["kind"], request.query_params
        status = self._judge(kind, q)
        self.answers[(kind, status)] += 1
        return Response(status_code=status)

    def _judge(self, kind: str, q) -> int:
        rid, run, bid = q.get("r", ""), q.get("u", ""), q.get("b", "")
        if not hmac.compare_digest(q.get("sig", ""), self.sign(kind, rid, run, bid)):
            return 403
        price = q.get("p")
        if kind in ("win", "billing"):
            if price is None or "$" in price or float(price) > float(bid):
                return 400
        if (rid, kind) in self.accepted or (kind == "win" and (rid, "loss") in self.accepted):
            return 409
        self.accepted[(rid, kind)] = {
            "run": run,
            "price": None if price is None else float(price),
            "loss": q.get("l"),
            "min_to_win": q.get("m"),
            "after": time.monotonic() - self.bid_times[rid],
            "test": rid in self.tests,
            "at": time.monotonic(),
        }
        return 204


def _accepted(fake: FakeBidder, kind: str, run: str | None = None, test: bool = False) -> list[dict]:
    return [n for (_, k), n in fake.accepted.items() if k == kind and n["test"] == test and run in (None, n["run"])]


@pytest.fixture
def fake():
    return FakeBidder()


def _run(fake: FakeBidder, spec: MarketSpec, n: int, **options):
    transport = httpx.ASGITransport(app=fake.app)
    return asyncio.run(
        simulate_exchange_async(spec, "http://bidder/openrtb2/e", n, transport=transport, seed=5, **options)
    )


def test_a_run_against_a_bidder_counts_what_the_bidder_was_told(fake):
    spec = MarketSpec("e", seed=7, auction_type="second_price", floor_available=True)
    started = time.monotonic()
    report = _run(
        fake,
        spec,
        2500,
        qps=1500,
        concurrency=8,
        late_fraction=0.05,
        late_seconds=0.4,
        duplicate_fraction=0.05,
        forged_fraction=0.06,
        test_fraction=0.05,
    )
    r = report.as_dict()
    assert r["requests"] == fake.requests == 2500 and r["answers"].keys() <= {"200", "204"}
    assert r["test_requests"] == len(fake.tests) and 100 < len(fake.tests) < 200
    arms = {a["run_id"]: a for a in r["arms"]}
    assert set(arms) == {"A", "B"}
    no_bid = r["answers"].get("204", 0)
    assert no_bid > 0 and r["no_bids"] <= no_bid  # floors above A's price (test requests: not counted)
    for run, arm in arms.items():
        wins, losses = _accepted(fake, "win", run), _accepted(fake, "loss", run)
        assert arm["wins"] == len(wins) == len(_accepted(fake, "billing", run)) > 100
        assert arm["bids"] == arm["requests"] == len(wins) + len(losses)
        assert arm["clicks"] == len(_accepted(fake, "click", run))
        assert arm["spend"] == pytest.approx(sum(n["price"] for n in wins) / 1000)
        assert all(n["price"] <= FakeBidder.PRICES[run] for n in wins)  # second price: never above the bid
        assert all(float(n["min_to_win"]) == n["price"] for n in wins)
        assert {n["loss"] for n in losses} == {str(LOSS_LOST_TO_HIGHER_BID)}
        wr = arm["win_rate"]
        assert wr["low"] <= wr["value"] <= wr["high"]
        # the auctions follow the market's truth: the true win probability lies within the interval
        assert wr["low"] - 0.02 <= arm["true_win_probability"] <= wr["high"] + 0.02
    assert arms["B"]["win_rate"]["low"] > arms["A"]["win_rate"]["high"]  # the higher price wins more

    notices = r["notices"]
    genuine = sum(notices["sent"].values())
    assert all(set(a) == {"204"} for a in notices["answers"].values())  # every genuine notice accepted once
    assert genuine == len(fake.accepted)
    # duplicates: about 5% of the genuine notices, all answered as replays
    assert 0.03 * genuine < notices["duplicates"]["sent"] < 0.07 * genuine
    assert notices["duplicates"]["answers"] == {"409": notices["duplicates"]["sent"]}
    # forged: about 6% of the bids, every kind, all rejected, none counted above
    bids = sum(a["bids"] for a in arms.values())  # test requests' bids get forgeries too: ~5% more
    forged = notices["forged"]
    assert 0.03 * bids < forged["sent"] < 0.1 * bids and forged["rejected_4xx"] == forged["sent"]
    assert set(forged["by_kind"]) == set(FORGE_KINDS)
    assert forged["by_kind"]["bad_signature"]["answers"] == {"403": forged["by_kind"]["bad_signature"]["sent"]}
    assert forged["by_kind"]["price_above_bid"]["answers"] == {"400": forged["by_kind"]["price_above_bid"]["sent"]}
    assert forged["by_kind"]["win_for_lost"]["answers"] == {"409": forged["by_kind"]["win_for_lost"]["sent"]}
    # late: about 5% of genuine notices, accepted after their delay, while requests were still going out
    late = notices["late"]
    assert 0.03 * genuine < late["sent"] < 0.07 * genuine and late["answers"] == {"204": late["sent"]}
    assert late["max_delay_seconds"] >= 0.4
    delayed = [n for n in fake.accepted.values() if n["after"] >= 0.4]
    assert len(delayed) >= late["sent"]  # the late ones, and the notices of their impressions after them
    last_request = max(fake.bid_times.values())
    assert any(n["at"] < last_request for n in delayed)  # other traffic went on meanwhile
    assert report.seconds < time.monotonic() - started + 0.01
    # test requests got their notices but are in no count
    assert _accepted(fake, "win", test=True) or _accepted(fake, "loss", test=True)
    assert sum(a["requests"] for a in arms.values()) + r["no_bids"] == 2500 - r["test_requests"]


def test_first_price_and_the_same_seed_gives_the_same_auctions(fake):
    spec = MarketSpec("e", seed=7)
    a = _run(fake, spec, 400, concurrency=1).as_dict()
    b = _run(FakeBidder(), spec, 400, concurrency=16).as_dict()
    for arm_a, arm_b in zip(a["arms"], b["arms"]):
        assert {k: v for k, v in arm_a.items()} == {k: v for k, v in arm_b.items()}
    wins = _accepted(fake, "win", "A")
    assert wins and all(n["price"] == 2.0 for n in wins)  # first price: our bid
    assert a["notices"]["duplicates"]["sent"] == a["notices"]["forged"]["sent"] == a["notices"]["late"]["sent"] == 0


def test_faults_are_counted_and_never_crash(fake):
    calls = Counter()

    def handler(request: httpx.Request) -> httpx.Response:
        calls[request.url.path] += 1
        n = calls[request.url.path]
        if n % 5 == 1:
            raise httpx.ConnectError("refused", request=request)
        if n % 5 == 2:
            return httpx.Response(500, json={"error": "boom"})
        if n % 5 == 3:
            return httpx.Response(200, content=b"not json")
        if n % 5 == 4:  # a bid with a price that is no price, and one whose URLs point elsewhere
            return httpx.Response(200, json={"seatbid": [{"bid": [{"impid": "1", "price": "NaN"}]}]})
        bid = {"impid": "1", "price": 1e9, "nurl": "http://elsewhere/win", "burl": "http://elsewhere/b"}
        return httpx.Response(200, json={"seatbid": [{"bid": [bid]}]})

    report = asyncio.run(
        simulate_exchange_async(
            MarketSpec("e"), "http://bidder/openrtb2/e", 50, transport=httpx.MockTransport(handler), concurrency=1
        )
    ).as_dict()
    assert report["answers"] == {"transport_error": 10, "500": 10, "200": 30}
    assert report["invalid_bids"] == 20 and report["no_bids"] == 40
    assert report["arms"][0]["run_id"] == "(none)" and report["arms"][0]["wins"] == 10
    assert report["notices"]["other_host"] == {"win": 10, "billing": 10} and report["notices"]["sent"] == {}
    assert set(calls) == {"/openrtb2/e"}  # nothing was called on another host


@pytest.mark.parametrize(
    "options",
    [
        {"late_fraction": float("nan")},
        {"duplicate_fraction": 1e400},
        {"forged_fraction": -0.1},
        {"test_fraction": 1.5},
        {"late_seconds": float("inf")},
        {"qps": 0},
        {"qps": float("nan")},
        {"concurrency": 0},
        {"tmax_ms": 0},
        {"forge_kinds": ["bogus"]},
        {"requests": 0},
        {"requests": 10**400},
        {"url": "ftp://bidder/x"},
        {"url": "http:///nohost"},
        {"url": "http://bidder:99999/x"},
    ],
)
def test_bad_options_are_refused_before_anything_is_sent(options):
    calls = []
    transport = httpx.MockTransport(lambda request: calls.append(request) or httpx.Response(204))
    url = options.pop("url", "http://bidder/openrtb2/e")
    n = options.pop("requests", 10)
    with pytest.raises(InvalidConfig):
        simulate_exchange(MarketSpec("e"), url, n, transport=transport, **options)
    assert calls == []


def test_cli_forge_kinds_match_the_library():
    assert exchange_cli.FORGE_KINDS == FORGE_KINDS
    assert exchange_cli.bid_url(None, "e") == "http://127.0.0.1:8000/openrtb2/e"
    assert exchange_cli.bid_url("http://h:1/", "e") == "http://h:1/openrtb2/e"
    assert exchange_cli.bid_url("http://h:1/x/y", "e") == "http://h:1/x/y"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_simulate_against_a_bidder_on_loopback(fake):
    import uvicorn

    from bidopt.cli.main import cli

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(fake.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        args = ["exchange", "simulate", "drugs_hcp", "--url", url, "--requests", "200", "--late-seconds", "0.2"]
        out = CliRunner().invoke(cli, [*args, "--json", "--forged-fraction", "0.2"])
        assert out.exit_code == 0, out.output
        report = json.loads(out.stdout)
        assert report["url"] == f"{url}/openrtb2/drugs_hcp" and report["requests"] == 200
        assert sum(a["wins"] for a in report["arms"]) == len(_accepted(fake, "win"))
        assert report["notices"]["forged"]["rejected_4xx"] == report["notices"]["forged"]["sent"] > 10
        text = CliRunner().invoke(cli, [*args, "--seed", "2"])
        assert text.exit_code == 0, text.output
        for needle in ("RUN_ID", "WIN_RATE", "notices sent: billing", "duplicates:", "forged:", "late:"):
            assert needle in text.stdout
        bad = CliRunner().invoke(cli, [*args, "--late-fraction", "nan"])
        assert bad.exit_code == 1 and "late fraction must be a fraction" in bad.output
        assert fake.requests == 400  # the refused run sent nothing
    finally:
        server.should_exit = True
        thread.join(10)


def test_notices_the_exchange_fills_in_pass_the_bidders_own_verification():
    """The bidder's real signer and verifier (``bidopt.notices``): every genuine notice the exchange
    builds is accepted with the prices it meant, and each forgery is refused for the right reason."""
    from urllib.parse import parse_qsl, urlsplit

    from bidopt.notices import Limits, NoticeRejected, NoticeSigner, verify_notice

    signer = NoticeSigner(b"k" * 32)
    now = time.time()
    urls = signer.urls("http://bidder", "e", "req-1", "1", "run_a", 3, 2.5, int(now * 1000), False)
    bid = {"impid": "1", "price": 2.5, **{k: v for k, v in urls.items() if k != "click_url"}}
    bid["ext"] = {"run_id": "run_a", "click_url": urls["click_url"]}

    def verify(url: str) -> dict:
        parts = urlsplit(url)
        kind = parts.path.split("/")[-2]
        return verify_notice(b"k" * 32, kind, "e", parse_qsl(parts.query), now=now + 1, limits=Limits(3600))

    won, lost = run_auction(2.5, 1.2345678, 1.0, "second_price"), run_auction(2.5, 3.0, None, "second_price")
    never = [1.0, 1.0, 1.0]  # no notice late or duplicated
    for result, clicked, expected in ((won, True, ["win", "billing", "click"]), (lost, False, ["loss"])):
        steps = notice_steps(
            bid,
            result,
            2.5,
            clicked,
            late=never,
            duplicate=never,
            late_fraction=0,
            late_seconds=0,
            duplicate_fraction=0,
            forge_kind=None,
            tally=NoticeTally(),
        )
        rows = [verify(step.url) for step in steps]
        assert [r["kind"] for r in rows] == expected
        if result.won:
            assert rows[0]["price_cpm"] == rows[1]["price_cpm"] == 1.234568 and rows[0]["min_to_win_cpm"] == 1.234568
        else:
            assert rows[0]["loss_reason"] == 102 and rows[0]["min_to_win_cpm"] == 3.0
    forged = {
        "bad_signature": forged_notice(bid, "bad_signature", won, 2.5),
        "price_above_bid": forged_notice(bid, "price_above_bid", won, 2.5),
        "win_for_lost": forged_notice(bid, "win_for_lost", lost, 2.5),
    }
    reasons = {}
    for kind, step in forged.items():
        try:
            verify(step.url)
            reasons[kind] = "accepted"
        except NoticeRejected as exc:
            reasons[kind] = exc.reason
    # a win for an impression that lost carries a genuine signature: only state (its loss) can refuse it
    assert reasons == {"bad_signature": "bad_signature", "price_above_bid": "malformed", "win_for_lost": "accepted"}


def test_a_run_against_the_real_bidder_core():
    """The bidder's own decision path and notice routes (``http_handler`` of a ``BidderCore`` with two
    runs loaded by hand: no database, no Ray) agree with what the exchange counted."""
    from starlette.requests import Request

    from bidopt.bidder.app import BidderCore, http_handler
    from bidopt.bidder.core import BidderState, EntityServing, RunTables
    from bidopt.bidder.fields import feature_reader

    def run(run_id: str, price: float) -> RunTables:
        geo = feature_reader("geo_region_name", "device.geo.region")
        return RunTables(run_id, ("geo_region_name",), (geo,), {"*": price}, {}, 20.0, "sha")

    core = BidderCore(start=False)
    core.refresher.state = BidderState({"e": EntityServing("e", 7, (run("ra", 2.0), run("rb", 4.0)), (50, 50))})

    async def app(scope, receive, send):
        response = await http_handler(core, Request(scope, receive))
        await response(scope, receive, send)

    try:
        report = asyncio.run(
            simulate_exchange_async(
                MarketSpec("e", seed=7, auction_type="second_price"),
                "http://bidder/openrtb2/e",
                800,
                transport=httpx.ASGITransport(app=app),
                duplicate_fraction=0.05,
                forged_fraction=0.1,
                late_fraction=0.05,
                late_seconds=0.2,
            )
        ).as_dict()
        counters = core.counters()
    finally:
        core.close()
    notices = report["notices"]
    assert report["answers"] == {"200": 800} and {a["run_id"] for a in report["arms"]} == {"ra", "rb"}
    assert all(set(answers) == {"200"} for answers in notices["answers"].values())
    forged = notices["forged"]["by_kind"]
    accepted_forgeries = forged.get("win_for_lost", {}).get("answers", {}).get("200", 0)
    assert counters["accepted"]["win"] == notices["sent"]["win"] + accepted_forgeries
    for kind in ("billing", "loss", "click"):
        assert counters["accepted"].get(kind, 0) == notices["sent"].get(kind, 0)
    assert counters["rejected"]["duplicate"] == notices["duplicates"]["sent"] == notices["duplicates"]["answers"]["409"]
    assert forged["bad_signature"]["answers"] == {"403": counters["rejected"]["bad_signature"]}
    assert forged["price_above_bid"]["answers"] == {"400": counters["rejected"]["malformed"]}
    assert sum(a["wins"] for a in report["arms"]) == notices["sent"]["win"]

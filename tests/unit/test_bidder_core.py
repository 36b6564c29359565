"""The bidder's decision path, pure: validation, keys from macros, fallbacks, A/B split."""

import dataclasses
import json
import time
from collections import Counter

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bidopt.bidder.core import BidderState, EntityServing, RunTables, decide, parse_request
from bidopt.bidder.fields import browser_from_ua, feature_reader
from bidopt.events.schema import FLOOR_NO_BID_REASON, INVALID_PRICE_REASON

FEATURES = (("geo_region_name", "device.geo.region"), ("os_code", "device.os"), ("npi_matched", "user.ext.npi_matched"))


def tables(run_id="r1", bids=None, multipliers=None, max_bid=20.0, features=FEATURES):
    return RunTables(
        run_id,
        tuple(f for f, _ in features),
        tuple(feature_reader(f, p) for f, p in features),
        bids or {"california|ios|true": 4.0, "california|*|*": 2.5, "*|*|*": 1.0},
        multipliers or {},
        max_bid,
        "sha",
    )


def state(*runs_and_pcts, split_id=1):
    runs = tuple(r for r, _ in runs_and_pcts) or (tables(),)
    pcts = tuple(p for _, p in runs_and_pcts) or (100,)
    return BidderState({"drugs_hcp": EntityServing("drugs_hcp", split_id, runs, pcts)})


def request(**over):
    req = {
        "id": "req-1",
        "imp": [{"id": "1", "bidfloor": 0.5}],
        "device": {"os": "iOS", "geo": {"region": "CA"}, "ua": "Mozilla/5.0 (iPhone) Safari/604.1"},
        "user": {"id": "u-1", "ext": {"npi_matched": 1}},
        "site": {"domain": "MedNews.com"},
    }
    req.update(over)
    return orjson.dumps(req)


def test_full_key_from_macros_and_response_shape():
    status, body, decisions, _ = decide(state(), "drugs_hcp", request())
    assert status == 200
    resp = json.loads(body)
    assert resp["id"] == "req-1" and resp["cur"] == "USD"
    bid = resp["seatbid"][0]["bid"][0]
    assert (bid["impid"], bid["price"], bid["ext"]["segment_key"], bid["ext"]["level"]) == (
        "1",
        4.0,
        "california|ios|true",
        "segment",
    )
    assert bid["ext"]["run_id"] == "r1" and decisions[0].price == 4.0


def test_fallbacks_multiplier_cap_and_floor():
    # an OS the table has no row for -> the anchor's row; an unknown state -> the default
    req = request(device={"os": "Android", "geo": {"region": "US-CA"}})
    assert json.loads(decide(state(), "drugs_hcp", req)[1])["seatbid"][0]["bid"][0]["ext"]["level"] == "anchor"
    req = request(device={"os": "iOS", "geo": {"region": "ZZ"}})
    bid = json.loads(decide(state(), "drugs_hcp", req)[1])["seatbid"][0]["bid"][0]
    assert (bid["price"], bid["ext"]["segment_key"]) == (1.0, "*|*|*")
    # domain multiplier (domains normalised like the logs), capped at the run's max bid
    s = state((tables(multipliers={"mednews.com": 1.5}, max_bid=5.0), 100))
    assert json.loads(decide(s, "drugs_hcp", request())[1])["seatbid"][0]["bid"][0]["price"] == 5.0
    s = state((tables(multipliers={"mednews.com": 0.5}), 100))
    assert json.loads(decide(s, "drugs_hcp", request())[1])["seatbid"][0]["bid"][0]["price"] == 2.0
    # an impression whose floor is above our price gets no bid; none left -> 204
    status, body, _, reason = decide(state(), "drugs_hcp", request(imp=[{"id": "1", "bidfloor": 9.0}]))
    assert (status, body) == (204, b"") and "floor" in reason
    two = request(imp=[{"id": "a", "bidfloor": 9.0}, {"id": "b", "bidfloor": 0.1}])
    assert [b["impid"] for b in json.loads(decide(state(), "drugs_hcp", two)[1])["seatbid"][0]["bid"]] == ["b"]
    # no split for the entity, or a currency we do not price in -> 204
    assert decide(state(), "auto_intenders", request())[0] == 204
    assert decide(state(), "drugs_hcp", request(cur=["EUR"]))[0] == 204


def test_floor_bucket_feature_reads_the_impression():
    feats = (("geo_region_name", "device.geo.region"), ("floor_bucket", None))
    s = state((tables(bids={"california|1-2": 3.0, "*|*": 1.0}, features=feats), 100))
    req = request(imp=[{"id": "1", "bidfloor": 1.5}, {"id": "2", "bidfloor": 0.2}])
    bids = json.loads(decide(s, "drugs_hcp", req)[1])["seatbid"][0]["bid"]
    assert [(b["impid"], b["ext"]["segment_key"]) for b in bids] == [("1", "california|1-2"), ("2", "*|*")]


@pytest.mark.parametrize(
    "body,message",
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"imp": [{"id": "1"}]}', "id must be"),
        (b'{"id": 7, "imp": [{"id": "1"}]}', "id must be"),
        (b'{"id": "x"}', "imp must be a non-empty array"),
        (b'{"id": "x", "imp": []}', "imp must be a non-empty array"),
        (b'{"id": "x", "imp": ["a"]}', "imp[0] must be an object"),
        (b'{"id": "x", "imp": [{"banner": {}}]}', "imp[0].id"),
        (b'{"id": "x", "imp": [{"id": "1"}, {"id": "1"}]}', "appears twice"),
        (b'{"id": "x", "imp": [{"id": "1", "bidfloor": -1}]}', "bidfloor"),
        (b'{"id": "x", "imp": [{"id": "1", "bidfloor": "1"}]}', "bidfloor"),
        (b'{"id": "x", "imp": [{"id": "1", "bidfloor": NaN}]}', "not JSON"),
        (b'{"id": "x", "imp": [{"id": "1"}], "device": "phone"}', "device must be an object"),
        (b'{"id": "x", "imp": [{"id": "1"}], "device": {"geo": 5}}', "device.geo must be an object"),
        (b'{"id": "x", "imp": [{"id": "1"}], "cur": "USD"}', "cur must be an array"),
        (b'{"id": "x", "imp": [{"id": "1"}], "user": [1]}', "user must be an object"),
    ],
)
def test_malformed_requests_get_400_with_the_reason(body, message):
    status, payload, decisions, reason = decide(state(), "drugs_hcp", body)
    assert status == 400 and message in json.loads(payload)["error"] and decisions == []


def test_oversized_requests_get_413():
    big = request(ext={"pad": "x" * 300_000})
    assert decide(state(), "drugs_hcp", big)[0] == 413


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
            lambda kids: (
                st.lists(kids, max_size=4)
                | st.dictionaries(
                    st.sampled_from(
                        [
                            "id",
                            "imp",
                            "device",
                            "user",
                            "site",
                            "app",
                            "geo",
                            "os",
                            "region",
                            "bidfloor",
                            "ext",
                            "cur",
                            "ua",
                            "domain",
                        ]
                    ),
                    kids,
                    max_size=5,
                )
            ),
            max_leaves=30,
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_any_body_gets_an_answer_never_an_exception(body):
    status, _, _, _ = decide(state(), "drugs_hcp", body)
    assert status in (200, 204, 400, 413)


def test_real_openrtb_examples_are_answered(shared_data):
    files = sorted(
        p for p in (shared_data / "openrtb").glob("*.json") if "req" in p.name.lower() or "request" in p.name.lower()
    )
    assert len(files) >= 15
    for path in files:
        body = path.read_bytes()
        status, payload, decisions, reason = decide(state(), "drugs_hcp", body)
        req = json.loads(body)
        assert status in (200, 204), (path.name, reason)
        if status == 200:
            resp = json.loads(payload)
            assert resp["id"] == req["id"]
            imps = {i["id"]: i for i in req["imp"]}
            for bid in resp["seatbid"][0]["bid"]:
                assert bid["impid"] in imps and bid["price"] >= imps[bid["impid"]].get("bidfloor", 0)
        else:
            assert "floor" in reason or "USD" in reason, (path.name, reason)


def test_ab_split_is_sticky_per_user_and_matches_the_weights():
    s = state((tables("a"), 80), (tables("b"), 20))
    counts = Counter()
    for i in range(20_000):
        body = request(user={"id": f"user-{i}"})
        run = json.loads(decide(s, "drugs_hcp", body)[1])["seatbid"][0]["bid"][0]["ext"]["run_id"]
        counts[run] += 1
        if i < 200:  # the same user again: the same run
            assert json.loads(decide(s, "drugs_hcp", body)[1])["seatbid"][0]["bid"][0]["ext"]["run_id"] == run
    assert abs(counts["a"] / 20_000 - 0.8) < 0.015
    # device.ifa when there is no user id, else the request id
    no_user = request(user=None, device={"ifa": "dev-9", "os": "iOS", "geo": {"region": "CA"}})
    runs = {json.loads(decide(s, "drugs_hcp", no_user)[1])["seatbid"][0]["bid"][0]["ext"]["run_id"] for _ in range(5)}
    assert len(runs) == 1


@pytest.mark.parametrize(
    "ua,family",
    [
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) AppleWebKit/605.1.15 Version/17.0 Mobile/15E148 Safari/604.1",
            "safari",
        ),
        ("Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 Chrome/120.0 Safari/537.36", "chrome"),
        ("Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 Chrome/120.0 Safari/537.36 Edg/120.0", "edge"),
        (
            "Mozilla/5.0 (Linux; Android 13) AppleWebKit/537.36 SamsungBrowser/23.0 Chrome/115.0 Mobile Safari/537.36",
            "samsung",
        ),
        ("Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0", "firefox"),
        (None, "unknown"),
    ],
)
def test_browser_family(ua, family):
    assert browser_from_ua(ua) == family


def test_parse_request_accepts_minimal_valid_and_null_objects():
    assert parse_request(b'{"id": "x", "imp": [{"id": "1"}]}')["id"] == "x"
    body = b'{"id": "x", "imp": [{"id": "1"}], "device": null, "user": null, "site": null}'
    assert decide(state(), "drugs_hcp", body)[0] == 200  # the default row


def _price(status_body):
    status, body = status_body[0], status_body[1]
    assert status == 200, status_body[3]
    return json.loads(body)["seatbid"][0]["bid"][0]["price"]


def test_quoted_price_never_exceeds_the_cap_after_rounding():
    # round(min(4.0, 2.00006), 4) quoted 2.0001, above the run's max_bid_cpm
    assert _price(decide(state((tables(max_bid=2.00006), 100)), "drugs_hcp", request())) == 2.0
    s = state((tables(multipliers={"mednews.com": 1.00003}, bids={"*|*|*": 2.0}, max_bid=2.00006), 100))
    assert _price(decide(s, "drugs_hcp", request())) == 2.0
    for cap in (0.00015, 1.23456, 2.00005, 9.99999):
        assert _price(decide(state((tables(max_bid=cap), 100)), "drugs_hcp", request(imp=[{"id": "1"}]))) <= cap


def test_a_multiplier_never_pushes_a_clearing_bid_under_the_floor_nor_under_min_bid():
    halved = tables(multipliers={"mednews.com": 0.5})  # the segment's bid is 4.0, halved to 2.0
    assert _price(decide(state((halved, 100)), "drugs_hcp", request(imp=[{"id": "1", "bidfloor": 3.0}]))) == 3.0
    odd_floor = request(imp=[{"id": "1", "bidfloor": 3.00001}])
    assert _price(decide(state((halved, 100)), "drugs_hcp", odd_floor)) == 3.0001  # the floor, rounded up
    # a base bid that does not clear the floor is still no bid
    assert decide(state((halved, 100)), "drugs_hcp", request(imp=[{"id": "1", "bidfloor": 4.5}]))[0] == 204
    # never below the run's min_bid_cpm (rounded up to the quoted decimals)
    with_min = dataclasses.replace(halved, min_bid_cpm=2.50001)
    assert _price(decide(state((with_min, 100)), "drugs_hcp", request())) == 2.5001
    # the cap wins over the minimum and over the floor
    capped = dataclasses.replace(halved, min_bid_cpm=2.5, max_bid_cpm=2.2)
    assert _price(decide(state((capped, 100)), "drugs_hcp", request())) == 2.2
    assert decide(state((capped, 100)), "drugs_hcp", request(imp=[{"id": "1", "bidfloor": 3.0}]))[0] == 204


def test_null_means_absent_and_currency_codes_ignore_case():
    for over in (
        {"imp": [{"id": "1", "bidfloor": None}]},
        {"imp": [{"id": "1", "bidfloorcur": None}]},
        {"cur": None},
        {"imp": [{"id": "1", "bidfloorcur": "usd"}]},
        {"cur": ["eur", "uSd"]},
        {"at": None, "tmax": None},
    ):
        assert _price(decide(state(), "drugs_hcp", request(**over))) == 4.0, over
    # duplicated keys: the last one counts, for validation and pricing alike
    dup = b'{"id": "x", "imp": [{"id": "1", "bidfloor": 99, "bidfloor": null}]}'
    assert decide(state(), "drugs_hcp", dup)[0] == 200
    # letters of other scripts never pass for USD: the long s upper-cases to S, full-width letters
    for code in ("u\u017fd", "\uff35\uff33\uff24", "EUR", "USD "):
        assert decide(state(), "drugs_hcp", request(imp=[{"id": "1", "bidfloorcur": code}]))[0] == 204, code
        assert decide(state(), "drugs_hcp", request(cur=[code]))[0] == 204, code


@pytest.mark.parametrize(
    "over,message",
    [
        ({"at": 0}, "at must be"),
        ({"at": 3}, "at must be"),
        ({"at": 500}, "at must be"),
        ({"at": "1"}, "at must be"),
        ({"at": 1.5}, "at must be"),
        ({"at": True}, "at must be"),
        ({"tmax": 0}, "tmax must be"),
        ({"tmax": -100}, "tmax must be"),
        ({"tmax": "120"}, "tmax must be"),
        ({"tmax": 120.5}, "tmax must be"),
        ({"tmax": False}, "tmax must be"),
        ({"imp": [{"id": "1", "bidfloor": -0.01}]}, "bidfloor"),
        ({"imp": [{"id": "1", "bidfloor": [1]}]}, "bidfloor"),
        ({"imp": [{"id": "1", "bidfloorcur": 840}]}, "bidfloorcur"),
        ({"cur": ["USD", None]}, "cur must be"),
        ({"imp": [{"id": str(i)} for i in range(101)]}, "at most 100 impressions"),
    ],
)
def test_auction_type_tmax_and_floors_are_validated(over, message):
    status, payload, decisions, reason = decide(state(), "drugs_hcp", request(**over))
    assert status == 400 and message in json.loads(payload)["error"] and decisions == []


def test_valid_auction_types_huge_floors_and_a_hundred_impressions():
    for at in (1, 2, 501):
        assert decide(state(), "drugs_hcp", request(at=at))[0] == 200
    # a finite floor of any size is a price we do not reach: no bid, not bad input
    for floor in (1e300, 18446744073709551615, 1e6 + 1):
        status, _, decisions, reason = decide(state(), "drugs_hcp", request(imp=[{"id": "1", "bidfloor": floor}]))
        assert (status, [d.price for d in decisions]) == (204, [None]) and "floor" in reason
    hundred = request(imp=[{"id": str(i), "bidfloor": 0.5} for i in range(100)])
    assert len(json.loads(decide(state(), "drugs_hcp", hundred)[1])["seatbid"][0]["bid"]) == 100


def test_no_bid_once_tmax_has_passed():
    arrived_a_second_ago = time.monotonic() - 1.0
    status, body, decisions, reason = decide(state(), "drugs_hcp", request(tmax=500), arrived_a_second_ago)
    assert (status, body, reason) == (204, b"", "tmax passed")
    assert [(d.price, d.reason, d.segment_key) for d in decisions] == [(None, "tmax passed", "california|ios|true")]
    # a floored sibling of a late bid stays a floor no-bid, with the price it would have bid: it lost
    # on time or late alike, as a late request whose every impression is floored does (answered 204
    # before the deadline is looked at), so both count it as a loss on the target's basis
    two = request(tmax=500, imp=[{"id": "1"}, {"id": "2", "bidfloor": 1e6}])
    late = decide(state(), "drugs_hcp", two, arrived_a_second_ago)[2]
    assert [(d.impid, d.price, d.reason, d.unfloored) for d in late] == [
        ("1", None, "tmax passed", None),
        ("2", None, FLOOR_NO_BID_REASON, 4.0),
    ]
    alone = decide(state(), "drugs_hcp", request(tmax=500, imp=[{"id": "2", "bidfloor": 1e6}]), arrived_a_second_ago)
    assert [(d.reason, d.unfloored) for d in alone[2]] == [(FLOOR_NO_BID_REASON, 4.0)]
    assert decide(state(), "drugs_hcp", request(tmax=3_600_000), arrived_a_second_ago)[0] == 200
    assert decide(state(), "drugs_hcp", request(), arrived_a_second_ago)[0] == 200  # no tmax, no deadline
    assert decide(state(), "drugs_hcp", request(tmax=3_600_000))[0] == 200  # arrival defaults to now


def test_ab_split_hash_is_salted_per_split_and_sticky_within_it():
    runs, users = (tables("a"), tables("b")), [f"user-{i}" for i in range(4000)]
    first_arm = []
    for split_id in (1, 2):
        serving = EntityServing("drugs_hcp", split_id, runs, (50, 50))
        arm = {u for u in users if serving.choose(u).run_id == "a"}
        assert abs(len(arm) / len(users) - 0.5) < 0.05
        assert all(serving.choose(u).run_id == "a" for u in list(arm)[:300])  # the same user, the same run
        first_arm.append(arm)
    # unsalted, both experiments put exactly the same users first; salted, about half of them
    shared = len(first_arm[0] & first_arm[1]) / len(first_arm[0])
    assert 0.4 < shared < 0.6


def test_a_nan_bid_or_multiplier_is_no_bid_never_a_null_price():
    nan = float("nan")
    for run in (tables(bids={"*|*|*": nan}), tables(multipliers={"mednews.com": nan})):
        status, body, decisions, reason = decide(state((run, 100)), "drugs_hcp", request())
        assert (status, body, [d.price for d in decisions]) == (204, b"", [None])
        # not the floor's doing (there is none), so not a loss on the target's basis (bidopt.readout)
        assert [d.reason for d in decisions] == [INVALID_PRICE_REASON] and reason == INVALID_PRICE_REASON


def test_a_floor_no_bid_records_the_price_the_run_would_have_bid():
    """Compaction logs it as a bid lost to its floor (bidopt.events.compact), so it must be the price
    the bidder would have sent without the floor: the table's, times the multiplier, within the cap."""
    capped = state((tables(bids={"california|ios|true": 40.0}, multipliers={"mednews.com": 0.5}, max_bid=15.0), 100))
    cases = [(state(), 4.0), (capped, 15.0)]  # 4.0 as in the table; 40 x 0.5 = 20, over the cap of 15
    for serving, unfloored in cases:
        decisions = decide(serving, "drugs_hcp", request(imp=[{"id": "1", "bidfloor": 30.0}]))[2]
        assert [(d.price, d.reason, d.unfloored) for d in decisions] == [(None, FLOOR_NO_BID_REASON, unfloored)]
    placed = decide(state(), "drugs_hcp", request())[2]
    assert [(d.price, d.unfloored) for d in placed] == [(4.0, None)]  # a bid's price is its bid_cpm


def test_a_price_that_rounds_to_nothing_is_no_floor_no_bid():
    # min_bid_cpm 0 (the default of a RunTables): 0.00001 rounds to 0, which quote never bids, floor or not
    tiny = state((tables(bids={"california|ios|true": 0.00001}), 100))
    for floor in (0, 0.5):
        decisions = decide(tiny, "drugs_hcp", request(imp=[{"id": "1", "bidfloor": floor}]))[2]
        assert [(d.price, d.reason, d.unfloored) for d in decisions] == [(None, INVALID_PRICE_REASON, None)]


def test_a_request_not_bid_on_says_why_for_all_its_impressions():
    def reason_of(*imps):
        return decide(state(), "drugs_hcp", request(imp=list(imps)))[3]

    floored, euro = {"id": "1", "bidfloor": 1e6}, {"id": "2", "bidfloorcur": "EUR"}
    assert reason_of(floored, {**floored, "id": "3"}) == "no impression clears its floor"
    assert reason_of(euro) == "currency not USD"  # not a floor: it said so before
    assert reason_of(floored, euro) == f"no impression bid on: currency not USD; {FLOOR_NO_BID_REASON}"


def test_region_codes_are_ascii_state_codes_only():
    read = feature_reader("geo_region_name", "device.geo.region")
    assert [read({"device": {"geo": {"region": r}}}, {}) for r in ("sd", " US-SD ", "\u017fd", "")] == [
        "south dakota",
        "south dakota",
        "\u017fd",
        "unknown",
    ]

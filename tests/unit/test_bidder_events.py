"""The bidder's closed loop without Ray: notice URLs in its answers, the notice routes through its
Starlette handler, decision and notice events written to the events store, the replica's counters."""

import json
import time
from urllib.parse import urlsplit

import orjson
import pytest
from bidder_asgi import call, fire

from bidopt.bidder.app import BidderCore
from bidopt.bidder.core import BidderState, EntityServing, RunTables, decide, source_event_readers
from bidopt.bidder.fields import feature_reader
from bidopt.bidder.notice_key import load_notice_key
from bidopt.events.compact import bid_log_rows
from bidopt.events.schema import DECISIONS, NOTICES
from bidopt.events.store import open_event_store
from bidopt.settings import get_settings

RUN_FEATURES = (("geo_region_name", "device.geo.region"), ("os_code", "device.os"))
# the supply source's macros: the domain read from app.bundle only, to tell it from the default
SOURCE = (("geo_region_name", "device.geo.metro"), ("domain", "app.bundle"), ("npi_matched", "user.ext.npi"))


def run(run_id, bid=3.0):
    return RunTables(
        run_id,
        tuple(f for f, _ in RUN_FEATURES),
        tuple(feature_reader(f, p) for f, p in RUN_FEATURES),
        {"california|ios": bid, "california|*": 2.0, "*|*": 1.0},
        {},
        20.0,
        "sha",
    )


def serving_state():
    serving = EntityServing("drugs_hcp", 7, (run("r1"), run("r2", 5.0)), (50, 50), SOURCE)
    return BidderState({"drugs_hcp": serving}, known={"auto_intenders": source_event_readers(SOURCE)})


def bid_request(rid="q1", **over):
    req = {
        "id": rid,
        "imp": [{"id": "1", "bidfloor": 0.5}, {"id": "2", "bidfloor": 50.0}],
        "device": {"geo": {"region": "CA", "metro": "807"}, "os": "iOS", "ua": "Mozilla/5.0 Firefox/120.0"},
        "site": {"domain": "News.example"},
        "user": {"id": "user-1", "ext": {"npi": 1}},
    }
    return orjson.dumps(req | over)


@pytest.fixture
def core():
    c = BidderCore(start=False)
    c.refresher.state = serving_state()
    yield c
    c.close()


def events(kind, entity="drugs_hcp"):
    return open_event_store(get_settings().events_url).read(kind, entity).to_pylist()


def bids_of(res):
    assert res.status_code == 200, res.headers.get("x-bidopt-reason")
    return json.loads(res.body)["seatbid"][0]["bid"]


def test_every_bid_carries_signed_notice_urls_under_the_requests_host(core):
    (bid,) = bids_of(call(core, "POST", "/openrtb2/drugs_hcp", bid_request()))
    for field, kind in (("nurl", "win"), ("lurl", "loss"), ("burl", "billing")):
        assert bid[field].startswith(f"http://bidder.test:8000/openrtb2/_notice/{kind}/drugs_hcp?r=q1&i=1&")
    assert bid["ext"]["click_url"].startswith("http://bidder.test:8000/openrtb2/_notice/click/drugs_hcp?")
    # a proxy's X-Forwarded-Proto; a Host header that is not a host makes the URLs relative
    forwarded = (("host", "ads.example.com"), ("x-forwarded-proto", "https"))
    (bid,) = bids_of(call(core, "POST", "/openrtb2/drugs_hcp", bid_request(), headers=forwarded))
    assert bid["nurl"].startswith("https://ads.example.com/openrtb2/_notice/win/")
    (bid,) = bids_of(call(core, "POST", "/openrtb2/drugs_hcp", bid_request(), headers=(("host", "a b/c"),)))
    assert bid["nurl"].startswith("/openrtb2/_notice/win/")


def test_decision_rows_for_bids_and_no_bids_with_the_request_features(core):
    bids_of(call(core, "POST", "/openrtb2/drugs_hcp", bid_request()))
    core.handle("drugs_hcp", bid_request("q2", cur=["EUR"]))  # no bid: currency
    core.handle("auto_intenders", bid_request("q3"))  # known entity without a split
    core.handle("nobody", bid_request("q4"))  # not an entity of ours: no rows
    core.handle("drugs_hcp", b"{")  # malformed: no rows
    core.handle("drugs_hcp", bid_request("q5", test=1))
    assert core.events.flush() == 8
    rows = {(r["request_id"], r["imp_id"]): r for r in events(DECISIONS)}
    assert set(rows) == {("q1", "1"), ("q1", "2"), ("q2", "1"), ("q2", "2"), ("q5", "1"), ("q5", "2")}
    won, floored = rows[("q1", "1")], rows[("q1", "2")]
    assert won["bid"] and won["no_bid_reason"] is None and won["bid_cpm"] in (3.0, 5.0)
    assert (won["split_id"], won["segment_key"], won["level"], won["floor_cpm"]) == (
        7,
        "california|ios",
        "segment",
        0.5,
    )
    assert won["run_id"] == ("r1", "r2")[won["arm"]] and won["test"] is False and won["replica_id"] == core.replica_id
    assert len(won["user_hash"]) == 32 and "user-1" not in won["user_hash"]
    # the run's own readers for its features; the source's macros for the others; else the defaults
    assert (won["geo_region_name"], won["os_code"]) == ("california", "ios")
    assert (won["domain"], won["npi_matched"], won["browser_code"]) == (None, True, "firefox")
    assert (floored["bid"], floored["bid_cpm"], floored["no_bid_reason"]) == (False, None, "no price clears the floor")
    # the price it would have bid without the floor: the same run's bid for the same segment
    assert (floored["unfloored_cpm"], won["unfloored_cpm"]) == (won["bid_cpm"], None)
    # compacted, the floor no-bid is a bid lost to its floor of 50; the no-USD and test requests are no rows
    notices = open_event_store(get_settings().events_url).read(NOTICES, "drugs_hcp")
    decisions = open_event_store(get_settings().events_url).read(DECISIONS, "drugs_hcp")
    hour = min(r["event_time"] for r in rows.values()).replace(minute=0, second=0, microsecond=0)
    logged = {
        r["request_id"] + "/" + str(r["floor_cpm"]): r
        for r in bid_log_rows("drugs_hcp", hour, decisions, notices).table.to_pylist()
    }
    assert sorted(logged) == ["q1/0.5", "q1/50.0"]
    assert (logged["q1/50.0"]["bid_cpm"], logged["q1/50.0"]["won"]) == (won["bid_cpm"], False)
    assert rows[("q2", "1")]["no_bid_reason"] == "request does not accept USD" and rows[("q2", "1")]["arm"] is not None
    assert rows[("q5", "1")]["test"] is True
    (nosplit,) = [r for r in events(DECISIONS, "auto_intenders") if r["imp_id"] == "1"]
    assert (nosplit["split_id"], nosplit["run_id"], nosplit["bid"]) == (None, None, False)
    assert nosplit["no_bid_reason"] == "no active split for auto_intenders"
    assert nosplit["geo_region_name"] == "807"  # the source's macro: device.geo.metro


def test_a_bid_is_one_per_arm_sticky_and_its_rows_name_the_arm():
    state = serving_state()
    arms = {}
    for i in range(200):
        _, _, decisions, _ = decide(state, "drugs_hcp", bid_request(f"r{i}", user={"id": f"u{i % 20}"}))
        arms.setdefault(f"u{i % 20}", set()).add((decisions[0].arm, decisions[0].run_id))
    assert all(len(a) == 1 for a in arms.values()) and {next(iter(a)) for a in arms.values()} == {(0, "r1"), (1, "r2")}


def test_notices_accepted_once_and_written(core):
    (bid,) = bids_of(call(core, "POST", "/openrtb2/drugs_hcp", bid_request()))
    res = fire(core, bid["nurl"], AUCTION_PRICE="2.5", AUCTION_MIN_TO_WIN="2.4")
    assert res.status_code == 200 and json.loads(res.body) == {"accepted": "win"}
    replay = fire(core, bid["nurl"], AUCTION_PRICE="2.5")
    assert (replay.status_code, replay.headers["x-bidopt-reason"]) == (409, "duplicate")
    assert fire(core, bid["burl"], AUCTION_PRICE="2.5").status_code == 200
    click = urlsplit(bid["ext"]["click_url"])
    assert call(core, "POST", click.path, query=click.query.encode()).status_code == 200  # POST as well
    core.events.flush()
    rows = events(NOTICES)
    assert sorted(r["kind"] for r in rows) == ["billing", "click", "win"]
    win = next(r for r in rows if r["kind"] == "win")
    assert (win["request_id"], win["imp_id"], win["price_cpm"], win["min_to_win_cpm"], win["split_id"]) == (
        "q1",
        "1",
        2.5,
        2.4,
        7,
    )
    assert win["run_id"] in ("r1", "r2") and win["bid_cpm"] in (3.0, 5.0) and win["replica_id"] == core.replica_id
    status = json.loads(call(core, "GET", "/openrtb2/_status").body)
    assert status["counters"]["accepted"] == {"win": 1, "billing": 1, "click": 1}
    assert status["counters"]["rejected"] == {"duplicate": 1}
    assert status["counters"]["events"]["written"] >= 5


def test_a_win_after_the_loss_of_the_same_impression_is_refused(core):
    """A forger holding a genuine nurl sends it after the loss: the first notice decides."""
    (bid,) = bids_of(call(core, "POST", "/openrtb2/drugs_hcp", bid_request()))
    assert fire(core, bid["lurl"], AUCTION_LOSS="102", AUCTION_MIN_TO_WIN="9.5").status_code == 200
    late_win = fire(core, bid["nurl"], AUCTION_PRICE="2.5")
    assert (late_win.status_code, late_win.headers["x-bidopt-reason"]) == (409, "contradicts")
    assert fire(core, bid["burl"], AUCTION_PRICE="2.5").status_code == 409
    core.events.flush()
    assert [r["kind"] for r in events(NOTICES)] == ["loss"]


def test_rejected_notices_get_a_4xx_with_the_reason_are_counted_and_write_nothing(core):
    (bid,) = bids_of(call(core, "POST", "/openrtb2/drugs_hcp", bid_request()))
    nurl = bid["nurl"]
    sig = nurl.split("&sig=")[1].split("&")[0]
    cases = [
        (nurl.replace(sig, "f" * 32), {"AUCTION_PRICE": "1"}, 403, "bad_signature"),
        (nurl.replace("/_notice/win/", "/_notice/view/"), {"AUCTION_PRICE": "1"}, 404, "unknown_kind"),
        (nurl, {"AUCTION_PRICE": "1e400"}, 400, "malformed"),
        (nurl, {"AUCTION_PRICE": "nan"}, 400, "malformed"),
        (nurl, {"AUCTION_PRICE": "9" * 400}, 400, "malformed"),
        (nurl, {}, 400, "malformed"),  # ${AUCTION_PRICE} never filled in
        (nurl, {"AUCTION_PRICE": "999"}, 400, "malformed"),  # above our bid
        (nurl.split("?")[0], {}, 400, "malformed"),
        (nurl + "&pad=" + "x" * 5000, {"AUCTION_PRICE": "1"}, 400, "malformed"),
        (nurl + "&r=again", {"AUCTION_PRICE": "1"}, 400, "malformed"),
        (nurl + "&z=%FF%FE", {"AUCTION_PRICE": "1"}, 400, "malformed"),
        ("http://bidder.test:8000/openrtb2/_notice/win", {}, 404, "unknown_kind"),
        ("http://bidder.test:8000/openrtb2/_notice/win/drugs_hcp/extra", {}, 404, "unknown_kind"),
    ]
    for url, macros, status, reason in cases:
        res = fire(core, url, **macros)
        assert (res.status_code, json.loads(res.body)["reason"], res.headers["x-bidopt-reason"]) == (
            status,
            reason,
            reason,
        ), url
    assert call(core, "GET", "/openrtb2/_notice/win/drugs_hcp", query=b"r=\xff\xfe").status_code == 400
    assert (
        call(core, "GET", "/openrtb2/_notice/win/drugs_\udcff", query=urlsplit(nurl).query.encode()).status_code == 403
    )
    assert call(core, "DELETE", urlsplit(nurl).path, query=urlsplit(nurl).query.encode()).status_code == 404
    # expired: the same URL, answered an attribution window later
    later = time.time() + core.window_seconds + 1
    query = urlsplit(nurl.replace("${AUCTION_PRICE}", "1")).query
    from urllib.parse import parse_qsl

    assert core.handle_notice("win", "drugs_hcp", parse_qsl(query), now=later)[0] == 410
    # an entity this replica does not know
    core.refresher.state = BidderState({})
    assert fire(core, nurl, AUCTION_PRICE="1").status_code == 404
    core.events.flush()
    assert events(NOTICES) == []
    rejected = core.counters()["rejected"]
    assert rejected == {"bad_signature": 2, "unknown_kind": 4, "malformed": 10, "expired": 1, "unknown_entity": 1}


def test_test_requests_mark_their_notices_test(core):
    (bid,) = bids_of(call(core, "POST", "/openrtb2/drugs_hcp", bid_request(test=1)))
    assert fire(core, bid["nurl"], AUCTION_PRICE="1").status_code == 200
    core.events.flush()
    assert [r["test"] for r in events(NOTICES)] == [True]
    assert {r["test"] for r in events(DECISIONS)} == {True}


RACER = """
import sys, time
from bidopt.bidder.notice_key import load_notice_key
from bidopt.settings import Settings
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all start creating the key at the same moment
print(load_notice_key(Settings(home=sys.argv[1])).hex())
"""


def test_the_notice_key_is_made_once_and_shared_by_racing_processes(tmp_path, monkeypatch):
    import subprocess
    import sys
    from pathlib import Path

    from bidopt.settings import Settings

    home = tmp_path / "home"
    start = str(time.time() + 2.5)
    procs = [
        subprocess.Popen([sys.executable, "-c", RACER, str(home), start], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    keys = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(keys) == 1 and len(next(iter(keys))) == 64
    path = Path(home) / "notice.key"
    assert path.stat().st_mode & 0o777 == 0o600 and [p.name for p in Path(home).iterdir()] == ["notice.key"]
    assert load_notice_key(Settings(home=home)).hex() == next(iter(keys))
    monkeypatch.setenv("BIDOPT_NOTICE_SECRET", "operator's long secret")
    assert load_notice_key(Settings()) == b"operator's long secret"


def test_a_short_notice_secret_is_refused_at_start(monkeypatch):
    from bidopt.settings import InvalidSettings, get_settings, reset_settings_cache

    monkeypatch.setenv("BIDOPT_NOTICE_SECRET", "x" * 15)  # anyone could guess the signatures of such a key
    reset_settings_cache()
    with pytest.raises(InvalidSettings, match="BIDOPT_NOTICE_SECRET"):
        get_settings()
    monkeypatch.setenv("BIDOPT_NOTICE_SECRET", "x" * 16)
    reset_settings_cache()
    assert get_settings().notice_secret.get_secret_value() == "x" * 16

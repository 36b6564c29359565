"""The bidder's in-process metrics (``bidopt.metrics``), without Ray: exact counts through
``BidderCore.handle``, ``http_handler`` and the notice routes, the status window, the export's
arithmetic (against a stand-in for ``ray.util.metrics``), and labels that stay bounded under random
bodies, paths and notices."""

import json
import time

import bidder_asgi
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bidopt.bidder import app as bidder_app
from bidopt.bidder.app import BidderCore
from bidopt.bidder.core import MAX_BODY_BYTES, BidderState, EntityServing, RunTables, source_event_readers
from bidopt.bidder.fields import feature_reader
from bidopt.events.schema import INVALID_PRICE_REASON
from bidopt.metrics import (
    BIDDER_METRICS,
    NO_BID_REASONS,
    PRICE_BOUNDS,
    SECONDS_BOUNDS,
    UNKNOWN_ENTITY,
    BidderMetrics,
    MetricsFlusher,
    RayExporter,
    no_bid_label,
)
from bidopt.notices import NOTICE_KINDS, REJECTIONS
from bidopt.settings import reset_settings_cache

SOURCE = (("geo_region_name", "device.geo.region"),)
SERVED = {"drugs_hcp"}
KNOWN = {"drugs_hcp", "auto_intenders"}  # auto_intenders: in the catalogue, no active split
RUNS = {"r1", "r2"}


def tables(run_id, bid):
    return RunTables(
        run_id,
        ("geo_region_name",),
        (feature_reader("geo_region_name", "device.geo.region"),),
        {"california": bid, "*": 1.0},
        {},
        20.0,
        "sha",
    )


def serving_state():
    serving = EntityServing("drugs_hcp", 7, (tables("r1", 3.0), tables("r2", 3.0)), (50, 50), SOURCE)
    known = {code: source_event_readers(SOURCE) for code in KNOWN}
    return BidderState({"drugs_hcp": serving}, known=known)


def req(rid="q", imps=None, **over) -> bytes:
    body = {
        "id": rid,
        "imp": imps or [{"id": "1", "bidfloor": 0.5}],
        "device": {"geo": {"region": "CA"}},
        "user": {"id": f"user-{rid}"},
    }
    return orjson.dumps(body | over)


def call(core, method, path, body=b"", query=b"", headers=()):
    return bidder_asgi.call(core, method, path, body, query, (("host", "bidder.test"), *headers))


def fire(core, url, **macros):
    return bidder_asgi.fire(core, url, send=call, **macros)


@pytest.fixture
def core():
    c = BidderCore(start=False)
    c.refresher.state = serving_state()
    yield c
    c.close()


def test_every_reason_decide_gives_has_its_label():
    """The one table, reason by reason (the fuzz below checks that none falls through to "other")."""
    assert no_bid_label("no price clears the floor") == "floor"
    assert no_bid_label("no impression clears its floor") == "floor"
    assert no_bid_label("currency not USD") == "currency"
    assert no_bid_label("request does not accept USD") == "currency"
    assert no_bid_label("tmax passed") == "tmax"
    assert no_bid_label(INVALID_PRICE_REASON) == "invalid_price" and "invalid_price" in NO_BID_REASONS
    assert no_bid_label("no active split for drugs_hcp") == "no_split"
    assert no_bid_label("imp must be a non-empty array", 400) == "malformed"
    assert no_bid_label("bid request of 300000 bytes is over the 262144-byte limit", 413) == "too_large"
    assert no_bid_label("internal error", 500) == "other"
    assert set(BIDDER_METRICS["bidopt_bidder_no_bids_total"].labels) == {"entity", "reason"}


def test_the_aggregate_counts_bids_each_no_bid_reason_and_notices_exactly(core, monkeypatch):
    for i in range(5):  # 5 bids
        assert core.handle("drugs_hcp", req(f"b{i}"), base_url="http://bidder.test")[0] == 200
    status, body, _ = core.handle("drugs_hcp", req("t", test=1), base_url="http://bidder.test")  # a test bid
    assert status == 200
    mixed = [{"id": "1", "bidfloor": 0.5}, {"id": "2", "bidfloor": 9.0}]
    assert core.handle("drugs_hcp", req("m", imps=mixed))[0] == 200  # 1 bid, 1 floor
    for i in range(3):
        assert core.handle("drugs_hcp", req(f"f{i}", imps=[{"id": "1", "bidfloor": 9.0}]))[0] == 204
    for i in range(2):
        imps = [{"id": "1", "bidfloorcur": "EUR"}]
        assert core.handle("drugs_hcp", req(f"c{i}", imps=imps))[0] == 204  # the decision says currency
    two = [{"id": "1"}, {"id": "2"}]
    assert core.handle("drugs_hcp", req("cur", imps=two, cur=["EUR"]))[0] == 204  # 2 impressions, currency
    assert core.handle("auto_intenders", req("n1"))[0] == 204  # known, no split: a decision row, no_split
    assert core.handle("auto_intenders", req("n2", imps=two))[0] == 204
    assert core.handle("not_ours", req("x"))[0] == 204  # unknown entity: no decision, one no_split
    assert core.handle("drugs_hcp", b"not json")[0] == 400
    assert core.handle("drugs_hcp", req("bad", imp=[]))[0] == 400
    assert core.handle("drugs_hcp", b"{" + b" " * MAX_BODY_BYTES + b"}")[0] == 413
    big = call(core, "POST", "/openrtb2/drugs_hcp", b"x", headers=(("content-length", str(10 * MAX_BODY_BYTES)),))
    assert big.status_code == 413  # refused before the handler
    late = core.handle("drugs_hcp", req("late", tmax=5), received_at=time.monotonic() - 1)
    assert late[2]["x-bidopt-reason"] == "tmax passed"
    with monkeypatch.context() as patch:
        patch.setattr(bidder_app, "decide", lambda *a, **k: 1 / 0)
        assert core.handle("drugs_hcp", req("boom"))[0] == 500

    (bid,) = json.loads(body)["seatbid"][0]["bid"]  # notices of the test bid
    assert fire(core, bid["nurl"], AUCTION_PRICE="2.5").status_code == 200
    assert fire(core, bid["nurl"], AUCTION_PRICE="2.5").status_code == 409  # duplicate
    assert fire(core, bid["lurl"], AUCTION_LOSS="102").status_code == 409  # contradicts the win
    assert fire(core, bid["burl"], AUCTION_PRICE="2.5").status_code == 200
    assert fire(core, bid["ext"]["click_url"]).status_code == 200
    sig = bid["nurl"].split("&sig=")[1].split("&")[0]
    assert fire(core, bid["nurl"].replace(sig, "0" * 32), AUCTION_PRICE="1").status_code == 403
    assert fire(core, bid["nurl"].replace("/win/", "/view/"), AUCTION_PRICE="1").status_code == 404

    snap = core.metrics.snapshot()
    assert snap.requests == {("drugs_hcp",): 19, ("auto_intenders",): 2, (UNKNOWN_ENTITY,): 1}
    assert sum(snap.bids.values()) == 7 and {run for _, run in snap.bids} <= RUNS
    assert snap.no_bids == {
        ("drugs_hcp", "floor"): 4,
        ("drugs_hcp", "currency"): 4,
        ("drugs_hcp", "malformed"): 2,
        ("drugs_hcp", "too_large"): 2,
        ("drugs_hcp", "tmax"): 1,
        ("drugs_hcp", "other"): 1,
        ("auto_intenders", "no_split"): 3,
        (UNKNOWN_ENTITY, "no_split"): 1,
    }
    assert snap.tests == {("drugs_hcp",): 1}
    assert snap.notices == {("drugs_hcp", "win"): 1, ("drugs_hcp", "billing"): 1, ("drugs_hcp", "click"): 1}
    assert snap.rejected == {("duplicate",): 1, ("contradicts",): 1, ("bad_signature",): 1, ("unknown_kind",): 1}
    n = len(PRICE_BOUNDS) + 1
    prices = [sum(h[:n]) for h in snap.prices.values()]
    assert sum(prices) == 7 and sum(sum(h[n:]) for h in snap.prices.values()) == pytest.approx(7 * 3.0)
    seconds = snap.seconds[("drugs_hcp",)]
    assert sum(seconds[: len(SECONDS_BOUNDS) + 1]) == 18  # every handled request but the one refused unread

    traffic = core.counters()["traffic"]  # what the replica reports with its status
    assert traffic["drugs_hcp"]["requests"] == 19 and traffic["drugs_hcp"]["bids"] == 7
    assert traffic["drugs_hcp"]["no_bids"] == {
        "floor": 4,
        "currency": 4,
        "malformed": 2,
        "too_large": 2,
        "tmax": 1,
        "other": 1,
    }
    assert traffic["auto_intenders"] == {
        "window_seconds": traffic["auto_intenders"]["window_seconds"],
        "requests": 2,
        "bids": 0,
        "no_bids": {"no_split": 3},
    }
    assert 0 <= traffic["drugs_hcp"]["window_seconds"] <= 300
    assert json.loads(call(core, "GET", "/openrtb2/_status").body)["counters"]["traffic"]["drugs_hcp"]["bids"] == 7


def test_refresh_outcomes_are_counted(core):
    core.refresher.refresh_once()  # this test's database has no schema: the splits cannot be read
    core.metrics.refresh({"drugs_hcp": "loaded", "auto_intenders": "kept"})
    core.metrics.refresh({"drugs_hcp": "failed: drugs_hcp split 3: ValueError: no default row"})
    assert core.metrics.snapshot().refreshes == {("error",): 2, ("ok",): 1}


def test_metrics_off_records_nothing(monkeypatch):
    monkeypatch.setenv("BIDOPT_METRICS", "0")
    reset_settings_cache()
    c = BidderCore(start=False)
    c.refresher.state = serving_state()
    try:
        assert c.handle("drugs_hcp", req())[0] == 200
        assert not c.metrics.enabled and c.metrics.snapshot().requests == {} and c.counters()["traffic"] == {}
    finally:
        c.close()


class FakeState:
    entities = {"e": None}
    known = {}


def bid(price=2.0, run="r1", reason=None, test=False):
    class D:
        pass

    d = D()
    d.price, d.run_id, d.reason, d.test = price, run, reason, test
    return d


def test_the_window_keeps_five_minutes_in_minute_buckets():
    t0 = 60.0 * 1_000_000  # the start of a minute
    m = BidderMetrics(started_at=t0)
    s = FakeState()
    for _ in range(3):
        m.request(s, "e", [bid()], 200, "", 1e-4)
    m.request(s, "e", [bid(None, reason="no price clears the floor")], 204, "", 1e-4)
    assert m.traffic(t0 + 30) == {"e": {"window_seconds": 30.0, "requests": 4, "bids": 3, "no_bids": {"floor": 1}}}
    m.request(s, "e", [bid()], 200, "", 1e-4)
    m.fold(t0 + 120)  # minute 2
    m.request(s, "x", [], 400, "body is not JSON", 1e-4)  # x is not served: unknown
    w = m.traffic(t0 + 4 * 60 + 59)  # minute 4: minutes 0..4 still in
    assert w["e"] == {"window_seconds": 299.0, "requests": 5, "bids": 4, "no_bids": {"floor": 1}}
    assert w[UNKNOWN_ENTITY]["no_bids"] == {"malformed": 1}
    w = m.traffic(t0 + 5 * 60 + 1)  # minute 5: minute 0 has left
    assert w["e"] == {"window_seconds": 241.0, "requests": 1, "bids": 1, "no_bids": {}}
    assert m.traffic(t0 + 7 * 60 + 1) == {UNKNOWN_ENTITY: w[UNKNOWN_ENTITY] | {"window_seconds": 241.0}}
    assert m.traffic(t0 + 9 * 60) == {}  # everything has left
    assert m.snapshot().requests == {("e",): 5, (UNKNOWN_ENTITY,): 1}  # the totals never drop anything


class FakeRayMetrics:
    """Stands in for ``ray.util.metrics``: records what the exporter adds."""

    def __init__(self):
        self.counts, self.observed, self.gauges = {}, {}, {}
        fake = self

        class Metric:
            def __init__(self, name, description="", boundaries=None, tag_keys=()):
                self.name, self.tag_keys = name, tag_keys

            def key(self, tags):
                assert set(tags or {}) == set(self.tag_keys), (self.name, tags)
                return (self.name, tuple(sorted((tags or {}).items())))

            def inc(self, value, tags=None):
                assert value > 0
                fake.counts[self.key(tags)] = fake.counts.get(self.key(tags), 0) + value

            def observe(self, value, tags=None):
                fake.observed.setdefault(self.key(tags), []).append(value)

            def set(self, value, tags=None):
                fake.gauges[self.key(tags)] = value

        self.Counter = self.Histogram = self.Gauge = Metric


def test_the_export_adds_exact_deltas_and_writes_each_histogram_as_its_prometheus_series():
    m = BidderMetrics()
    s = FakeState()
    prices = [0.1, 0.1000001, 0.3, 2.0, 2.0, 2.0, 4.99, 60.0]
    for p in prices:
        m.request(s, "e", [bid(p)], 200, "", 0.0001)
    fake = FakeRayMetrics()
    exporter = RayExporter(fake)
    exporter.export(m.snapshot(), {"e": 7}, 3.5)
    m.request(s, "e", [bid(None, reason="tmax passed")], 204, "tmax passed", 0.003)
    m.request(s, "zz", [], 413, "too big", None)
    m.notice(s, "e", "win")
    m.notice_rejected("bad_signature")
    m.refresh({"e": "kept"})
    exporter.export(m.snapshot(), {}, 1.0)  # e no longer served: its gauge goes to 0
    exporter.export(m.snapshot(), {}, 1.0)  # nothing new: nothing added

    def count(name, **tags):
        return fake.counts.get((name, tuple(sorted(tags.items()))), 0)

    assert count("bidopt_bidder_requests_total", entity="e") == 9
    assert count("bidopt_bidder_requests_total", entity=UNKNOWN_ENTITY) == 1
    assert count("bidopt_bidder_bids_total", entity="e", run="r1") == 8
    assert count("bidopt_bidder_no_bids_total", entity="e", reason="tmax") == 1
    assert count("bidopt_bidder_no_bids_total", entity=UNKNOWN_ENTITY, reason="too_large") == 1
    assert count("bidopt_notices_total", entity="e", kind="win") == 1
    assert count("bidopt_notices_rejected_total", reason="bad_signature") == 1
    assert count("bidopt_bidder_refreshes_total", outcome="ok") == 1
    assert not fake.observed  # histograms are gauges of their series, not one call per observation

    def gauge(name, **tags):
        return fake.gauges[(name, tuple(sorted(tags.items())))]

    price = "bidopt_bidder_bid_price_cpm"
    for bound in (*PRICE_BOUNDS, float("inf")):  # le: values at or under the bound, cumulative
        le = "+Inf" if bound == float("inf") else repr(bound)
        assert gauge(price + "_bucket", entity="e", run="r1", le=le) == sum(p <= bound for p in prices), le
    assert gauge(price + "_bucket", entity="e", run="r1", le="0.1") == 1  # 0.1 is in its own bound's bucket
    assert gauge(price + "_count", entity="e", run="r1") == len(prices)
    assert gauge(price + "_sum", entity="e", run="r1") == pytest.approx(sum(prices))
    assert gauge("bidopt_bidder_decision_seconds_count", entity="e") == 9  # the refused request was not handled
    assert gauge("bidopt_bidder_decision_seconds_bucket", entity="e", le="0.002") == 8
    assert gauge("bidopt_bidder_decision_seconds_bucket", entity="e", le="0.005") == 9
    assert gauge("bidopt_bidder_serving_split", entity="e") == 0  # no longer served
    assert gauge("bidopt_bidder_seconds_since_refresh") == 1.0


def test_the_flusher_exports_and_its_stop_exports_what_is_left():
    m = BidderMetrics()
    fake = FakeRayMetrics()
    flusher = MetricsFlusher(m, lambda: ({"e": 7}, 0.5), interval=3600, exporter=RayExporter(fake))
    flusher.start()
    m.request(FakeState(), "e", [bid()], 200, "", 1e-4)
    flusher.stop()
    assert not flusher.running
    assert fake.counts[("bidopt_bidder_requests_total", (("entity", "e"),))] == 1
    assert fake.gauges[("bidopt_bidder_serving_split", (("entity", "e"),))] == 7


def test_an_export_that_fails_part_way_adds_nothing_twice():
    """A counter call raising half-way through a flush: the next flush adds only what was not exported."""
    m = BidderMetrics()
    s = FakeState()
    for _ in range(5):
        m.request(s, "e", [bid()], 200, "", 1e-4)
    m.notice_rejected("expired")
    fake = FakeRayMetrics()
    exporter = RayExporter(fake)
    rejected = exporter.objects["bidopt_notices_rejected_total"]
    real_inc = rejected.inc
    rejected.inc = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("agent gone"))
    with pytest.raises(RuntimeError):
        exporter.export(m.snapshot(), {}, None)
    rejected.inc = real_inc
    for _ in range(3):
        exporter.export(m.snapshot(), {}, None)
    assert fake.counts[("bidopt_bidder_requests_total", (("entity", "e"),))] == 5
    assert fake.counts[("bidopt_notices_rejected_total", (("reason", "expired"),))] == 1


def test_a_metrics_failure_never_costs_the_answer(core, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug in counting")

    monkeypatch.setattr(core.metrics, "request", broken)
    monkeypatch.setattr(core.metrics, "notice_rejected", broken)
    status, body, _ = core.handle("drugs_hcp", req("q1"))
    assert status == 200 and b"seatbid" in body
    assert core.handle_notice("win", "drugs_hcp", [("sig", "forged")])[0] in (400, 403)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
    lambda kids: (
        st.lists(kids, max_size=3)
        | st.dictionaries(
            st.sampled_from(["id", "imp", "device", "user", "geo", "region", "bidfloor", "bidfloorcur", "cur", "test"]),
            kids,
            max_size=4,
        )
    ),
    max_leaves=20,
)
# well-formed requests of every kind (JSONISH and the bytes give the malformed ones), so that every
# branch of decide is reached, not only its 400s
IMP = st.fixed_dictionaries(
    {"id": st.sampled_from(["1", "2", "3"])},
    optional={
        "bidfloor": st.one_of(st.floats(0, 30), st.just(1e300)),
        "bidfloorcur": st.sampled_from(["USD", "usd", "EUR"]),
    },
)
REQUEST = st.fixed_dictionaries(
    {"id": st.just("r"), "imp": st.lists(IMP, min_size=1, max_size=3, unique_by=lambda i: i["id"])},
    optional={
        "device": st.fixed_dictionaries({"geo": st.fixed_dictionaries({"region": st.sampled_from(["CA", "TX"])})}),
        "user": st.fixed_dictionaries({"id": st.text(min_size=1, max_size=8)}),
        "cur": st.sampled_from([["USD"], ["EUR"], None]),
        "test": st.sampled_from([0, 1]),
        "tmax": st.sampled_from([1, 500, None]),
    },
)
WELL_FORMED = REQUEST.map(orjson.dumps)
BODY = st.one_of(st.binary(max_size=200), JSONISH.map(lambda v: json.dumps(v).encode()), *[WELL_FORMED] * 4)
ENTITY = st.one_of(st.just("drugs_hcp"), st.sampled_from(sorted(KNOWN) + ["_status", "_notice"]), st.text(max_size=12))
QUERY = st.one_of(st.binary(max_size=60), st.text(max_size=60).map(str.encode))


def test_labels_stay_bounded_under_random_bodies_paths_and_notices(core):
    """What random traffic can make of the label sets: entities served or known and "unknown", runs of
    the loaded split, the fixed reasons (never "other": ``decide`` answers any body), notice kinds and
    rejection codes; and the window's keys are the same entities."""

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(entity=ENTITY, body=BODY, query=QUERY, kind=st.one_of(st.sampled_from(NOTICE_KINDS), st.text(max_size=6)))
    def send(entity, body, query, kind):
        core.handle(entity, body, received_at=time.monotonic() - 0.002)
        call(core, "POST", "/openrtb2/" + entity, body)
        call(core, "GET", f"/openrtb2/_notice/{kind}/{entity}", query=query)

    send()
    snap = core.metrics.snapshot()
    entities = KNOWN | {UNKNOWN_ENTITY}
    assert {e for (e,) in snap.requests} <= entities and len(snap.requests) >= 2
    assert {e for (e,) in snap.seconds} <= entities and {e for (e,) in snap.tests} <= entities
    assert {e for e, _ in snap.bids} <= SERVED and {r for _, r in snap.bids} <= RUNS
    assert set(snap.prices) == set(snap.bids)
    assert {e for e, _ in snap.no_bids} <= entities
    reasons = {r for _, r in snap.no_bids}
    assert reasons <= set(NO_BID_REASONS) - {"other"} and len(reasons) >= 4, reasons
    assert {e for e, _ in snap.notices} <= KNOWN and {k for _, k in snap.notices} <= set(NOTICE_KINDS)
    assert {r for (r,) in snap.rejected} <= set(REJECTIONS) and len(snap.rejected) >= 2
    assert set(core.metrics.traffic()) <= entities

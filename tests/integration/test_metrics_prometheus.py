"""The bidder's metrics read back from Ray's metrics agent: a ``BidderCore`` in a Ray actor on a local
Ray with a Prometheus export port answers known requests and notices; the scraped counters (Ray's
``ray_`` prefix, summed over the series Ray labels per worker) reach exactly the counts sent, and the
replica's status row reports the same window (``counters["traffic"]``)."""

import json
import os
import socket
import time
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from servable_runs import complete_servable

from bidopt.db import bidder_status
from bidopt.db import queries as q
from bidopt.db.engine import session_scope
from bidopt.metrics import BIDDER_METRICS, PROMETHEUS_PREFIX

pytestmark = pytest.mark.slow
SCRAPE_SECONDS = 90  # the flusher's 2 s, then the agent's export interval (about 10 s here), with margin


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bid_request(rid: str, **over) -> bytes:
    req = {"id": rid, "imp": [{"id": "1", "bidfloor": 0.5}], "device": {"geo": {"region": "CA"}}, "user": {"id": rid}}
    return orjson.dumps(req | over)


def scrape(port: int) -> dict[tuple, float]:
    """``{(exported name, ((label, value), ...)): value}`` of bidopt's samples, summed over the labels
    Ray adds (worker, node, session, ...)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    ours = {"entity", "run", "reason", "kind", "outcome", "le"}
    samples: dict[tuple, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith(PROMETHEUS_PREFIX + "bidopt_"):
                key = (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k in ours)))
                samples[key] = samples.get(key, 0.0) + s.value
    return samples


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_metrics_agent_exports_exact_counts_of_bids_no_bids_and_notices(platform_db, monkeypatch):
    ray = pytest.importorskip("ray")
    with session_scope(platform_db) as s:
        run_id = q.create_run(s, "drugs_hcp", {}, triggered_by="t").run_id
    complete_servable(platform_db, run_id)
    with session_scope(platform_db) as s:
        split_id = q.replace_traffic_split(s, "drugs_hcp", {run_id: 100}, deployed_by="t")[0].split_id
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # a private, loopback-only test cluster
    monkeypatch.setenv("BIDOPT_BIDDER_REFRESH_SECONDS", "1")
    env = {k: v for k, v in os.environ.items() if k.startswith("BIDOPT_")}
    port = free_port()
    ray.init(address="local", num_cpus=1, include_dashboard=False, _metrics_export_port=port, configure_logging=False)
    try:

        @ray.remote(num_cpus=0)
        class Bidder:
            def __init__(self, env: dict) -> None:
                from bidopt.bidder.app import BidderCore
                from bidopt.settings import reset_settings_cache

                os.environ.update(env)
                reset_settings_cache()
                self.core = BidderCore()
                assert self.core.metrics_flusher is not None  # under Ray: exported

            def send(self, entity: str, bodies: list[bytes], late: bool = False) -> list[tuple[int, bytes]]:
                received = time.monotonic() - 1.0 if late else None
                return [self.core.handle(entity, b, received, "http://bidder.test")[:2] for b in bodies]

            def notice(self, url: str) -> int:
                from urllib.parse import parse_qsl

                parts = urlsplit(url)
                kind, entity = parts.path.split("/")[-2:]
                return self.core.handle_notice(kind, entity, parse_qsl(parts.query, keep_blank_values=True))[0]

            def close(self) -> None:
                self.core.close()

        bidder = Bidder.remote(env)
        n_bids, n_test = 7, 2
        answers = ray.get(bidder.send.remote("drugs_hcp", [bid_request(f"b{i}") for i in range(n_bids)]))
        assert {status for status, _ in answers} == {200}
        tests = ray.get(bidder.send.remote("drugs_hcp", [bid_request(f"t{i}", test=1) for i in range(n_test)]))
        assert {status for status, _ in tests} == {200}
        floor = [bid_request(f"f{i}", imp=[{"id": "1", "bidfloor": 9.0}]) for i in range(3)]
        currency = [bid_request(f"c{i}", imp=[{"id": "1", "bidfloorcur": "EUR"}]) for i in range(4)]
        not_usd = [bid_request("cur", cur=["EUR"], imp=[{"id": "1"}, {"id": "2"}])]  # 2 impressions
        malformed = [b"not json", bid_request("m", imp=[]), b"[]"]
        too_large = [b"{" + b" " * (300 * 1024) + b"}"]
        for bodies in (floor, currency, not_usd, malformed, too_large):
            ray.get(bidder.send.remote("drugs_hcp", bodies))
        assert {s for s, _ in ray.get(bidder.send.remote("drugs_hcp", [bid_request("late", tmax=5)], True))} == {204}
        ray.get(bidder.send.remote("auto_intenders", [bid_request(f"n{i}") for i in range(2)]))  # known, no split
        ray.get(bidder.send.remote("not_ours", [bid_request("x")]))  # not in the catalogue: "unknown"
        nurl = json.loads(answers[0][1])["seatbid"][0]["bid"][0]["nurl"].replace("${AUCTION_PRICE}", "2.0")
        assert ray.get(bidder.notice.remote(nurl)) == 200
        assert ray.get(bidder.notice.remote(nurl)) == 409  # duplicate
        burl = json.loads(answers[1][1])["seatbid"][0]["bid"][0]["burl"].replace("${AUCTION_PRICE}", "2.0")
        assert ray.get(bidder.notice.remote(burl)) == 200

        drugs_requests = n_bids + n_test + 3 + 4 + 1 + 3 + 1 + 1
        prefix = PROMETHEUS_PREFIX
        expected = {
            (prefix + "bidopt_bidder_requests_total", (("entity", "drugs_hcp"),)): drugs_requests,
            (prefix + "bidopt_bidder_requests_total", (("entity", "auto_intenders"),)): 2,
            (prefix + "bidopt_bidder_requests_total", (("entity", "unknown"),)): 1,
            (prefix + "bidopt_bidder_bids_total", (("entity", "drugs_hcp"), ("run", run_id))): n_bids + n_test,
            (prefix + "bidopt_bidder_test_requests_total", (("entity", "drugs_hcp"),)): n_test,
            (prefix + "bidopt_notices_total", (("entity", "drugs_hcp"), ("kind", "win"))): 1,
            (prefix + "bidopt_notices_total", (("entity", "drugs_hcp"), ("kind", "billing"))): 1,
            (prefix + "bidopt_notices_rejected_total", (("reason", "duplicate"),)): 1,
            (prefix + "bidopt_bidder_bid_price_cpm_count", (("entity", "drugs_hcp"), ("run", run_id))): n_bids + n_test,
            (prefix + "bidopt_bidder_bid_price_cpm_sum", (("entity", "drugs_hcp"), ("run", run_id))): 2.5
            * (n_bids + n_test),
            (prefix + "bidopt_bidder_decision_seconds_count", (("entity", "drugs_hcp"),)): drugs_requests,
            (prefix + "bidopt_bidder_serving_split", (("entity", "drugs_hcp"),)): split_id,
        }
        no_bids = {
            ("drugs_hcp", "floor"): 3,
            ("drugs_hcp", "currency"): 4 + 2,
            ("drugs_hcp", "malformed"): 3,
            ("drugs_hcp", "too_large"): 1,
            ("drugs_hcp", "tmax"): 1,
            ("auto_intenders", "no_split"): 2,
            ("unknown", "no_split"): 1,
        }
        for (entity, reason), n in no_bids.items():
            expected[(prefix + "bidopt_bidder_no_bids_total", (("entity", entity), ("reason", reason)))] = n

        deadline = time.monotonic() + SCRAPE_SECONDS
        while True:
            got = scrape(port)
            seen = {key: got.get(key) for key in expected}
            if seen == expected or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert seen == expected, {k: (v, expected[k]) for k, v in seen.items() if v != expected[k]}
        # nothing else was counted: every no-bid series is one of the expected ones
        exported_no_bids = {k: v for k, v in got.items() if k[0] == prefix + "bidopt_bidder_no_bids_total" and v}
        assert exported_no_bids == {k: v for k, v in expected.items() if k[0] == prefix + "bidopt_bidder_no_bids_total"}
        assert got[(prefix + "bidopt_bidder_refreshes_total", (("outcome", "ok"),))] >= 1
        assert 0 <= got[(prefix + "bidopt_bidder_seconds_since_refresh", ())] < 30
        buckets = {dict(k[1])["le"]: v for k, v in got.items() if k[0] == prefix + "bidopt_bidder_bid_price_cpm_bucket"}
        assert buckets["2.0"] == 0 and buckets["3.0"] == n_bids + n_test  # every bid was 2.5
        # and the _sum above is exact: the flusher writes the histogram's series itself (bidopt.metrics.RayExporter)
        assert {name.removeprefix(prefix).removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
                for name, _ in got} <= set(BIDDER_METRICS)  # fmt: skip

        # the replica's status row reports the same window
        deadline = time.monotonic() + 30
        while True:
            with session_scope(platform_db) as s:
                rows = bidder_status.list_replicas(s)
                traffic = json.loads(rows[0].counters).get("traffic", {}) if rows else {}
            if traffic.get("drugs_hcp", {}).get("requests") == drugs_requests or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert traffic["drugs_hcp"]["bids"] == n_bids + n_test
        assert traffic["drugs_hcp"]["no_bids"] == {r: n for (e, r), n in no_bids.items() if e == "drugs_hcp"}
        assert traffic["unknown"]["no_bids"] == {"no_split": 1} and 0 < traffic["drugs_hcp"]["window_seconds"] <= 300
        ray.get(bidder.close.remote())
    finally:
        ray.shutdown()

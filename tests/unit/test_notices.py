"""Signed notice URLs (``bidopt.notices``): what a bid carries, and what a notice must be to count."""

from datetime import datetime
from urllib.parse import parse_qsl, urlsplit

import pytest

from bidopt.notices import (
    AUCTION_LOSS,
    AUCTION_MIN_TO_WIN,
    AUCTION_PRICE,
    NOTICE_PREFIX,
    Limits,
    NoticeRejected,
    NoticeSigner,
    verify_notice,
)

KEY = b"k" * 32
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
BID_MS = int(NOW * 1000) - 5_000  # we bid 5 s before the notice
LIMITS = Limits(3600.0, frozenset({"drugs_hcp"}))


def urls(request_id="req-1", imp_id="1", price=4.0, test=False, bid_ms=BID_MS, key=KEY):
    signer = NoticeSigner(key)
    return signer.urls("http://bidder:8000", "drugs_hcp", request_id, imp_id, "20260101_120000", 7, price, bid_ms, test)


def fire(url: str, *, now=NOW, limits=LIMITS, key=KEY, **macros) -> dict:
    """What the bidder's route does with a URL after the exchange substituted ``macros``."""
    for macro, value in macros.items():
        url = url.replace("${" + macro + "}", value)
    parts = urlsplit(url)
    assert parts.path.startswith(NOTICE_PREFIX)
    kind, entity = parts.path[len(NOTICE_PREFIX) :].split("/")
    return verify_notice(key, kind, entity, parse_qsl(parts.query, keep_blank_values=True), now=now, limits=limits)


def rejected(reason: str, url: str, **kw) -> NoticeRejected:
    with pytest.raises(NoticeRejected) as info:
        fire(url, **kw)
    assert info.value.reason == reason, info.value.detail
    return info.value


def test_each_bid_gets_four_urls_with_the_openrtb_macros_left_for_the_exchange():
    u = urls()
    assert set(u) == {"nurl", "lurl", "burl", "click_url"}
    assert u["nurl"].startswith("http://bidder:8000/openrtb2/_notice/win/drugs_hcp?")
    assert AUCTION_PRICE in u["nurl"] and AUCTION_MIN_TO_WIN in u["nurl"]
    assert AUCTION_LOSS in u["lurl"] and AUCTION_MIN_TO_WIN in u["lurl"] and AUCTION_PRICE not in u["lurl"]
    assert AUCTION_PRICE in u["burl"] and "${" not in u["click_url"]
    assert len({parse_qsl(urlsplit(x).query)[7] for x in u.values()}) == 4  # a signature per kind
    # a signer with its own base URL (BIDOPT_NOTICE_BASE_URL) ignores the request's
    own = NoticeSigner(KEY, "https://notices.example.com/").urls("http://x", "drugs_hcp", "r", "1", "u", 1, 1.0, 0, 0)
    assert own["nurl"].startswith("https://notices.example.com/openrtb2/_notice/win/drugs_hcp?")


def test_a_win_gives_the_notice_row():
    row = fire(urls()["nurl"], AUCTION_PRICE="3.25", AUCTION_MIN_TO_WIN="3.2")
    assert {k: row[k] for k in ("entity_code", "request_id", "imp_id", "kind", "split_id", "run_id")} == {
        "entity_code": "drugs_hcp",
        "request_id": "req-1",
        "imp_id": "1",
        "kind": "win",
        "split_id": 7,
        "run_id": "20260101_120000",
    }
    assert (row["bid_cpm"], row["price_cpm"], row["min_to_win_cpm"], row["loss_reason"], row["test"]) == (
        4.0,
        3.25,
        3.2,
        None,
        False,
    )
    assert (row["bid_time"], row["event_time"]) == (datetime(2025, 12, 31, 23, 59, 55), datetime(2026, 1, 1))


def test_loss_billing_and_click_and_macros_the_exchange_does_not_send():
    u = urls()
    loss = fire(u["lurl"], AUCTION_LOSS="102")
    assert (loss["kind"], loss["loss_reason"], loss["min_to_win_cpm"], loss["price_cpm"]) == ("loss", 102, None, None)
    assert fire(u["lurl"])["loss_reason"] is None  # ${AUCTION_LOSS} left as it was: not sent, not malformed
    assert fire(u["lurl"], AUCTION_LOSS="", AUCTION_MIN_TO_WIN="")["min_to_win_cpm"] is None
    assert fire(u["lurl"], AUCTION_MIN_TO_WIN="5.5")["min_to_win_cpm"] == 5.5
    assert fire(u["nurl"], AUCTION_PRICE="2")["min_to_win_cpm"] is None
    assert fire(u["burl"], AUCTION_PRICE="4.0")["price_cpm"] == 4.0  # at our bid: first price
    assert fire(u["click_url"])["kind"] == "click"


def test_the_test_flag_travels_in_the_signed_url():
    u = urls(test=True)
    assert "&x=1&" in u["nurl"] and fire(u["nurl"], AUCTION_PRICE="1")["test"] is True
    rejected("bad_signature", u["nurl"].replace("&x=1&", "&x=0&"), AUCTION_PRICE="1")  # cannot be un-tested


@pytest.mark.parametrize(
    "param,value",
    [
        ("r", "req-2"),
        ("i", "2"),
        ("u", "20260101_120001"),
        ("s", "8"),
        ("b", "40.0"),
        ("t", str(BID_MS + 1)),
        ("x", "1"),
    ],
)
def test_every_signed_field_altered_is_a_bad_signature(param, value):
    url = urls()["nurl"]
    query = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    altered = url.replace(f"{param}={query[param]}&", f"{param}={value}&", 1)
    assert altered != url
    rejected("bad_signature", altered, AUCTION_PRICE="1")


def test_forged_signatures_other_keys_other_entities_and_kinds_are_refused():
    u = urls()
    sig = dict(parse_qsl(urlsplit(u["nurl"]).query))["sig"]
    rejected("bad_signature", u["nurl"].replace(sig, "0" * 32), AUCTION_PRICE="1")
    rejected("bad_signature", u["nurl"].replace(sig, sig[:-1] + ("0" if sig[-1] != "0" else "1")), AUCTION_PRICE="1")
    rejected("bad_signature", urls(key=b"another key")["nurl"], AUCTION_PRICE="1")
    rejected("bad_signature", u["nurl"], AUCTION_PRICE="1", key=b"another key")
    # a loss URL made into a win, a click made into a billing notice: the kind is signed
    rejected("bad_signature", u["lurl"].replace("/_notice/loss/", "/_notice/win/") + "&p=1")
    rejected("bad_signature", u["click_url"].replace("/_notice/click/", "/_notice/billing/") + "&p=1")
    rejected("bad_signature", u["click_url"].replace("/drugs_hcp?", "/auto_intenders?"))
    rejected("malformed", u["nurl"].replace(sig, "not-a-signature"), AUCTION_PRICE="1")


def test_expired_and_future_bids():
    url = urls()["nurl"]
    assert fire(url, AUCTION_PRICE="1", now=NOW + 3590)["kind"] == "win"
    rejected("expired", url, AUCTION_PRICE="1", now=NOW + 3600)
    rejected("expired", url, AUCTION_PRICE="1", now=NOW - 60)  # bid time a minute ahead of our clock
    assert fire(url, AUCTION_PRICE="1", now=NOW - 20)["kind"] == "win"  # small clock skew between replicas
    rejected("expired", urls(bid_ms=10**17)["nurl"], AUCTION_PRICE="1")
    rejected("expired", urls(bid_ms=0)["nurl"], AUCTION_PRICE="1")


@pytest.mark.parametrize(
    "price",
    [
        "1e400",
        "1" + "0" * 400,
        "nan",
        "NaN",
        "inf",
        "-1",
        "-0.5",
        " 1",
        "1_000",
        "0x10",
        "abc",
        "1.5.2",
        "",
        AUCTION_PRICE,
    ],
)
def test_malformed_clearing_prices(price):
    for kind in ("nurl", "burl"):
        rejected("malformed", urls()[kind], AUCTION_PRICE=price)


def test_a_clearing_price_above_our_bid_is_malformed_and_a_bad_loss_code_too():
    rejected("malformed", urls(price=4.0)["nurl"], AUCTION_PRICE="4.01")
    assert fire(urls(price=4.0)["nurl"], AUCTION_PRICE="4.0000001")["price_cpm"] == pytest.approx(4.0)
    for code in ("-1", "1.5", "x", str(2**31), "9" * 40):
        rejected("malformed", urls()["lurl"], AUCTION_LOSS=code)
    rejected("malformed", urls()["lurl"], AUCTION_MIN_TO_WIN="1e400")


def test_missing_repeated_long_and_unknown_parameters():
    url = urls()["nurl"].replace(AUCTION_PRICE, "1")
    parts = urlsplit(url)
    params = parse_qsl(parts.query)
    kind, entity = "win", "drugs_hcp"
    for name in ("r", "i", "u", "s", "b", "t", "x", "sig"):
        with pytest.raises(NoticeRejected, match=f"{name} is missing"):
            verify_notice(KEY, kind, entity, [p for p in params if p[0] != name], now=NOW, limits=LIMITS)
    with pytest.raises(NoticeRejected, match="appears twice"):
        verify_notice(KEY, kind, entity, params + [("p", "2")], now=NOW, limits=LIMITS)
    for name, value in (("r", "x" * 257), ("u", "u" * 65), ("t", "1" * 19), ("s", "-1"), ("x", "2"), ("b", "9" * 40)):
        with pytest.raises(NoticeRejected) as info:
            verify_notice(
                KEY, kind, entity, [(k, value if k == name else v) for k, v in params], now=NOW, limits=LIMITS
            )
        assert info.value.reason == "malformed" and info.value.status == 400, name
    # a parameter the exchange added is ignored; too many are not
    assert verify_notice(KEY, kind, entity, params + [("cb", "123")], now=NOW, limits=LIMITS)["kind"] == "win"
    with pytest.raises(NoticeRejected, match="more than"):
        verify_notice(KEY, kind, entity, params + [(f"z{i}", "") for i in range(40)], now=NOW, limits=LIMITS)


def test_unknown_kinds_and_entities():
    with pytest.raises(NoticeRejected) as info:
        verify_notice(KEY, "impression", "drugs_hcp", {}, now=NOW, limits=LIMITS)
    assert (info.value.reason, info.value.status) == ("unknown_kind", 404)
    other = NoticeSigner(KEY).urls("http://b", "auto_intenders", "r", "1", "u1", 1, 2.0, BID_MS, False)
    error = rejected("unknown_entity", other["nurl"], AUCTION_PRICE="1")
    assert error.status == 404
    assert fire(other["nurl"], AUCTION_PRICE="1", limits=Limits(3600.0))["entity_code"] == "auto_intenders"


@pytest.mark.parametrize("request_id", ["a&b=c", "spaces and + plus", "ünïcødé/?#%", "%41", "x" * 256])
def test_ids_of_any_characters_survive_the_url(request_id):
    u = urls(request_id=request_id, imp_id=request_id[:10])
    row = fire(u["nurl"], AUCTION_PRICE="1")
    assert (row["request_id"], row["imp_id"]) == (request_id, request_id[:10])

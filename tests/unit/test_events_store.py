"""The events store: parts by kind, entity and hour; reads by time range; replayed notices once."""

from datetime import datetime

import pytest

from bidopt.errors import InvalidConfig
from bidopt.events.schema import DECISIONS, NOTICES, dedupe_notices, rows_to_table
from bidopt.events.store import open_event_store


def _decision(ts: datetime, rid: str) -> dict:
    return {
        "event_time": ts,
        "entity_code": "e1",
        "request_id": rid,
        "imp_id": "1",
        "test": False,
        "bid": True,
        "bid_cpm": 1.5,
        "npi_matched": False,
    }


def test_parts_are_found_by_hour_and_read_by_time_range(tmp_path):
    store = open_event_store(f"file://{tmp_path}")
    h10, h11 = datetime(2026, 1, 1, 10, 5), datetime(2026, 1, 1, 11, 59)
    store.write_part(DECISIONS, "e1", h10, rows_to_table(DECISIONS, [_decision(h10, "a")]), writer_id="r:1", seq=1)
    store.write_part(DECISIONS, "e1", h11, rows_to_table(DECISIONS, [_decision(h11, "b")]), writer_id="r:1", seq=2)
    store.write_part(DECISIONS, "e2", h11, rows_to_table(DECISIONS, [_decision(h11, "c")]), writer_id="r:1", seq=3)
    (tmp_path / DECISIONS / "entity_code=e1" / "hour=20260101T11" / ".part-x.parquet.tmp").write_bytes(b"half")
    assert store.hours(DECISIONS, "e1") == [datetime(2026, 1, 1, 10), datetime(2026, 1, 1, 11)]
    assert store.read(DECISIONS, "e1")["request_id"].to_pylist() == ["a", "b"]
    assert store.read(DECISIONS, "e1", start=datetime(2026, 1, 1, 11))["request_id"].to_pylist() == ["b"]
    assert store.read(DECISIONS, "e1", end=datetime(2026, 1, 1, 10, 6))["request_id"].to_pylist() == ["a"]
    assert store.read(NOTICES, "e1").num_rows == 0
    with pytest.raises(InvalidConfig):
        store.read("bogus", "e1")
    with pytest.raises(InvalidConfig):
        store.read(DECISIONS, "../etc")


def test_a_replayed_notice_counts_once_first_arrival_kept():
    t = datetime(2026, 1, 1, 10)
    rows = [
        {
            "event_time": t.replace(second=s),
            "entity_code": "e1",
            "request_id": rid,
            "imp_id": "1",
            "kind": kind,
            "run_id": "r",
            "bid_cpm": 2.0,
            "bid_time": t,
            "price_cpm": price,
            "test": False,
        }
        for s, rid, kind, price in [
            (3, "a", "win", 1.0),
            (1, "a", "win", 1.5),
            (2, "a", "click", None),
            (4, "b", "win", 2.0),
        ]
    ]
    kept = dedupe_notices(rows_to_table(NOTICES, rows))
    assert sorted(zip(kept["request_id"].to_pylist(), kept["kind"].to_pylist(), kept["price_cpm"].to_pylist())) == [
        ("a", "click", None),
        ("a", "win", 1.5),
        ("b", "win", 2.0),
    ]


def test_parsed_parts_are_cached_but_new_parts_are_always_read(tmp_path, monkeypatch):
    from bidopt.events import store as store_module

    store = open_event_store(f"file://{tmp_path}")
    t = datetime(2026, 1, 1, 10)
    store.write_part(DECISIONS, "e1", t, rows_to_table(DECISIONS, [_decision(t, "a")]), writer_id="w", seq=1)
    assert store.read(DECISIONS, "e1")["request_id"].to_pylist() == ["a"]
    reads = []
    original = store_module.EventStore._read_part
    monkeypatch.setattr(
        store_module.EventStore, "_read_part", lambda self, k, s: reads.append(k) or original(self, k, s)
    )
    store.write_part(DECISIONS, "e1", t, rows_to_table(DECISIONS, [_decision(t, "b")]), writer_id="w", seq=2)
    assert store.read(DECISIONS, "e1")["request_id"].to_pylist() == ["a", "b"]
    assert len(reads) == 1 and reads[0].endswith("-00000002.parquet")  # the first part came from the cache


def test_the_part_cache_is_bounded_in_bytes():
    from bidopt.events.store import _PartCache

    cache = _PartCache(max_bytes=3000)
    tables = [rows_to_table(DECISIONS, [_decision(datetime(2026, 1, 1), str(i))] * 10) for i in range(5)]
    for i, table in enumerate(tables):
        cache.put(("u", str(i)), table)
    assert cache.bytes <= 3000 and cache.get(("u", "4")) is not None and cache.get(("u", "0")) is None

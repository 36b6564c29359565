"""The event writer against S3 (moto's server): parts land under the bucket's prefix and read back;
a bucket that is not there yet fails the writes, which are kept and retried under the same keys."""

import time
from datetime import datetime, timezone

import boto3

from bidopt.events.schema import DECISIONS, NOTICES
from bidopt.events.store import open_event_store
from bidopt.events.writer import EventWriter


def _decision(ts: float, rid: str) -> dict:
    return {
        "event_time": datetime.fromtimestamp(ts, timezone.utc).replace(tzinfo=None),
        "entity_code": "drugs_hcp",
        "request_id": rid,
        "imp_id": "1",
        "test": False,
        "bid": True,
        "bid_cpm": 2.0,
        "npi_matched": False,
    }


def test_the_writer_writes_parts_to_s3_and_retries_a_missing_bucket(s3_bucket, moto_server):
    url = f"s3://{s3_bucket}/events"
    now = time.time()
    writer = EventWriter(url, "host:1:abc", flush_seconds=3600, start=False)
    writer.add(DECISIONS, "drugs_hcp", now, _decision(now, "a"))
    writer.add(DECISIONS, "drugs_hcp", now - 3600, _decision(now - 3600, "b"))
    assert writer.flush() == 2
    store = open_event_store(url)
    assert sorted(store.read(DECISIONS, "drugs_hcp")["request_id"].to_pylist()) == ["a", "b"]
    assert len(store.hours(DECISIONS, "drugs_hcp")) == 2
    keys = boto3.client("s3", endpoint_url=moto_server).list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert all(k["Key"].startswith("events/decisions/entity_code=drugs_hcp/hour=") for k in keys)

    later = f"{s3_bucket}-later"
    pending = EventWriter(f"s3://{later}/events", "w2", flush_seconds=3600, start=False)
    pending.add(DECISIONS, "drugs_hcp", now, _decision(now, "c"))
    assert pending.flush() == 0 and pending.buffered == 1 and pending.write_failures == 1
    boto3.client("s3", endpoint_url=moto_server).create_bucket(Bucket=later)
    assert pending.close() == 0
    assert open_event_store(f"s3://{later}/events").read(DECISIONS, "drugs_hcp")["request_id"].to_pylist() == ["c"]
    assert open_event_store(f"s3://{later}/events").read(NOTICES, "drugs_hcp").num_rows == 0


def test_many_entities_parts_written_by_several_threads_all_land_and_read_back(s3_bucket, moto_server):
    """A flush of a replica serving many entities writes one part each, several at once on S3
    (``BIDOPT_EVENTS_WRITE_THREADS``); a missing bucket fails every one, and each is kept."""
    url = f"s3://{s3_bucket}/events"
    now = time.time()
    writer = EventWriter(url, "host:1:many", flush_seconds=3600, write_threads=8, start=False)
    entities = [f"e{i:02d}" for i in range(40)]
    for entity in entities:
        writer.add(DECISIONS, entity, now, _decision(now, f"{entity}-a") | {"entity_code": entity})
    assert writer.flush() == 40 and writer.stats()["write_failures"] == 0
    store = open_event_store(url)
    assert all(store.read(DECISIONS, e)["request_id"].to_pylist() == [f"{e}-a"] for e in entities)
    assert writer.close() == 0

    missing = EventWriter(f"s3://{s3_bucket}-none/events", "w3", flush_seconds=3600, write_threads=8, start=False)
    for entity in entities[:10]:
        missing.add(DECISIONS, entity, now, _decision(now, f"{entity}-b") | {"entity_code": entity})
    assert missing.flush() == 0 and missing.buffered == 10 and missing.write_failures == 10
    boto3.client("s3", endpoint_url=moto_server).create_bucket(Bucket=f"{s3_bucket}-none")
    assert missing.close() == 0
    assert open_event_store(f"s3://{s3_bucket}-none/events").read(DECISIONS, "e03")["request_id"].to_pylist() == [
        "e03-b"
    ]


def test_mixed_parts_on_s3_are_split_per_entity_and_deleted_in_one_call(s3_bucket, moto_server):
    """The bidder's layout: a flush of 40 entities is one put; the split writes a part per entity on
    the writer threads and deletes the mixed parts with S3's DeleteObjects."""
    url = f"s3://{s3_bucket}/mixed-events"
    now = time.time()
    writer = EventWriter(url, "host:1:mixed", flush_seconds=3600, write_threads=8, split_seconds=60, start=False)
    entities = [f"e{i:02d}" for i in range(40)]
    for round_ in range(3):
        for entity in entities:
            writer.add(DECISIONS, entity, now, _decision(now, f"{entity}-{round_}") | {"entity_code": entity})
        assert writer.flush() == 40
    client = boto3.client("s3", endpoint_url=moto_server)

    def listed():
        return [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="mixed-events/").get("Contents", [])]

    assert len(listed()) == 3 and all("/mixed/" in k for k in listed())  # one put a flush
    store = open_event_store(url)
    want = {e: [f"{e}-{r}" for r in range(3)] for e in entities}
    assert {e: sorted(store.read(DECISIONS, e)["request_id"].to_pylist()) for e in entities} == want
    assert writer.split() == 40
    assert len(listed()) == 40 and not [k for k in listed() if "/mixed/" in k]
    assert {e: sorted(store.read(DECISIONS, e)["request_id"].to_pylist()) for e in entities} == want
    assert writer.close() == 0

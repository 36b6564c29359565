"""The event writer: buffered rows, one part per (kind, entity, hour) per flush, retries of a store
that fails, a bounded buffer, and what a process that is killed loses."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone

import pytest

from bidopt.events.schema import DECISIONS, NOTICES
from bidopt.events.store import open_event_store
from bidopt.events.writer import EventWriter

H10 = datetime(2026, 1, 1, 10, 5, tzinfo=timezone.utc).timestamp()
H11 = H10 + 3600


def decision(ts: float, rid: str, entity="e1") -> dict:
    return {
        "event_time": datetime.fromtimestamp(ts, timezone.utc).replace(tzinfo=None),
        "entity_code": entity,
        "request_id": rid,
        "imp_id": "1",
        "test": False,
        "bid": True,
        "bid_cpm": 1.5,
        "npi_matched": False,
    }


def add(writer, ts, rid, entity="e1"):
    writer.add(DECISIONS, entity, ts, decision(ts, rid, entity))


def test_one_part_per_kind_entity_and_hour_with_sequence_numbers(tmp_path):
    store = open_event_store(f"file://{tmp_path}")
    w = EventWriter(store, "host:1:ab", start=False)
    add(w, H10, "a")
    add(w, H10 + 1, "b")
    add(w, H11, "c")
    add(w, H10, "d", entity="e2")
    assert w.buffered == 4 and store.read(DECISIONS, "e1").num_rows == 0  # nothing written before a flush
    assert w.flush() == 4 and w.buffered == 0
    keys = sorted(store.store.list_keys(""))
    assert len(keys) == 3 and all("part-host-1-ab-0000000" in k for k in keys)
    assert len({k.rsplit("-", 1)[1] for k in keys}) == 3  # each part its own sequence number
    assert sorted(store.read(DECISIONS, "e1")["request_id"].to_pylist()) == ["a", "b", "c"]
    add(w, H10 + 2, "e")
    w.flush()
    assert sorted(store.read(DECISIONS, "e1")["request_id"].to_pylist()) == ["a", "b", "c", "e"]
    assert w.flush() == 0 and len(store.store.list_keys("")) == 4  # an empty flush writes nothing
    assert w.stats() | {"last_error": None} == {
        "written": 5,
        "buffered": 0,
        "dropped": 0,
        "write_failures": 0,
        "last_error": None,
        "queued_bytes": 0,
        "unsplit": 0,
        "splits_abandoned": 0,
    }


class FlakyStore:
    """An events store whose writes fail while ``down``; records the keys it was asked to write."""

    def __init__(self, real):
        self.real, self.down, self.attempts, self.url = real, False, [], real.url

    def write_part(self, kind, entity, hour, table, *, writer_id, seq):
        self.attempts.append((kind, entity, seq))
        if self.down:
            raise ConnectionError("store unreachable")
        return self.real.write_part(kind, entity, hour, table, writer_id=writer_id, seq=seq)


def test_a_failed_write_keeps_its_rows_and_retries_them_under_the_same_key(tmp_path):
    real = open_event_store(f"file://{tmp_path}")
    flaky = FlakyStore(real)
    w = EventWriter(real, "w1", start=False)
    w.store = flaky
    flaky.down = True
    add(w, H10, "a")
    assert w.flush() == 0 and w.buffered == 1 and w.write_failures == 1 and "unreachable" in w.last_error
    add(w, H10 + 1, "b")
    assert w.flush() == 0 and w.buffered == 2
    flaky.down = False
    assert w.flush() == 2 and w.buffered == 0
    assert sorted(real.read(DECISIONS, "e1")["request_id"].to_pylist()) == ["a", "b"]
    first_seq = flaky.attempts[0][2]
    assert [a[2] for a in flaky.attempts].count(first_seq) == 3  # the same part, the same key, each time
    assert len(real.store.list_keys("")) == 2


def test_one_unwritable_part_blocks_neither_the_others_nor_itself_for_ever(tmp_path):
    """A part that can never be written (an entity code the store refuses) is dropped and counted;
    a part whose write fails for a while (one entity's store prefix down) does not hold the others."""
    real = open_event_store(f"file://{tmp_path}")
    flaky = FlakyStore(real)
    w = EventWriter(real, "w1", start=False)
    w.store = flaky
    add(w, H10, "bad", entity="Not Valid!")
    add(w, H10, "good", entity="e1")
    assert w.flush() == 1 and w.dropped == 1 and w.buffered == 0
    assert real.read(DECISIONS, "e1")["request_id"].to_pylist() == ["good"]

    real_write = flaky.write_part

    def e2_down(kind, entity, hour, table, *, writer_id, seq):
        if entity == "e2":
            raise ConnectionError("e2's prefix unreachable")
        return real_write(kind, entity, hour, table, writer_id=writer_id, seq=seq)

    flaky.write_part = e2_down
    add(w, H10 + 1, "x", entity="e2")
    add(w, H10 + 1, "y", entity="e1")
    assert w.flush() == 1 and w.buffered == 1  # e1 went through behind e2's failure
    flaky.write_part = real_write
    assert w.flush() == 1 and real.read(DECISIONS, "e2")["request_id"].to_pylist() == ["x"]


def test_the_buffer_is_bounded_and_drops_the_oldest(tmp_path):
    real = open_event_store(f"file://{tmp_path}")
    flaky = FlakyStore(real)
    w = EventWriter(real, "w1", start=False, max_buffered=5)
    w.store = flaky
    flaky.down = True
    for i in range(4):
        add(w, H10 + i, f"old{i}")
    w.flush()  # 4 rows kept from the failed write
    for i in range(4):
        add(w, H10 + 10 + i, f"new{i}")
    w.flush()  # still down: 8 rows, the 3 oldest go
    assert (w.buffered, w.dropped) == (5, 3)
    for i in range(7):  # the queue between two flushes is bounded too
        add(w, H10 + 20 + i, f"late{i}")
    assert w.dropped == 5
    flaky.down = False
    w.flush()
    assert sorted(real.read(DECISIONS, "e1")["request_id"].to_pylist()) == sorted(
        ["old3", "new0", "new1", "new2", "new3"] + [f"late{i}" for i in range(2, 7)]
    )


def test_close_flushes_and_the_thread_writes_on_its_own(tmp_path):
    store = open_event_store(f"file://{tmp_path}")
    w = EventWriter(store, "w1", flush_seconds=0.05)
    add(w, H10, "a")
    deadline = time.time() + 10
    while store.read(DECISIONS, "e1").num_rows == 0:
        assert time.time() < deadline, "the flush thread wrote nothing"
        time.sleep(0.02)
    w2 = EventWriter(store, "w2", flush_seconds=3600)
    w2.add(NOTICES, "e1", H10, None)  # a row that does not fit the schema: dropped, counted, never raised
    add(w2, H10, "b")
    assert w2.close() == 0
    assert sorted(store.read(DECISIONS, "e1")["request_id"].to_pylist()) == ["a", "b"] and w2.dropped == 1
    w.close()


CRASHER = textwrap.dedent(
    """
    import sys, time
    from datetime import datetime, timezone
    from bidopt.events.schema import DECISIONS
    from bidopt.events.writer import EventWriter

    writer = EventWriter(sys.argv[1], "crasher", float(sys.argv[2]), split_seconds=float(sys.argv[3]))
    i = 0
    while True:
        now = time.time()
        at = datetime.fromtimestamp(now, timezone.utc).replace(tzinfo=None)
        writer.add(DECISIONS, "e1", now, {"event_time": at, "entity_code": "e1", "request_id": f"r{i}",
                                          "imp_id": "1", "test": False, "bid": False, "npi_matched": False})
        if i == 0:
            print("recording", flush=True)
        i += 1
        time.sleep(0.005)
    """
)


@pytest.mark.parametrize("split_seconds", [0, 1.7], ids=["parts per entity", "mixed parts split every 1.7 s"])
def test_a_killed_process_loses_at_most_its_last_flush_interval(tmp_path, split_seconds):
    """Killed at any moment, a split half done included, the writer leaves each event in the store
    once or not at all, and only its last flush interval's are missing."""
    flush_seconds, margin = 0.5, 0.5
    url = f"file://{tmp_path / 'events'}"
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHER, url, str(flush_seconds), str(split_seconds)],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ,
    )
    try:
        assert proc.stdout.readline().strip() == "recording"
        time.sleep(3)
    finally:
        killed_at = time.time()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    table = open_event_store(url).read(DECISIONS, "e1")
    times = [t.replace(tzinfo=timezone.utc).timestamp() for t in table["event_time"].to_pylist()]
    ids = {int(r[1:]) for r in table["request_id"].to_pylist()}
    assert len(ids) == len(times) and ids == set(range(len(ids)))  # nothing twice, no gap
    assert max(times) > killed_at - flush_seconds - margin  # it lost at most the last interval (+ a flush)
    assert len(ids) > 100
    if split_seconds:  # it split at 2 s, and was killed at 3 s with mixed parts not yet split
        names = open_event_store(url).store.list_keys(DECISIONS)
        assert any("/split-crasher-" in k for k in names) and any("/mixed/" in k for k in names)


def test_a_large_flush_is_rendered_in_chunks_and_loses_nothing(tmp_path):
    from bidopt.events.writer import RENDER_CHUNK

    store = open_event_store(f"file://{tmp_path}")
    w = EventWriter(store, "w1", start=False)
    n = 2 * RENDER_CHUNK + 7
    for i in range(n):
        add(w, H10 + i / 1000, f"r{i}")
    assert w.flush() == n
    assert store.read(DECISIONS, "e1")["request_id"].to_pylist() == [f"r{i}" for i in range(n)]
    assert len(store.store.list_keys("")) == 1  # still one part


def test_what_queued_events_hold_alive_is_bounded_in_bytes(tmp_path):
    """Decisions keep their parsed request until the flush: a store that stalls, or large hostile
    requests, must not grow the queue past its byte budget (the oldest go, counted)."""
    w = EventWriter(open_event_store(f"file://{tmp_path}"), "w1", start=False, max_queued_bytes=10_000)
    for i in range(30):
        w.add_many(DECISIONS, "e1", H10 + i, [decision(H10 + i, f"r{i}"), decision(H10 + i, f"r{i}b")], nbytes=1_000)
    assert w.stats()["queued_bytes"] <= 10_000 and w.dropped >= 39  # 20 of the 30 requests' decisions
    left = w.buffered
    assert left <= 21 and w.flush() == left and w.stats()["queued_bytes"] == 0
    assert store_rows(tmp_path)[-1] == "r29b"  # the newest kept


def store_rows(tmp_path):
    return sorted(
        open_event_store(f"file://{tmp_path}").read(DECISIONS, "e1")["request_id"].to_pylist(),
        key=lambda r: (int(r[1:].rstrip("b")), r),
    )


class SlowStore(FlakyStore):
    """A store whose every write takes ``seconds`` (an object store's latency), counting the writes in
    flight at once."""

    def __init__(self, real, seconds=0.05):
        import threading

        super().__init__(real)
        self.seconds, self.in_flight, self.most_in_flight = seconds, 0, 0
        self._count = threading.Lock()

    def write_part(self, kind, entity, hour, table, *, writer_id, seq):
        with self._count:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            time.sleep(self.seconds)
            if entity == "down":
                self.attempts.append((kind, entity, seq))
                raise ConnectionError("this entity's prefix is unreachable")
            return super().write_part(kind, entity, hour, table, writer_id=writer_id, seq=seq)
        finally:
            with self._count:
                self.in_flight -= 1


def test_a_flushs_parts_are_written_by_several_threads_and_each_outcome_is_counted(tmp_path, caplog):
    """Hundreds of entities mean hundreds of parts per flush: one after another at an object store's
    latency they would outlast the flush interval. Written concurrently, each part's outcome still
    counts as before: written, kept for a retry under the same key, or dropped."""
    real = open_event_store(f"file://{tmp_path}")
    local = SlowStore(real, seconds=0.01)
    w0 = EventWriter(real, "w0", write_threads=4, start=False)
    w0.store = local
    for i in range(4):
        add(w0, H10, f"l{i}", entity=f"e{i}")
    # the local folder's writes are this process's CPU: threads would only contend for the GIL
    assert w0.flush() == 4 and local.most_in_flight == 1
    real.store.concurrent_puts = True  # as S3's are: they wait on the network
    slow = SlowStore(real)
    w = EventWriter(real, "w1", write_threads=4, start=False)
    w.store = slow
    for i in range(10):
        add(w, H10, f"r{i}", entity=f"e{i}")
    add(w, H10, "later", entity="down")
    add(w, H10, "never", entity="Not Valid!")
    assert w.flush() == 10
    assert slow.most_in_flight >= 2  # in flight together, not one after another
    assert (w.written, w.dropped, w.buffered, w.write_failures) == (10, 1, 1, 1)
    assert all(f"r{i}" in real.read(DECISIONS, f"e{i}")["request_id"].to_pylist() for i in range(10))
    seq = next(s for _, entity, s in slow.attempts if entity == "down")
    slow.write_part = lambda kind, entity, hour, table, *, writer_id, seq: real.write_part(
        kind, entity, hour, table, writer_id=writer_id, seq=seq
    )
    assert w.flush() == 1 and real.read(DECISIONS, "down")["request_id"].to_pylist() == ["later"]
    assert [k for k in real.store.list_keys("decisions/entity_code=down/") if k.endswith(f"-{seq:08d}.parquet")]
    assert w.close() == 0
    after = SlowStore(real, seconds=0.01)
    w.store = after
    for i in range(3):  # a writer closed early still writes, in its own thread
        add(w, H10 + 5, f"after{i}", entity=f"e{i}")
    assert w.flush() == 3 and after.most_in_flight == 1
    assert "in threads" not in caplog.text  # not a pool shut down and refusing: no pool any more

    class NoThreads:
        def map(self, *_args):
            raise RuntimeError("can't start new thread")

    w2 = EventWriter(real, "w3", write_threads=4, start=False)
    w2._writers = NoThreads()  # as a thread limit, or the interpreter exiting, would have it
    for i in range(3):
        add(w2, H10 + 6, f"nothread{i}", entity=f"e{i}")
    assert w2.flush() == 3 and (w2.buffered, w2.dropped) == (0, 0)  # one at a time instead, none lost

    one = SlowStore(real, seconds=0.01)
    w1 = EventWriter(real, "w2", start=False)  # the default: one thread, the flusher's own
    w1.store = one
    for i in range(4):
        add(w1, H10, f"s{i}", entity=f"e{i}")
    assert w1.flush() == 4 and one.most_in_flight == 1


def test_write_threads_below_one_is_refused(tmp_path):
    import pytest

    from bidopt.errors import InvalidConfig

    with pytest.raises(InvalidConfig, match="write_threads"):
        EventWriter(open_event_store(f"file://{tmp_path}"), "w1", write_threads=0, start=False)

"""The mixed layout: a flush writes one part per kind and hour for every entity, split into per-entity
parts later; a reader sees each row once before, during and after a split, whatever the writer's
failures, and a split given up loses nothing."""

from datetime import datetime, timedelta, timezone

import pytest

from bidopt.errors import NotFound
from bidopt.events.schema import DECISIONS, NOTICES
from bidopt.events.store import MIXED, open_event_store
from bidopt.events.writer import EventWriter

H10 = datetime(2026, 1, 1, 10, 5, tzinfo=timezone.utc).timestamp()
H11 = H10 + 3600
ENTITIES = [f"e{i}" for i in range(5)]


@pytest.fixture(autouse=True)
def writers_clock(monkeypatch):
    """The wall clock the writers judge an hour late by (LATE_SECONDS): 11:15 on the day of these
    events, so hours 10 and 11 are not; a test moves ``clock["now"]``."""
    import bidopt.events.writer as writer_module

    clock = {"now": H11 + 600}
    monkeypatch.setattr(writer_module, "wall_clock", lambda: clock["now"])
    return clock


def decision(ts: float, rid: str, entity: str) -> dict:
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


def notice(ts: float, rid: str, entity: str) -> dict:
    at = datetime.fromtimestamp(ts, timezone.utc).replace(tzinfo=None)
    return {"event_time": at, "entity_code": entity, "request_id": rid, "imp_id": "1", "kind": "win"} | {
        "run_id": "r",
        "bid_cpm": 1.5,
        "bid_time": at,
        "price_cpm": 1.0,
        "test": False,
    }


def fill(writer: EventWriter, flushes: int = 3, start: float = H10) -> dict[str, list[str]]:
    """``flushes`` flushes of a decision per entity (and a notice for e0); what each entity should read."""
    expected: dict[str, list[str]] = {e: [] for e in ENTITIES}
    for f in range(flushes):
        for e in ENTITIES:
            rid = f"{e}-{start:.0f}-{f}"
            writer.add(DECISIONS, e, start + f, decision(start + f, rid, e))
            expected[e].append(rid)
        writer.add(NOTICES, "e0", start + f, notice(start + f, f"e0-{f}", "e0"))
        writer.flush()
    return expected


def reads(store) -> dict[str, list[str]]:
    return {e: sorted(store.read(DECISIONS, e)["request_id"].to_pylist()) for e in ENTITIES}


def keys(store, where: str) -> list[str]:
    return [k for k in store.store.list_keys("") if where in k]


class Watched:
    """An events store that runs ``after_each`` after every part it writes and every delete, so a test
    can read at each step of a split; ``fail`` decides which writes raise."""

    def __init__(self, real):
        self.real, self.url = real, real.url
        self.after_each = lambda: None
        self.fail = lambda key: False
        self.deleted: list[str] = []

    def __getattr__(self, name):
        return getattr(self.real, name)

    def _put(self, key, write):
        if self.fail(key):
            raise ConnectionError(f"store unreachable for {key}")
        out = write()
        self.after_each()
        return out

    def write_mixed_part(self, kind, hour, table, *, writer_id, seq):
        key = self.real.mixed_part_key(kind, hour, writer_id, seq)
        return self._put(key, lambda: self.real.write_mixed_part(kind, hour, table, writer_id=writer_id, seq=seq))

    def write_split_part(self, kind, entity, hour, table, *, writer_id, first, last):
        key = self.real.split_part_key(kind, entity, hour, writer_id, first, last)
        return self._put(
            key,
            lambda: self.real.write_split_part(kind, entity, hour, table, writer_id=writer_id, first=first, last=last),
        )

    def delete_parts(self, keys):
        for key in keys:
            if self.fail(key):
                raise ConnectionError(f"cannot delete {key}")
            self.real.store.delete(key)
            self.deleted.append(key)
            self.after_each()


def writer_on(tmp_path, **kwargs):
    real = open_event_store(f"file://{tmp_path}")
    w = EventWriter(real, "host:1:ab", split_seconds=3600, start=False, **kwargs)
    watched = Watched(real)
    w.store = watched
    return real, watched, w


def test_a_flush_is_one_part_per_kind_and_hour_for_every_entity_and_a_split_makes_them_per_entity(tmp_path):
    real, _, w = writer_on(tmp_path)
    expected = fill(w, flushes=3)
    w.add(DECISIONS, "e1", H11, decision(H11, "late", "e1"))  # another hour: a mixed part of its own
    expected["e1"].append("late")
    w.flush()
    mixed = keys(real, f"/{MIXED}/")
    assert len(mixed) == 3 * 2 + 1 and not keys(real, "entity_code=")  # 5 entities, one put per kind a flush
    assert reads(real) == {e: sorted(rids) for e, rids in expected.items()}
    assert real.hours(DECISIONS, "e1") == [datetime(2026, 1, 1, 10), datetime(2026, 1, 1, 11)]
    assert real.hours(DECISIONS, "e2") == [datetime(2026, 1, 1, 10)]  # e2 has no row in 11's part
    assert real.hours(NOTICES, "e0") == [datetime(2026, 1, 1, 10)] and real.hours(NOTICES, "e1") == []
    assert w.unsplit == 3 * 6 + 1

    assert w.split() == 5 + 1 + 1  # decisions of 5 entities in 10, e0's notices, e1's decision in 11
    assert not keys(real, f"/{MIXED}/") and w.unsplit == 0
    splits = keys(real, "split-")
    assert len(splits) == 7 and all("split-host-1-ab-00000001-00000007.parquet" in k for k in splits)
    assert reads(real) == {e: sorted(rids) for e, rids in expected.items()}
    assert real.read(NOTICES, "e0").num_rows == 3 and real.hours(DECISIONS, "e1")[-1] == datetime(2026, 1, 1, 11)
    assert w.split() == 0  # nothing new


def test_a_reader_sees_every_row_once_at_every_step_of_a_split(tmp_path):
    real, watched, w = writer_on(tmp_path)
    expected = {e: sorted(r) for e, r in fill(w, flushes=4).items()}
    seen = []

    def check():
        seen.append(reads(real))

    watched.after_each = check
    w.split()
    assert len(seen) == 5 + 1 + 4 * 2  # after each split part and each delete
    assert all(step == expected for step in seen)


def test_a_split_landing_between_a_readers_two_listings_or_before_its_get_is_read_once(tmp_path, monkeypatch):
    """The reader lists the mixed parts, then the entity's own: a split (parts written, mixed parts
    deleted) in between hides the mixed parts; one after the listings makes the get fail, and the
    reader lists again."""
    for moment in ("between the listings", "before the get"):
        folder = tmp_path / moment.replace(" ", "_")
        real, _, w = writer_on(folder)
        expected = sorted(fill(w, flushes=2)["e3"])
        store_keys = real.store.list_keys
        done = []

        def list_then_split(prefix="", moment=moment):
            got = store_keys(prefix)
            if not done and (
                (moment == "between the listings" and f"/{MIXED}/" in prefix)
                or prefix.startswith(f"{DECISIONS}/entity_code=e3/")
                and moment == "before the get"
            ):
                done.append(w.split())
            return got

        monkeypatch.setattr(real.store, "list_keys", list_then_split)
        assert sorted(real.read(DECISIONS, "e3")["request_id"].to_pylist()) == expected, moment
        assert done == [6], moment  # the split did happen mid-read (5 entities, e0's notices)
        assert not store_keys(f"{DECISIONS}/{MIXED}/")


def test_a_mixed_part_not_yet_written_holds_the_split_and_nothing_is_lost(tmp_path):
    """A split covers a range of the writer's mixed parts: one covering a part written later would hide
    that part's rows from readers, so the split waits for every part of its range."""
    real, watched, w = writer_on(tmp_path)
    down = {"on": True}
    watched.fail = lambda key: down["on"] and f"/{MIXED}/" in key and key.endswith("-00000002.parquet")
    expected = {e: sorted(r) for e, r in fill(w, flushes=2).items()}
    assert w.buffered == 1  # the notice part of the first flush (seq 2) is kept for a retry
    assert w.split() == 0 and keys(real, "split-") == []  # held: part 2 is not in the store
    down["on"] = False
    w.flush()  # part 2 written now
    assert w.split() == 6 and reads(real) == expected and real.read(NOTICES, "e0").num_rows == 2
    assert not keys(real, f"/{MIXED}/")


def test_a_split_that_fails_half_way_is_finished_later_and_reads_stay_right(tmp_path):
    real, watched, w = writer_on(tmp_path, write_threads=4)
    expected = {e: sorted(r) for e, r in fill(w, flushes=2).items()}
    down = {"on": True}
    watched.fail = lambda key: down["on"] and ("entity_code=e2/" in key or f"/{MIXED}/" in key)
    assert w.split() == 5  # all but e2's
    assert reads(real) == expected and len(keys(real, f"/{MIXED}/")) == 4  # nothing deleted yet
    fill(w, flushes=1, start=H10 + 100)  # fails: its mixed parts go nowhere (store down for them)
    down["on"] = False
    w.flush()
    assert w.split() == 1 + 6  # e2's, then the second split
    assert not keys(real, f"/{MIXED}/") and w.unsplit == 0
    got = reads(real)
    assert all(len(got[e]) == 3 for e in ENTITIES) and all(len(set(got[e])) == 3 for e in ENTITIES)
    assert real.read(NOTICES, "e0").num_rows == 3


def test_a_split_given_up_past_the_bound_loses_no_event(tmp_path):
    real, watched, w = writer_on(tmp_path, max_buffered=12)
    watched.fail = lambda key: "split-" in key  # splits never go through
    expected = {e: sorted(r) for e, r in fill(w, flushes=2).items()}
    w.split()  # begun, failing
    expected2 = fill(w, flushes=2, start=H10 + 100)
    assert w.splits_abandoned >= 1 and w.unsplit <= 12 and w.dropped == 0
    assert reads(real) == {e: sorted(expected[e] + expected2[e]) for e in ENTITIES}
    watched.fail = lambda key: False
    w.split()
    assert reads(real) == {e: sorted(expected[e] + expected2[e]) for e in ENTITIES}
    assert keys(real, f"/{MIXED}/")  # the given-up parts are still read as they are


def test_close_splits_and_a_bad_entity_code_is_dropped_not_written(tmp_path):
    real = open_event_store(f"file://{tmp_path}")
    w = EventWriter(real, "w1", split_seconds=60, flush_seconds=3600)
    w.add(DECISIONS, "Not Valid!", H10, decision(H10, "bad", "Not Valid!"))
    w.add(DECISIONS, "e1", H10, decision(H10, "good", "e1"))
    assert w.close() == 0 and w.dropped == 1 and w.unsplit == 0
    assert keys(real, f"/{MIXED}/") == [] and real.read(DECISIONS, "e1")["request_id"].to_pylist() == ["good"]
    assert w.stats()["splits_abandoned"] == 0


def test_the_flush_splits_when_split_seconds_have_passed(tmp_path, monkeypatch):
    import bidopt.events.writer as writer_module

    clock = {"now": 1000.0}
    monkeypatch.setattr(writer_module.time, "monotonic", lambda: clock["now"])
    real = open_event_store(f"file://{tmp_path}")
    w = EventWriter(real, "w1", split_seconds=60, start=False)
    fill(w, flushes=2)
    assert keys(real, "split-") == []
    clock["now"] += 61
    fill(w, flushes=1, start=H10 + 50)
    assert len(keys(real, "split-")) == 6 and not keys(real, f"/{MIXED}/")
    small = EventWriter(real, "w2", split_seconds=60, max_unsplit_bytes=1, start=False)
    fill(small, flushes=1, start=H10 + 80)  # a minute has not passed, but the rows waiting take too much memory
    assert small.unsplit == 0 and len(keys(real, "split-w2-")) == 6


def test_split_seconds_below_zero_is_refused(tmp_path):
    from bidopt.errors import InvalidConfig

    with pytest.raises(InvalidConfig):
        EventWriter(open_event_store(f"file://{tmp_path}"), "w1", split_seconds=-1, start=False)


def test_an_entitys_own_part_that_vanishes_is_an_error_not_an_empty_read(tmp_path, monkeypatch):
    """Only mixed parts are deleted (once split): a missing own part is the store losing data."""
    real, _, w = writer_on(tmp_path)
    fill(w, flushes=1)
    w.split()
    from bidopt.events import store as store_module

    monkeypatch.setattr(store_module, "_PARTS", store_module._PartCache(1))  # nothing cached
    monkeypatch.setattr(type(real), "_read_part", lambda self, key, schema: (_ for _ in ()).throw(NotFound(key)))
    with pytest.raises(NotFound, match="vanished"):
        real.read(DECISIONS, "e1")


def test_mixed_parts_given_up_before_a_split_began_are_covered_by_no_later_split(tmp_path):
    real, _, w = writer_on(tmp_path, max_buffered=12)
    expected = fill(w, flushes=3)  # 18 rows unsplit at the third flush: given up
    assert w.splits_abandoned == 1 and w.unsplit == 0 and w.dropped == 0
    later = fill(w, flushes=1, start=H10 + 100)
    assert w.split() == 6
    assert reads(real) == {e: sorted(expected[e] + later[e]) for e in ENTITIES}
    assert len(keys(real, f"/{MIXED}/")) == 6  # the given-up ones, read as they are


def test_the_bound_gives_up_splits_that_hold_rows_not_one_with_only_its_delete_left(tmp_path):
    """A split written whole but not yet deleted holds no rows: giving it up frees nothing and would
    leave its mixed parts for ever."""
    real, watched, w = writer_on(tmp_path, max_buffered=12)
    expected = fill(w, flushes=1)
    watched.fail = lambda key: "/mixed/" in key and key.endswith("-00000001.parquet")  # its delete fails
    assert w.split() == 6 and keys(real, f"/{MIXED}/")
    first_delete = watched.fail
    watched.fail = lambda key: "split-" in key or first_delete(key)  # and the next split's parts: 12 rows held
    for e, rows in fill(w, flushes=2, start=H10 + 10).items():
        expected[e] += rows
    w.split()
    for e, rows in fill(w, flushes=1, start=H10 + 20).items():  # 18 rows held: past the bound
        expected[e] += rows
    assert w.splits_abandoned == 1
    watched.fail = lambda key: False
    w.split()  # the first split's delete goes through now; the one given up stays readable as it is
    assert not any(k.endswith(("-00000001.parquet", "-00000002.parquet")) for k in keys(real, f"/{MIXED}/"))
    assert reads(real) == {e: sorted(rows) for e, rows in expected.items()}


def test_a_bad_batch_is_dropped_alone_and_rows_go_by_the_entity_they_were_queued_for(tmp_path):
    """One entity's batch that does not fit the schema (a null in a required column) must not hold the
    mixed part of every other entity; a row naming another entity than the one it was queued for is
    that entity's, as it was when each entity had parts of its own."""
    real, _, w = writer_on(tmp_path)
    w.add(DECISIONS, "e1", H10, decision(H10, "bad", "e1") | {"request_id": None})
    w.add(DECISIONS, "e2", H10, decision(H10, "good", "e2"))
    w.add(DECISIONS, "e3", H10, decision(H10, "queued for e3", "e4"))
    assert w.flush() == 2 and w.dropped == 1 and w.buffered == 0
    assert real.read(DECISIONS, "e2")["request_id"].to_pylist() == ["good"]
    assert real.read(DECISIONS, "e3")["request_id"].to_pylist() == ["queued for e3"]
    assert w.split() == 2 and real.read(DECISIONS, "e3")["request_id"].to_pylist() == ["queued for e3"]
    assert real.read(DECISIONS, "e4").num_rows == 0 and not keys(real, f"/{MIXED}/")


def test_a_failing_store_does_not_retry_the_splits_at_every_flush(tmp_path):
    """With a part of the next split's range unwritten, the memory trigger must not run the pending
    splits every flush: at a flush a second that would be hundreds of failing puts a second."""
    real, watched, w = writer_on(tmp_path, max_unsplit_bytes=1)
    attempts = []
    watched.fail = lambda key: ("split-" in key and not attempts.append(key)) or key.endswith("-00000004.parquet")
    fill(w, flushes=1)  # parts 1 and 2: the memory trigger begins a split, whose writes fail
    tried = len(attempts)
    assert tried == 6 and w.buffered == 0
    fill(w, flushes=3, start=H10 + 10)  # part 4 (the notices of the second flush) keeps failing
    for _ in range(27):
        w.flush()
    # no retry of the pending split at each flush: after 2, 4, 8, 16 flushes (up to a split interval)
    assert len(attempts) == tried * 4 and w.buffered == 1
    watched.fail = lambda key: False
    w.flush()  # part 4 written: the memory trigger splits (the pending split, then the rest)
    assert w.unsplit == 0 and not keys(real, f"/{MIXED}/") and len(keys(real, "split-")) == 6 + 6
    assert all(len(rows) == 4 for rows in reads(real).values()) and real.read(NOTICES, "e0").num_rows == 4


def test_a_mixed_part_past_the_bound_is_dropped_whole_never_re_keyed(tmp_path):
    """Kept mixed parts beyond ``max_buffered`` go whole, oldest first: the rest of one under a new key
    would be read twice beside the full part, had a write reported as failed gone through."""
    real, watched, w = writer_on(tmp_path, max_buffered=4)
    watched.fail = lambda key: True
    for f in range(2):
        for e in ENTITIES[:3]:
            w.add(DECISIONS, e, H10 + f, decision(H10 + f, f"{e}-{f}", e))
        w.flush()
    assert (w.buffered, w.dropped) == (3, 3) and [p.seq for p in w._failed] == [2]
    watched.fail = lambda key: False
    w.flush()
    assert {e: real.read(DECISIONS, e)["request_id"].to_pylist() for e in ENTITIES[:3]} == {
        e: [f"{e}-1"] for e in ENTITIES[:3]
    }


def test_hours_lists_an_entitys_own_parts_and_reads_only_mixed_parts_of_other_hours(tmp_path, monkeypatch):
    """Compaction asks every entity's hours: that must not read the entity's whole history."""
    from bidopt.events import store as store_module

    real, _, w = writer_on(tmp_path)
    fill(w, flushes=2)
    w.split()
    fill(w, flushes=1, start=H11)  # hour 11 only in mixed parts
    monkeypatch.setattr(store_module, "_PARTS", store_module._PartCache(1))  # nothing cached
    read = []
    original = type(real)._read_part
    monkeypatch.setattr(
        type(real), "_read_part", lambda self, key, schema: read.append(key) or original(self, key, schema)
    )
    assert real.hours(DECISIONS, "e1") == [datetime(2026, 1, 1, 10), datetime(2026, 1, 1, 11)]
    assert read and all(f"/{MIXED}/hour=20260101T11/" in key for key in read)


def test_a_read_of_a_few_hours_finds_the_mixed_parts_of_those_hours(tmp_path):
    """Compaction and guardrail ticks read bounded windows: their mixed folders are listed hour by hour."""
    real, _, w = writer_on(tmp_path)
    early = fill(w, flushes=2)
    late = fill(w, flushes=1, start=H11)
    h10, h11 = datetime(2026, 1, 1, 10), datetime(2026, 1, 1, 11)
    for e in ENTITIES:
        window = real.read(DECISIONS, e, h10 - timedelta(minutes=1), h11 + timedelta(minutes=1))
        assert sorted(window["request_id"].to_pylist()) == sorted(early[e]), e
        assert sorted(real.read(DECISIONS, e, h11, h11 + timedelta(hours=2))["request_id"].to_pylist()) == late[e]
        assert real.read(DECISIONS, e, h10 + timedelta(hours=2), h10 + timedelta(hours=3)).num_rows == 0
    assert real.read(NOTICES, "e0", h10, h10 + timedelta(hours=49)).num_rows == 3  # the whole folder listed


def test_a_mixed_flush_renders_every_entity_together_and_a_failing_render_loses_one_entity(tmp_path):
    """The mixed layout renders a chunk of every entity's events at a time, not a table per entity
    (at 500 entities a flush, the tables were most of its CPU); where a render fails, each entity is
    tried alone and only the one at fault is dropped."""
    from bidopt.events.writer import RENDER_CHUNK, dict_rows

    calls = []

    def render(items):
        calls.append({entity for entity, _, _ in items})
        if any(row["request_id"] == "boom" for _, _, row in items):
            raise RuntimeError("a bug in the render")
        return dict_rows(items)

    real = open_event_store(f"file://{tmp_path}")
    w = EventWriter(real, "w1", split_seconds=60, start=False, render={DECISIONS: render})
    entities = [f"e{i}" for i in range(RENDER_CHUNK + 50)]
    for e in entities:
        w.add(DECISIONS, e, H10, decision(H10, f"{e}-r", e))
    assert w.flush() == len(entities)
    assert len(calls) == 2 and len(calls[0]) == RENDER_CHUNK  # two chunks, not a table per entity
    assert real.read(DECISIONS, "e7")["request_id"].to_pylist() == ["e7-r"]
    calls.clear()
    for e in entities[:3]:
        w.add(DECISIONS, e, H10 + 1, decision(H10 + 1, "boom" if e == "e1" else f"{e}-s", e))
    assert w.flush() == 2 and w.dropped == 1
    assert calls[0] == {"e0", "e1", "e2"} and calls[1:] == [{"e0"}, {"e1"}, {"e2"}]
    assert w.split() == len(entities)
    assert real.read(DECISIONS, "e1")["request_id"].to_pylist() == ["e1-r"]
    assert real.read(DECISIONS, "e2")["request_id"].to_pylist() == ["e2-r", "e2-s"]


def test_a_render_that_makes_fewer_rows_than_events_loses_its_entity_counted_not_silently(tmp_path):
    """Rows go under their entities by position: a render that drops a row must not shift the others,
    nor lose the row uncounted."""
    from bidopt.events.writer import dict_rows

    def render(items):
        rows = dict_rows(items)
        return [r for r in rows if r["request_id"] != "a-2"]  # a bug: one of a's rows lost

    real = open_event_store(f"file://{tmp_path}")
    w = EventWriter(real, "w1", split_seconds=60, start=False, render={DECISIONS: render})
    for e, n in (("a", 3), ("b", 2)):
        for i in range(1, n + 1):
            w.add(DECISIONS, e, H10 + i, decision(H10 + i, f"{e}-{i}", e))
    assert w.flush() == 2 and w.dropped == 3 and w.buffered == 0
    assert real.read(DECISIONS, "b")["request_id"].to_pylist() == ["b-1", "b-2"]
    assert real.read(DECISIONS, "a").num_rows == 0


def one_flush_due_to_split(tmp_path, monkeypatch, n, **kwargs):
    """A writer (split_seconds 60, 4 parts a flush) on a watched store, after one flush of a decision
    for each of ``n`` entities, its clock 61 s later: its next flush begins a split."""
    import bidopt.events.writer as writer_module

    clock = {"now": 1000.0}
    monkeypatch.setattr(writer_module.time, "monotonic", lambda: clock["now"])
    real = open_event_store(f"file://{tmp_path}")
    watched = Watched(real)
    w = EventWriter(real, "w1", split_seconds=60, split_parts_per_flush=4, start=False, **kwargs)
    w.store = watched
    entities = [f"s{i:02d}" for i in range(n)]
    for e in entities:
        w.add(DECISIONS, e, H10, decision(H10, f"{e}-r", e))
    w.flush()
    clock["now"] += 61
    return clock, real, watched, w, entities


def test_a_split_is_written_a_slice_a_flush_and_each_row_is_read_once_meanwhile(tmp_path, monkeypatch):
    """At fleet size a split is hundreds of parts: a flush writes ``split_parts_per_flush`` of them, so
    a flush never waits for a whole split's writes (what a crash loses stays one flush); after a
    slice meets a failing store the next waits 2, 4, 8... flushes, not one."""
    clock, real, watched, w, entities = one_flush_due_to_split(tmp_path, monkeypatch, 10)

    def read_once():
        assert {e: real.read(DECISIONS, e)["request_id"].to_pylist() for e in entities} == {
            e: [f"{e}-r"] for e in entities
        }

    watched.after_each = read_once
    w.flush()  # due: the split begins, and its first slice is written
    assert len(keys(real, "split-")) == 4 and keys(real, f"/{MIXED}/") and w.unsplit == 6
    attempts = []
    watched.fail = lambda key: "split-" in key and not attempts.append(key)
    w.flush()  # the next slice meets a failing store
    tried = len(attempts)
    assert tried == 4 and w.unsplit == 6
    w.flush()
    w.flush()
    assert len(attempts) == tried  # two flushes without a slice
    watched.fail = lambda key: False
    w.flush()  # the next slice
    assert len(keys(real, "split-")) == 8 and keys(real, f"/{MIXED}/")
    w.flush()  # the last slice, then the delete
    assert len(keys(real, "split-")) == 10 and not keys(real, f"/{MIXED}/") and w.unsplit == 0
    read_once()


# ----------------------------------------------------------------------------- the sweeper

SWEEP_NOW = datetime(2026, 1, 1, 17, 0)  # hour 10 ended 6 h before: sweepable


def left_behind(tmp_path):
    """Two writers' mixed parts of hour 10 that no split took over: w1 split its first flush, then split
    its next two for every entity but e3 and e4 (the store failing), and was killed; w2 never split;
    what each entity should read."""
    real = open_event_store(f"file://{tmp_path}")
    w1 = EventWriter(real, "host:1:aa", split_seconds=3600, start=False)
    expected = fill(w1, flushes=1)
    w1.split()
    for e, rows in fill(w1, flushes=2, start=H10 + 10).items():
        expected[e] += rows
    w1.store = Watched(real)
    w1.store.fail = lambda key: "entity_code=e3/" in key or "entity_code=e4/" in key
    assert w1.split() == 4  # e0-e2 and e0's notices: their rows of parts 3-6 are in split parts now
    w2 = EventWriter(real, "host:2:bb", split_seconds=3600, start=False)
    for e, rows in fill(w2, flushes=2, start=H10 + 20).items():
        expected[e] += rows
    return real, {e: sorted(rows) for e, rows in expected.items()}


def each_step_reads(real, expected, monkeypatch):
    """Check every entity's reads after each put and delete of the store below ``real``."""
    artifacts = real.store
    put, delete_many = artifacts.put_bytes, artifacts.delete_many
    steps = []

    def check():
        steps.append(1)
        assert reads(real) == expected
        assert real.read(NOTICES, "e0").num_rows == 5

    monkeypatch.setattr(artifacts, "put_bytes", lambda key, data: (put(key, data), check()))
    monkeypatch.setattr(artifacts, "delete_many", lambda keys: (delete_many(keys), check()))
    return steps


def test_the_sweeper_splits_and_deletes_the_mixed_parts_left_and_each_row_is_read_once(tmp_path, monkeypatch):
    real, expected = left_behind(tmp_path)
    assert reads(real) == expected and len(keys(real, f"/{MIXED}/")) == 8
    steps = each_step_reads(real, expected, monkeypatch)
    decisions = real.sweep_mixed_parts(DECISIONS, SWEEP_NOW)
    notices = real.sweep_mixed_parts(NOTICES, SWEEP_NOW)
    # w1's parts 3 and 5 for e3 and e4 only (the others' rows are in w1's own split), w2's for all five
    assert decisions == {"mixed_parts_deleted": 4, "split_parts_written": 2 + 5, "mixed_parts_kept": 0}
    assert notices == {"mixed_parts_deleted": 4, "split_parts_written": 1, "mixed_parts_kept": 0}
    assert not keys(real, f"/{MIXED}/") and len(steps) == 7 + 1 + 4  # a check after each put and delete
    assert reads(real) == expected
    names = {e: sorted(k.rsplit("/", 1)[-1] for k in keys(real, f"{DECISIONS}/entity_code={e}/")) for e in ("e1", "e3")}
    assert names == {
        "e1": [
            "split-host-1-aa-00000001-00000002.parquet",
            "split-host-1-aa-00000003-00000006.parquet",
            "split-host-2-bb-00000001-00000256.parquet",
        ],
        "e3": [  # w1's parts 3-6 in its range 1-256, beside its own split of parts 1-2
            "split-host-1-aa-00000001-00000002.parquet",
            "split-host-1-aa-00000001-00000256.parquet",
            "split-host-2-bb-00000001-00000256.parquet",
        ],
    }
    again = real.sweep_mixed_parts(DECISIONS, SWEEP_NOW)
    assert again == {"mixed_parts_deleted": 0, "split_parts_written": 0, "mixed_parts_kept": 0}


def test_a_delete_or_a_part_the_sweep_cannot_read_keeps_its_range_alone(tmp_path, monkeypatch):
    real, expected = left_behind(tmp_path)
    delete = real.delete_parts
    refused = []

    def delete_but_the_first(keys):
        if not refused:
            refused.append(keys)
            raise ConnectionError("delete refused")
        delete(keys)

    monkeypatch.setattr(real, "delete_parts", delete_but_the_first)
    decisions = real.sweep_mixed_parts(DECISIONS, SWEEP_NOW)
    assert decisions == {"mixed_parts_deleted": 2, "split_parts_written": 7, "mixed_parts_kept": 2}
    assert real.sweep_mixed_parts(NOTICES, SWEEP_NOW)["mixed_parts_deleted"] == 4
    assert reads(real) == expected
    again = real.sweep_mixed_parts(DECISIONS, SWEEP_NOW)  # the range kept, now covered: deleted
    assert again == {"mixed_parts_deleted": 2, "split_parts_written": 0, "mixed_parts_kept": 0}
    assert reads(real) == expected and not keys(real, f"/{MIXED}/")


def test_the_sweeper_leaves_the_hours_writers_may_still_split(tmp_path):
    real, expected = left_behind(tmp_path)
    young = real.sweep_mixed_parts(DECISIONS, SWEEP_NOW - timedelta(minutes=1))  # hour 10 ended 5:59 ago
    assert young["mixed_parts_deleted"] == 0 and len(keys(real, f"/{MIXED}/")) == 8
    assert reads(real) == expected


def test_two_sweepers_at_once_read_each_row_once(tmp_path, monkeypatch):
    """A second sweeper running whole between the first one's puts: both write the same keys with the
    same rows, or find them written."""
    real, expected = left_behind(tmp_path)
    other = open_event_store(f"file://{tmp_path}")
    artifacts = real.store
    put = artifacts.put_bytes
    ran = []

    def put_then_sweep(key, data):
        put(key, data)
        if not ran:
            ran.append(other.sweep_mixed_parts(DECISIONS, SWEEP_NOW))
        assert reads(real) == expected

    monkeypatch.setattr(artifacts, "put_bytes", put_then_sweep)
    first = real.sweep_mixed_parts(DECISIONS, SWEEP_NOW)
    assert ran[0]["mixed_parts_deleted"] == 4 and first["mixed_parts_deleted"] + first["mixed_parts_kept"] == 4
    assert reads(real) == expected and not keys(real, f"/{DECISIONS}/{MIXED}/")


def test_a_writer_never_writes_nor_splits_mixed_parts_of_hours_ended_late_seconds_ago(tmp_path, writers_clock):
    """What the sweep relies on, by the wall clock before each put: a mixed part of an hour that ended
    LATE_SECONDS ago is dropped, counted (retried that long, or queued before the writer stalled),
    and a split part of such an hour is not written, its rows left readable in the mixed parts."""
    from bidopt.events.writer import LATE_SECONDS

    real, watched, w = writer_on(tmp_path)
    hour_10_late = H10 - 5 * 60 + 3600 + LATE_SECONDS
    watched.fail = lambda key: "/mixed/" in key
    w.add(DECISIONS, "e1", H10, decision(H10, "retried", "e1"))
    w.flush()
    assert w.buffered == 1
    watched.fail = lambda key: False
    w.add(DECISIONS, "e2", H10, decision(H10, "queued before a stall", "e2"))
    writers_clock["now"] = hour_10_late
    w.add(DECISIONS, "e3", H11, decision(H11, "hour 11", "e3"))
    assert w.flush() == 1 and w.buffered == 0 and w.dropped == 2
    assert real.read(DECISIONS, "e1").num_rows == real.read(DECISIONS, "e2").num_rows == 0
    w.add(DECISIONS, "e4", H11, decision(H11, "split late", "e4"))
    w.flush()
    writers_clock["now"] = hour_10_late + 3600  # hour 11 late too
    assert w.split() == 0 and w.unsplit == 0  # given up: nothing split, nothing deleted
    assert len(keys(real, f"/{MIXED}/")) == 2 and not keys(real, "split-")
    assert [real.read(DECISIONS, e)["request_id"].to_pylist() for e in ("e3", "e4")] == [["hour 11"], ["split late"]]


def test_bidopt_events_sweep_sweeps_both_kinds_and_refuses_hours_writers_may_still_split(tmp_path):
    import json

    from click.testing import CliRunner

    from bidopt.cli.main import cli
    from bidopt.settings import get_settings

    real, expected = left_behind(open_event_store(get_settings().events_url).store.root)
    runner = CliRunner()
    refused = runner.invoke(cli, ["events", "sweep", "--older-than-hours", "2"])
    assert refused.exit_code != 0 and "older_than_hours must be a number from 6" in refused.output
    assert len(keys(real, f"/{MIXED}/")) == 8
    out = runner.invoke(cli, ["events", "sweep", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert result["decisions"]["mixed_parts_deleted"] == 4 and result["notices"]["mixed_parts_deleted"] == 4
    assert not keys(real, f"/{MIXED}/") and reads(real) == expected
    text = runner.invoke(cli, ["events", "sweep"])
    assert text.exit_code == 0 and "decisions: 0 mixed part(s) split and deleted" in text.output


def test_slices_keep_pace_with_the_splits_and_their_memory_and_a_failing_delete_stops_no_later_split(
    tmp_path, monkeypatch
):
    """A slice grows where ``split_parts_per_flush`` would not write a split before the next is due
    (few flushes a split), every part is written at once past ``max_unsplit_bytes``, and a store that
    never deletes holds no later split."""
    clock, real, watched, slow, entities = one_flush_due_to_split(tmp_path, monkeypatch, 30, flush_seconds=10)
    slow.flush()  # 6 flushes a split: 10 parts a flush (twice the pace), not 4
    assert len(keys(real, "split-")) == 10
    slow.flush()
    slow.flush()
    assert len(keys(real, "split-")) == 30 and not keys(real, f"/{MIXED}/")

    big = EventWriter(real, "w2", split_seconds=60, split_parts_per_flush=4, max_unsplit_bytes=10**9, start=False)
    for e in entities:
        big.add(DECISIONS, e, H11, decision(H11, f"{e}-big", e))
    big.flush()
    big.max_unsplit_bytes = 1  # what the split begun holds is past the bound: all of it at once
    clock["now"] += 61
    big.flush()
    assert len(keys(real, "split-w2-")) == 30 and big.unsplit == 0

    watched.delete_parts = lambda keys: (_ for _ in ()).throw(ConnectionError("no delete"))
    for k in range(2):
        for e in entities[:3]:
            slow.add(DECISIONS, e, H11 + k, decision(H11 + k, f"{e}-{k}", e))
        slow.flush()
        clock["now"] += 61
        slow.flush()
    assert len(keys(real, "split-w1-")) == 30 + 6  # the second split is written, the first's delete failing
    slow.max_unsplit_bytes = 1  # splits with only their delete left hold no rows: slices stay slices
    assert slow._slice() == 4
    assert {e: sorted(real.read(DECISIONS, e)["request_id"].to_pylist()) for e in entities[:3]} == {
        e: [f"{e}-0", f"{e}-1", f"{e}-big", f"{e}-r"] for e in entities[:3]
    }

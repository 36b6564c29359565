"""The optimizer's stage clock and metric labels, without Ray (bidopt.optimizer.pipeline.StageClock,
bidopt.jobs.optimizer_metrics)."""

from __future__ import annotations

import pytest

from bidopt.errors import BidoptError, DatabaseUnavailable, InvalidConfig
from bidopt.jobs.optimizer_metrics import ERROR_CLASSES, FAILURES, RUNS, OptimizerMetrics, error_class
from bidopt.optimizer.pipeline import STAGES, StageClock


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_nested_stages_are_counted_exclusively_and_add_up_to_the_time_taken():
    t = Ticks()
    clock = StageClock(timer=t)
    with clock("features"):
        t.now += 1.0
        with clock("read"):  # a warehouse query while scoring features: the read's time
            t.now += 2.0
        t.now += 0.5
        with clock("read"):
            t.now += 1.0
    t.now += 10.0  # between stages: nobody's
    with clock("training"):
        t.now += 3.0
    assert clock.seconds == {"features": 1.5, "read": 3.0, "training": 3.0}
    assert sum(clock.seconds.values()) == 7.5


def test_a_stage_left_by_an_exception_keeps_its_time_and_unknown_stages_are_refused():
    t = Ticks()
    clock = StageClock(timer=t)
    with pytest.raises(InvalidConfig), clock("read"):
        t.now += 0.25
        raise InvalidConfig("no bid logs")
    assert clock.seconds == {"read": 0.25}
    with pytest.raises(ValueError, match="unknown stage"), clock("writing"):
        pass
    assert STAGES == ("read", "features", "training", "bids", "validation", "artifacts")


def test_error_classes_are_the_known_errors_names_else_other():
    assert error_class(InvalidConfig("x")) == "InvalidConfig"
    assert error_class(DatabaseUnavailable("x")) == "DatabaseUnavailable"

    class Refused(BidoptError):
        pass

    class BadWindow(InvalidConfig):
        pass

    assert error_class(Refused("x")) == "BidoptError"  # a subclass: its nearest known base
    assert error_class(BadWindow("x")) == "InvalidConfig"
    assert error_class(BidoptError("x")) == "BidoptError"
    assert error_class(ZeroDivisionError()) == "other"
    assert error_class(KeyError("user-1234")) == "other"  # never the message


class Recorder:
    def __init__(self) -> None:
        self.calls = []
        rec = self

        class Counter:
            def __init__(self, name, description="", tag_keys=()):
                self.name = name

            def inc(self, value=1.0, tags=None):
                rec.calls.append((self.name, value, tags))

        class Histogram(Counter):
            def __init__(self, name, description="", boundaries=None, tag_keys=()):
                self.name = name

            def observe(self, value, tags=None):
                rec.calls.append((self.name, value, tags))

        self.Counter, self.Histogram = Counter, Histogram


def test_results_map_onto_events_and_an_unknown_error_class_is_other():
    rec = Recorder()
    m = OptimizerMetrics(rec)
    m.finished({"status": "failed", "error_class": "user 42 exploded"})
    m.finished({"status": "abandoned", "error": "lease lost"})
    m.finished({"status": "requeued", "error": "optimizer task died"})
    m.requeued_stale("failed")
    assert [c for c in rec.calls if c[0] == RUNS] == [
        (RUNS, 1, {"event": "failed"}),
        (RUNS, 1, {"event": "requeued"}),
        (RUNS, 1, {"event": "failed"}),
    ]
    assert [c[2]["error_class"] for c in rec.calls if c[0] == FAILURES] == ["other", "stale_heartbeat"]
    assert "other" in ERROR_CLASSES and len(ERROR_CLASSES) == len(set(ERROR_CLASSES))


def test_outside_ray_the_default_recorder_makes_no_metric_and_never_raises():
    m = OptimizerMetrics()
    m.run_event("claimed")
    m.finished({"status": "completed", "entity_code": "drugs_hcp", "rows_aggregated": 10, "stage_seconds": {"read": 1}})
    assert m._objects is None

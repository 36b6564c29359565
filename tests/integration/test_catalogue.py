"""The catalogue's service functions (bidopt.catalogue) on SQLite and PostgreSQL: what the rules refuse
leaves nothing written, every change has its audit row, and what a change does to serving.
The CLI walkthrough (test_onboarding.py) and the API (test_api_catalogue.py) go through the same
functions."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import pytest
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).parent))
from servable_runs import complete_servable  # noqa: E402

from bidopt import catalogue, service  # noqa: E402
from bidopt.bidder.core import decide  # noqa: E402
from bidopt.bidder.loader import Refresher  # noqa: E402
from bidopt.cache import InProcessCache  # noqa: E402
from bidopt.db import queries as q  # noqa: E402
from bidopt.db.engine import session_scope  # noqa: E402
from bidopt.db.models import OptAuditLog, OptEntity, OptFeatureMacro, OptMaster, OptVersion  # noqa: E402
from bidopt.errors import Conflict, InvalidConfig, NotFound  # noqa: E402
from bidopt.settings import get_settings  # noqa: E402

REQ = {"id": "r", "imp": [{"id": "1"}], "device": {"geo": {"region": "CA"}}, "user": {"id": "u"}}


def _counts(engine) -> tuple:
    with session_scope(engine) as s:
        return tuple(
            s.scalar(select(func.count()).select_from(m))
            for m in (OptAuditLog, OptMaster, OptFeatureMacro, OptVersion, OptEntity)
        )


def _source(s, code="OXS", namespace="OX"):
    return catalogue.create_source(
        s,
        code=code,
        name="Open X",
        source_type="ssp",
        auction_type="second_price",
        macro_namespace=namespace,
        actor="ann",
    )


@pytest.mark.parametrize(
    "change, error",
    [
        (lambda s: _source(s, code="bad code!"), InvalidConfig),
        (lambda s: _source(s, namespace="ox"), InvalidConfig),
        (lambda s: _source(s, code="ADX"), Conflict),  # the demo's
        (
            lambda s: catalogue.create_macro(
                s, source="ADX", feature="geo_region_name", template="[ADX_X]", request_field="device.geo", actor="a"
            ),
            Conflict,  # ADX has a geo macro already
        ),
        (
            lambda s: catalogue.create_macro(
                s, source="ADX", feature="shoe_size", template="[ADX_SHOE]", request_field="user.ext.x", actor="a"
            ),
            InvalidConfig,  # not a contract feature
        ),
        (
            lambda s: catalogue.update_macro(s, "ADX", "os_code", {"request_field": "device..os"}, actor="a"),
            InvalidConfig,
        ),
        (
            lambda s: catalogue.update_macro(s, "ADX", "os_code", {"request_field": "imp.0.bidfloor"}, actor="a"),
            InvalidConfig,  # not a BidRequest object the feature readers start at
        ),
        (lambda s: catalogue.update_macro(s, "ADX", "os_code", {"template": "[OX_OS]"}, actor="a"), InvalidConfig),
        (lambda s: catalogue.deactivate_macro(s, "ADX", "geo_region_name", actor="a"), Conflict),  # demo anchor
        (
            lambda s: catalogue.create_version(
                s,
                name="v9",
                anchor_feature="os_code",
                min_win_auc="nan",
                max_win_ece=0.1,
                min_bid_coverage=0.9,
                actor="a",
            ),
            InvalidConfig,
        ),
        (
            lambda s: catalogue.create_version(
                s, name="v9", anchor_feature="os_code", min_win_auc=0.6, max_win_ece=0, min_bid_coverage=0.9, actor="a"
            ),
            InvalidConfig,
        ),
        (
            lambda s: catalogue.create_version(
                s, name="v1", anchor_feature="os_code", min_win_auc=0.6, max_win_ece=0.1, min_bid_coverage=1, actor="a"
            ),
            Conflict,  # versions never change: a new one needs a new name
        ),
        (
            lambda s: catalogue.create_entity(s, code="Bad Code", name="x", source="ADX", version="v1", actor="a"),
            InvalidConfig,
        ),
        (
            lambda s: catalogue.create_entity(
                s, code="shoes", name="x", source="ADX", version="v1", configs={"npi_enabled": "maybe"}, actor="a"
            ),
            InvalidConfig,  # the entity is not created either: all or nothing
        ),
        (
            lambda s: catalogue.create_entity(s, code="shoes", name="x", source="NOPE", version="v1", actor="a"),
            NotFound,
        ),
        (lambda s: catalogue.deactivate_source(s, "ADX", actor="a"), Conflict),  # entities use it
        (lambda s: catalogue.update_source(s, "ADX", {"macro_namespace": "OX"}, actor="a"), Conflict),
        (lambda s: catalogue.update_entity(s, "drugs_hcp", {"entity_code": "x"}, actor="a"), InvalidConfig),
    ],
)
def test_a_refused_change_writes_nothing(platform_db, change, error):
    before = _counts(platform_db)
    with pytest.raises(error), session_scope(platform_db) as s:
        change(s)
    assert _counts(platform_db) == before


def test_an_entity_needs_its_versions_anchor_readable_in_its_source(platform_db):
    with session_scope(platform_db) as s:
        _source(s)
        catalogue.create_macro(
            s, source="OXS", feature="os_code", template="[OX_OS]", request_field="device.os", actor="ann"
        )
        catalogue.create_version(
            s,
            name="os-anchor",
            anchor_feature="os_code",
            min_win_auc=0.55,
            max_win_ece=0.05,
            min_bid_coverage=0.9,
            actor="ann",
        )
    with pytest.raises(InvalidConfig, match="anchors on geo_region_name.*OXS has no active macro"):
        with session_scope(platform_db) as s:
            catalogue.create_entity(s, code="shoes", name="Shoes", source="OXS", version="v1", actor="ann")
    with session_scope(platform_db) as s:
        view = catalogue.create_entity(s, code="shoes", name="Shoes", source="OXS", version="os-anchor", actor="ann")
        assert view["current_version"] == "os-anchor" and view["supply_source"] == "OXS"
    with pytest.raises(InvalidConfig, match="no active macro"), session_scope(platform_db) as s:
        catalogue.use_version(s, "shoes", "v1", actor="ann")  # the same rule on a switch
    with pytest.raises(Conflict, match="anchor feature of active entities"), session_scope(platform_db) as s:
        catalogue.deactivate_macro(s, "OXS", "os_code", actor="ann")
    with session_scope(platform_db) as s:
        catalogue.deactivate_entity(s, "shoes", actor="ann")
        # no active entity anchors on it now: allowed, and the answer says why runs are safe
        assert "pinned" in catalogue.deactivate_macro(s, "OXS", "os_code", actor="ann")["note"]
        assert catalogue.get_version(s, "os-anchor")["entities"] == ["shoes"]


def test_every_change_has_its_audit_row_with_old_and_new_values(platform_db):
    with session_scope(platform_db) as s:
        catalogue.update_macro(s, "ADX", "os_code", {"request_field": "device.os|device.osv"}, actor="ann")
        catalogue.update_macro(s, "ADX", "os_code", {"request_field": "device.os|device.osv"}, actor="ann")  # no-op
        catalogue.set_entity_configs(s, "drugs_hcp", {"guardrail_min_bids": "50"}, actor="bob")
        catalogue.use_version(s, "drugs_hcp", "v1", actor="bob")  # the same version: no change, no row
        rows = catalogue.list_audit(s, limit=3)
    assert [r["action"] for r in rows[:2]] == ["entity.config", "macro.update"]
    config, macro = rows[0], rows[1]
    assert config["actor"] == "bob" and config["entity_code"] == "drugs_hcp"
    assert config["old"] == {"guardrail_min_bids": 1000} and config["new"] == {"guardrail_min_bids": 50}
    assert macro["object_key"] == "ADX/os_code" and macro["entity_code"] is None
    assert macro["old"] == {"request_field": "device.os"} and macro["new"] == {"request_field": "device.os|device.osv"}
    with session_scope(platform_db) as s:
        assert [r["action"] for r in catalogue.list_audit(s, entity="drugs_hcp")] == ["entity.config", "entity.create"]
        with pytest.raises(NotFound):
            catalogue.list_audit(s, entity="nope")
        with pytest.raises(InvalidConfig):
            catalogue.list_audit(s, limit=10**9)


def test_every_split_change_is_audited_whoever_makes_it(platform_db):
    with session_scope(platform_db) as s:
        a, b = (q.create_run(s, "drugs_hcp", {}, triggered_by="t").run_id for _ in range(2))
    for run_id in (a, b):
        complete_servable(platform_db, run_id)
    with session_scope(platform_db) as s:
        service.set_traffic_split(s, "drugs_hcp", {a: 50, b: 50}, deployed_by="olga")
        service.promote_run(s, "drugs_hcp", b, deployed_by="olga")
        splits = [r for r in catalogue.list_audit(s, entity="drugs_hcp") if r["action"] == "split.replace"]
    promoted, first = splits[0], splits[1]
    assert first["old"] is None and first["new"]["split"] == {a: 50, b: 50} and first["actor"] == "olga"
    assert promoted["old"]["split"] == {a: 50, b: 50} and promoted["new"]["split"] == {b: 100}
    assert promoted["new"]["split_id"] == first["new"]["split_id"] + 1


def test_a_deactivated_entity_stops_being_served_at_the_next_refresh_and_takes_no_runs(platform_db):
    with session_scope(platform_db) as s:
        run_id = q.create_run(s, "drugs_hcp", {}, triggered_by="t").run_id
    complete_servable(platform_db, run_id)
    with session_scope(platform_db) as s:
        q.replace_traffic_split(s, "drugs_hcp", {run_id: 100}, deployed_by="t")
    refresher = Refresher(get_settings().database_url, InProcessCache(), 60)
    refresher.refresh_once()
    assert decide(refresher.state, "drugs_hcp", orjson.dumps(REQ))[0] == 200
    with session_scope(platform_db) as s:
        catalogue.deactivate_entity(s, "drugs_hcp", actor="ann")
    refresher.refresh_once()
    assert decide(refresher.state, "drugs_hcp", orjson.dumps(REQ))[0] == 204
    with pytest.raises(Conflict, match="inactive"), session_scope(platform_db) as s:
        service.create_run(s, "drugs_hcp", {}, triggered_by="ann")


def test_seed_demo_is_made_with_the_catalogue_functions_and_is_idempotent(platform_db):
    from bidopt.db.seed import seed_demo_catalogue

    with session_scope(platform_db) as s:
        assert seed_demo_catalogue(s) == []  # platform_db seeded it already
        actions = {(r["action"], r["actor"]) for r in catalogue.list_audit(s, limit=100)}
    assert {("source.create", "seed-demo"), ("macro.create", "seed-demo"), ("version.create", "seed-demo")} <= actions
    assert ("entity.create", "seed-demo") in actions


@pytest.mark.parametrize(
    "change, error",
    [
        (lambda s: _source(s, code="adx"), Conflict),  # ADX but for case
        (
            lambda s: catalogue.update_macro(
                s, "ADX", "os_code", {"status": "inactive", "description": "x"}, actor="a"
            ),
            InvalidConfig,
        ),  # a status change with other fields would have audited only the status
        (
            lambda s: catalogue.create_macro(
                s, source="ADX", feature="domain", template="[ADX_]", request_field="site.domain", actor="a"
            ),
            InvalidConfig,
        ),
        (
            lambda s: catalogue.create_version(
                s,
                name="dom",
                anchor_feature="domain",
                min_win_auc=0.6,
                max_win_ece=0.1,
                min_bid_coverage=0.9,
                actor="a",
            ),
            InvalidConfig,
        ),  # never a segment
        (
            lambda s: catalogue.create_version(
                s,
                name="V1",
                anchor_feature="os_code",
                min_win_auc=0.6,
                max_win_ece=0.1,
                min_bid_coverage=0.9,
                actor="a",
            ),
            Conflict,
        ),
        (
            lambda s: catalogue.create_version(
                s,
                name="t",
                anchor_feature="os_code",
                min_win_auc=True,
                max_win_ece=0.1,
                min_bid_coverage=0.9,
                actor="a",
            ),
            InvalidConfig,
        ),
        (
            lambda s: catalogue.create_entity(s, code="shoes", name="a\x00b", source="ADX", version="v1", actor="a"),
            InvalidConfig,
        ),  # PostgreSQL refuses NUL in text: a clear error, not a database error
        (lambda s: catalogue.get_source(s, "AD\x00X"), NotFound),
        (lambda s: catalogue.update_macro(s, "ADX", "os\x00", {"description": "x"}, actor="a"), NotFound),
        (lambda s: catalogue.list_audit(s, entity="drugs\x00"), NotFound),
        (
            lambda s: catalogue.create_entity(
                s, code="shoes", name="x", source="ADX", version="v1", base_path="../../tmp/evil", actor="a"
            ),
            InvalidConfig,
        ),
        (lambda s: catalogue.update_entity(s, "drugs_hcp", {"base_path": "a/../../b"}, actor="a"), InvalidConfig),
    ],
)
def test_review_findings_are_refused_and_write_nothing(platform_db, change, error):
    before = _counts(platform_db)
    with pytest.raises(error), session_scope(platform_db) as s:
        change(s)
    assert _counts(platform_db) == before


def test_a_name_taken_by_a_concurrent_writer_is_a_conflict_not_a_database_error(platform_db, monkeypatch):
    """Two admins create the same code: both pass the existence check, the unique index stops the
    second at its insert, which must be a Conflict (409, one CLI line), not an IntegrityError."""
    monkeypatch.setattr(catalogue, "_taken_ignoring_case", lambda *a: None)  # as if the other commit came after
    before = _counts(platform_db)
    with pytest.raises(Conflict, match="exists already"), session_scope(platform_db) as s:
        _source(s, code="ADX", namespace="ADX")
    with pytest.raises(Conflict, match="exists already"), session_scope(platform_db) as s:
        catalogue.create_version(
            s, name="v1", anchor_feature="os_code", min_win_auc=0.6, max_win_ece=0.1, min_bid_coverage=0.9, actor="a"
        )
    assert _counts(platform_db) == before


def test_an_npi_anchor_needs_npi_enabled(platform_db):
    with session_scope(platform_db) as s:
        catalogue.create_version(
            s,
            name="npi",
            anchor_feature="npi_matched",
            min_win_auc=0.55,
            max_win_ece=0.05,
            min_bid_coverage=0.9,
            actor="a",
        )
    with pytest.raises(InvalidConfig, match="npi_enabled"), session_scope(platform_db) as s:
        catalogue.use_version(s, "auto_intenders", "npi", actor="a")  # npi off there
    with session_scope(platform_db) as s:
        catalogue.use_version(s, "drugs_hcp", "npi", actor="a")  # npi on
    with pytest.raises(InvalidConfig, match="npi_enabled must stay true"), session_scope(platform_db) as s:
        catalogue.set_entity_configs(s, "drugs_hcp", {"npi_enabled": False}, actor="a")
    with session_scope(platform_db) as s:
        assert catalogue.get_source(s, "ADX")["entities"] == ["auto_intenders", "drugs_hcp"]
        assert q.get_entity_configs(s, q.get_entity_by_code(s, "drugs_hcp").entity_id)["npi_enabled"] is True


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_creating_an_entity_waits_for_a_concurrent_macro_deactivation_and_sees_it(platform_db):
    """On PostgreSQL both lock the source row: the entity made while its anchor's macro is deactivated
    either comes first (then the deactivation is refused) or second (then it is refused), never both."""
    import threading
    import time

    with session_scope(platform_db) as s:
        _source(s)
        catalogue.create_macro(
            s, source="OXS", feature="os_code", template="[OX_OS]", request_field="device.os", actor="a"
        )
        catalogue.create_version(
            s, name="osv", anchor_feature="os_code", min_win_auc=0.55, max_win_ece=0.05, min_bid_coverage=0.9, actor="a"
        )
    deactivated, release = threading.Event(), threading.Event()

    def deactivate():
        with session_scope(platform_db) as s:
            catalogue.deactivate_macro(s, "OXS", "os_code", actor="ann")
            deactivated.set()
            release.wait(10)  # holds the source row's lock uncommitted

    worker = threading.Thread(target=deactivate)
    worker.start()
    assert deactivated.wait(10)
    threading.Timer(1.0, release.set).start()
    started = time.monotonic()
    with pytest.raises(InvalidConfig, match="no active macro"), session_scope(platform_db) as s:
        catalogue.create_entity(s, code="shoes", name="Shoes", source="OXS", version="osv", actor="bob")
    assert time.monotonic() - started > 0.5  # it waited for the deactivation's commit
    worker.join(10)

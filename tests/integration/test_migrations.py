import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from bidopt.db.engine import make_engine
from bidopt.db.migrate import current_revision, upgrade_database
from bidopt.db.models import Base

TABLES = {
    "opt_master",
    "opt_versions",
    "opt_entities",
    "opt_entity_configs",
    "opt_runs",
    "opt_run_configs",
    "opt_run_metrics",
    "opt_run_features",
    "opt_feature_macros",
    "opt_deployments",
    "opt_users",
    "opt_api_tokens",  # who may call the management API (0002)
    "opt_bidder_replicas",  # what each bidder replica serves (0003)
    "opt_event_compactions",  # hours of bidder events loaded into the warehouse (0004)
    "opt_schedules",  # per-entity optimizer schedules (0004)
    "opt_audit_log",  # catalogue and split changes (0005)
}
HEAD = "0005"


def test_upgrade_from_empty_creates_exactly_the_models(db_url):
    assert current_revision(db_url) is None
    upgrade_database(db_url)
    assert current_revision(db_url) == HEAD
    engine = make_engine(db_url)
    try:
        assert set(inspect(engine).get_table_names()) - {"alembic_version"} == TABLES
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], f"models and migrations disagree: {diff}"
    finally:
        engine.dispose()


def test_upgrade_is_idempotent(db_url):
    upgrade_database(db_url)
    upgrade_database(db_url)
    assert current_revision(db_url) == HEAD


def test_upgrade_from_0001_keeps_data(db_url):
    """A database made by the first revision upgrades in place."""
    from sqlalchemy import text

    upgrade_database(db_url, "0001")
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO opt_versions (version_name, anchor_feature, min_win_auc, max_win_ece, "
                    "min_bid_coverage, created_at) VALUES ('v1', 'geo_region_name', 0.5, 0.1, 0.9, "
                    "CURRENT_TIMESTAMP)"
                )
            )
        upgrade_database(db_url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_name FROM opt_versions")).scalar() == "v1"
            assert conn.execute(text("SELECT COUNT(*) FROM opt_users")).scalar() == 0
    finally:
        engine.dispose()


def test_upgrade_from_0002_pins_each_run_features_request_field(db_url):
    """0003 fills opt_run_features.request_field from each row's macro; a feature without a macro
    (floor_bucket) stays NULL; the new replicas table starts empty."""
    from sqlalchemy import text

    upgrade_database(db_url, "0002")
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO opt_master (master_id, source_code, name, source_type, auction_type, "
                    "macro_namespace, is_active, created_at) VALUES (1, 'ADX', 'x', 'exchange', "
                    "'first_price', 'ADX', TRUE, CURRENT_TIMESTAMP)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO opt_versions (version_id, version_name, anchor_feature, min_win_auc, "
                    "max_win_ece, min_bid_coverage, created_at) VALUES (1, 'v1', 'geo_region_name', "
                    "0.5, 0.1, 0.9, CURRENT_TIMESTAMP)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO opt_entities (entity_id, entity_code, name, master_id, "
                    "current_version_id, base_path, is_active, created_at) VALUES (1, 'e', 'e', 1, 1, "
                    "'e', TRUE, CURRENT_TIMESTAMP)"
                )
            )
            for macro_id, feature, field in ((1, "geo_region_name", "device.geo.region"), (2, "os_code", "device.os")):
                conn.execute(
                    text(
                        "INSERT INTO opt_feature_macros (macro_id, master_id, feature_name, macro_template, "
                        "request_field, status) VALUES (:id, 1, :f, '[M]', :field, 'A')"
                    ),
                    {"id": macro_id, "f": feature, "field": field},
                )
            conn.execute(
                text(
                    "INSERT INTO opt_runs (run_id, entity_id, version_id, status, triggered_by, "
                    "trigger_type, created_at, attempts) VALUES ('r1', 1, 1, 'completed', 't', 'manual', "
                    "CURRENT_TIMESTAMP, 1)"
                )
            )
            for order, feature, macro_id in ((1, "geo_region_name", 1), (2, "os_code", 2), (3, "floor_bucket", None)):
                conn.execute(
                    text(
                        "INSERT INTO opt_run_features (run_id, feature_name, feature_order, is_anchor, "
                        "macro_id) VALUES ('r1', :f, :o, FALSE, :m)"
                    ),
                    {"f": feature, "o": order, "m": macro_id},
                )
        upgrade_database(db_url)
        assert current_revision(db_url) == HEAD
        with engine.connect() as conn:
            pinned = dict(conn.execute(text("SELECT feature_name, request_field FROM opt_run_features")).all())
            assert pinned == {"geo_region_name": "device.geo.region", "os_code": "device.os", "floor_bucket": None}
            assert conn.execute(text("SELECT COUNT(*) FROM opt_bidder_replicas")).scalar() == 0
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], f"models and migrations disagree: {diff}"
    finally:
        engine.dispose()


def test_0004_downgrades_and_upgrades_again(db_url):
    """0004's downgrade keeps opt_runs.scheduled_for (dropping it rebuilds opt_runs on SQLite, which
    cascades to the runs' rows), so its upgrade must take a table that already has the column."""
    from alembic import command

    from bidopt.db.migrate import alembic_config

    upgrade_database(db_url)
    command.downgrade(alembic_config(db_url), "0003")
    assert current_revision(db_url) == "0003"
    upgrade_database(db_url)
    assert current_revision(db_url) == HEAD


def test_0005_admits_admins_and_keeps_users_tokens(db_url):
    """0005 changes opt_users' role check, which on SQLite rebuilds opt_users; the rebuild's DROP must
    not cascade to the API tokens. Its downgrade turns admins into operators and keeps the tokens."""
    from alembic import command
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    from bidopt.db.migrate import alembic_config

    def insert_user(conn, name, role):
        conn.execute(
            text(
                "INSERT INTO opt_users (username, role, is_active, created_at) VALUES (:n, :r, :a, CURRENT_TIMESTAMP)"
            ),
            {"n": name, "r": role, "a": True},
        )

    upgrade_database(db_url, "0004")
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            insert_user(conn, "ann", "operator")
            conn.execute(
                text(
                    "INSERT INTO opt_api_tokens (user_id, token_hash, name, created_at) "
                    "SELECT user_id, 'h1', 'cli', CURRENT_TIMESTAMP FROM opt_users"
                )
            )
        with pytest.raises(IntegrityError), engine.begin() as conn:
            insert_user(conn, "root", "admin")  # 0004 has no admin role
        upgrade_database(db_url)
        with engine.begin() as conn:
            insert_user(conn, "bob", "admin")
            assert conn.execute(text("SELECT COUNT(*) FROM opt_api_tokens")).scalar() == 1
        with pytest.raises(IntegrityError), engine.begin() as conn:
            insert_user(conn, "eve", "root")  # the check is still there
        command.downgrade(alembic_config(db_url), "0004")
        with engine.connect() as conn:
            roles = dict(conn.execute(text("SELECT username, role FROM opt_users")).all())
            assert roles == {"ann": "operator", "bob": "operator"}
            assert conn.execute(text("SELECT COUNT(*) FROM opt_api_tokens")).scalar() == 1
        upgrade_database(db_url)
        assert current_revision(db_url) == HEAD
    finally:
        engine.dispose()

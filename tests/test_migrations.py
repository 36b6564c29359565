from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from bidopt.db.engine import make_engine
from bidopt.db.migrate import current_revision, upgrade_database
from bidopt.db.models import Base

TABLES = {
    "opt_master", "opt_versions", "opt_entities", "opt_entity_configs", "opt_runs",
    "opt_run_configs", "opt_run_metrics", "opt_run_features", "opt_feature_macros", "opt_deployments",
    "opt_users", "opt_api_tokens",  # who may call the management API (0002)
}


def test_upgrade_from_empty_creates_exactly_the_models(db_url):
    assert current_revision(db_url) is None
    upgrade_database(db_url)
    assert current_revision(db_url) == "0002"
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
    assert current_revision(db_url) == "0002"


def test_upgrade_from_0001_keeps_data(db_url):
    """A database made by the first revision upgrades in place."""
    from sqlalchemy import text

    upgrade_database(db_url, "0001")
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO opt_versions (version_name, anchor_feature, min_win_auc, max_win_ece, "
                              "min_bid_coverage, created_at) VALUES ('v1', 'geo_region_name', 0.5, 0.1, 0.9, "
                              "CURRENT_TIMESTAMP)"))
        upgrade_database(db_url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_name FROM opt_versions")).scalar() == "v1"
            assert conn.execute(text("SELECT COUNT(*) FROM opt_users")).scalar() == 0
    finally:
        engine.dispose()

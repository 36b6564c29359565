from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from bidopt.db.engine import make_engine
from bidopt.db.migrate import current_revision, upgrade_database
from bidopt.db.models import Base

TABLES = {
    "opt_master", "opt_versions", "opt_entities", "opt_entity_configs", "opt_runs",
    "opt_run_configs", "opt_run_metrics", "opt_run_features", "opt_feature_macros", "opt_deployments",
}


def test_upgrade_from_empty_creates_exactly_the_models(db_url):
    assert current_revision(db_url) is None
    upgrade_database(db_url)
    assert current_revision(db_url) == "0001"
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
    assert current_revision(db_url) == "0001"

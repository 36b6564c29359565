"""Shared fixtures.

Servers a test needs are found or started here; when one is missing the test
skips with the reason, except under ``BIDOPT_REQUIRE_SERVICES=1`` (CI), where
a skip for a missing service is a failure.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from servers import missing_service, services_required, start_memcached  # noqa: F401 - re-exported

from bidopt.settings import reset_settings_cache

PG_ADMIN_URL = os.environ.get("BIDOPT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    """``postgres``: every test that needs the PostgreSQL server (a ``db_url`` of ``postgresql``,
    or the server's own fixtures), so that ``-m "not postgres"`` runs without it."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("db_url") == "postgresql" or {"pg_url", "pg_admin_engine"} & set(item.fixturenames):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own embedded backends and no BIDOPT_* leaking in from outside."""
    for key in list(os.environ):
        if key.startswith("BIDOPT_") and key not in ("BIDOPT_REQUIRE_SERVICES", "BIDOPT_TEST_PG_URL"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("BIDOPT_HOME", str(tmp_path / "bidopt_home"))
    # Behind HAProxy, Serve keeps a stopping replica serving for this long so that HAProxy can take it
    # out first (30 s by default); at serve.shutdown() every test then waited 30 s and the controller
    # timed out ("failed to shut down within 30 s"). Tests about draining set it back (test_autoscaling).
    monkeypatch.setenv("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
    reset_settings_cache()
    yield
    reset_settings_cache()


@pytest.fixture(scope="session")
def pg_admin_engine():
    from sqlalchemy import create_engine, text

    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        engine.dispose()
        return exc
    yield engine
    engine.dispose()


@pytest.fixture
def pg_url(pg_admin_engine):
    """A URL whose connections see only a fresh schema of their own (dropped afterwards)."""
    from sqlalchemy import text

    if isinstance(pg_admin_engine, Exception):
        missing_service(f"PostgreSQL at {PG_ADMIN_URL} not reachable: {pg_admin_engine}")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with pg_admin_engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    yield f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}"
    from bidopt.db.engine import dispose_engines

    dispose_engines()
    with pg_admin_engine.connect() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'meta.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meta.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def engine(db_url):
    """An upgraded, seeded metadata database on SQLite and on PostgreSQL."""
    from bidopt.db.engine import make_engine, session_scope
    from bidopt.db.migrate import upgrade_database
    from bidopt.db.seed import seed_demo_catalogue

    upgrade_database(db_url)
    eng = make_engine(db_url)
    with session_scope(eng) as s:
        seed_demo_catalogue(s)
    yield eng
    eng.dispose()


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def fakesnow_server():
    """fakesnow in server mode: the real snowflake connector talks to it over HTTP."""
    try:
        import fakesnow
        import snowflake.connector  # noqa: F401
    except ImportError as exc:
        return exc
    with fakesnow.server() as kwargs:
        yield kwargs


@pytest.fixture
def snowflake_url(fakesnow_server):
    if isinstance(fakesnow_server, Exception):
        missing_service(f"fakesnow / snowflake connector not importable: {fakesnow_server}")
    import snowflake.connector

    schema = f"T_{uuid.uuid4().hex[:10].upper()}"
    conn = snowflake.connector.connect(**fakesnow_server)
    conn.cursor().execute("CREATE DATABASE IF NOT EXISTS BIDS")
    conn.cursor().execute(f"CREATE SCHEMA IF NOT EXISTS BIDS.{schema}")
    conn.close()
    kw = fakesnow_server
    return (
        f"snowflake://{kw['user']}:{kw['password']}@{kw['account']}/BIDS/{schema}"
        f"?host={kw['host']}&port={kw['port']}&protocol={kw['protocol']}"
    )


@pytest.fixture(params=["duckdb", "snowflake"])
def warehouse(request, tmp_path):
    """An empty warehouse of each backend."""
    from bidopt.warehouse import open_warehouse

    url = (
        f"duckdb:///{tmp_path / 'warehouse'}" if request.param == "duckdb" else request.getfixturevalue("snowflake_url")
    )
    wh = open_warehouse(url)
    yield wh
    wh.close()


@pytest.fixture(scope="session")
def moto_server():
    """moto's S3 in server mode on loopback; boto3 reaches it through BIDOPT_S3_ENDPOINT_URL."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        return exc
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(moto_server, monkeypatch):
    """A fresh bucket on the moto server; returns its name."""
    if isinstance(moto_server, Exception):
        missing_service(f"moto server not importable: {moto_server}")
    import boto3

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "BIDOPT_S3_ENDPOINT_URL": moto_server,
    }.items():
        monkeypatch.setenv(key, value)
    name = f"bidopt-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto_server).create_bucket(Bucket=name)
    return name


@pytest.fixture
def platform_db(db_url, monkeypatch):
    """Settings pointing at an upgraded, seeded metadata DB (SQLite and PostgreSQL)."""
    from bidopt.db.engine import dispose_engines
    from bidopt.db.seed import prepare_demo_database

    monkeypatch.setenv("BIDOPT_DATABASE_URL", db_url)
    reset_settings_cache()
    yield prepare_demo_database(db_url)
    dispose_engines()


@pytest.fixture
def platform(platform_db):
    """platform_db plus simulated bid logs for both demo entities in the embedded warehouse."""
    from bidopt.data import generate_into_warehouse, get_warehouse
    from bidopt.simulator import MarketSpec

    with get_warehouse() as wh:
        for code, kw in (("drugs_hcp", {"npi_enabled": True}), ("auto_intenders", {"floor_available": True})):
            generate_into_warehouse(wh, MarketSpec(code, rows=80_000, seed=5, n_domains=200, **kw))
    return platform_db


@pytest.fixture
def memcached_server():
    """memcached on a free loopback port; yields ``(host, port, process)``, stopped by PID afterwards
    (a test that restarts it stops the new process itself)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = start_memcached(port)
    yield "127.0.0.1", port, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()

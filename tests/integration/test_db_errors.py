"""Database errors are translated once, in ``session_scope``: an unreachable database and a missing
schema become ``BidoptError``s with the fix in the message, for the CLI (one line, exit 1) and the
API (503 JSON) alike; SQLAlchemy's error stays chained, and other errors pass through unchanged."""

import socket

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from bidopt.cli.main import cli
from bidopt.db.engine import make_engine, session_scope
from bidopt.errors import BidoptError, DatabaseUnavailable, SchemaMissing
from bidopt.serve.api import create_app
from bidopt.settings import reset_settings_cache


def _free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    return port


@pytest.fixture
def unreachable_url():
    return f"postgresql+psycopg://bid:s3cr3t@127.0.0.1:{_free_port()}/meta"


@pytest.fixture
def empty_sqlite_url(tmp_path):
    path = tmp_path / "empty.db"
    path.touch()
    return f"sqlite:///{path}"


def _use(monkeypatch, url):
    monkeypatch.setenv("BIDOPT_DATABASE_URL", url)
    reset_settings_cache()


def test_an_unreachable_database_says_where_and_what_to_check(unreachable_url):
    engine = make_engine(unreachable_url)
    with pytest.raises(DatabaseUnavailable) as raised:
        with session_scope(engine) as s:
            s.execute(text("SELECT 1"))
    message = str(raised.value)
    assert message.startswith("cannot reach the metadata database at postgresql+psycopg://bid:***@127.0.0.1:")
    assert "s3cr3t" not in message and "Connection refused" in message
    assert message.endswith("is it running? check BIDOPT_DATABASE_URL") and "\n" not in message
    assert isinstance(raised.value.__cause__, OperationalError)  # the original stays chained
    assert raised.value.http_status == 503


def test_an_empty_sqlite_file_has_no_schema(empty_sqlite_url):
    with pytest.raises(SchemaMissing, match=r"no such table: opt_runs.*run `bidopt db upgrade`") as raised:
        with session_scope(make_engine(empty_sqlite_url)) as s:
            s.execute(text("SELECT * FROM opt_runs"))
    assert isinstance(raised.value.__cause__, OperationalError) and raised.value.http_status == 503


def test_a_postgresql_schema_without_tables_has_no_schema(pg_url):
    with pytest.raises(SchemaMissing, match=r'relation "opt_runs" does not exist.*run `bidopt db upgrade`'):
        with session_scope(make_engine(pg_url)) as s:
            s.execute(text("SELECT * FROM opt_runs"))


def test_a_connection_lost_during_a_statement_is_unavailable(pg_url, pg_admin_engine):
    engine = make_engine(pg_url)
    with pytest.raises(DatabaseUnavailable, match="terminating connection"):
        with session_scope(engine) as s:
            pid = s.scalar(text("SELECT pg_backend_pid()"))
            with pg_admin_engine.connect() as conn:
                conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            s.execute(text("SELECT 1"))
    engine.dispose()


def test_other_database_errors_pass_through_unchanged(empty_sqlite_url):
    engine = make_engine(empty_sqlite_url)
    with pytest.raises(OperationalError, match="syntax error"):  # a bug, not an operator's problem
        with session_scope(engine) as s:
            s.execute(text("SELEKT 1"))
    with session_scope(engine) as s:
        s.execute(text("CREATE TABLE t (x INTEGER PRIMARY KEY)"))
        s.execute(text("INSERT INTO t VALUES (1)"))
    with pytest.raises(IntegrityError):
        with session_scope(engine) as s:
            s.execute(text("INSERT INTO t VALUES (1)"))
    with pytest.raises(BidoptError, match="not a database error"):  # our own errors are left alone
        with session_scope(engine):
            raise BidoptError("not a database error")


def test_a_lost_connection_is_unavailable_but_a_deadlock_is_not(empty_sqlite_url):
    """What SQLAlchemy reports: an invalidated connection (its dialect saw the connection drop) is
    unavailable; an error the server answered with (a PostgreSQL SQLSTATE outside connection
    failures) is not."""
    engine = make_engine(empty_sqlite_url)
    with pytest.raises(DatabaseUnavailable, match="server closed the connection unexpectedly"):
        with session_scope(engine):
            raise OperationalError(
                "SELECT 1", {}, Exception("server closed the connection unexpectedly"), connection_invalidated=True
            )

    class Deadlock(Exception):
        sqlstate = "40P01"

    with pytest.raises(DBAPIError, match="deadlock detected"):
        with session_scope(engine):
            raise OperationalError("UPDATE x", {}, Deadlock("deadlock detected"))

    class AdminShutdown(Exception):
        sqlstate = "57P01"

    with pytest.raises(DatabaseUnavailable, match="terminating connection"):
        with session_scope(engine):
            raise OperationalError("SELECT 1", {}, AdminShutdown("terminating connection due to administrator command"))


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def test_cli_one_line_for_an_unreachable_database(monkeypatch, unreachable_url):
    _use(monkeypatch, unreachable_url)
    line = _one_line_error(CliRunner().invoke(cli, ["entities", "list"]))
    assert "cannot reach the metadata database at postgresql+psycopg://bid:***@127.0.0.1:" in line
    assert "check BIDOPT_DATABASE_URL" in line and "s3cr3t" not in line


def test_cli_one_line_for_a_missing_schema(monkeypatch, empty_sqlite_url):
    _use(monkeypatch, empty_sqlite_url)
    line = _one_line_error(CliRunner().invoke(cli, ["runs", "list"]))
    assert "has no schema yet" in line and "run `bidopt db upgrade`" in line


def test_api_answers_503_json_for_an_unreachable_database(monkeypatch, unreachable_url):
    _use(monkeypatch, unreachable_url)
    client = TestClient(create_app(), raise_server_exceptions=False)
    res = client.get("/api/entities", headers={"Authorization": "Bearer bo_whatever"})
    assert res.status_code == 503
    error = res.json()["error"]
    assert error.startswith("cannot reach the metadata database at postgresql+psycopg://bid:***@")
    assert "s3cr3t" not in res.text


def test_api_answers_503_json_for_a_missing_schema(monkeypatch, empty_sqlite_url):
    _use(monkeypatch, empty_sqlite_url)
    client = TestClient(create_app(), raise_server_exceptions=False)
    res = client.get("/api/me", headers={"Authorization": "Bearer bo_whatever"})
    assert res.status_code == 503 and "run `bidopt db upgrade`" in res.json()["error"]


def test_the_local_operator_token_takes_only_a_missing_user_for_a_first_start(sqlite_url, monkeypatch):
    """``bidopt serve`` creates the operator ``local`` when it does not exist (NotFound); any other
    error (here the database going away) is raised, never taken for a first start."""
    from bidopt.db import access
    from bidopt.db.migrate import upgrade_database
    from bidopt.serve.apps import ensure_local_operator_token

    upgrade_database(sqlite_url)
    engine = make_engine(sqlite_url)
    with session_scope(engine) as s:
        assert ensure_local_operator_token(s).startswith("bo_")
        assert access.get_user(s, "local").role == "operator"
        assert ensure_local_operator_token(s) is None
        assert ensure_local_operator_token(s, force_new=True).startswith("bo_")  # the user is reused

    def database_away(session, username):
        raise DatabaseUnavailable("cannot reach the metadata database at sqlite://: gone")

    monkeypatch.setattr(access, "get_user", database_away)
    monkeypatch.setattr(access, "create_user", lambda *a, **k: pytest.fail("took an outage for a first start"))
    with session_scope(engine) as s:
        with pytest.raises(DatabaseUnavailable):
            ensure_local_operator_token(s, force_new=True)
    engine.dispose()

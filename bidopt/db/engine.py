"""Engines and sessions for the metadata database (SQLite or PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from bidopt.db.models import utcnow
from bidopt.errors import BidoptError, DatabaseUnavailable, SchemaMissing
from bidopt.settings import redact_url

_ENGINES: dict[str, Engine] = {}


def make_engine(url: str) -> Engine:
    """A new engine. SQLite gets foreign keys, WAL and a busy timeout, so that
    several processes (CLI, optimizer, API) can share the file safely."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            # Let SQLAlchemy emit BEGIN itself (below) instead of pysqlite's lazy one.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin_immediate(conn):  # noqa: ANN001
            # IMMEDIATE takes the write lock at BEGIN: two writers queue on the busy
            # timeout instead of failing with "database is locked" on upgrade.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3, not psycopg2
    # A server that stops answering (a partition, a dropped route) must make calls fail, not hang:
    # a bidder's refresh or an optimizer's heartbeat that blocks for the kernel's ~15-minute TCP
    # timeout looks like a hung process. URL query parameters of the same names win.
    connect_args = {k: v for k, v in PG_CONNECT_ARGS.items() if k not in parsed.query}
    return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)


PG_CONNECT_ARGS = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


def get_engine(url: str) -> Engine:
    """A process-wide engine per URL (pools are per process)."""
    engine = _ENGINES.get(url)
    if engine is None:
        engine = _ENGINES[url] = make_engine(url)
    return engine


def dispose_engines() -> None:
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: committed when the block ends, rolled back on any exception.

    The one place database errors are translated (``database_error``): a database that cannot be
    reached raises ``DatabaseUnavailable`` and a missing schema ``SchemaMissing``, with the fix in
    the message and SQLAlchemy's error chained; other errors leave unchanged."""
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    session = factory()
    try:
        yield session
        session.commit()
    except DBAPIError as exc:
        with suppress(DBAPIError):  # a lost connection fails its rollback too; the statement's error counts
            session.rollback()
        error = database_error(exc, engine)
        if error is None:
            raise
        raise error from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# PostgreSQL SQLSTATEs: connection exceptions (class 08), the server shutting down or starting up,
# too many connections; and an undefined table or column.
_UNREACHABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")
_MISSING_SCHEMA_SQLSTATES = ("42P01", "42703")
_SQLITE_MISSING_SCHEMA = ("no such table", "no such column")


def database_error(exc: DBAPIError, engine: Engine) -> BidoptError | None:
    """The ``BidoptError`` that ``exc`` from ``engine`` stands for, or None when it is none of these:

    * ``DatabaseUnavailable``: connecting failed (refused, timed out, bad host or credentials) or
      the connection was lost during a statement (SQLAlchemy invalidated it);
    * ``SchemaMissing``: a table or column is missing (no ``bidopt db upgrade`` yet, or an older one).

    Other errors (constraint violations, deadlocks, ``database is locked``) are not translated."""
    url = redact_url(engine.url.render_as_string(hide_password=False))
    cause = exc.orig if exc.orig is not None else exc
    lines = str(cause).strip().splitlines()
    reason = lines[0] if lines else type(cause).__name__
    sqlstate = getattr(exc.orig, "sqlstate", None)  # psycopg; None for client-side connection failures
    if sqlstate in _MISSING_SCHEMA_SQLSTATES or (
        sqlstate is None and isinstance(exc, OperationalError) and reason.startswith(_SQLITE_MISSING_SCHEMA)
    ):
        return SchemaMissing(
            f"the metadata database at {url} has no schema yet, or an older one ({reason}): run `bidopt db upgrade`"
        )
    if not isinstance(exc, (OperationalError, InterfaceError)):
        return None
    if exc.connection_invalidated or (
        sqlstate.startswith(_UNREACHABLE_SQLSTATES) if sqlstate else exc.statement is None
    ):
        return DatabaseUnavailable(
            f"cannot reach the metadata database at {url}: {reason}; is it running? check BIDOPT_DATABASE_URL"
        )
    return None


def database_now(session: Session) -> datetime:
    """Now as naive UTC by the database's clock (PostgreSQL); SQLite is embedded, so its clock is ours.

    Timestamps that other hosts compare (run heartbeats, bidder reports) use this clock, so hosts
    whose clocks disagree still agree on how old a heartbeat is."""
    if session.get_bind().dialect.name == "postgresql":
        return session.scalar(text("SELECT now() AT TIME ZONE 'UTC'"))
    return utcnow()

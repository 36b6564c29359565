"""What the command modules share: the ``--json`` option, database sessions, the default user."""

from __future__ import annotations

import getpass
import os
from contextlib import contextmanager

import click

from bidopt import service
from bidopt.db.engine import get_engine, session_scope
from bidopt.errors import DatabaseUnavailable, SchemaMissing
from bidopt.settings import get_settings

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
# The actor of a catalogue write (bidopt.catalogue records it in the audit log); None -> default_user().
by_option = click.option("--by", "actor", default=None, help="Who makes the change (default: $BIDOPT_USER or login).")


def session():
    """One transaction on the metadata database of the settings in force."""
    return session_scope(get_engine(get_settings().database_url))


@contextmanager
def optional_session():
    """A session when the metadata database can be read, else None (data commands work without it)."""
    try:
        with session() as s:
            service.list_entities(s)  # the probe: no schema or no database raises
    except (SchemaMissing, DatabaseUnavailable):
        yield None
        return
    with session() as s:  # outside the try: an error of the command's own is not taken for "no database"
        yield s


def default_user() -> str:
    """Who a command acts as unless ``--by`` says: $BIDOPT_USER, else the login name."""
    try:
        return os.environ.get("BIDOPT_USER") or getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "cli"

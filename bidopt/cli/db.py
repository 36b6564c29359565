"""``bidopt db``: the metadata database's schema and demo catalogue."""

from __future__ import annotations

import click

from bidopt.cli.common import session
from bidopt.db.migrate import upgrade_database
from bidopt.db.seed import seed_demo_catalogue
from bidopt.settings import get_settings


@click.group("db")
def db() -> None:
    """The metadata database."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema to the latest revision."""
    url = get_settings().database_url
    upgrade_database(url)
    click.echo("database is at the latest revision")


@db.command("seed-demo")
def db_seed_demo() -> None:
    """Add the demo catalogue (ADX exchange, version v1, drugs_hcp and auto_intenders)."""
    with session() as s:
        added = seed_demo_catalogue(s)
    click.echo("added: " + ", ".join(added) if added else "demo catalogue already present")

"""``bidopt``: the root group. One module per group (``bidopt/cli/<group>.py``) is attached here.

Commands are thin: they parse, call a function of the library (``bidopt.catalogue`` for the
catalogue and the audit log, ``bidopt.service`` for runs, splits, users and tokens) and print.
A ``BidoptError`` becomes a one-line message and exit code 1.
"""

from __future__ import annotations

import click
from sqlalchemy.exc import OperationalError, ProgrammingError

from bidopt.cli.access import tokens, users
from bidopt.cli.audit import audit
from bidopt.cli.common import json_option
from bidopt.cli.data import data
from bidopt.cli.db import db
from bidopt.cli.deploy import deploy
from bidopt.cli.entities import entities
from bidopt.cli.events import events
from bidopt.cli.exchange import exchange
from bidopt.cli.macros import macros
from bidopt.cli.optimizer import optimizer
from bidopt.cli.output import print_json, print_mapping
from bidopt.cli.runs import runs
from bidopt.cli.schedules import schedules
from bidopt.cli.serve import serve_cmd
from bidopt.cli.sources import sources
from bidopt.cli.status import status_cmd
from bidopt.cli.versions import versions
from bidopt.errors import BidoptError
from bidopt.settings import get_settings


class BidoptGroup(click.Group):
    """Turns expected errors (``BidoptError``, and database errors) into a one-line message and exit 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BidoptError as exc:
            raise click.ClickException(str(exc)) from None
        except (OperationalError, ProgrammingError) as exc:
            # An unreachable database and a missing schema arrive as BidoptErrors (session_scope
            # translates them); what is left, e.g. `db upgrade` failing to connect, still gets one line.
            text = str(exc.orig) if getattr(exc, "orig", None) else str(exc)
            raise click.ClickException(f"database error: {text.splitlines()[0]}") from None


@click.group(cls=BidoptGroup)
@click.version_option(package_name="bidopt")
def cli() -> None:
    """bidopt: bid optimisation on Ray.

    Backends are chosen by the BIDOPT_* environment variables (see `bidopt settings`);
    by default everything is embedded under ./.bidopt/.
    """


@cli.command("settings")
@json_option
def settings_cmd(as_json: bool) -> None:
    """Show the settings in force, with passwords hidden."""
    values = get_settings().redacted()
    print_json(values) if as_json else print_mapping(values)


for _group in (
    db,
    sources,
    macros,
    versions,
    entities,
    audit,
    runs,
    data,
    optimizer,
    deploy,
    events,
    schedules,
    exchange,
    users,
    tokens,
    serve_cmd,
    status_cmd,
):
    cli.add_command(_group)


if __name__ == "__main__":
    cli()

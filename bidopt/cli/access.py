"""``bidopt users`` and ``bidopt tokens``: who may call the management API."""

from __future__ import annotations

import click

from bidopt import service
from bidopt.cli.common import json_option, session
from bidopt.cli.output import print_json, print_table


@click.group("users")
def users() -> None:
    """People and services that may call the management API."""


@users.command("add")
@click.argument("username")
@click.option(
    "--role",
    type=click.Choice(["viewer", "operator", "admin"]),
    required=True,
    help="viewer: read only; operator: also create runs and change splits; admin: also change the catalogue.",
)
def users_add(username: str, role: str) -> None:
    """Add a user."""
    with session() as s:
        service.add_user(s, username, role)
    click.echo(f"added {role} {username}; give them a token with `bidopt tokens create {username}`")


@users.command("list")
@json_option
def users_list(as_json: bool) -> None:
    """List users."""
    with session() as s:
        rows = service.list_users(s)
    print_json(rows) if as_json else print_table(rows, ["username", "role", "is_active", "created_at"])


@click.group("tokens")
def tokens() -> None:
    """API tokens (only their hashes are stored; a token is shown once)."""


@tokens.command("create")
@click.argument("username")
@click.option("--name", default="default", help="A label to tell tokens apart.")
def tokens_create(username: str, name: str) -> None:
    """Create an API token for USERNAME and print it (this is the only time it is shown)."""
    with session() as s:
        created = service.create_token(s, username, name)
    click.echo(f"token {created['token_id']} for {username} (shown once): {created['token']}")


@tokens.command("list")
@json_option
def tokens_list(as_json: bool) -> None:
    """List tokens (without their values)."""
    with session() as s:
        rows = service.list_tokens(s)
    print_json(rows) if as_json else print_table(
        rows, ["token_id", "username", "role", "name", "created_at", "revoked"]
    )


@tokens.command("revoke")
@click.argument("token_id", type=int)
def tokens_revoke(token_id: int) -> None:
    """Revoke a token: it stops working at once."""
    with session() as s:
        service.revoke_token(s, token_id)
    click.echo(f"revoked token {token_id}")

"""``bidopt serve``: the management API, web UI and bidder on Ray Serve, until a signal."""

from __future__ import annotations

import click

from bidopt.cli.common import session


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the HTTP proxy listens on.")
@click.option("--port", default=8000, show_default=True)
@click.option("--new-token", is_flag=True, help="Create a fresh operator token for the local user and print it.")
def serve_cmd(host: str, port: int, new_token: bool) -> None:
    """Start the Ray Serve apps (management API + web UI, bidder) on BIDOPT_RAY_ADDRESS or a local Ray.

    With no API token in the database yet, creates the operator `local` and prints its
    token once. Runs until SIGINT (Ctrl-C) or SIGTERM, then stops and exits 0: on the
    local Ray it started, it shuts Serve and that Ray down and waits until their
    processes are gone; on a cluster given by BIDOPT_RAY_ADDRESS it only disconnects,
    and the apps keep running there. A second signal does not cut the stop short.
    """
    from bidopt.serve.apps import ServeLifetime, ensure_local_operator_token

    with session() as s:
        token = ensure_local_operator_token(s, force_new=new_token)

    def announce(url: str) -> None:
        click.echo(f"management API and UI: {url}  (OpenAPI: {url}docs)")
        if token:
            click.echo(f"operator token for user local (shown once): {token}")
        else:
            click.echo("use an existing API token, or `bidopt tokens create USER`")

    click.echo(ServeLifetime(click.echo).run(host=host, port=port, on_ready=announce))

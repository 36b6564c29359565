"""The Ray Serve applications and how ``bidopt serve`` starts them.

* ``management``: the FastAPI app of ``bidopt.serve.api`` (API + web UI) at ``/``.

Replicas are light (``num_cpus`` 0.25) so that they fit next to the optimizer on a
small machine, and accept many concurrent requests (``max_ongoing_requests``; Serve's
default of 5 throttles a UI that loads several resources at once).
"""

from __future__ import annotations

import time

from ray import serve
from sqlalchemy.orm import Session

from bidopt.db import queries as q
from bidopt.serve.api import create_app

LOCAL_OPERATOR = "local"

management_app = create_app()


@serve.deployment(name="management", num_replicas=1, max_ongoing_requests=100,
                  ray_actor_options={"num_cpus": 0.25})
@serve.ingress(management_app)
class ManagementAPI:
    """Routes come from the FastAPI app; settings are read from BIDOPT_* in the replica."""


def ensure_local_operator_token(session: Session, *, force_new: bool = False) -> str | None:
    """The embedded default's first token: with no active token in the database (or with
    ``force_new``), create the operator ``local`` if needed and return a new token for it."""
    if not force_new and q.count_active_tokens(session) > 0:
        return None
    try:
        q.get_user(session, LOCAL_OPERATOR)
    except Exception:  # noqa: BLE001 - NotFound: first start
        q.create_user(session, LOCAL_OPERATOR, "operator")
    return q.create_api_token(session, LOCAL_OPERATOR, "bidopt serve")[1]


def run_apps(*, host: str = "127.0.0.1", port: int = 8000) -> str:
    """Deploy the apps on Ray (BIDOPT_RAY_ADDRESS or local) and return the base URL."""
    from bidopt.jobs.ray_runtime import ensure_ray

    ensure_ray()
    serve.start(http_options={"host": host, "port": port})
    serve.run(ManagementAPI.bind(), name="management", route_prefix="/")
    return f"http://{host}:{port}/"


def wait_forever() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()

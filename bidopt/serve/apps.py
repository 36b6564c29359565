"""The Ray Serve applications and how ``bidopt serve`` starts them.

* ``management``: the FastAPI app of ``bidopt.serve.api`` (API + web UI) at ``/``.
* ``bidder``: ``POST /openrtb2/{entity_code}``, a plain ``async __call__`` over
  ``BidderCore`` (no FastAPI on the hot path), autoscaled.

``bidopt serve`` turns on Serve's HAProxy ingress and throughput-optimised mode
(``RAY_SERVE_ENABLE_HA_PROXY=1``, ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``) unless the
environment says otherwise: measured on this 2-core machine, the default Python
proxy tops out in the hundreds of requests per second (``benchmarks/bidder.py``).

Replicas are light (``num_cpus`` 0.25) so that they fit next to the optimizer on a
small machine, and accept many concurrent requests (``max_ongoing_requests``; Serve's
default of 5 throttles a UI that loads several resources at once).
"""

from __future__ import annotations

import os
import time

from ray import serve
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response  # noqa: F401 - the type Serve gets back

from bidopt.bidder.app import BidderCore, http_handler

from bidopt.db import queries as q
from bidopt.serve.api import create_app

LOCAL_OPERATOR = "local"

management_app = create_app()


@serve.deployment(name="management", num_replicas=1, max_ongoing_requests=100,
                  ray_actor_options={"num_cpus": 0.25})
@serve.ingress(management_app)
class ManagementAPI:
    """Routes come from the FastAPI app; settings are read from BIDOPT_* in the replica."""


# Every key must be a field of ray.serve.config.AutoscalingConfig (a test checks: a misspelt
# field would be ignored without a word).
BIDDER_AUTOSCALING = {
    "min_replicas": 2,
    "max_replicas": 4,
    "target_ongoing_requests": 32,
    "upscale_delay_s": 10.0,
    "downscale_delay_s": 120.0,
}


@serve.deployment(name="bidder", max_ongoing_requests=100, autoscaling_config=BIDDER_AUTOSCALING,
                  ray_actor_options={"num_cpus": 0.25},
                  # a log line per request costs more than the decision itself; decisions have their own log
                  logging_config={"enable_access_log": False, "log_level": "WARNING"})
class Bidder:
    """Each replica keeps its own near cache and refresher thread (``BidderCore``).

    Serve marks a replica ready when ``__init__`` returns and sends it traffic from then on, so
    ``__init__`` loads the active splits first (``BidderCore`` raises if the database stays
    unreachable for ``BIDOPT_BIDDER_READY_TIMEOUT_SECONDS``; Serve then retries the replica).
    ``check_health`` fails a replica whose refresh thread died; ``__del__`` (a clean stop) removes
    the replica's status row."""

    def __init__(self) -> None:
        self.core = BidderCore()

    async def __call__(self, request: Request) -> Response:
        return await http_handler(self.core, request)

    def check_health(self) -> None:
        self.core.check_health()

    def __del__(self) -> None:
        core = getattr(self, "core", None)  # absent when __init__ raised
        if core is not None:
            core.close()


# Serve's HAProxy ingress and throughput-optimised mode; HAProxy's per-request metrics log (parsed
# by a Python actor: a fifth of a core at 5k req/s here) off, one HAProxy thread on small machines.
# Decisions have their own log; HAProxy's stats page still counts requests.
SERVE_MODE_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                  "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0", "RAY_SERVE_HAPROXY_NBTHREAD": "1"}


def bidder_autoscaling() -> dict:
    """``BIDDER_AUTOSCALING`` with the replica bounds of the settings."""
    from bidopt.settings import get_settings

    s = get_settings()
    low = s.bidder_min_replicas
    return {**BIDDER_AUTOSCALING, "min_replicas": low, "max_replicas": max(low, s.bidder_max_replicas)}


# Import paths for `serve deploy serve_config.yaml`.
management = ManagementAPI.bind()
bidder = Bidder.bind()


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

    for key, value in SERVE_MODE_ENV.items():  # read by the Serve controller when Ray starts
        os.environ.setdefault(key, value)
    ensure_ray()
    serve.start(http_options={"host": host, "port": port})
    serve.run(ManagementAPI.bind(), name="management", route_prefix="/")
    serve.run(Bidder.options(autoscaling_config=bidder_autoscaling()).bind(), name="bidder",
              route_prefix="/openrtb2")
    return f"http://{host}:{port}/"


def wait_forever() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()

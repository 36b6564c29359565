"""One settings object for every backend, read from ``BIDOPT_*`` env vars.

Each backend is chosen by the scheme of its URL; the defaults are embedded
backends under ``./.bidopt/`` so that a new user needs no servers. No ``.env``
file is read: configuration comes from the environment only, so what a
process runs with is visible in its environment.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bidopt.errors import BidoptError

MIN_NOTICE_SECRET_CHARS = 16


def _home() -> Path:
    return Path(os.environ.get("BIDOPT_HOME", ".bidopt")).resolve()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BIDOPT_", env_file=None, extra="ignore")

    home: Path = Field(default_factory=_home, description="Folder of the embedded backends")
    database_url: str = Field(default="", description="SQLAlchemy URL of the metadata DB")
    warehouse_url: str = Field(default="", description="duckdb:///folder or snowflake://...")
    artifact_url: str = Field(default="", description="file:///folder or s3://bucket/prefix")
    cache_url: str = Field(default="memory://", description="memory:// or memcached://host:port")
    ray_address: str | None = Field(default=None, description="Ray address; unset = local Ray")
    heartbeat_seconds: float = Field(default=10.0, gt=0, description="How often an optimizer says it is alive")
    stale_after_seconds: float = Field(
        default=300.0, gt=0, description="A running run without a heartbeat this long is requeued"
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Attempts before a run whose worker or task died (or timed out) fails"
    )
    run_timeout_seconds: float = Field(
        default=7200.0,
        gt=0,
        description="An optimizer task running this long is cancelled and its attempt failed (Ray mode)",
    )
    node_resources: Literal["auto", "always"] = Field(
        default="auto",
        description="When optimizer tasks and bidder replicas request their node resources: auto = where a "
        "live node declares them; always = always (a cluster whose node types scale from zero)",
    )
    bidder_refresh_seconds: float = Field(default=5.0, gt=0, description="How often bidders re-read the splits")
    bidder_ready_timeout_seconds: float = Field(
        default=60.0, gt=0, description="How long a new bidder replica retries its first load before it fails"
    )
    bidder_near_cache_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        le=1 << 40,
        description="With a memcached cache URL: the bytes of bid rows each bidder replica keeps in its near "
        "cache (LRU; the back-off rows are kept besides, always)",
    )
    bidder_near_miss: Literal["backoff", "fetch"] = Field(
        default="backoff",
        description="A near-cache miss: backoff = bid from the anchor's row now and fetch the key in the "
        "background; fetch = read it from memcached on the request path",
    )
    bidder_min_replicas: int = Field(default=2, ge=1, description="Bidder replicas the autoscaler keeps at least")
    bidder_max_replicas: int = Field(default=4, ge=1, description="Bidder replicas the autoscaler may start")
    bidder_target_cpu: float = Field(
        default=0.6,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="Share of a core each bidder replica should use: the autoscaler adds replicas above it",
    )
    bidder_max_loop_lag_ms: float = Field(
        default=10.0,
        gt=0,
        le=10_000,
        allow_inf_nan=False,
        description="Mean event-loop lag of the bidder replicas above which the autoscaler adds one",
    )
    bidder_upscale_delay_seconds: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        allow_inf_nan=False,
        description="How long the bidder is overloaded before a replica is added",
    )
    bidder_downscale_delay_seconds: float = Field(
        default=120.0,
        ge=0,
        le=86400,
        allow_inf_nan=False,
        description="How long the bidder is underloaded before a replica is removed",
    )
    events_url: str = Field(default="", description="Where bidders write decision and notice events (file:// or s3://)")
    events_flush_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often a bidder writes its buffered events (a crash loses at most this)",
    )
    events_write_threads: int = Field(
        default=8,
        ge=1,
        le=32,
        description="Threads a bidder writes one flush's event parts to S3 with (one part per entity with traffic; "
        "the local folder is written by one)",
    )
    events_split_seconds: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        allow_inf_nan=False,
        description="How often a bidder splits its flushes' parts (one per kind and hour, every entity in it) into "
        "one part per entity; 0 writes a part per entity at every flush",
    )
    notice_secret: SecretStr = Field(
        default=SecretStr(""),
        description="HMAC key that signs notice URLs (shared by every bidder); unset: a key kept in BIDOPT_HOME",
    )
    notice_base_url: str = Field(
        default="", description="Base URL exchanges call for notices (unset: the bid request's own scheme and host)"
    )
    attribution_window_seconds: float = Field(
        default=3600.0,
        gt=0,
        le=7 * 86400,
        allow_inf_nan=False,
        description="Notices older than this after their bid are refused; events compact only after it has passed",
    )
    control_loop_seconds: float = Field(
        default=30.0,
        gt=0,
        le=86400,
        allow_inf_nan=False,
        description="How often the control loop checks guardrails and schedules",
    )
    metrics: bool = Field(
        default=True,
        description="Whether bidders count requests, bids and no-bids (their status window) and export "
        "them to Ray's metrics agent; off only to measure what that costs",
    )
    require_services: bool = Field(default=False, description="Tests fail instead of skipping when a server is missing")

    @model_validator(mode="after")
    def _notice_secret_is_long_enough(self) -> Settings:
        # It is the only thing between a forger and a win notice of his choosing: a short one can be
        # guessed offline from a single signed URL.
        secret = self.notice_secret.get_secret_value()
        if secret and len(secret) < MIN_NOTICE_SECRET_CHARS:
            raise ValueError(
                f"BIDOPT_NOTICE_SECRET must be at least {MIN_NOTICE_SECRET_CHARS} characters "
                f"(e.g. `openssl rand -hex 32`), got {len(secret)}"
            )
        return self

    @model_validator(mode="after")
    def _heartbeats_outlive_staleness(self) -> Settings:
        # A run is requeued when its heartbeat is older than stale_after_seconds. With fewer than
        # three beats per stale window, one slow beat (a busy database, a GC pause) hands a healthy
        # run to a second worker: both then train it, and only the lease keeps them apart.
        if self.stale_after_seconds < 3 * self.heartbeat_seconds:
            raise ValueError(
                f"BIDOPT_STALE_AFTER_SECONDS ({self.stale_after_seconds:g}) must be at least 3 x "
                f"BIDOPT_HEARTBEAT_SECONDS ({self.heartbeat_seconds:g}), so that a live optimizer's runs "
                f"are never requeued between two heartbeats"
            )
        return self

    def model_post_init(self, __context) -> None:  # fill defaults that depend on home
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'bidopt.db'}"
        if not self.warehouse_url:
            self.warehouse_url = f"duckdb:///{self.home / 'warehouse'}"
        if not self.artifact_url:
            self.artifact_url = f"file://{self.home / 'artifacts'}"
        if not self.events_url:
            self.events_url = f"file://{self.home / 'events'}"

    def __repr__(self) -> str:  # a settings object in a log or traceback shows no password
        return f"Settings({self.redacted()!r})"

    __str__ = __repr__

    def redacted(self) -> dict[str, str | None]:
        """The settings with every password replaced, safe to print or log."""
        return {
            "home": str(self.home),
            "database_url": redact_url(self.database_url),
            "warehouse_url": redact_url(self.warehouse_url),
            "artifact_url": redact_url(self.artifact_url),
            "cache_url": redact_url(self.cache_url),
            "ray_address": redact_url(self.ray_address) if self.ray_address else None,
            "heartbeat_seconds": self.heartbeat_seconds,
            "stale_after_seconds": self.stale_after_seconds,
            "max_attempts": self.max_attempts,
            "run_timeout_seconds": self.run_timeout_seconds,
            "node_resources": self.node_resources,
            "bidder_refresh_seconds": self.bidder_refresh_seconds,
            "bidder_ready_timeout_seconds": self.bidder_ready_timeout_seconds,
            "bidder_min_replicas": self.bidder_min_replicas,
            "bidder_max_replicas": self.bidder_max_replicas,
            "bidder_near_cache_bytes": self.bidder_near_cache_bytes,
            "bidder_near_miss": self.bidder_near_miss,
            "events_url": redact_url(self.events_url),
            "events_flush_seconds": self.events_flush_seconds,
            "events_write_threads": self.events_write_threads,
            "events_split_seconds": self.events_split_seconds,
            "notice_secret": "***" if self.notice_secret.get_secret_value() else "(kept in BIDOPT_HOME)",
            "notice_base_url": self.notice_base_url or None,
            "attribution_window_seconds": self.attribution_window_seconds,
            "control_loop_seconds": self.control_loop_seconds,
            "metrics": self.metrics,
        }


def redact_url(url: str) -> str:
    """``scheme://user:secret@host`` -> ``scheme://user:***@host``; other URLs unchanged."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:***@{host}" if parts.username else f"***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class InvalidSettings(BidoptError):
    """The ``BIDOPT_*`` environment is not a valid configuration (a server-side mistake, not the caller's)."""

    http_status = 500


def _one_line(exc: ValidationError) -> str:
    """pydantic's multi-line report as one line naming the environment variables."""
    problems = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        problems.append(f"BIDOPT_{field.upper()}: {message}" if field else message)
    return "invalid settings: " + "; ".join(problems)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings in force; ``InvalidSettings`` (one line, a ``BidoptError``) when the environment is invalid."""
    try:
        return Settings()
    except ValidationError as exc:
        raise InvalidSettings(_one_line(exc)) from None


def reset_settings_cache() -> None:
    """Tests and the CLI re-read the environment after changing it."""
    get_settings.cache_clear()

"""The management API and web UI: one FastAPI app (served by Ray Serve, see ``bidopt.serve.apps``).

Every route calls a function of ``bidopt.service``. Callers authenticate with an
API token (``Authorization: Bearer bo_...``); viewers read, operators also create
runs and change traffic splits. Who created a run or deployed a split is the
authenticated caller, never a field of the request. Errors are JSON
``{"error": "..."}`` with a 4xx status, or 503 when the metadata database is unreachable or has
no schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from bidopt import service
from bidopt.db import access
from bidopt.db.engine import get_engine, session_scope
from bidopt.errors import BidoptError
from bidopt.settings import get_settings


class ApiError(BidoptError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.http_status = status


class CreateRunRequest(BaseModel):
    """Config values of the new run; keys and ranges as in ``GET /api/config-specs``."""

    model_config = ConfigDict(extra="forbid")
    configs: dict[str, Any] = Field(default_factory=dict, examples=[{"target_win_rate": 0.4, "max_bid_cpm": 20}])


class SplitRequest(BaseModel):
    """The new split: whole percentages per completed, validated run, adding up to 100."""

    model_config = ConfigDict(extra="forbid")
    split: dict[str, Any] | list[dict[str, Any]] = Field(examples=[{"20260203_150000": 80, "20260204_090000": 20}])


class PromoteRequest(BaseModel):
    """The run to put at 100% of the entity's traffic: completed, validated, loadable by bidders."""

    model_config = ConfigDict(extra="forbid")
    run_id: str = Field(examples=["20260203_150000"])


class ScheduleRequest(BaseModel):
    """An optimizer schedule: a run with ``configs`` every ``every_hours`` hours (1/60 to 8784), the
    first at ``start`` (ISO 8601 UTC; default now)."""

    model_config = ConfigDict(extra="forbid")
    every_hours: float | int | str = Field(examples=[24])
    configs: dict[str, Any] = Field(default_factory=dict, examples=[{"target_win_rate": 0.4}])
    start: str | None = Field(default=None, examples=["2026-02-03T06:00:00Z"])


def _session() -> Iterator[Session]:
    with session_scope(get_engine(get_settings().database_url)) as s:
        yield s


def caller(
    authorization: str | None = Header(default=None), x_api_token: str | None = Header(default=None)
) -> access.Caller:
    token = x_api_token
    if authorization and authorization.lower().startswith("bearer "):
        token = authorization[7:].strip()
    with session_scope(get_engine(get_settings().database_url)) as s:
        who = access.authenticate_token(s, token)
    if who is None:
        raise ApiError("missing or invalid API token (Authorization: Bearer <token>)", 401)
    return who


def operator(who: access.Caller = Depends(caller)) -> access.Caller:
    if not who.can_write:
        raise ApiError(f"{who.username} is a viewer: creating runs and changing splits needs an operator", 403)
    return who


def create_app() -> FastAPI:
    app = FastAPI(
        title="bidopt management API",
        version="0.1.0",
        description="Entities, optimizer runs, metrics and A/B traffic splits.",
    )

    @app.exception_handler(BidoptError)
    async def bidopt_error(_request: Request, exc: BidoptError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.http_status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own errors (a body that is not JSON, an unknown path) in our shape too
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return JSONResponse({"error": "; ".join(parts) or "invalid request"}, status_code=422)

    read = [Depends(caller)]

    @app.get("/api/me", tags=["auth"])
    def me(who: access.Caller = Depends(caller)) -> dict:
        return {"username": who.username, "role": who.role, "can_write": who.can_write}

    @app.get("/api/config-specs", tags=["runs"], dependencies=read)
    def config_specs() -> dict:
        return service.config_specs()

    @app.get("/api/entities", tags=["entities"], dependencies=read)
    def entities(s: Session = Depends(_session)) -> list[dict]:
        return service.list_entities(s)

    @app.get("/api/entities/{entity_code}", tags=["entities"], dependencies=read)
    def entity(entity_code: str, s: Session = Depends(_session)) -> dict:
        return service.get_entity(s, entity_code)

    @app.get("/api/entities/{entity_code}/runs", tags=["runs"], dependencies=read)
    def entity_runs(
        entity_code: str,
        status: str | None = None,
        limit: int = Query(100, ge=1, le=1000),
        s: Session = Depends(_session),
    ) -> list[dict]:
        return service.list_runs(s, entity_code=entity_code, status=status, limit=limit)

    @app.post("/api/entities/{entity_code}/runs", tags=["runs"], status_code=201)
    def create_run(entity_code: str, body: CreateRunRequest, who: access.Caller = Depends(operator)) -> dict:
        with session_scope(get_engine(get_settings().database_url)) as s:  # committed before we answer
            return service.create_run(s, entity_code, body.configs, triggered_by=who.username)

    @app.get("/api/entities/{entity_code}/deployable-runs", tags=["splits"], dependencies=read)
    def deployable(entity_code: str, s: Session = Depends(_session)) -> list[dict]:
        return service.deployable_runs(s, entity_code)

    @app.get("/api/entities/{entity_code}/split", tags=["splits"], dependencies=read)
    def get_split(entity_code: str, s: Session = Depends(_session)) -> dict:
        return service.split_view(s, entity_code)

    @app.put("/api/entities/{entity_code}/split", tags=["splits"])
    def put_split(entity_code: str, body: SplitRequest, who: access.Caller = Depends(operator)) -> dict:
        with session_scope(get_engine(get_settings().database_url)) as s:  # committed before we answer
            return service.set_traffic_split(s, entity_code, body.split, deployed_by=who.username)

    @app.get("/api/entities/{entity_code}/split/history", tags=["splits"], dependencies=read)
    def split_history(entity_code: str, s: Session = Depends(_session)) -> list[dict]:
        return service.split_history(s, entity_code)

    @app.post("/api/entities/{entity_code}/promote", tags=["splits"])
    def promote(entity_code: str, body: PromoteRequest, who: access.Caller = Depends(operator)) -> dict:
        with session_scope(get_engine(get_settings().database_url)) as s:  # committed before we answer
            return service.promote_run(s, entity_code, body.run_id, deployed_by=who.username)

    @app.post("/api/guardrails/check", tags=["splits"])
    def guardrails_check(entity: str | None = None, who: access.Caller = Depends(operator)) -> list[dict]:
        """Judge the active splits now (one entity with ``entity``) and apply what the guardrails decide."""
        with session_scope(get_engine(get_settings().database_url)) as s:  # committed before we answer
            return service.check_guardrails(s, entity)

    @app.get("/api/entities/{entity_code}/schedule", tags=["schedules"], dependencies=read)
    def get_schedule(entity_code: str, s: Session = Depends(_session)) -> dict:
        return service.get_schedule(s, entity_code)

    @app.put("/api/entities/{entity_code}/schedule", tags=["schedules"])
    def put_schedule(entity_code: str, body: ScheduleRequest, who: access.Caller = Depends(operator)) -> dict:
        with session_scope(get_engine(get_settings().database_url)) as s:  # committed before we answer
            return service.set_schedule(
                s, entity_code, body.every_hours, body.configs, created_by=who.username, start_at=body.start
            )

    @app.delete("/api/entities/{entity_code}/schedule", tags=["schedules"])
    def delete_schedule(entity_code: str, who: access.Caller = Depends(operator)) -> dict:
        with session_scope(get_engine(get_settings().database_url)) as s:  # committed before we answer
            service.remove_schedule(s, entity_code)
        return {"entity_code": entity_code, "removed": True}

    @app.get("/api/entities/{entity_code}/report", tags=["splits"], dependencies=read)
    def split_report(entity_code: str, split: int | None = Query(None, ge=1, le=2**31 - 1)) -> dict:
        """The A/B report of a split (``split``; default the active split, else the newest)."""
        with session_scope(get_engine(get_settings().database_url)) as s:
            inputs = service.split_report_inputs(s, entity_code, split)
        return service.build_split_report(inputs)  # the events are read outside the transaction

    @app.get("/api/runs", tags=["runs"], dependencies=read)
    def runs(
        entity: str | None = None,
        status: str | None = None,
        limit: int = Query(100, ge=1, le=1000),
        s: Session = Depends(_session),
    ) -> list[dict]:
        return service.list_runs(s, entity_code=entity, status=status, limit=limit)

    @app.get("/api/runs/{run_id}", tags=["runs"], dependencies=read)
    def run(run_id: str, s: Session = Depends(_session)) -> dict:
        return service.get_run(s, run_id)

    @app.get("/api/runs/{run_id}/bids", tags=["runs"], dependencies=read)
    def run_bids(
        run_id: str,
        offset: int = Query(0, ge=0),
        limit: int = Query(100, ge=1, le=1000),
        level: str | None = None,
        s: Session = Depends(_session),
    ) -> dict:
        return service.run_bid_table(s, run_id, offset=offset, limit=limit, level=level)

    @app.get("/api/runs/{run_id}/curves", tags=["runs"], dependencies=read)
    def run_curves(run_id: str, s: Session = Depends(_session)) -> dict:
        return service.run_curves(s, run_id)

    # ------------------------------------------------------------------ web UI (no build step)

    static = resources.files("bidopt.serve") / "static"

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    @app.get("/ui/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        types = {"app.js": "text/javascript", "app.css": "text/css"}
        if name not in types:
            raise ApiError(f"no such asset: {name}", 404)
        return Response((static / name).read_text(encoding="utf-8"), media_type=types[name])

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict:
        return {"ok": True}

    return app

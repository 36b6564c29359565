"""The management API and web UI: one FastAPI app (served by Ray Serve, see ``bidopt.serve.apps``).

Every route calls a function of ``bidopt.service``, ``bidopt.catalogue`` (the catalogue) or
``bidopt.status`` (what the bidders serve).
Callers authenticate with an API token (``Authorization: Bearer bo_...``); viewers read,
operators also create runs and change traffic splits, admins also change the catalogue (supply
sources, macros, versions, entities). Who created a run, deployed a split or changed the catalogue
is the authenticated caller, never a field of the request. Errors are JSON
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

from bidopt import catalogue, replays, service, status
from bidopt.db import access
from bidopt.db.engine import get_engine, session_scope
from bidopt.errors import BidoptError, InvalidConfig
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


class CreateSourceRequest(BaseModel):
    """A new supply source (``opt_master``): an exchange or SSP and the macro namespace of its requests."""

    model_config = ConfigDict(extra="forbid")
    code: str = Field(examples=["OPENX"])
    name: str = Field(examples=["OpenX"])
    source_type: str = Field(examples=["ssp"], description="exchange or ssp")
    auction_type: str = Field(examples=["second_price"], description="first_price or second_price")
    macro_namespace: str = Field(examples=["OX"])


class UpdateSourceRequest(BaseModel):
    """The fields of a supply source to change (at least one)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    source_type: str | None = None
    auction_type: str | None = None
    macro_namespace: str | None = None


class CreateMacroRequest(BaseModel):
    """How a feature is read from the bid requests of a supply source."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(examples=["ADX"])
    feature: str = Field(examples=["geo_region_name"])
    template: str = Field(examples=["[ADX_GEO_STATE]"])
    request_field: str = Field(examples=["device.geo.region"], description="dotted paths, | between alternatives")
    description: str | None = None


class UpdateMacroRequest(BaseModel):
    """The fields of a macro to change; ``status: "active"`` reactivates it."""

    model_config = ConfigDict(extra="forbid")
    template: str | None = None
    request_field: str | None = None
    description: str | None = None
    status: str | None = Field(default=None, examples=["active"])


class CreateVersionRequest(BaseModel):
    """A new optimizer version (immutable: a change is a new version)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(examples=["v2"])
    anchor_feature: str = Field(examples=["geo_region_name"])
    # Any: the service parses them as run configs are parsed (pydantic would make true 1.0)
    min_win_auc: Any = Field(examples=[0.6])
    max_win_ece: Any = Field(examples=[0.05])
    min_bid_coverage: Any = Field(examples=[0.9])
    description: str | None = None


class CreateEntityRequest(BaseModel):
    """A new entity of an active supply source on an optimizer version, with its static configs."""

    model_config = ConfigDict(extra="forbid")
    code: str = Field(examples=["vet_clinics"])
    name: str = Field(examples=["Pet health, veterinary clinics"])
    source: str = Field(examples=["ADX"])
    version: str = Field(examples=["v1"])
    base_path: str | None = None
    configs: dict[str, Any] = Field(default_factory=dict, examples=[{"npi_enabled": False, "domain_enabled": True}])


class UpdateEntityRequest(BaseModel):
    """The fields of an entity to change (at least one)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    base_path: str | None = None


class EntityConfigsRequest(BaseModel):
    """Static configs to set; keys and ranges as in ``GET /api/config-specs`` (``static``)."""

    model_config = ConfigDict(extra="forbid")
    configs: dict[str, Any] = Field(examples=[{"floor_available": True, "guardrail_min_bids": 500}])


class UseVersionRequest(BaseModel):
    """The optimizer version the entity's next runs are made with."""

    model_config = ConfigDict(extra="forbid")
    version: str = Field(examples=["v2"])


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


def admin(who: access.Caller = Depends(caller)) -> access.Caller:
    if not who.can_admin:
        article = "an" if who.role[:1] in "aeiou" else "a"
        raise ApiError(f"{who.username} is {article} {who.role}: changing the catalogue needs the admin role", 403)
    return who


def create_app() -> FastAPI:
    app = FastAPI(
        title="bidopt management API",
        version="0.1.0",
        description="Entities, optimizer runs, metrics, A/B traffic splits, the catalogue and its audit log.",
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
        return {"username": who.username, "role": who.role, "can_write": who.can_write, "can_admin": who.can_admin}

    @app.get("/api/config-specs", tags=["runs"], dependencies=read)
    def config_specs() -> dict:
        return service.config_specs()

    @app.get("/api/entities", tags=["entities"], dependencies=read)
    def entities(s: Session = Depends(_session)) -> list[dict]:
        return service.list_entities(s)

    @app.post("/api/entities", tags=["entities"], status_code=201)
    def create_entity(body: CreateEntityRequest, who: access.Caller = Depends(admin)) -> dict:
        with session_scope(get_engine(get_settings().database_url)) as s:  # committed before we answer
            return catalogue.create_entity(
                s,
                code=body.code,
                name=body.name,
                source=body.source,
                version=body.version,
                base_path=body.base_path,
                configs=body.configs,
                actor=who.username,
            )

    @app.get("/api/entities/{entity_code}", tags=["entities"], dependencies=read)
    def entity(entity_code: str, s: Session = Depends(_session)) -> dict:
        return service.get_entity(s, entity_code)

    @app.patch("/api/entities/{entity_code}", tags=["entities"])
    def update_entity(entity_code: str, body: UpdateEntityRequest, who: access.Caller = Depends(admin)) -> dict:
        with session_scope(get_engine(get_settings().database_url)) as s:  # committed before we answer
            return catalogue.update_entity(s, entity_code, body.model_dump(exclude_unset=True), actor=who.username)

    @app.post("/api/entities/{entity_code}/deactivate", tags=["entities"])
    def deactivate_entity(entity_code: str, who: access.Caller = Depends(admin)) -> dict:
        """Stop serving the entity (bidders drop it on their next refresh) and refuse its new runs."""
        with session_scope(get_engine(get_settings().database_url)) as s:  # committed before we answer
            return catalogue.deactivate_entity(s, entity_code, actor=who.username)

    @app.put("/api/entities/{entity_code}/configs", tags=["entities"])
    def put_entity_configs(entity_code: str, body: EntityConfigsRequest, who: access.Caller = Depends(admin)) -> dict:
        with session_scope(get_engine(get_settings().database_url)) as s:  # committed before we answer
            return catalogue.set_entity_configs(s, entity_code, body.configs, actor=who.username)

    @app.put("/api/entities/{entity_code}/version", tags=["entities"])
    def put_entity_version(entity_code: str, body: UseVersionRequest, who: access.Caller = Depends(admin)) -> dict:
        with session_scope(get_engine(get_settings().database_url)) as s:  # committed before we answer
            return catalogue.use_version(s, entity_code, body.version, actor=who.username)

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

    @app.get("/api/status", tags=["splits"], dependencies=read)
    def bidder_status(entity: str | None = None, s: Session = Depends(_session)) -> dict:
        """Per entity: the active split, what each bidder replica serves, the last minutes' rates."""
        return status.status(s, entity)

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

    @app.get("/api/runs/{run_id}/replay", tags=["runs"], dependencies=read)
    def run_replay(
        run_id: str,
        against: list[str] = Query(default=[], description="runs to compare with (default: the active split)"),
        since: str | None = None,
        until: str | None = None,
        window: str = Query("all", description="all, training or holdout: what since/until default to"),
        engine: str = Query("local", description="local (ray: only from the CLI, see below)"),
        top: int = Query(20, ge=1, le=1000, description="biggest segments per run"),
        s: Session = Depends(_session),
    ) -> dict:
        """Replay the entity's logged requests through the run (and the compared runs) as a bidder
        would: bid share, expected win rate, spend and eCPM per run and per segment. Computes (seconds).
        In the management process only: a viewer's request must not start Ray Data tasks that compete
        with the bidder replicas for the cluster's CPUs (``bidopt runs replay --engine ray`` can)."""
        if engine not in ("local", "auto"):
            raise InvalidConfig(f"engine must be local from the API (got {engine!r}); bidopt runs replay --engine ray")
        engine = "local"
        return replays.replay_run(
            s, run_id, against=against, since=since, until=until, window=window, engine=engine, top_segments=top
        )

    # ------------------------------------------------------------------ the catalogue (admin writes)

    @app.get("/api/sources", tags=["catalogue"], dependencies=read)
    def sources(s: Session = Depends(_session)) -> list[dict]:
        return catalogue.list_sources(s)

    @app.post("/api/sources", tags=["catalogue"], status_code=201)
    def create_source(body: CreateSourceRequest, who: access.Caller = Depends(admin)) -> dict:
        with session_scope(get_engine(get_settings().database_url)) as s:  # committed before we answer
            return catalogue.create_source(s, **body.model_dump(), actor=who.username)

    @app.get("/api/sources/{code}", tags=["catalogue"], dependencies=read)
    def source(code: str, s: Session = Depends(_session)) -> dict:
        return catalogue.get_source(s, code)

    @app.patch("/api/sources/{code}", tags=["catalogue"])
    def update_source(code: str, body: UpdateSourceRequest, who: access.Caller = Depends(admin)) -> dict:
        with session_scope(get_engine(get_settings().database_url)) as s:  # committed before we answer
            return catalogue.update_source(s, code, body.model_dump(exclude_unset=True), actor=who.username)

    @app.post("/api/sources/{code}/deactivate", tags=["catalogue"])
    def deactivate_source(code: str, who: access.Caller = Depends(admin)) -> dict:
        with session_scope(get_engine(get_settings().database_url)) as s:  # committed before we answer
            return catalogue.deactivate_source(s, code, actor=who.username)

    @app.get("/api/macros", tags=["catalogue"], dependencies=read)
    def macros(source: str | None = None, s: Session = Depends(_session)) -> list[dict]:
        return catalogue.list_macros(s, source=source)

    @app.post("/api/macros", tags=["catalogue"], status_code=201)
    def create_macro(body: CreateMacroRequest, who: access.Caller = Depends(admin)) -> dict:
        with session_scope(get_engine(get_settings().database_url)) as s:  # committed before we answer
            return catalogue.create_macro(s, **body.model_dump(), actor=who.username)

    @app.patch("/api/macros/{source}/{feature}", tags=["catalogue"])
    def update_macro(source: str, feature: str, body: UpdateMacroRequest, who: access.Caller = Depends(admin)) -> dict:
        with session_scope(get_engine(get_settings().database_url)) as s:  # committed before we answer
            return catalogue.update_macro(s, source, feature, body.model_dump(exclude_unset=True), actor=who.username)

    @app.post("/api/macros/{source}/{feature}/deactivate", tags=["catalogue"])
    def deactivate_macro(source: str, feature: str, who: access.Caller = Depends(admin)) -> dict:
        """Deactivate a macro; the answer's ``note`` says why runs in active splits keep working."""
        with session_scope(get_engine(get_settings().database_url)) as s:  # committed before we answer
            return catalogue.deactivate_macro(s, source, feature, actor=who.username)

    @app.get("/api/versions", tags=["catalogue"], dependencies=read)
    def versions(s: Session = Depends(_session)) -> list[dict]:
        return catalogue.list_versions(s)

    @app.post("/api/versions", tags=["catalogue"], status_code=201)
    def create_version(body: CreateVersionRequest, who: access.Caller = Depends(admin)) -> dict:
        with session_scope(get_engine(get_settings().database_url)) as s:  # committed before we answer
            return catalogue.create_version(s, **body.model_dump(), actor=who.username)

    @app.get("/api/versions/{name}", tags=["catalogue"], dependencies=read)
    def version(name: str, s: Session = Depends(_session)) -> dict:
        return catalogue.get_version(s, name)

    @app.get("/api/audit", tags=["catalogue"], dependencies=read)
    def audit(
        entity: str | None = None, limit: int = Query(200, ge=1, le=1000), s: Session = Depends(_session)
    ) -> list[dict]:
        """Catalogue and split changes, newest first: who, when, what, old and new values."""
        return catalogue.list_audit(s, entity=entity, limit=limit)

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

"""What operators do, as library functions: the API, the web UI and the CLI all call these.

Each function takes a ``Session`` (the caller owns the transaction, see ``session_scope``) and
returns plain dicts and lists (``bidopt.views``), ready for JSON or a table.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from sqlalchemy.orm import Session

from bidopt.artifacts import read_run_artifact
from bidopt.configs import ENTITY_CONFIG_SPECS, RUN_CONFIG_SPECS
from bidopt.db import access, bidder_status
from bidopt.db import queries as q
from bidopt.db.models import OptRun
from bidopt.errors import Conflict, InvalidConfig, NotFound
from bidopt.views import (
    deployment_view,
    entity_view,
    format_ts,
    run_detail_view,
    run_row_view,
    token_view,
    user_view,
)

MAX_PAGE = 1000


def config_specs() -> dict[str, list[dict[str, Any]]]:
    """Every run and static config key with its section, type, default, range and help."""

    def spec_view(spec) -> dict[str, Any]:
        return {
            "key": spec.key,
            "section": spec.section,
            "value_type": spec.value_type,
            "default": spec.default,
            "description": spec.description,
            "min_value": spec.min_value,
            "max_value": spec.max_value,
            "min_inclusive": spec.min_inclusive,
            "max_inclusive": spec.max_inclusive,
            "choices": list(spec.choices),
        }

    return {
        "run": [spec_view(s) for s in RUN_CONFIG_SPECS.values()],
        "static": [spec_view(s) for s in ENTITY_CONFIG_SPECS.values()],
    }


def list_entities(session: Session) -> list[dict[str, Any]]:
    return [entity_view(session, e) for e in q.list_entities(session)]


def get_entity(session: Session, entity_code: str) -> dict[str, Any]:
    return entity_view(session, q.get_entity_by_code(session, entity_code))


def get_entity_with_latest_runs(session: Session, entity_code: str, *, limit: int = 10) -> dict[str, Any]:
    """The entity's view with its newest runs under ``latest_runs`` (row views, newest first)."""
    view = get_entity(session, entity_code)
    return {**view, "latest_runs": list_runs(session, entity_code=entity_code, limit=limit, with_metrics=False)}


def create_run(
    session: Session, entity_code: str, configs: dict[str, Any], *, triggered_by: str, trigger_type: str = "api"
) -> dict[str, Any]:
    run = q.create_run(session, entity_code, configs, triggered_by=triggered_by, trigger_type=trigger_type)
    return run_detail_view(session, run)


def list_runs(
    session: Session,
    *,
    entity_code: str | None = None,
    status: str | None = None,
    limit: int = 100,
    with_metrics: bool = True,
) -> list[dict[str, Any]]:
    """Runs newest first as row views; ``with_metrics`` adds the model metrics and the error
    (a query per run: the API's list), without them one query (``bidopt runs list``)."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidConfig(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    runs = q.list_runs(session, entity_code=entity_code, status=status, limit=limit)
    if not with_metrics:
        return [run_row_view(r) for r in runs]
    out = []
    for run in runs:
        row = run_row_view(run)
        metrics = q.get_run_metrics(session, run.run_id)
        row["win_auc"] = metrics.get("win_rate_model", {}).get("auc")
        row["win_ece"] = metrics.get("win_rate_model", {}).get("ece")
        row["ctr_auc"] = metrics.get("ctr_model", {}).get("auc")
        row["error_message"] = run.error_message
        out.append(row)
    return out


def get_run(session: Session, run_id: str) -> dict[str, Any]:
    return run_detail_view(session, q.get_run(session, run_id))


def get_newest_run(session: Session, entity_code: str) -> dict[str, Any]:
    """The detail view of the entity's newest run; ``NotFound`` if it has none."""
    newest = q.list_runs(session, entity_code=entity_code, limit=1)
    if not newest:
        raise NotFound(f"{entity_code} has no runs")
    return run_detail_view(session, newest[0])


def _completed_output(session: Session, run_id: str) -> str:
    run = q.get_run(session, run_id)
    if run.status != "completed" or not run.s3_output_path:
        raise Conflict(f"run {run_id} is {run.status}: it has no artifacts")
    return run.s3_output_path


def run_bid_table(
    session: Session, run_id: str, *, offset: int = 0, limit: int = 100, level: str | None = None
) -> dict[str, Any]:
    """A page of the run's ``suggested_bids.csv`` (checked against its manifest)."""
    if offset < 0 or not 1 <= limit <= MAX_PAGE:
        raise InvalidConfig(f"offset must be >= 0 and limit between 1 and {MAX_PAGE}")
    if level not in (None, "segment", "anchor", "default"):
        raise InvalidConfig(f"level must be segment, anchor or default, got {level!r}")
    data = read_run_artifact(_completed_output(session, run_id), "suggested_bids.csv")
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    if level:
        rows = [r for r in rows if r["level"] == level]
    page = rows[offset : offset + limit]
    for r in page:
        for key in ("bid_cpm", "predicted_win_rate"):
            r[key] = float(r[key])
        r["train_bids"] = int(r["train_bids"])
        r["explored"] = r["explored"] == "True"
        r["capped"] = r["capped"] == "True"
    return {"run_id": run_id, "total": len(rows), "offset": offset, "limit": limit, "rows": page}


def run_curves(session: Session, run_id: str) -> dict[str, Any]:
    return json.loads(read_run_artifact(_completed_output(session, run_id), "win_curves.json"))


def deployable_runs(session: Session, entity_code: str) -> list[dict[str, Any]]:
    return [run_row_view(r) for r in q.list_completed_passed_runs(session, entity_code)]


def split_view(session: Session, entity_code: str) -> dict[str, Any]:
    """The entity's active split and, under ``bidders``, whether it is live on every reporting
    bidder replica or which replicas lag and why (``bidopt.db.bidder_status.split_liveness``)."""
    rows = q.get_current_traffic_split(session, entity_code)
    split_id = rows[0].split_id if rows else None
    return {
        "entity_code": entity_code,
        "split_id": split_id,
        "deployed_by": rows[0].deployed_by if rows else None,
        "deployed_at": format_ts(rows[0].deployed_at) if rows else None,
        "runs": [{"run_id": r.run_id, "traffic_pct": r.traffic_pct} for r in rows],
        "total_pct": sum(r.traffic_pct for r in rows),
        "bidders": bidder_status.split_liveness(session, entity_code, split_id),
    }


def check_split_servable(session: Session, entity_code: str, pairs: list[tuple[str, Any]]) -> None:
    """Raise ``Conflict`` naming the run and the reason if a bidder could not load a run of the
    split, by the bidder's own loading code (manifest, checksums, entity default row, a request
    field for every feature). Runs that are unknown, of another entity, not completed or not
    validated are left to ``replace_traffic_split``, which says so."""
    from bidopt.bidder.loader import check_run_servable  # the bidder's code: imported only when deploying

    entity = q.get_entity_by_code(session, entity_code)
    for run_id, _ in pairs:
        run = session.get(OptRun, run_id)
        if (
            run is None
            or run.entity_id != entity.entity_id
            or run.status != "completed"
            or run.validation_status != "passed"
        ):
            continue
        try:
            check_run_servable(session, run_id)
        except Exception as exc:  # noqa: BLE001 - whatever stops a bidder loading it stops the switch
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            raise Conflict(f"run {run_id} cannot be served: {reason}; the split was not changed") from None


def set_traffic_split(session: Session, entity_code: str, split: Any, *, deployed_by: str) -> dict[str, Any]:
    """Replace the entity's active split (validated; one transaction; see ``replace_traffic_split``),
    after checking that bidders can load every run of it (``check_split_servable``: 409 if not,
    nothing written). A completed run's artifacts never change, so a check that passed still holds
    when the switch commits."""
    if isinstance(split, dict):
        pairs = list(split.items())
    elif isinstance(split, list) and all(isinstance(i, tuple) and len(i) == 2 for i in split):
        pairs = split
    elif isinstance(split, list):
        try:
            pairs = [(item["run_id"], item["traffic_pct"]) for item in split]
        except (TypeError, KeyError):
            raise InvalidConfig("split items need run_id and traffic_pct") from None
    else:
        raise InvalidConfig("split must be {run_id: pct} or [{run_id, traffic_pct}]")
    for run_id, _ in pairs:
        if not isinstance(run_id, str):
            raise InvalidConfig(f"run ids are text, got {run_id!r}")
    pairs = q.validate_split_shape(pairs)  # a malformed split is refused before any artifact is read
    check_split_servable(session, entity_code, pairs)
    q.replace_traffic_split(session, entity_code, pairs, deployed_by=deployed_by)
    return split_view(session, entity_code)


def split_history(session: Session, entity_code: str) -> list[dict[str, Any]]:
    """Past and present splits, newest first, each with its runs."""
    splits: dict[int, dict[str, Any]] = {}
    for row in q.get_traffic_split_history(session, entity_code):
        view = deployment_view(row)
        entry = splits.setdefault(
            row.split_id,
            {
                "split_id": row.split_id,
                "is_active": row.is_active,
                "deployed_by": row.deployed_by,
                "deployed_at": view["deployed_at"],
                "deactivated_at": view["deactivated_at"],
                "runs": [],
            },
        )
        entry["runs"].append({"run_id": row.run_id, "traffic_pct": row.traffic_pct})
    return list(splits.values())


def parse_split_args(items: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    """``["RUN_A=80", "RUN_B=20"]`` -> pairs, for the CLI."""
    pairs = []
    for item in items:
        run_id, sep, pct = item.partition("=")
        if not sep or not run_id.strip():
            raise InvalidConfig(f"expected RUN_ID=PERCENT, got {item!r}")
        pairs.append((run_id.strip(), pct.strip()))
    if not pairs:
        raise InvalidConfig("give at least one RUN_ID=PERCENT")
    return pairs


# ----------------------------------------------------------------------------- users and API tokens


def add_user(session: Session, username: str, role: str) -> dict[str, Any]:
    return user_view(access.create_user(session, username, role))


def list_users(session: Session) -> list[dict[str, Any]]:
    return [user_view(u) for u in access.list_users(session)]


def create_token(session: Session, username: str, name: str = "default") -> dict[str, Any]:
    """A new API token for ``username``: its view plus ``token``, the value, which is not stored
    (only its hash) and so can be shown only now."""
    row, token = access.create_api_token(session, username, name)
    return {**token_view(row), "token": token}


def list_tokens(session: Session) -> list[dict[str, Any]]:
    """Every token, without its value."""
    return [token_view(t) for t in access.list_api_tokens(session)]


def revoke_token(session: Session, token_id: int) -> None:
    """Revoke a token: it stops working at once."""
    access.revoke_api_token(session, token_id)

"""Plain-dict views of the models, shared by the CLI (``--json`` and tables) and the API."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from bidopt.db import queries as q
from bidopt.db.models import OptApiToken, OptDeployment, OptEntity, OptRun, OptSchedule, OptUser


def format_ts(value: datetime | None) -> str | None:
    """A stored (naive UTC) timestamp as ``2026-01-31T12:00:00Z``, or None."""
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def entity_view(session: Session, entity: OptEntity) -> dict[str, Any]:
    return {
        "entity_code": entity.entity_code,
        "name": entity.name,
        "supply_source": entity.master.source_code,
        "auction_type": entity.master.auction_type,
        "current_version": entity.current_version.version_name,
        "anchor_feature": entity.current_version.anchor_feature,
        "base_path": entity.base_path,
        "is_active": entity.is_active,
        "static_configs": q.get_entity_configs(session, entity.entity_id),
    }


def run_row_view(run: OptRun) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "entity_code": run.entity.entity_code,
        "status": run.status,
        "validation_status": run.validation_status,
        "triggered_by": run.triggered_by,
        "trigger_type": run.trigger_type,
        "created_at": format_ts(run.created_at),
        "started_at": format_ts(run.started_at),
        "completed_at": format_ts(run.completed_at),
        "segments_count": run.segments_count,
        "bid_median": run.bid_median,
        "bid_min": run.bid_min,
        "bid_max": run.bid_max,
    }


def run_detail_view(session: Session, run: OptRun) -> dict[str, Any]:
    out = run_row_view(run)
    out.update(
        {
            "version": run.version.version_name,
            "attempts": run.attempts,
            "worker_id": run.worker_id,
            "s3_output_path": run.s3_output_path,
            "validation_details": json.loads(run.validation_details) if run.validation_details else [],
            "error_message": run.error_message,
            "configs": q.get_run_configs_by_section(session, run.run_id),
            "metrics": q.get_run_metrics(session, run.run_id),
            "features": [
                {
                    "feature_order": f.feature_order,
                    "feature_name": f.feature_name,
                    "is_anchor": f.is_anchor,
                    "signal_score": f.signal_score,
                    "macro_id": f.macro_id,
                    "macro_template": f.macro_template,
                    "request_field": f.request_field,
                }
                for f in q.get_run_features_with_macros(session, run.run_id)
            ],
        }
    )
    return out


def deployment_view(row: OptDeployment) -> dict[str, Any]:
    return {
        "split_id": row.split_id,
        "run_id": row.run_id,
        "traffic_pct": row.traffic_pct,
        "is_active": row.is_active,
        "deployed_by": row.deployed_by,
        "deployed_at": format_ts(row.deployed_at),
        "deactivated_at": format_ts(row.deactivated_at),
        "reason": row.reason,
    }


def schedule_view(entity_code: str, row: OptSchedule) -> dict[str, Any]:
    return {
        "entity_code": entity_code,
        "every_hours": row.every_hours,
        "configs": json.loads(row.configs),
        "next_due_at": format_ts(row.next_due_at),
        "is_active": row.is_active,
        "created_by": row.created_by,
        "created_at": format_ts(row.created_at),
        "last_run_id": row.last_run_id,
    }


def user_view(user: OptUser) -> dict[str, Any]:
    return {
        "username": user.username,
        "role": user.role,
        "is_active": user.is_active,
        "created_at": format_ts(user.created_at),
    }


def token_view(token: OptApiToken) -> dict[str, Any]:
    """A token without its value (only its hash is stored)."""
    return {
        "token_id": token.token_id,
        "username": token.user.username,
        "role": token.user.role,
        "name": token.name,
        "created_at": format_ts(token.created_at),
        "revoked": token.revoked_at is not None,
    }

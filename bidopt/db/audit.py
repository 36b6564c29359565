"""The audit log (``opt_audit_log``, 0005): one row per catalogue or split change, written in the
change's own transaction by whoever makes it (``bidopt.catalogue``, ``queries.replace_traffic_split``)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bidopt.db.models import OptAuditLog, utcnow

MAX_LIMIT = 10_000


def _json(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, default=str)


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fields whose values differ, as (old, new) dicts with the same keys."""
    keys = [k for k in new if old.get(k) != new.get(k)]
    return {k: old.get(k) for k in keys}, {k: new.get(k) for k in keys}


def record_change(
    session: Session,
    *,
    actor: str,
    action: str,
    object_type: str,
    object_key: str,
    entity_code: str | None = None,
    old: dict[str, Any] | None = None,
    new: dict[str, Any] | None = None,
) -> OptAuditLog:
    """Add one audit row to the session's transaction (it commits or rolls back with the change)."""
    if not actor:
        raise ValueError("an audit row needs an actor")
    row = OptAuditLog(
        at=utcnow(),
        actor=actor[:100],
        action=action,
        object_type=object_type,
        object_key=object_key[:200],
        entity_code=entity_code,
        old_value=_json(old),
        new_value=_json(new),
    )
    session.add(row)
    session.flush()
    return row


def list_changes(session: Session, *, entity_code: str | None = None, limit: int = 200) -> list[OptAuditLog]:
    """Newest first; only those concerning ``entity_code`` when it is given."""
    stmt = select(OptAuditLog).order_by(OptAuditLog.audit_id.desc()).limit(max(1, min(int(limit), MAX_LIMIT)))
    if entity_code is not None:
        stmt = stmt.where(OptAuditLog.entity_code == entity_code)
    return list(session.scalars(stmt))

"""``bidopt audit``: every catalogue and traffic-split change, who made it and what changed."""

from __future__ import annotations

import json

import click

from bidopt import catalogue
from bidopt.cli.common import json_option, session
from bidopt.cli.output import print_json, print_table

COLUMNS = ["audit_id", "at", "actor", "action", "object_key", "changes"]


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def changes_text(old: dict | None, new: dict | None) -> str:
    """``{"a": 1}, {"a": 2, "b": "x"}`` -> ``a: 1 -> 2; b: x`` (a field without an old value shows
    its new one; one without a new value ``key: old -> -``)."""
    old, new = old or {}, new or {}
    parts = []
    for key in [*old, *(k for k in new if k not in old)]:
        if key in old and key in new:
            parts.append(f"{key}: {_text(old[key])} -> {_text(new[key])}")
        elif key in new:
            parts.append(f"{key}: {_text(new[key])}")
        else:
            parts.append(f"{key}: {_text(old[key])} -> -")
    return "; ".join(parts) or "-"


@click.command("audit")
@click.option("--entity", "entity_code", default=None, help="Only changes that concern this entity.")
@click.option("--limit", default=200, show_default=True, type=int, help="Rows shown (1 to 10,000).")
@json_option
def audit(entity_code: str | None, limit: int, as_json: bool) -> None:
    """Catalogue and traffic-split changes, newest first: when, who, what, old -> new."""
    with session() as s:
        rows = catalogue.list_audit(s, entity=entity_code, limit=limit)
    if as_json:
        print_json(rows)
        return
    print_table([{**r, "changes": changes_text(r["old"], r["new"])} for r in rows], COLUMNS)

"""Readable tables and JSON for the CLI."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value.is_integer() and abs(value) >= 1e4:
            return f"{int(value):,}"  # counts stored as floats (metrics)
        return f"{value:.4g}"
    return str(value)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        click.echo("(none)")
        return
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def print_mapping(values: dict[str, Any], indent: int = 0) -> None:
    width = max((len(k) for k in values), default=0)
    for key, value in values.items():
        if isinstance(value, dict):
            click.echo(" " * indent + f"{key}:")
            print_mapping(value, indent + 2)
        else:
            click.echo(" " * indent + f"{key.ljust(width)}  {_cell(value)}")


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False, default=str))

"""Backends chosen by URL scheme, the same way for every kind of backend.

Each kind (warehouse, artifact store, cache) keeps one table, a dict from URL scheme to a
``Backend``: how to open a URL of that scheme, and an example URL for messages. ``open_backend``
looks the scheme up; an unknown scheme is an ``InvalidConfig`` that lists the table's examples,
so adding a row is all a new backend needs. (MLflow's artifact repository registry works alike.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import urlsplit

from bidopt.errors import InvalidConfig

T = TypeVar("T")


@dataclass(frozen=True)
class Backend(Generic[T]):
    """One row of a scheme table: ``open(url)`` returns the backend; ``example`` shows the URL form."""

    example: str
    open: Callable[[str], T]


def known_schemes(table: Mapping[str, Backend]) -> str:
    """The table's example URLs as a phrase: ``a``, ``a or b``, ``a, b or c``."""
    examples = [backend.example for backend in table.values()]
    if len(examples) < 2:
        return examples[0] if examples else "(none registered)"
    return ", ".join(examples[:-1]) + " or " + examples[-1]


def open_backend(kind: str, table: Mapping[str, Backend[T]], url: str) -> T:
    """The ``kind`` backend for ``url``, by its scheme in ``table``."""
    scheme = urlsplit(url).scheme
    backend = table.get(scheme)
    if backend is None:
        raise InvalidConfig(f"unknown {kind} URL scheme {scheme!r}: use {known_schemes(table)}")
    return backend.open(url)

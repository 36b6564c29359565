"""Errors that carry a message fit to show an operator as it is.

Every layer (CLI, API, jobs) turns a ``BidoptError`` into a one-line message
(CLI) or a JSON body with its ``http_status`` (API); anything else is a bug.
Database errors become ``DatabaseUnavailable`` or ``SchemaMissing`` in one place,
``bidopt.db.engine.session_scope``, so callers never catch SQLAlchemy's exceptions.
"""


class BidoptError(Exception):
    """Base class: bad input or a state that forbids the operation."""

    http_status = 400


class NotFound(BidoptError):
    http_status = 404


class InvalidConfig(BidoptError):
    http_status = 422


class Conflict(BidoptError):
    """The operation is valid in general but not in the current state."""

    http_status = 409


class ServiceUnavailable(BidoptError):
    http_status = 503


class DatabaseUnavailable(ServiceUnavailable):
    """The metadata database cannot be reached: refused or timed-out connections, or a connection
    lost during a statement. Transient by nature: jobs and bidders that outlive an outage catch
    this (and only this) to retry or carry on."""


class SchemaMissing(ServiceUnavailable):
    """The metadata database answers but lacks a table or column: it has no schema yet, or an
    older one. ``bidopt db upgrade`` fixes it; retrying does not."""

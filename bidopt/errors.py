"""Errors that carry a message fit to show an operator as it is.

Every layer (CLI, API, jobs) turns a ``BidoptError`` into a one-line message
(CLI) or a 4xx JSON body (API); anything else is a bug.
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

"""Console logging for bidopt's own processes: the CLI, ``python -m bidopt.jobs.optimize`` and the
optimizer's Ray tasks.

Library modules only log (``logging.getLogger("bidopt.<part>")``); an entry point calls
``configure_logging()`` once. Lines are the bare messages, as ``print`` wrote them: INFO to
standard output (progress), WARNING and above to standard error. The streams are looked up at
each line, so a stream swapped after configuration (click's ``CliRunner``, pytest) gets them.
Records still propagate to the root logger, so an application that configures logging itself
sees them too (and should not call this).
"""

from __future__ import annotations

import logging
import sys

LOGGER = "bidopt"


class _ConsoleHandler(logging.StreamHandler):
    """A StreamHandler on ``sys.stdout`` or ``sys.stderr`` as they are when a line is written."""

    def __init__(self, name: str) -> None:
        self._stream_name = name
        super().__init__()

    @property
    def stream(self):  # noqa: ANN201
        return getattr(sys, self._stream_name)

    @stream.setter
    def stream(self, _value) -> None:  # noqa: ANN001 - StreamHandler.__init__ assigns it
        pass


def _below_warning(record: logging.LogRecord) -> bool:
    return record.levelno < logging.WARNING


def configure_logging(level: int = logging.INFO) -> None:
    """Print the ``bidopt`` loggers' records at ``level`` and above on the console. Idempotent."""
    logger = logging.getLogger(LOGGER)
    logger.setLevel(level)
    if any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
        return
    out, err = _ConsoleHandler("stdout"), _ConsoleHandler("stderr")
    out.addFilter(_below_warning)
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)

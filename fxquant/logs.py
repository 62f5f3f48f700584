"""Where fxquant's progress lines go: one set-up for the API, the demo and the command line.

Every module logs under the ``fxquant`` logger tree and never configures logging
at import. Two entry points decide where the lines go: :func:`ensure_progress_output`
(``fxquant.compress`` and the demo called from Python: show the per-layer lines
when the application configured no logging) and :func:`progress_logging` (the
command line: route everything to stderr at one level for one command). This
module imports nothing from fxquant, so any layer may use it.
"""

from __future__ import annotations

import contextlib
import logging
import sys

__all__ = ["LOGGER_NAME", "ensure_progress_output", "progress_logging"]

LOGGER_NAME = "fxquant"


class _StderrHandler(logging.StreamHandler):
    """Writes to the *current* ``sys.stderr`` (so redirections and test capture see it)."""

    def __init__(self):
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def ensure_progress_output() -> None:
    """Show the ``fxquant`` progress lines (INFO) when the application configured no logging."""
    logger = logging.getLogger(LOGGER_NAME)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not logger.handlers and not logging.getLogger().handlers:
        logger.addHandler(_StderrHandler())


@contextlib.contextmanager
def progress_logging(level: int):
    """Route the ``fxquant`` loggers to stderr at ``level``, alone, for the duration of the block."""
    logger = logging.getLogger(LOGGER_NAME)
    saved = logger.level, logger.propagate, list(logger.handlers)
    for other in saved[2]:  # e.g. the one ensure_progress_output added earlier: no double lines
        logger.removeHandler(other)
    handler = _StderrHandler()
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        for other in saved[2]:
            logger.addHandler(other)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]

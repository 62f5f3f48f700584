"""How the ``fxquant`` command line reports: progress on stderr, one-line warnings and errors.

:class:`CliError` is a problem the user can fix. :func:`error_text` turns any
exception into the one line ``main`` prints after ``fxquant: error:``;
:func:`progress_logging` routes the ``fxquant`` loggers to stderr for one
command and :func:`one_line_warnings` shows Python warnings as
``fxquant: warning: ...`` lines. Results (stdout) are printed by
:mod:`fxquant.cli.main` itself.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings

__all__ = ["say", "CliError", "one_line", "error_text", "progress_logging", "one_line_warnings"]


class CliError(Exception):
    """A problem the user can fix; ``main`` prints it as one ``fxquant: error: ...`` line."""


class _StderrHandler(logging.StreamHandler):
    """Writes to the *current* ``sys.stderr`` (so redirections and test capture see it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


@contextlib.contextmanager
def progress_logging(quiet: bool, debug: bool):
    """Route the ``fxquant`` loggers (search progress, data loading, ...) to stderr for one command."""
    logger = logging.getLogger("fxquant")
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = logger.level, logger.propagate, list(logger.handlers)
    for other in saved[2]:  # e.g. the one fxquant.compress adds when used from Python: no double lines
        logger.removeHandler(other)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        for other in saved[2]:
            logger.addHandler(other)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


@contextlib.contextmanager
def one_line_warnings():
    """Show Python warnings as ``fxquant: warning: ...`` lines."""
    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(f"fxquant: warning: {one_line(str(message))}\n")

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def one_line(text: str, limit: int = 600) -> str:
    """``text`` with its whitespace collapsed to single spaces, cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def error_text(e: BaseException) -> str:
    """The one line ``main`` prints after ``fxquant: error:`` for ``e``."""
    if isinstance(e, CliError):
        return one_line(str(e))
    if isinstance(e, OSError) and e.strerror and e.filename:
        return one_line(f"{e.strerror}: {e.filename}")
    if isinstance(e, (ValueError, FileNotFoundError, ImportError)) and str(e):
        return one_line(str(e))  # fxquant's own messages (FxqFormatError is a ValueError) name the problem
    text = str(e)
    return one_line(f"{type(e).__name__}: {text}" if text else type(e).__name__) + \
        " (run with --debug for the traceback)"


def say(text: str = "") -> None:
    """Print a result line on stdout (progress and errors go to stderr)."""
    print(text, flush=True)

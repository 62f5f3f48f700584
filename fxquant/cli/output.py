"""How the ``fxquant`` command line reports: progress on stderr, one-line warnings and errors.

:class:`CliError` is a problem the user can fix. :func:`error_text` turns any
exception into the one line ``main`` prints after ``fxquant: error:``;
:func:`one_line_warnings` shows Python warnings as
``fxquant: warning: ...`` lines. Results (stdout) are printed by
:mod:`fxquant.cli.main` itself.
"""

from __future__ import annotations

import contextlib
import sys
import warnings

__all__ = ["say", "CliError", "one_line", "error_text", "one_line_warnings"]


class CliError(Exception):
    """A problem the user can fix; ``main`` prints it as one ``fxquant: error: ...`` line."""


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

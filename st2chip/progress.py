"""Whether progress bars are drawn: on stderr when it is a terminal, everywhere when asked (``st2chip --progress``).

Logs and pipes then stay free of bar frames by default, and a user who wants the bars
in a log file says so once for the whole command.
"""

from __future__ import annotations

import sys

_forced = False


def force(on: bool) -> None:
    """Draw bars even when stderr is not a terminal (``--progress``)."""
    global _forced
    _forced = on


def shown(asked: bool | None = None) -> bool:
    """``asked`` when given, else whether bars are wanted: stderr is a terminal, or :func:`force` was called."""
    if asked is not None:
        return asked
    return _forced or sys.stderr.isatty()

"""Text from files made safe for a terminal.

Names in a ``.nir`` file, a bundle or a checkpoint are untrusted: a node name
with a newline could forge extra lines (a fake ``Traceback``), one with an ANSI
escape sequence could recolour or rewrite the terminal. Every sink that prints
such a name (the CLI's error and warning lines, the per-layer tables) passes it
through :func:`printable`.
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with every character ``str.isprintable`` refuses written as an escape.

    Control characters (newlines, ESC, DEL, C1 codes), format characters such as
    bidirectional overrides, and line separators become ``\\n``, ``\\x1b``,
    ``\\u202e``…; the result is one line that shows what the file holds. Backslashes
    are left as they are, so applying it twice changes nothing.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def message(err: BaseException) -> str:
    """An exception's message on one line (whitespace collapsed), or its type's name when it has none."""
    return " ".join(str(err).split()) or type(err).__name__

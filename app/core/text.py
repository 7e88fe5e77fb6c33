"""Text from elsewhere (servers, clients) made safe to show in a terminal or a widget."""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` with control and format characters escaped, safe for a terminal or a widget."""
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


def printable_lines(text: str) -> str:
    """``text`` made :func:`printable` line by line: its line breaks stay, every other control
    or format character (a carriage return, an escape sequence) is escaped."""
    return "\n".join(printable(line) for line in text.split("\n"))

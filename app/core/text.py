"""Text from elsewhere (servers, clients) made safe to show in a terminal or a widget."""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` with control and format characters escaped, safe for a terminal or a widget."""
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )

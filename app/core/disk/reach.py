"""Before the wipe: the installer reaches the binary cache and the nixpkgs tarball it needs."""

from __future__ import annotations

import re
from collections.abc import Sequence
from shlex import quote as q

from app.core.errors import ConfigError, PreflightStop
from app.core.ssh import Session

CACHE_URL_RE = re.compile(r"https?://[A-Za-z0-9.:/_~%+-]+")
PER_URL = 15  # seconds curl may take for each address (the whole check has its own deadline)
TOKEN = "@@nkw reach "


def cache_url(url: str) -> str:
    """``url`` as the binary cache to install from, or ConfigError naming --binary-cache."""
    url = url.rstrip("/")
    if not CACHE_URL_RE.fullmatch(url):
        raise ConfigError(
            f"{url!r} is not a binary cache URL.",
            "nixos-install downloads the system's packages from it; it is an http(s) URL with "
            "no spaces or quotes.",
            "Give --binary-cache like https://cache.nixos.org (a mirror of it works too).",
        )
    return url


def reach_command(urls: Sequence[str]) -> str:
    """A shell command asking each URL with ``curl -I -L`` from the installer: one line per URL,
    ``@@nkw reach N HTTP-CODE CURL-STATUS``, or ``@@nkw reach no-curl`` when there is no curl."""
    lines = [f"command -v curl >/dev/null 2>&1 || {{ echo '{TOKEN}no-curl'; exit 0; }}"]
    for n, url in enumerate(urls):
        lines.append(
            f"c=$(curl -sS -o /dev/null -I -L --max-time {PER_URL} -w '%{{http_code}}' {q(url)}"
            f' 2>/dev/null); echo "{TOKEN}{n} $c $?"'
        )
    return "\n".join(lines)


def unreachable(urls: Sequence[str], stdout: str) -> list[str] | None:
    """The URLs that did not answer 2xx (with why), [] when all did, None when curl is missing."""
    seen: dict[int, tuple[str, str]] = {}
    for line in stdout.splitlines():
        if not line.startswith(TOKEN):
            continue
        words = line[len(TOKEN) :].split()
        if words == ["no-curl"]:
            return None
        if len(words) == 3 and words[0].isdigit():
            seen[int(words[0])] = (words[1], words[2])
    out = []
    for n, url in enumerate(urls):
        code, status = seen.get(n, ("", ""))
        if status != "0":
            why = "no answer" if status in ("", "6", "7", "28") else f"curl exit status {status}"
            out.append(f"{url} ({why})")
        elif not (code.isdigit() and 200 <= int(code) < 300):
            out.append(f"{url} (HTTP {code or '?'})")
    return out


def check_reach(session: Session, urls: Sequence[str], timeout: float) -> str:
    """PreflightStop unless the installer reaches every URL; "" when it did, a note for the user
    when it could not tell (no curl on the installer: nixos-install will find out)."""
    res = session.run(reach_command(urls), timeout=timeout, what="asking the binary cache")
    missing = unreachable(urls, res.stdout)
    if missing is None:
        return ("The installer has no curl, so the app could not check that it reaches the binary "
                "cache; nixos-install will say so if it does not.")  # fmt: skip
    if missing:
        raise PreflightStop(
            "The installer cannot reach " + "; ".join(missing) + ".",
            "nixos-install downloads the system from there; without it the install would stop "
            "after the disk was erased. Nothing was written.",
            "Check the server's network and DNS (log in with the ssh command), or give mirrors "
            "from the command line: --binary-cache URL and --nixpkgs-archive URL.",
        )
    return ""

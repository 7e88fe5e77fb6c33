"""Host keys: the known_hosts files, read line by line, and the app's own pinning."""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from app.core.fsutil import atomic_write_text
from app.core.lazy import LazyModule

if TYPE_CHECKING:
    import paramiko
else:
    paramiko = LazyModule("paramiko")

# ---------------------------------------------------------------------------------------------
# Host keys


def key_line(key: paramiko.PKey) -> str:
    """``type base64``, the known_hosts form of a public key."""
    return f"{key.get_name()} {key.get_base64()}"


def fingerprint_of_line(line: str) -> str:
    """The ``SHA256:`` fingerprint of a ``type base64`` public key line."""
    import base64

    blob = base64.b64decode(line.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def _host_names(host: str, port: int) -> list[str]:
    return [host] if port == 22 else [f"[{host}]:{port}"]


def preferred_types(known_types: Iterable[str]) -> list[str]:
    out: list[str] = []
    for t in known_types:
        out += ["rsa-sha2-512", "rsa-sha2-256"] if t == "ssh-rsa" else [t]
    return out


B64_RE = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
KEY_TYPE_RE = re.compile(r"^(ssh-|ecdsa-|sk-)[A-Za-z0-9@.-]+$")


def _valid_key(key_type: str, b64: str) -> bool:
    """Whether ``b64`` decodes to a public-key blob that names ``key_type`` (no crypto)."""
    import base64
    import binascii

    if not KEY_TYPE_RE.match(key_type) or not B64_RE.match(b64):
        return False
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return False
    n = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else -1
    return 0 < n <= len(blob) - 4 and blob[4 : 4 + n] == key_type.encode()


def _name_matches(pattern: str, name: str) -> bool:
    """One known_hosts pattern (``*`` and ``?`` wildcards, or ``|1|`` hashed) against a name."""
    import base64
    import hmac

    if pattern.startswith("|1|"):
        try:
            _, _, salt, digest = pattern.split("|")
            mac = hmac.new(base64.b64decode(salt), name.encode(), "sha1").digest()
            return hmac.compare_digest(base64.b64encode(mac).decode(), digest)
        except (ValueError, TypeError):
            return False
    # Only * and ? are special (a [host]:port name is literal, not a character class).
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, re.IGNORECASE) is not None


def _hosts_match(field_: str, names: list[str]) -> bool:
    """OpenSSH's rule: some pattern matches and no negated pattern does."""
    hit = False
    for pat in field_.split(","):
        negated = pat.startswith("!")
        pat = pat[1:] if negated else pat
        if any(_name_matches(pat, n) for n in names):
            if negated:
                return False
            hit = True
    return hit


@dataclass
class KnownState:
    """What the known_hosts files say about one host and port."""

    keys: list[str] = field(default_factory=list)  # "type base64" lines trusted for it
    revoked: set[str] = field(default_factory=set)  # "type base64" lines never to accept
    unreadable: list[str] = field(default_factory=list)  # "file:line" entries for it, unread
    notes: list[str] = field(default_factory=list)  # what was read and ignored, in words

    def of_type(self, key_type: str) -> list[str]:
        """The trusted keys of one type (``ssh-rsa`` covers the rsa-sha2 signatures)."""
        return [k for k in self.keys if k.split()[0] == key_type]

    @property
    def types(self) -> list[str]:
        """The key types trusted for this host, in file order."""
        return list(dict.fromkeys(k.split()[0] for k in self.keys))


def read_known_hosts(
    path: Path, host: str, port: int, state: KnownState | None = None
) -> KnownState:
    """Read ``path`` line by line as OpenSSH does, for ``host``/``port``.

    A line that cannot be read is skipped, and remembered when it names this host (then the
    host is never taken as new); ``@revoked`` keys are refused; ``@cert-authority`` lines are
    ignored with a note (this app does not check certificates).
    """
    state = state if state is not None else KnownState()
    names = _host_names(host, port)
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return state
    except OSError as exc:
        state.notes.append(f"{path} cannot be read ({exc.strerror or exc})")
        return state
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        marker = fields.pop(0) if fields[0].startswith("@") else ""
        if not fields or not _hosts_match(fields[0], names):
            continue
        where = f"{path}:{number}"
        if marker == "@cert-authority":
            state.notes.append(
                f"{where}: a @cert-authority line, ignored (certificates are not used)"
            )
            continue
        if marker not in ("", "@revoked") or len(fields) < 3 or not _valid_key(*fields[1:3]):
            state.unreadable.append(where)
            continue
        key = f"{fields[1]} {fields[2]}"
        if marker == "@revoked":
            state.revoked.add(key)
        elif key not in state.keys:
            state.keys.append(key)
    return state


class KnownHosts:
    """The app's own known_hosts (read and written) plus the user's (read only)."""

    def __init__(self, app_file: Path, user_file: Path | None = None) -> None:
        self.app_file = app_file
        self.user_file = user_file if user_file is not None else Path.home() / ".ssh/known_hosts"
        self._lock = threading.Lock()

    def lookup(self, host: str, port: int) -> KnownState:
        """Everything both files say about ``host``/``port``."""
        state = KnownState()
        for path in (self.user_file, self.app_file):
            read_known_hosts(path, host, port, state)
        return state

    def knows(self, host: str, port: int, line: str) -> bool:
        """Whether the key ``type base64`` is trusted for ``host``/``port``."""
        state = self.lookup(host, port)
        return line.strip() in state.keys and line.strip() not in state.revoked

    def add(self, host: str, port: int, key: paramiko.PKey) -> None:
        """Trust ``key`` for ``host``/``port`` from now on (app file only)."""
        with self._lock:
            self.app_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            name = _host_names(host, port)[0]
            line = f"{name} {key_line(key)}\n"
            fd = os.open(self.app_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a") as f:
                f.write(line)

    def replace(self, host: str, port: int, key: paramiko.PKey, why: str) -> list[str]:
        """Trust only ``key`` for ``host``/``port`` in the app's file; returns the old lines.

        The old lines are not deleted: they stay in the file as comments saying when and why
        they were replaced, so the user can see and restore them.
        """
        with self._lock:
            name = _host_names(host, port)[0]
            try:
                lines = self.app_file.read_text().splitlines(keepends=True)
            except FileNotFoundError:
                lines = []
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            kept, old = [], []
            for ln in lines:
                if ln.split(" ", 1)[0] == name:
                    old.append(ln.rstrip("\n"))
                    kept.append(f"# replaced {stamp} ({why}): {ln.rstrip()}\n")
                else:
                    kept.append(ln.rstrip("\n") + "\n")
            self.app_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write_text(self.app_file, "".join(kept) + f"{name} {key_line(key)}\n", 0o600)
            return old

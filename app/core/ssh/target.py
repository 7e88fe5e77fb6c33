"""Where to connect: [user@]host[:port] targets, jump hops and ~/.ssh/config."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.errors import (
    UsageError,
)
from app.core.lazy import LazyModule

if TYPE_CHECKING:
    import paramiko
else:
    paramiko = LazyModule("paramiko")

HOST_RE = re.compile(r"^[A-Za-z0-9_.:%-]+$")
USER_RE = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.@-]*$")

# ---------------------------------------------------------------------------------------------
# Targets


@dataclass(frozen=True)
class Target:
    """Where to connect: resolved host, port and user, keys and jump host from ssh_config."""

    host: str
    port: int = 22
    user: str = "root"
    alias: str = ""
    identity_files: tuple[str, ...] = ()
    jump: Target | None = None

    @property
    def label(self) -> str:
        """``user@host`` with ``:port`` when not 22 (``[v6]:port`` for IPv6)."""
        host = f"[{self.host}]" if ":" in self.host and self.port != 22 else self.host
        port = f":{self.port}" if self.port != 22 else ""
        return f"{self.user}@{host}{port}"

    def ssh_command(self, identity: str | None = None) -> list[str]:
        """The OpenSSH command line that reaches this target."""
        cmd = ["ssh"]
        if self.port != 22:
            cmd += ["-p", str(self.port)]
        if identity:
            cmd += ["-i", identity]
        if self.jump is not None:
            cmd += ["-J", hops_spec(self.jump)]
        cmd.append(f"{self.user}@{self.host}")
        return cmd


def hops_spec(t: Target) -> str:
    """``t`` and the hops before it as an OpenSSH ``-J`` list, first hop first (IPv6 bracketed)."""
    inner = hops_spec(t.jump) + "," if t.jump is not None else ""
    host = f"[{t.host}]" if ":" in t.host else t.host
    return f"{inner}{t.user}@{host}:{t.port}"


def jump_spec(target: Target) -> str:
    """The ``-J`` spec of every jump host before ``target``, or ``""`` without one."""
    return hops_spec(target.jump) if target.jump is not None else ""


def split_spec(spec: str) -> tuple[str | None, str, int | None]:
    """Split ``[user@]host[:port]`` (IPv6 as ``[addr]:port``) into its parts, validated."""
    spec = spec.strip()
    user = None
    if "@" in spec:
        user, spec = spec.rsplit("@", 1)
    port: int | None = None
    if spec.startswith("["):
        end = spec.find("]")
        if end < 0:
            raise _bad_target(spec, "an opening '[' has no closing ']'")
        host, rest = spec[1:end], spec[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise _bad_target(spec, "unexpected text after ']'")
            port = _port(rest[1:], spec)
    elif spec.count(":") == 1:
        host, p = spec.split(":")
        port = _port(p, spec)
    else:
        host = spec
    if not host or not HOST_RE.match(host) or host.startswith("-"):
        raise _bad_target(spec, "the host name has characters a host name cannot have")
    if user is not None and (not user or not USER_RE.match(user)):
        raise _bad_target(spec, "the user name has characters a user name cannot have")
    return user, host, port


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise _bad_target(spec, f"{text!r} is not a port number (1-65535)")
    return int(text)


def _bad_target(spec: str, why: str) -> UsageError:
    return UsageError(
        f"{spec!r} is not a server address: {why}.",
        "The address must look like host, user@host, user@host:port or an ~/.ssh/config alias.",
        "Check for typos, quotes or spaces in the address.",
    )


def load_ssh_config(path: Path | None = None) -> paramiko.SSHConfig:
    """The user's ~/.ssh/config (empty when missing or unreadable)."""
    path = path or Path.home() / ".ssh" / "config"
    try:
        return paramiko.SSHConfig.from_path(str(path))
    except (OSError, paramiko.ConfigParseError):
        return paramiko.SSHConfig()


def ssh_config_hosts(config: paramiko.SSHConfig) -> list[str]:
    """Concrete host aliases in the config, for completion."""
    return sorted(h for h in config.get_hostnames() if not any(c in h for c in "*?!"))


def parse_target(
    spec: str,
    *,
    port: int | None = None,
    user: str | None = None,
    identity: Iterable[str] = (),
    jump: str | None = None,
    config: paramiko.SSHConfig | None = None,
    default_user: str = "root",
) -> Target:
    """Resolve a target like ssh does: command-line values first, then ~/.ssh/config."""
    cfg = config if config is not None else load_ssh_config()
    spec_user, name, spec_port = split_spec(spec)
    entry: dict[str, Any] = dict(cfg.lookup(name))
    host = str(entry.get("hostname") or name)
    if port is not None and not 0 < port < 65536:
        raise _bad_target(spec, f"{port} is not a port number (1-65535)")
    final_port = port or spec_port or _int(entry.get("port")) or 22
    final_user = user or spec_user or str(entry.get("user") or default_user)
    ids = tuple(identity) or tuple(
        os.path.expanduser(p) for p in entry.get("identityfile", []) if isinstance(p, str)
    )
    jump_spec = jump if jump is not None else entry.get("proxyjump")
    jump_target = None
    if jump_spec and str(jump_spec).lower() != "none":
        jump_target = parse_jump(str(jump_spec), cfg, final_user)
    alias = name if host != name else ""
    return Target(host, final_port, final_user, alias, ids, jump_target)


def parse_jump(spec: str, cfg: paramiko.SSHConfig, default_user: str = "root") -> Target:
    """A ``-J`` list (``hop1,hop2``, first hop first) as the last hop's Target, chained."""
    hops = [h.strip() for h in spec.split(",") if h.strip()]
    prev: Target | None = None
    for hop in hops:
        t = parse_target(hop, jump="none", config=cfg, default_user=default_user)
        prev = replace(t, jump=prev)
    assert prev is not None
    return prev


def _int(v: object) -> int | None:
    try:
        return int(str(v)) if v is not None else None
    except ValueError:
        return None

"""One SSH session: target parsing, ssh_config, host keys, auth, privilege, run, stream, upload."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.errors import (
    AuthError,
    Cancelled,
    HostKeyChanged,
    HostKeyOtherType,
    HostKeyRevoked,
    HostKeyUnknown,
    KnownHostsUnreadable,
    NewSystemHostKey,
    PrivilegeError,
    RemoteCommandError,
    SSHConnectError,
    UsageError,
)
from app.core.events import CancelToken, EventSink, ProgressMeter, discard
from app.core.fsutil import atomic_write_text
from app.core.lazy import LazyModule

if TYPE_CHECKING:
    import paramiko
else:
    paramiko = LazyModule("paramiko")

# Channel windows larger than the default 2 MiB keep a fast link busy during uploads.
WINDOW_SIZE = 64 * 1024 * 1024
MAX_PACKET = 32768
UPLOAD_CHUNK = 256 * 1024
# Remote output kept per stream and command: enough for the probe of a host with hundreds of
# interfaces; a server that floods is cut to its tail, never allowed to fill this computer.
OUTPUT_LIMIT = 4 * 1024 * 1024
LINE_LIMIT = 64 * 1024
# AES-GCM is the fastest cipher paramiko offers (AES-NI through cryptography).
PREFERRED_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
    "aes192-ctr",
)
DEFAULT_KEY_FILES = ("id_ed25519", "id_ecdsa", "id_rsa")
# paramiko logs broken connections itself (every kexec breaks one); our errors say it better.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False
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


def _preferred_types(known_types: Iterable[str]) -> list[str]:
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


# ---------------------------------------------------------------------------------------------
# Credentials and privilege


@dataclass
class Credentials:
    """How to log in. Secrets live only here, in memory, never in a profile or a log."""

    method: str = "auto"  # auto | agent | key | password
    password: str | None = None
    passphrases: dict[str, str] = field(default_factory=dict)
    sudo_password: str | None = None
    use_agent: bool = True
    # Keys the app itself holds (e.g. its generated per-profile key), tried first.
    extra_keys: tuple[paramiko.PKey, ...] = ()
    # Passwords for jump hosts, by their label (user@host[:port]); never the target's.
    jump_passwords: dict[str, str] = field(default_factory=dict)

    def for_jump(self, label: str) -> Credentials:
        """A jump hop's login: agent and key files as for any login, its own password only.

        Neither the target's password nor the app's installer key is offered to a hop.
        """
        return Credentials(
            method="auto",
            password=self.jump_passwords.get(label),
            passphrases=self.passphrases,
            use_agent=self.use_agent,
            jump_passwords=self.jump_passwords,
        )

    def __repr__(self) -> str:
        return f"Credentials(method={self.method!r}, password={'***' if self.password else None})"


class PassphraseRequired(AuthError):
    """A key file is encrypted and no passphrase was given: the face must ask."""

    kind = "passphrase-required"

    def __init__(self, path: str, wrong: bool = False) -> None:
        super().__init__(
            f"The key {path} "
            + ("did not accept that passphrase." if wrong else "needs a passphrase."),
            "The key file is encrypted.",
            "Enter the key's passphrase, or load the key into your ssh-agent.",
        )
        self.path = path
        self.wrong = wrong


class PasswordRequired(AuthError):
    """The server takes a password and none was given: the face must ask."""

    kind = "password-required"

    def __init__(self, label: str) -> None:
        self.label = label
        super().__init__(
            f"{label} asks for a password.",
            "No key was accepted, and no password was given.",
            "Enter the password, or add your public key to the server's authorized_keys.",
        )


@dataclass(frozen=True)
class Privilege:
    """How commands become root on the server."""

    kind: str  # root | sudo | sudo-password | doas

    def wrap(self, command: str) -> str:
        """``command`` run as root through this privilege."""
        inner = shlex.quote(command)
        if self.kind == "root":
            return command
        if self.kind == "sudo":
            return f"sudo -n -- sh -c {inner}"
        if self.kind == "sudo-password":
            # -k: always read the password, so it never lands in the command's stdin.
            return f"sudo -k -S -p '' -- sh -c {inner}"
        if self.kind == "doas":
            return f"doas -n -- sh -c {inner}"
        raise ValueError(self.kind)

    @property
    def description(self) -> str:
        """In words, for the checklist."""
        return {
            "root": "logged in as root",
            "sudo": "sudo without a password",
            "sudo-password": "sudo with your password",
            "doas": "doas without a password",
        }[self.kind]


# ---------------------------------------------------------------------------------------------
# The session


@dataclass(frozen=True)
class CommandResult:
    """Exit status and output of one remote command (each stream's tail, within a bound)."""

    status: int
    stdout: str
    stderr: str
    stdout_dropped: int = 0  # bytes of stdout beyond the bound, counted and not kept
    stderr_dropped: int = 0

    @property
    def ok(self) -> bool:
        """True for exit status 0."""
        return self.status == 0


LineSink = Callable[[str, str], None]  # (stream name, line)


class TailBuffer:
    """The last ``limit`` bytes of a stream, and how many bytes before them were dropped."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.dropped = 0
        self._buf = bytearray()

    def add(self, data: bytes) -> None:
        """Append ``data``, dropping the oldest bytes past the bound."""
        self._buf += data
        extra = len(self._buf) - self.limit
        if extra > 0:
            del self._buf[:extra]
            self.dropped += extra

    def text(self) -> str:
        """What is kept, decoded (a cut multibyte character becomes U+FFFD)."""
        return self._buf.decode("utf-8", "replace")


class LineSplitter:
    """Feeds a stream's lines to a sink; a line longer than the bound is passed on in pieces."""

    def __init__(self, sink: LineSink | None, name: str, limit: int = LINE_LIMIT) -> None:
        self.sink = sink
        self.name = name
        self.limit = limit
        self._pending = bytearray()

    def feed(self, data: bytes) -> None:
        """Take more bytes and pass every complete line on."""
        if self.sink is None:
            return
        buf = self._pending
        buf += data
        while (nl := buf.find(b"\n")) >= 0 or len(buf) >= self.limit:
            cut = nl if 0 <= nl < self.limit else self.limit
            self.sink(self.name, buf[:cut].decode("utf-8", "replace").rstrip("\r"))
            del buf[: cut + 1 if cut == nl else cut]

    def flush(self) -> None:
        """Pass on a last line that had no newline."""
        if self.sink is not None and self._pending:
            self.sink(self.name, self._pending.decode("utf-8", "replace"))
            self._pending.clear()


@dataclass(frozen=True)
class ConnectOptions:
    """Deadlines and host-key decisions for one connection."""

    timeout: float = 10.0
    accept_new_host_key: bool = False  # trust the key of a host that has no known key at all
    # (host, port, fingerprint) the user accepted, each for that host (a jump hop too).
    trusted: tuple[tuple[str, int, str], ...] = ()
    expect_key: str | None = None  # "type base64": anything else is a changed key
    update_known_hosts: bool = True
    # The system at this address was replaced by one that cannot keep the host keys (a legacy
    # kexec-bundle): a key other than ``expect_key`` passes only if the user accepted it.
    replaced_system: bool = False

    def trusting(self, host: str, port: int, fingerprint: str) -> ConnectOptions:
        """These options plus one fingerprint the user accepted for ``host``/``port``."""
        return replace(self, trusted=(*self.trusted, (host, port, fingerprint)))


class Session:
    """An authenticated SSH connection. ``close()`` may be called from any thread."""

    def __init__(
        self,
        target: Target,
        transport: paramiko.Transport,
        host_key: paramiko.PKey,
        auth_key: paramiko.PKey | None,
        auth_kind: str,
        jump: Session | None = None,
    ) -> None:
        self.target = target
        self.transport = transport
        self.host_key = host_key
        self.auth_key = auth_key  # the public key that logged us in, if a key did
        self.auth_kind = auth_kind  # "key", "agent", "password"
        self._jump = jump
        self.privilege: Privilege | None = None
        self.sudo_password: str | None = None
        # Output kept per stream and command (the tail; the rest is counted, not kept).
        self.output_limit = OUTPUT_LIMIT
        # How long opening a channel may take for a transfer, whose own deadline is long.
        self.start_timeout = 30.0

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def host_key_line(self) -> str:
        """The server's host key as ``type base64``."""
        return key_line(self.host_key)

    @property
    def host_key_fingerprint(self) -> str:
        """The server's host key fingerprint, ``SHA256:...``."""
        return str(self.host_key.fingerprint)

    @property
    def active(self) -> bool:
        """Whether the transport is still up."""
        return bool(self.transport.is_active())

    def close(self) -> None:
        """Close the connection (and the jump host's); unblocks any waiting call at once."""
        with contextlib.suppress(Exception):
            self.transport.close()
        if self._jump is not None:
            self._jump.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commands -------------------------------------------------------------------------

    def run(
        self,
        command: str,
        *,
        timeout: float,
        stdin: bytes | None = None,
        privileged: bool = False,
        on_line: LineSink | None = None,
        cancel: CancelToken | None = None,
        what: str = "",
    ) -> CommandResult:
        """Run ``command`` with a deadline, streaming its output lines to ``on_line``."""
        if privileged:
            if self.privilege is None:
                raise PrivilegeError(
                    "No way to become root on the server is known yet.",
                    "The app must probe the server before it runs privileged commands.",
                    "Run the inspection step first.",
                )
            command = self.privilege.wrap(command)
            if self.privilege.kind == "sudo-password":
                secret = (self.sudo_password or "").encode() + b"\n"
                stdin = secret + (stdin or b"")
        label = what or command
        deadline = time.monotonic() + timeout
        chan = self._start(command, stdin, deadline, cancel, label, budget=timeout)
        unhook = cancel.on_cancel(chan.close) if cancel is not None else (lambda: None)
        try:
            return self._collect(chan, deadline, timeout, on_line, cancel, label)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if cancel is not None and cancel.cancelled:
                raise Cancelled() from exc
            raise self._broke(label, exc) from exc
        finally:
            unhook()
            _close_quietly(chan)

    def _broke(self, what: str, exc: BaseException) -> RemoteCommandError:
        return RemoteCommandError(
            f"The connection to {self.target.label} broke while running {_short(what)}.",
            f"({exc or type(exc).__name__})",
            "Check that the server is up and reachable, then try again.",
        )

    def _late(self, what: str, timeout: float) -> RemoteCommandError:
        return RemoteCommandError(
            f"{_short(what)} ran past its {timeout:g} s deadline on {self.target.label}.",
            "The command hung, or the server (or the link to it) stopped answering; it was "
            "abandoned.",
            "Check the server's load and connectivity, then try again.",
        )

    def _start(
        self,
        command: str,
        stdin: bytes | None,
        deadline: float,
        cancel: CancelToken | None,
        what: str,
        *,
        end_input: bool = True,
        budget: float | None = None,
    ) -> paramiko.Channel:
        """Open a channel, start ``command`` and send its stdin, all within the deadline.

        paramiko waits for the server's answers to both requests without a deadline of ours,
        so they run on a helper thread; on the deadline or a cancel this thread stops waiting at
        once and the channel, when it comes, is closed.
        """
        timeout = max(deadline - time.monotonic(), 0.1)
        state: dict[str, Any] = {}
        lock = threading.Lock()
        done = threading.Event()

        def starter() -> None:
            chan = None
            try:
                chan = self.transport.open_session(
                    window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET, timeout=timeout
                )
                with lock:
                    state["chan"] = chan
                    if state.get("abandoned"):
                        raise EOFError("abandoned")
                chan.settimeout(timeout)
                chan.exec_command(command)
                if stdin:
                    chan.sendall(stdin)
                if end_input:
                    chan.shutdown_write()
                chan.settimeout(None)
            except BaseException as exc:  # handed to the waiting thread
                state["exc"] = exc
            finally:
                with lock:
                    late = state.get("abandoned", False)
                if late and chan is not None:
                    _close_quietly(chan)  # nobody waits for it any more
                done.set()

        threading.Thread(target=starter, name="ssh-start", daemon=True).start()
        while not done.wait(min(max(deadline - time.monotonic(), 0), 0.05)):
            if (cancel is not None and cancel.cancelled) or time.monotonic() >= deadline:
                break
        with lock:
            chan = state.get("chan")
            if not done.is_set():
                state["abandoned"] = True
        if not done.is_set() or "exc" in state:
            if chan is not None:
                _close_quietly(chan)
            if cancel is not None and cancel.cancelled:
                raise Cancelled()
            if not done.is_set() or time.monotonic() >= deadline:
                raise self._late(what, budget or timeout)
            exc = state["exc"]
            if chan is None:
                raise RemoteCommandError(
                    f"Cannot start {_short(what)} on {self.target.label}: "
                    "the connection is closed.",
                    f"({exc or type(exc).__name__})",
                    "Reconnect and try again.",
                ) from exc
            raise self._broke(what, exc) from exc
        return state["chan"]  # type: ignore[no-any-return]

    def _collect(
        self,
        chan: paramiko.Channel,
        deadline: float,
        timeout: float,
        on_line: LineSink | None,
        cancel: CancelToken | None,
        what: str,
    ) -> CommandResult:
        out, err = TailBuffer(self.output_limit), TailBuffer(self.output_limit)
        lines = {
            "stdout": LineSplitter(on_line, "stdout"),
            "stderr": LineSplitter(on_line, "stderr"),
        }

        while True:
            if cancel is not None and cancel.cancelled:
                raise Cancelled()
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._late(what, timeout)
            select.select([chan], [], [], min(left, 0.5))
            got = False
            while chan.recv_ready():
                data = chan.recv(65536)
                out.add(data)
                lines["stdout"].feed(data)
                got = True
            while chan.recv_stderr_ready():
                data = chan.recv_stderr(65536)
                err.add(data)
                lines["stderr"].feed(data)
                got = True
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            if chan.closed and not got:
                raise EOFError("the channel closed before the command ended")
            if not self.transport.is_active():
                raise EOFError("the connection closed")
        status = chan.recv_exit_status() if chan.exit_status_ready() else -1
        if status == -1:
            # No exit status: killed by a signal, or our side closed the channel.
            if cancel is not None and cancel.cancelled:
                raise Cancelled()
            if not self.transport.is_active():
                raise EOFError("the connection closed")
        for splitter in lines.values():
            splitter.flush()
        return CommandResult(status, out.text(), err.text(), out.dropped, err.dropped)

    def upload(
        self,
        local: Path,
        remote: str,
        *,
        emit: EventSink = discard,
        stage: str = "transfer",
        cancel: CancelToken | None = None,
        timeout: float = 3600.0,
        digest: bool = False,
    ) -> str | None:
        """Stream ``local`` into ``remote`` (mode 0600); with ``digest``, return its sha256.

        The install checks the file's sha256 on the server instead, which proves what arrived
        and keeps hashing out of the send loop.
        """
        size = local.stat().st_size
        cmd = f"umask 077 && cat > {shlex.quote(remote)}"
        deadline = time.monotonic() + timeout
        start_by = min(deadline, time.monotonic() + max(self.start_timeout, 1.0))
        chan = self._start(cmd, None, start_by, cancel, "the upload", end_input=False)
        unhook = cancel.on_cancel(chan.close) if cancel is not None else (lambda: None)
        h = hashlib.sha256()
        meter = ProgressMeter(emit, stage, size)
        try:
            buf = bytearray(UPLOAD_CHUNK)
            with local.open("rb", buffering=0) as f:
                while n := f.readinto(buf):
                    chunk = memoryview(buf)[:n]
                    if cancel is not None and cancel.cancelled:
                        raise Cancelled()
                    if time.monotonic() > deadline:
                        raise RemoteCommandError(
                            f"The upload to {self.target.label} ran past its "
                            f"{timeout:g} s deadline.",
                            "The link is too slow or stalled.",
                            "Try again, or let the server download the image itself.",
                        )
                    if digest:
                        h.update(chunk)
                    _send_all(chan, chunk)
                    meter.advance(n)
            chan.shutdown_write()
            left = max(deadline - time.monotonic(), 30)
            res = self._collect(chan, time.monotonic() + left, left, None, cancel, "the upload")
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if cancel is not None and cancel.cancelled:
                raise Cancelled("Upload cancelled.") from exc
            raise RemoteCommandError(
                f"The upload to {self.target.label} broke after {meter.done} of {size} bytes.",
                f"The connection dropped ({exc or type(exc).__name__}).",
                "Try again: nothing is run until the whole file arrives and its checksum matches.",
            ) from exc
        finally:
            unhook()
            _close_quietly(chan)
        meter.finish()
        if not res.ok:
            raise RemoteCommandError(
                f"Writing {remote} on {self.target.label} failed: {res.stderr.strip()[:300]}",
                "The server could not store the image (full disk or no permission).",
                "Free space on the server or choose another staging folder.",
            )
        return h.hexdigest() if digest else None


def _close_quietly(chan: paramiko.Channel) -> None:
    """Close a channel; on a dead link that raises, and must not hide the error being raised."""
    with contextlib.suppress(Exception):
        chan.close()


def _send_all(chan: paramiko.Channel, view: memoryview) -> None:
    """``Channel.sendall`` without its copy of the unsent rest after every packet."""
    while view:
        sent = chan.send(view)  # type: ignore[arg-type]  # any buffer works
        if sent == 0:
            raise EOFError("the channel closed")
        view = view[sent:]


def _short(command: str) -> str:
    first = command.strip().splitlines()[0] if command.strip() else command
    return first if len(first) <= 60 else first[:57] + "..."


# ---------------------------------------------------------------------------------------------
# Connecting


def connect(
    target: Target,
    creds: Credentials,
    known_hosts: KnownHosts,
    options: ConnectOptions | None = None,
    *,
    cancel: CancelToken | None = None,
) -> Session:
    """Open, verify the host key, then authenticate. Never sends a credential to a wrong key."""
    opts = options or ConnectOptions()
    jump_session = None
    if target.jump is not None:
        # Each hop has its own host-key check and its own login (agent and key files).
        jump_opts = replace(opts, expect_key=None, replaced_system=False)
        jump_creds = creds.for_jump(target.jump.label)
        try:
            jump_session = connect(target.jump, jump_creds, known_hosts, jump_opts, cancel=cancel)
        except (SSHConnectError, AuthError) as exc:
            if type(exc) not in (SSHConnectError, AuthError):
                raise  # a question for the user (passphrase, password): asked as it is
            raise type(exc)(
                f"The jump host {target.jump.label} failed: {exc.what}", exc.why, exc.fix
            ) from exc
    try:
        sock = _open_socket(target, opts.timeout, jump_session, cancel)
        return _handshake(target, sock, creds, known_hosts, opts, jump_session, cancel)
    except BaseException:
        if jump_session is not None:
            jump_session.close()
        raise


def _open_socket(
    target: Target, timeout: float, jump: Session | None, cancel: CancelToken | None
) -> Any:
    if jump is not None:
        try:
            return jump.transport.open_channel(
                "direct-tcpip", (target.host, target.port), ("127.0.0.1", 0), timeout=timeout
            )
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SSHConnectError(
                f"The jump host {jump.target.label} could not reach "
                f"{target.host} port {target.port}.",
                f"({exc or type(exc).__name__})",
                "Check the address and port as seen from the jump host.",
            ) from exc
    try:
        sock = socket.create_connection((target.host, target.port), timeout=timeout)
    except socket.gaierror as exc:
        raise SSHConnectError(
            f"The name {target.host!r} does not resolve.",
            "DNS does not know this host (or it is a typo).",
            "Check the spelling, or use the IP address.",
        ) from exc
    except ConnectionRefusedError as exc:
        raise SSHConnectError(
            f"{target.host} refused the connection on port {target.port}.",
            "Nothing listens there: SSH may run on another port, or be stopped.",
            "Check the port (use host:port), and that sshd is running.",
        ) from exc
    except TimeoutError as exc:
        raise SSHConnectError(
            f"No answer from {target.host} port {target.port} within {timeout:g} s.",
            "The server is down, or a firewall drops the connection.",
            "Check the address, the firewall and that the server is running.",
        ) from exc
    except OSError as exc:
        raise SSHConnectError(
            f"Cannot connect to {target.host} port {target.port}: {exc.strerror or exc}.",
            "The network path to the server is broken.",
            "Check the address and your network connection.",
        ) from exc
    if cancel is not None:
        cancel.on_cancel(sock.close)
    return sock


def _handshake(
    target: Target,
    sock: Any,
    creds: Credentials,
    known_hosts: KnownHosts,
    opts: ConnectOptions,
    jump: Session | None,
    cancel: CancelToken | None,
) -> Session:
    t = paramiko.Transport(
        sock, default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET
    )
    unhook = cancel.on_cancel(t.close) if cancel is not None else (lambda: None)
    try:
        t.banner_timeout = opts.timeout
        t.handshake_timeout = opts.timeout
        t.auth_timeout = opts.timeout
        sec = t.get_security_options()
        sec.ciphers = tuple(c for c in PREFERRED_CIPHERS if c in sec.ciphers) + tuple(
            c for c in sec.ciphers if c not in PREFERRED_CIPHERS
        )
        known = known_hosts.lookup(target.host, target.port)
        first = [opts.expect_key.split()[0]] if opts.expect_key else known.types
        prefer = _preferred_types(first)
        sec.key_types = tuple(k for k in prefer if k in sec.key_types) + tuple(
            k for k in sec.key_types if k not in prefer
        )
        try:
            t.start_client(timeout=opts.timeout)
            # A server that accepts and never speaks ends the transport without an exception
            # here; this raises then.
            key = t.get_remote_server_key()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            if cancel is not None and cancel.cancelled:
                raise Cancelled() from exc
            raise SSHConnectError(
                f"The SSH handshake with {target.host} port {target.port} failed.",
                "The server does not speak SSH there, closed the connection or said nothing "
                f"within {opts.timeout:g} s ({exc}).",
                "Check the port; wait a moment if the server is still starting.",
            ) from exc
        _check_host_key(target, key, known, known_hosts, opts)
        auth_key, kind = _authenticate(t, target, creds, cancel)
        t.set_keepalive(15)
        unhook()
        return Session(target, t, key, auth_key, kind, jump)
    except BaseException:
        unhook()
        t.close()
        raise


def _check_host_key(
    target: Target,
    key: paramiko.PKey,
    known: KnownState,
    known_hosts: KnownHosts,
    opts: ConnectOptions,
) -> None:
    name, fp, line = key.get_name(), str(key.fingerprint), key_line(key)
    host, port = target.host, target.port
    accepted = (host, port, fp) in opts.trusted
    if line in known.revoked:
        raise HostKeyRevoked(host, port, name, fp)
    if opts.expect_key is not None:
        if line == opts.expect_key.strip():
            return
        if opts.replaced_system:
            if accepted:
                return
            raise NewSystemHostKey(host, port, name, fp, fingerprint_of_line(opts.expect_key))
        raise HostKeyChanged(host, port, name, fp, fingerprint_of_line(opts.expect_key))
    if line in known.keys:
        return
    same_type = known.of_type(name)
    if same_type:
        raise HostKeyChanged(host, port, name, fp, fingerprint_of_line(same_type[0]))
    if known.unreadable:
        raise KnownHostsUnreadable(host, port, known.unreadable)
    if known.keys and not accepted:
        others = [(k.split()[0], fingerprint_of_line(k)) for k in known.keys]
        raise HostKeyOtherType(host, port, name, fp, others)
    if accepted or (opts.accept_new_host_key and not known.keys):
        if opts.update_known_hosts:
            known_hosts.add(host, port, key)
        return
    raise HostKeyUnknown(host, port, name, fp)


def load_key_file(path: str, passphrase: str | None) -> paramiko.PKey:
    """Load a private key of any supported type; PassphraseRequired when encrypted."""
    try:
        # paramiko hands the password to cryptography, which wants bytes.
        secret = passphrase.encode() if passphrase is not None else None
        return paramiko.PKey.from_path(path, password=secret)  # type: ignore[arg-type]
    except paramiko.PasswordRequiredException as exc:
        raise PassphraseRequired(path) from exc
    except TypeError as exc:
        # cryptography: "Key is password-protected, but password was not provided."
        if "password" in str(exc).lower():
            raise PassphraseRequired(path) from exc
        raise _unreadable_key(path, exc) from exc
    except (ValueError, paramiko.SSHException) as exc:
        if passphrase is not None:
            raise PassphraseRequired(path, wrong=True) from exc
        raise _unreadable_key(path, exc) from exc
    except OSError as exc:
        raise AuthError(
            f"The key file {path} cannot be read ({exc.strerror or exc}).",
            "Without it this login cannot use that key.",
            "Check the path and the file's permissions.",
        ) from exc


def _unreadable_key(path: str, exc: Exception) -> AuthError:
    return AuthError(
        f"The key file {path} cannot be read: {exc}.",
        "It is not a private key this app understands.",
        "Choose the private key (not the .pub file), in OpenSSH or PEM format.",
    )


def _authenticate(
    t: paramiko.Transport, target: Target, creds: Credentials, cancel: CancelToken | None
) -> tuple[paramiko.PKey | None, str]:
    user = target.user
    allowed: list[str] = []

    def try_key(k: paramiko.PKey) -> bool:
        nonlocal allowed
        if cancel is not None:
            cancel.check()
        try:
            t.auth_publickey(user, k)
            return True
        except paramiko.BadAuthenticationType as exc:
            allowed = list(exc.allowed_types)
            return False
        except paramiko.AuthenticationException:
            return False
        except paramiko.SSHException as exc:
            raise SSHConnectError(
                f"{target.label} closed the connection during login.",
                f"({exc})",
                "The server may limit login attempts (MaxAuthTries); load fewer keys in your "
                "agent or name the key with -i.",
            ) from exc

    method = creds.method
    encrypted: str | None = None
    if method in ("auto", "key", "agent"):
        for k in creds.extra_keys:
            if try_key(k):
                return k, "key"
    if method in ("auto", "agent") and creds.use_agent:
        agent = paramiko.Agent()
        try:
            for k in agent.get_keys():
                if try_key(k):
                    return k, "agent"
        finally:
            agent.close()
    if method in ("auto", "key"):
        files = list(target.identity_files)
        explicit = bool(files)
        if not files:
            ssh_dir = Path.home() / ".ssh"
            files = [str(ssh_dir / n) for n in DEFAULT_KEY_FILES if (ssh_dir / n).is_file()]
        for path in files:
            try:
                k = load_key_file(path, creds.passphrases.get(path))
            except PassphraseRequired as exc:
                if exc.wrong or method == "key" or explicit:
                    raise
                encrypted = encrypted or path
                continue
            except AuthError:
                if explicit:
                    raise
                continue
            if try_key(k):
                return k, "key"
    if method in ("auto", "password"):
        if creds.password is not None:
            try:
                t.auth_password(user, creds.password)
                return None, "password"
            except paramiko.BadAuthenticationType as exc:
                allowed = list(exc.allowed_types)
                if "keyboard-interactive" in allowed and _kbd_interactive(t, user, creds.password):
                    return None, "password"
            except paramiko.AuthenticationException:
                pass
            raise AuthError(
                f"{target.label} refused the password.",
                "The password is wrong, or password login is disabled for this user.",
                "Check the password (and the user name), or log in with a key.",
            )
        if method == "password" or (method == "auto" and not allowed and encrypted is None):
            raise PasswordRequired(target.label)
    if encrypted is not None:
        raise PassphraseRequired(encrypted)
    if "password" in allowed or "keyboard-interactive" in allowed:
        raise PasswordRequired(target.label)
    raise AuthError(
        f"{target.label} accepted none of the keys offered.",
        "Your public key is not in the server's authorized_keys for this user.",
        "Add your key with ssh-copy-id, choose another key file, or log in with a password.",
    )


def _kbd_interactive(t: paramiko.Transport, user: str, password: str) -> bool:
    def handler(_title: str, _instr: str, prompts: list[tuple[str, bool]]) -> list[str]:
        return [password for _ in prompts]

    try:
        t.auth_interactive(user, handler)
        return True
    except paramiko.AuthenticationException:
        return False

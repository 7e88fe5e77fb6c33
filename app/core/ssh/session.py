"""One SSH session: connecting with the host key checked first, then run, stream and upload."""

from __future__ import annotations

import contextlib
import logging
import re
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
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
)
from app.core.events import CancelToken, EventSink, ProgressMeter, discard
from app.core.kinds import PrivilegeKind, ServerHash
from app.core.lazy import LazyModule

if TYPE_CHECKING:
    import paramiko
else:
    paramiko = LazyModule("paramiko")
from app.core import remote_sh as sh
from app.core.ssh.auth import Credentials, Privilege, authenticate
from app.core.ssh.known_hosts import (
    KnownHosts,
    KnownState,
    fingerprint_of_line,
    key_line,
    preferred_types,
)
from app.core.ssh.streams import (
    END_OF_INPUT,
    OUTPUT_LIMIT,
    SUDO_PROMPT,
    CommandResult,
    LineSink,
    LineSplitter,
    PromptReplies,
    TailBuffer,
    close_quietly,
    request_pty,
    send_all,
    tty_refused,
)
from app.core.ssh.target import Target

# Channel windows larger than the default 2 MiB keep a fast link busy during uploads.
WINDOW_SIZE = 64 * 1024 * 1024
MAX_PACKET = 32768
UPLOAD_CHUNK = 256 * 1024
# A refused channel open is tried again this long: sshd frees a finished session only once the
# client's close of it is processed, and refuses (MaxSessions) an open that arrives in the same
# read as that close. A refusal that lasts is the server's limit, and is named as one.
REFUSED_RETRY_FOR = 3.0
# sudo's answer under `Defaults requiretty` to a command without a terminal; it ran nothing.
NEEDS_TTY = re.compile(r"must have a tty|requiretty", re.I)
SUDO_KINDS = (PrivilegeKind.SUDO, PrivilegeKind.SUDO_PASSWORD)
# AES-GCM is the fastest cipher paramiko offers (AES-NI through cryptography).
PREFERRED_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
    "aes192-ctr",
)
# paramiko logs broken connections itself (every kexec breaks one); our errors say it better.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False

# ---------------------------------------------------------------------------------------------
# The session


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
        # sudo here runs only with a terminal (`Defaults requiretty`): its commands get a pty.
        self.sudo_tty = False
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
        on_start: Callable[[], None] | None = None,
    ) -> CommandResult:
        """Run ``command`` with a deadline, streaming its output lines to ``on_line``;
        ``on_start`` hears when the server has started it (its channel open, exec accepted).

        A privileged command goes through sudo with a terminal where sudo requires one
        (``Defaults requiretty``): found out from sudo's refusal, which ran nothing, so the
        command is then sent again that way. Through a terminal a command reads no input and
        its stderr comes on stdout."""
        label = what or command
        deadline = time.monotonic() + timeout
        if not privileged:
            return self._run(command, stdin, deadline, timeout, on_line, cancel, label, on_start)
        priv = self._root()
        secret = b""
        if priv.kind == PrivilegeKind.SUDO_PASSWORD:
            secret = (self.sudo_password or "").encode() + b"\n"
        if priv.kind in SUDO_KINDS and self.sudo_tty:
            return self._run_sudo_tty(priv, command, stdin, secret, deadline, timeout,
                                      on_line, cancel, label, on_start)  # fmt: skip
        res = self._run(priv.wrap(command), secret + (stdin or b"") or None, deadline, timeout,
                        on_line, cancel, label, on_start)  # fmt: skip
        if priv.kind in SUDO_KINDS and not res.ok and NEEDS_TTY.search(res.stderr):
            self.sudo_tty = True
            return self._run_sudo_tty(priv, command, stdin, secret, deadline, timeout,
                                      on_line, cancel, label, on_start)  # fmt: skip
        return res

    def _root(self) -> Privilege:
        if self.privilege is None:
            raise PrivilegeError(
                "No way to become root on the server is known yet.",
                "The app must probe the server before it runs privileged commands.",
                "Run the inspection step first.",
            )
        return self.privilege

    def _run_sudo_tty(
        self,
        priv: Privilege,
        command: str,
        stdin: bytes | None,
        secret: bytes,
        deadline: float,
        timeout: float,
        on_line: LineSink | None,
        cancel: CancelToken | None,
        label: str,
        on_start: Callable[[], None] | None,
    ) -> CommandResult:
        """Through sudo with a terminal: the password only once sudo asks for it, and the end
        of input if it asks again, so a wrong one ends sudo at once, not at the deadline."""
        if stdin:
            raise ValueError("a command run through a terminal takes no input")
        replies = PromptReplies(SUDO_PROMPT, [secret, END_OF_INPUT, END_OF_INPUT])
        wrapped = priv.wrap("exec </dev/null\n" + command, SUDO_PROMPT)
        return self._run(wrapped, None, deadline, timeout, on_line, cancel, label, on_start,
                         tty=True, replies=replies if secret else None)  # fmt: skip

    def _run(
        self,
        command: str,
        stdin: bytes | None,
        deadline: float,
        timeout: float,
        on_line: LineSink | None,
        cancel: CancelToken | None,
        label: str,
        on_start: Callable[[], None] | None,
        *,
        tty: bool = False,
        replies: PromptReplies | None = None,
    ) -> CommandResult:
        """One command on one channel, by ``deadline`` (``replies``: to a prompt on its tty)."""
        chan = self._start(
            command, stdin, deadline, cancel, label, budget=timeout, tty=tty, end_input=not tty
        )
        unhook = cancel.on_cancel(chan.close) if cancel is not None else (lambda: None)
        try:
            if on_start is not None:
                on_start()
            return self._collect(chan, deadline, timeout, on_line, cancel, label, replies)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if cancel is not None and cancel.cancelled:
                raise Cancelled() from exc
            raise self._broke(label, exc) from exc
        finally:
            unhook()
            close_quietly(chan)

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
        tty: bool = False,
    ) -> paramiko.Channel:
        """Open a channel, start ``command`` and send its stdin, all within the deadline.
        paramiko waits for the server's answers to both requests without a deadline of ours,
        so they run on a helper thread; on the deadline or a cancel this thread stops waiting at
        once and the channel, when it comes, is closed."""
        timeout = max(deadline - time.monotonic(), 0.1)
        state: dict[str, Any] = {}
        lock = threading.Lock()
        done = threading.Event()

        def starter() -> None:
            chan = None
            try:
                chan = self._open_channel(deadline, lambda: bool(state.get("abandoned")))
                with lock:
                    state["chan"] = chan
                    if state.get("abandoned"):
                        raise EOFError("abandoned")
                chan.settimeout(timeout)
                if tty:
                    try:
                        request_pty(chan)
                    except paramiko.SSHException:
                        state["no_tty"] = True
                        raise
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
                    close_quietly(chan)  # nobody waits for it any more
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
                close_quietly(chan)
            if cancel is not None and cancel.cancelled:
                raise Cancelled()
            if not done.is_set() or time.monotonic() >= deadline:
                raise self._late(what, budget or timeout)
            exc = state["exc"]
            if state.get("no_tty"):
                raise tty_refused(self.target.user, self.target.host) from exc
            if isinstance(exc, paramiko.ChannelException):
                raise RemoteCommandError(
                    f"The server refused to open a session for {_short(what)} on "
                    f"{self.target.label} ({exc.text or 'open failed'}, code {exc.code}).",
                    "The connection is up, but sshd would not start another session on it "
                    f"for {REFUSED_RETRY_FOR:g} s: its MaxSessions limit (sshd_config) is taken, "
                    "or it allows no sessions for this login. Nothing was started.",
                    "The app needs one session at a time: allow at least that (MaxSessions 1 "
                    "or more in the server's sshd_config), then try again.",
                ) from exc
            if chan is None:
                raise RemoteCommandError(
                    f"Cannot start {_short(what)} on {self.target.label}: "
                    "the connection is closed.",
                    f"({exc or type(exc).__name__})",
                    "Reconnect and try again.",
                ) from exc
            raise self._broke(what, exc) from exc
        return state["chan"]  # type: ignore[no-any-return]

    def _open_channel(self, deadline: float, abandoned: Callable[[], bool]) -> paramiko.Channel:
        """A session channel by ``deadline``; a refusal is tried again for a moment (see
        REFUSED_RETRY_FOR), since it may only mean the last session is not freed yet."""
        give_up = min(deadline, time.monotonic() + REFUSED_RETRY_FOR)
        pause = 0.02
        while True:
            try:
                return self.transport.open_session(
                    window_size=WINDOW_SIZE,
                    max_packet_size=MAX_PACKET,
                    timeout=max(deadline - time.monotonic(), 0.1),
                )
            except paramiko.ChannelException:
                if abandoned() or time.monotonic() + pause >= give_up:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.4)

    def _collect(
        self,
        chan: paramiko.Channel,
        deadline: float,
        timeout: float,
        on_line: LineSink | None,
        cancel: CancelToken | None,
        what: str,
        replies: PromptReplies | None = None,
    ) -> CommandResult:
        """The command's output and exit status by the deadline; ``replies`` answer a prompt
        in its output (the prompt itself is left out of what is returned)."""
        out, err = TailBuffer(self.output_limit), TailBuffer(self.output_limit)
        if replies is not None and on_line is not None:
            on_line = replies.lines_to(on_line)
        lines = {
            "stdout": LineSplitter(on_line, "stdout"),
            "stderr": LineSplitter(on_line, "stderr"),
        }

        while True:
            if cancel is not None and cancel.cancelled:
                raise Cancelled()
            left = deadline - time.monotonic()
            if left <= 0:
                late = replies.unanswered(what) if replies and replies.waiting else None
                raise late or self._late(what, timeout)
            select.select([chan], [], [], min(left, 0.5))
            got = False
            while chan.recv_ready():
                data = chan.recv(65536)
                out.add(data)
                lines["stdout"].feed(data)
                got = True
                if replies is not None and (answer := replies.feed(data)):
                    # The command may end between the prompt and the send: its input is then
                    # gone with it, which is not a broken connection.
                    with contextlib.suppress(OSError):
                        chan.sendall(answer)
            while chan.recv_stderr_ready():
                data = chan.recv_stderr(65536)
                err.add(data)
                lines["stderr"].feed(data)
                got = True
            # The exit status may precede the last output (RFC 4254): the end is the EOF.
            ready = chan.recv_ready() or chan.recv_stderr_ready()
            if (chan.eof_received or chan.closed) and chan.exit_status_ready() and not ready:
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
        raw = out.data() if replies is None else replies.clean_bytes(out.data())
        return CommandResult(status, raw.decode("utf-8", "replace"), err.text(), out.dropped,
                             err.dropped, raw_stdout=raw)  # fmt: skip

    def upload(
        self,
        local: Path,
        remote: str,
        *,
        emit: EventSink = discard,
        stage: str = "transfer",
        cancel: CancelToken | None = None,
        timeout: float = 3600.0,
        server_hash: ServerHash = ServerHash.NONE,
    ) -> str | None:
        """Stream ``local`` into ``remote`` (mode 0600); with ``server_hash``, return the sha256
        the server computed of the bytes it received, as they arrived or once stored (None
        when it has no tool for it), so no separate command has to read the file there again."""
        size = local.stat().st_size
        cmd = {
            ServerHash.NONE: sh.receive,
            ServerHash.WHILE_RECEIVING: sh.receive_hashing,
            ServerHash.AFTER_STORING: sh.receive_then_hash,
            ServerHash.WHILE_UNPACKING: sh.receive_unpacking,  # ``remote``: the staging folder
        }[server_hash](remote)
        deadline = time.monotonic() + timeout
        start_by = min(deadline, time.monotonic() + max(self.start_timeout, 1.0))
        chan = self._start(cmd, None, start_by, cancel, "the upload", end_input=False)
        unhook = cancel.on_cancel(chan.close) if cancel is not None else (lambda: None)
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
                    send_all(chan, chunk)
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
            close_quietly(chan)
        meter.finish()
        if not res.ok or sh.WRITE_FAILED in res.stderr:
            said = res.stderr.replace(sh.WRITE_FAILED, "").strip()[:300]
            raise RemoteCommandError(
                f"Writing {remote} on {self.target.label} failed: {said}",
                "The server could not store the image (full disk or no permission).",
                "Free space on the server or choose another staging folder.",
            )
        if server_hash is not ServerHash.NONE:
            return sh.parse_sha256(res.stdout)
        return None


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
    sock: socket.socket | None = None,
) -> Session:
    """Open (or take ``sock``, a direct connection whose SSH banner was only peeked at), verify
    the host key, then authenticate. Never sends a credential to a wrong key."""
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
        if sock is None or jump_session is not None:
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
        prefer = preferred_types(first)
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
        auth_key, kind = authenticate(t, target, creds, cancel)
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

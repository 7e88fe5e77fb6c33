"""A small paramiko SSH server on 127.0.0.1 that lies or stalls on purpose, for fault tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paramiko

# What the server does with a command: gets the channel and the command line, then returns.
Behaviour = Callable[[paramiko.Channel, str], None]


class _Interface(paramiko.ServerInterface):
    def __init__(self, server: HostileSSH) -> None:
        self.server = server

    def get_allowed_auths(self, username: str) -> str:
        return "publickey,password"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return paramiko.AUTH_SUCCESSFUL

    def check_auth_password(self, username: str, password: str) -> int:
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if self.server.freeze_channels.is_set():
            # Blocks the server's transport thread: the whole connection stops answering,
            # as a frozen machine's would, while TCP stays up.
            self.server.stopped.wait(120)
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        if self.server.freeze_exec.is_set():
            self.server.stopped.wait(120)
        threading.Thread(
            target=self.server._run, args=(channel, command.decode()), daemon=True
        ).start()
        return True


class HostileSSH:
    """Accepts any login, then runs ``behaviour`` for every command (or freezes)."""

    def __init__(self, host_key: Path, behaviour: Behaviour | None = None) -> None:
        self.host_key = paramiko.Ed25519Key.from_private_key_file(str(host_key))
        self.behaviour = behaviour or (lambda chan, cmd: None)
        self.freeze_channels = threading.Event()
        self.freeze_exec = threading.Event()
        self.stopped = threading.Event()
        self.commands: list[str] = []
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        self._transports: list[paramiko.Transport] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> HostileSSH:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self._thread.join(5)
        for t in self._transports:
            t.close()
        self._sock.close()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = paramiko.Transport(conn)
            t.add_server_key(self.host_key)
            self._transports.append(t)
            t.start_server(server=_Interface(self))

    def _run(self, chan: paramiko.Channel, command: str) -> None:
        self.commands.append(command)
        # paramiko answers the exec request only after check_channel_exec_request returns:
        # output or a close before that answer would reach the client first.
        time.sleep(0.05)
        # The client may hang up at any moment: that ends the behaviour, nothing else.
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            self.behaviour(chan, command)
            chan.send_exit_status(0)
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            chan.close()

    def known_hosts_line(self) -> str:
        """This server's key as a known_hosts line."""
        return f"[127.0.0.1]:{self.port} {self.host_key.get_name()} {self.host_key.get_base64()}\n"

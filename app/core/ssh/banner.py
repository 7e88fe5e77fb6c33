"""Fresh TCP connections that wait for an SSH banner, once or in turn until one comes."""

from __future__ import annotations

import errno
import os
import selectors
import socket
import time
from collections.abc import Callable, Sequence

from app.core.events import CancelToken

BANNER = b"SSH-"
TICK = 0.1  # the longest a wait sleeps between looks at its cancel token


def banner_socket(host: str, port: int, timeout: float) -> tuple[socket.socket | None, str]:
    """A connection whose server has sent an SSH banner (only peeked at, so the login can go
    on over this very connection: on a rebooting server each new one costs it a forked sshd),
    or None and why not."""
    return _attempt(host, port, time.monotonic() + timeout, None)


def has_banner(host: str, port: int, timeout: float) -> tuple[bool, str]:
    """Check cheaply, before any handshake, that something sends an SSH banner."""
    sock, why = banner_socket(host, port, timeout)
    if sock is None:
        return False, why
    sock.close()
    return True, ""


class BannerPoll:
    """Fresh connections to ``ports`` in turn, one at a time, until one sends an SSH banner
    (only peeked at: nothing is sent). Each waits up to ``patience`` seconds for it; the
    next starts ``pace`` seconds after the last one started, or ``quick_retry`` after one
    refused or reset within ``quick_fail`` (that cost the server nothing).

    One at a time, as measured on the VM test bed: overlapping attempts (a new one every
    0.5 s beside the waiting ones) made the banners slower, 2.8 s instead of 0.9 s, since on
    a booting server with one CPU each connection its sshd accepts forks a process, and the
    attempts that waited for a server not yet up reach it all at once when it is.
    """

    def __init__(
        self,
        host: str,
        ports: Sequence[int],
        *,
        pace: float,
        patience: float,
        quick_retry: float,
        quick_fail: float,
    ) -> None:
        self.host, self.ports = host, list(ports)
        self.pace, self.patience = pace, patience
        self.quick_retry, self.quick_fail = quick_retry, quick_fail
        self._turn = 0
        self._next = 0.0  # when the next attempt may start

    def wait(
        self, deadline: float, cancel: CancelToken, failed: Callable[[int, str], None]
    ) -> tuple[socket.socket, int] | None:
        """The first connection with a banner and its port, or None at the deadline or when
        cancelled. ``failed(port, why)`` hears of every attempt that ended without one."""
        while not cancel.cancelled:
            now = time.monotonic()
            if now >= deadline:
                return None
            if now < self._next:
                cancel.wait(min(self._next, deadline) - now)
                continue
            port = self.ports[self._turn % len(self.ports)]
            self._turn += 1
            self._next = now + self.pace
            sock, why = _attempt(self.host, port, min(now + self.patience, deadline), cancel)
            if sock is not None:
                return sock, port
            if not why:  # cancelled
                continue
            if time.monotonic() - now < self.quick_fail:
                self._next = min(self._next, time.monotonic() + self.quick_retry)
            failed(port, why)
        return None


def _attempt(
    host: str, port: int, until: float, cancel: CancelToken | None
) -> tuple[socket.socket | None, str]:
    """One connection: its socket once a banner came by ``until``, else None and why (""
    when it was cancelled)."""
    started = time.monotonic()
    sock, why = _connect(host, port, until, cancel, started)
    if sock is None:
        return None, why
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        while True:
            left = until - time.monotonic()
            if cancel is not None and cancel.cancelled:
                sock.close()
                return None, ""
            if left <= 0:
                sock.close()
                return None, f"port {port}: no SSH banner within {round(until - started, 1):g} s"
            if sel.select(min(left, TICK)):
                break
    sock.setblocking(True)
    sock.settimeout(max(0.01, until - time.monotonic()))
    try:
        data = sock.recv(64, socket.MSG_PEEK)
        if data and len(data) < len(BANNER) and BANNER.startswith(data):
            data = sock.recv(len(BANNER), socket.MSG_PEEK | socket.MSG_WAITALL)
    except OSError as exc:
        sock.close()
        return None, f"port {port}: {exc.strerror or 'no SSH banner in time'}"
    if data.startswith(BANNER):
        sock.settimeout(None)
        return sock, ""
    sock.close()
    return None, f"port {port}: " + ("closed without an SSH banner" if not data else "not SSH")


def _connect(
    host: str, port: int, until: float, cancel: CancelToken | None, started: float
) -> tuple[socket.socket | None, str]:
    """A TCP connection to the first of the host's addresses that takes one by ``until`` (as
    ``socket.create_connection`` tries them in turn), else None and the last reason."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return None, f"port {port}: {exc.strerror or type(exc).__name__}"
    why = f"port {port}: no address"
    for family, kind, proto, _name, addr in found:
        try:
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            why = f"port {port}: {exc.strerror or type(exc).__name__}"
            continue
        sock.setblocking(False)
        err = sock.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            why = f"port {port}: {os.strerror(err)}"
            continue
        with selectors.DefaultSelector() as sel:
            sel.register(sock, selectors.EVENT_WRITE)
            while not sel.select(min(max(0.0, until - time.monotonic()), TICK)):
                if (cancel is not None and cancel.cancelled) or time.monotonic() >= until:
                    sock.close()
                    if cancel is not None and cancel.cancelled:
                        return None, ""
                    waited = round(until - started, 1)
                    return None, f"port {port}: no SSH banner within {waited:g} s"
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            sock.close()
            why = f"port {port}: {os.strerror(err)}"
            continue
        return sock, ""
    return None, why

"""Fresh TCP connections that wait for an SSH banner, each address its own time, once or in turn."""

from __future__ import annotations

import errno
import os
import selectors
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from app.core.events import CancelToken

BANNER = b"SSH-"
TICK = 0.1  # the longest a wait sleeps between looks at its cancel token


def banner_socket(host: str, port: int, timeout: float) -> tuple[socket.socket | None, str]:
    """A connection whose server has sent an SSH banner (only peeked at, so the login can go
    on over this very connection: on a rebooting server each new one costs it a forked sshd),
    or None and why not. Each of the host's addresses in turn gets ``timeout`` seconds."""
    return _attempt(host, port, timeout, float("inf"), None)


class BannerPoll:
    """Fresh connections to ``ports`` in turn, one at a time, until one sends an SSH banner
    (only peeked at: nothing is sent). Each tries the host's addresses in turn, each given
    ``patience`` seconds of its own for it; the next starts ``pace`` seconds after the last
    one started, or ``quick_retry`` after one refused or reset within ``quick_fail`` (that
    cost the server nothing).

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

    def pause(self, seconds: float) -> None:
        """Start no attempt for ``seconds`` from now."""
        self._next = max(self._next, time.monotonic() + seconds)

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
            sock, why = _attempt(self.host, port, self.patience, deadline, cancel)
            if sock is not None:
                return sock, port
            if not why:  # cancelled
                continue
            if time.monotonic() - now < self.quick_fail:
                self._next = min(self._next, time.monotonic() + self.quick_retry)
            failed(port, why)
        return None


def _attempt(
    host: str, port: int, patience: float, deadline: float, cancel: CancelToken | None
) -> tuple[socket.socket | None, str]:
    """One connection: the host's addresses in turn, each given ``patience`` seconds of its
    own (never past ``deadline``) to connect and send a banner, as ``socket.create_connection``
    and OpenSSH's ConnectTimeout give each address its own time: an address that drops
    packets (a dual-stack name with a broken IPv6 route) costs its time, not the others'.
    The first socket with a banner, else None and why for every address ("" if cancelled)."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return None, f"port {port}: {exc.strerror or type(exc).__name__}"
    addrs = list(
        dict.fromkeys((family, kind, proto, addr) for family, kind, proto, _n, addr in found)
    )
    whys: list[str] = []
    for family, kind, proto, addr in addrs:
        now = time.monotonic()
        if now >= deadline:
            break
        sock, why = _attempt_one(family, kind, proto, addr, min(now + patience, deadline), cancel)
        if sock is not None:
            return sock, ""
        if not why:  # cancelled
            return None, ""
        whys.append(why if len(addrs) == 1 else f"{addr[0]}: {why}")
    return None, f"port {port}: " + ("; ".join(whys) or "no address")


def _attempt_one(
    family: int, kind: int, proto: int, addr: Any, until: float, cancel: CancelToken | None
) -> tuple[socket.socket | None, str]:
    """One address: its socket once a banner came by ``until``, else None and why (""
    when it was cancelled)."""
    started = time.monotonic()
    waited = f"no SSH banner within {round(until - started, 1):g} s"
    try:
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        return None, exc.strerror or type(exc).__name__
    sock.setblocking(False)
    err = sock.connect_ex(addr)
    if err not in (0, errno.EINPROGRESS):
        sock.close()
        return None, os.strerror(err)
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_WRITE)
        if not _ready(sel, until, cancel):
            sock.close()
            return None, "" if cancel is not None and cancel.cancelled else waited
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        sock.close()
        return None, os.strerror(err)
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        if not _ready(sel, until, cancel):
            sock.close()
            return None, "" if cancel is not None and cancel.cancelled else waited
    sock.setblocking(True)
    sock.settimeout(max(0.01, until - time.monotonic()))
    try:
        data = sock.recv(64, socket.MSG_PEEK)
        if data and len(data) < len(BANNER) and BANNER.startswith(data):
            data = sock.recv(len(BANNER), socket.MSG_PEEK | socket.MSG_WAITALL)
    except OSError as exc:
        sock.close()
        return None, exc.strerror or "no SSH banner in time"
    if data.startswith(BANNER):
        sock.settimeout(None)
        return sock, ""
    sock.close()
    return None, "closed without an SSH banner" if not data else "not SSH"


def _ready(sel: selectors.BaseSelector, until: float, cancel: CancelToken | None) -> bool:
    """Whether ``sel``'s socket became ready by ``until`` (False, too, once cancelled),
    looking at the cancel token every TICK."""
    while True:
        if cancel is not None and cancel.cancelled:
            return False
        left = until - time.monotonic()
        if left <= 0:
            return False
        if sel.select(min(left, TICK)):
            return True

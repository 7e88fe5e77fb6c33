"""An address that drops connection attempts (a full listen backlog), and a name with several addresses."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import pytest


class DroppingAddress:
    """``host``:``port`` where a TCP connect hangs, as to an address whose route drops packets:
    a listener nobody accepts on, its backlog full, so the kernel drops every further SYN."""

    def __init__(self, host: str, port: int) -> None:
        self._srv = socket.socket()
        self._srv.bind((host, port))
        self._srv.listen(0)
        self._fill: list[socket.socket] = []
        for _ in range(3):  # more than the backlog takes: the queue stays full
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((host, port))
            self._fill.append(s)

    def close(self) -> None:
        for s in [*self._fill, self._srv]:
            with contextlib.suppress(OSError):
                s.close()


class Names:
    """The resolver's answer for made-up names (the OS's resolver stood in for those names
    only; every other name resolves as before). Set ``names[name] = [addr, ...]``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.addresses: dict[str, list[str]] = {}
        real = socket.getaddrinfo

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            if host not in self.addresses:
                return real(host, port, *args, **kwargs)
            return [
                (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (a, int(port)))
                for a in self.addresses[host]
            ]

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

    def __setitem__(self, name: str, addresses: list[str]) -> None:
        self.addresses[name] = addresses

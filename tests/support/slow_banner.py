"""A TCP relay in front of an sshd that holds back the server's first bytes, like a slow boot."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class SlowBanner:
    """Relays 127.0.0.1:``port`` to ``upstream``; while ``delay`` is set, each connection's
    first bytes from the server wait that long (counted from the client's connect)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.delay = 0.0
        self.accepted = 0
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = self._srv.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop = True
        self._srv.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            self.accepted += 1
            until = time.monotonic() + self.delay
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            threading.Thread(target=self._pipe, args=(client, server, 0.0), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, until), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, until: float) -> None:
        try:
            first = True
            while chunk := src.recv(65536):
                if first and until:
                    time.sleep(max(0.0, until - time.monotonic()))
                first = False
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):  # the other side may be gone already
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

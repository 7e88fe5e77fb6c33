"""A stand-in binary cache and nixpkgs archive on loopback: answers what the reach check asks."""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ARCHIVE = re.compile(r"/nixpkgs/[0-9a-f]{40}\.tar\.gz")


class CacheServer:
    """``/cache/nix-cache-info`` and ``/nixpkgs/<commit>.tar.gz`` answer 200, the rest 404;
    every path asked is kept in ``asked``."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body: bool) -> None:
                outer.asked.append((self.command, self.path))
                ok = self.path == "/cache/nix-cache-info" or ARCHIVE.fullmatch(self.path)
                data = b"StoreDir: /nix/store\n" if ok else b"not here\n"
                self.send_response(200 if ok else 404)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self) -> None:
                self._answer(False)

            def do_GET(self) -> None:
                self._answer(True)

            def log_message(self, *_args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> CacheServer:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

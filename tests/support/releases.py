"""A real HTTP server on 127.0.0.1 standing in for GitHub: releases API and downloads, with faults."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API_PATH = "/repos/nix-community/nixos-images"
# The x86_64 kexec tarball, as the releases name it (the releases fixture serves it).
ASSET = "nixos-kexec-installer-noninteractive-x86_64-linux.tar.gz"


@dataclass
class Fault:
    """What to do wrong for one file, consumed one request at a time."""

    statuses: list[int] = field(default_factory=list)  # answer these first, in order
    cut_after: list[int] = field(default_factory=list)  # close after N body bytes, per request
    stall: float = 0.0  # sleep this long after the headers (once)


@dataclass
class Request:
    """One request the server saw."""

    method: str
    path: str
    headers: dict[str, str]


class ReleasesServer:
    """Serves ``/repos/nix-community/nixos-images/releases`` and ``/download/<tag>/<name>``."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}  # "tag/name" -> content
        self.updated_at: dict[str, str] = {}
        self.digest_override: dict[str, str | None] = {}
        self.faults: dict[str, Fault] = {}
        self.api_status: list[int] = []
        self.api_body: bytes | None = None  # raw override (e.g. malformed JSON)
        self.requests: list[Request] = []
        self.extra_releases: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        handler = self._handler()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # -- URLs ---------------------------------------------------------------------------

    @property
    def base(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """What to pass as the releases API URL."""
        return self.base + API_PATH

    @property
    def download_url(self) -> str:
        """What to pass as the download base URL."""
        return self.base + "/download"

    def url(self, tag: str, name: str) -> str:
        """The download URL of one file."""
        return f"{self.download_url}/{tag}/{name}"

    # -- content ------------------------------------------------------------------------

    def add(
        self,
        tag: str,
        name: str,
        content: bytes,
        *,
        digest: bool = True,
        updated_at: str = "2026-11-20T10:00:00Z",
    ) -> str:
        """Publish a file; returns its sha256."""
        key = f"{tag}/{name}"
        self.files[key] = content
        self.updated_at[key] = updated_at
        sha = hashlib.sha256(content).hexdigest()
        self.digest_override[key] = f"sha256:{sha}" if digest else None
        return sha

    def releases_json(self) -> list[dict[str, Any]]:
        """The API answer, newest first like GitHub's."""
        tags: dict[str, list[dict[str, Any]]] = {}
        for key, content in self.files.items():
            tag, name = key.split("/", 1)
            asset: dict[str, Any] = {
                "name": name,
                "size": len(content),
                "updated_at": self.updated_at[key],
                "browser_download_url": self.url(tag, name),
            }
            if self.digest_override.get(key):
                asset["digest"] = self.digest_override[key]
            tags.setdefault(tag, []).append(asset)
        out = [
            {"tag_name": t, "published_at": "2026-11-01T00:00:00Z", "assets": a}
            for t, a in sorted(tags.items(), reverse=True)
        ]
        return out + self.extra_releases

    def start(self) -> ReleasesServer:
        """Start serving in a background thread."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()

    def downloads(self, name: str) -> list[Request]:
        """Requests for one file (by name)."""
        return [r for r in self.requests if r.path.endswith("/" + name) and r.method == "GET"]

    # -- HTTP ---------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            def _send(
                self, status: int, body: bytes, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _serve(self, head: bool) -> None:
                with server._lock:
                    server.requests.append(Request(self.command, self.path, dict(self.headers)))
                path = self.path.split("?", 1)[0]
                if path == API_PATH + "/releases":
                    return self._api()
                if path.startswith("/redirect/"):
                    self.send_response(302)
                    self.send_header("Location", "/download/" + path[len("/redirect/") :])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                if path.startswith("/download/"):
                    return self._file(path[len("/download/") :], head)
                if path in ("/", "/download"):
                    return self._send(200, b"ok")
                return self._send(404, b"not found")

            def _api(self) -> None:
                if server.api_status:
                    status = server.api_status.pop(0)
                    headers = {"X-RateLimit-Remaining": "0"} if status in (403, 429) else {}
                    return self._send(status, b'{"message": "nope"}', headers)
                body = (
                    server.api_body
                    if server.api_body is not None
                    else json.dumps(server.releases_json()).encode()
                )
                etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
                if self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                return self._send(200, body, {"ETag": etag, "Content-Type": "application/json"})

            def _file(self, key: str, head: bool) -> None:
                content = server.files.get(key)
                if content is None:
                    return self._send(404, b"not found")
                fault = server.faults.get(key)
                if fault and fault.statuses:
                    return self._send(fault.statuses.pop(0), b"error")
                etag = '"' + hashlib.sha256(content).hexdigest()[:16] + '"'
                start = 0
                rng = self.headers.get("Range")
                if rng and self.headers.get("If-Range", etag) == etag and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(content):
                        return self._send(416, b"", {"Content-Range": f"bytes */{len(content)}"})
                body = content[start:]
                self.send_response(206 if start else 200)
                self.send_header("ETag", etag)
                self.send_header("Accept-Ranges", "bytes")
                if start:
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}"
                    )
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if head:
                    return None
                if fault and fault.stall:
                    stall, fault.stall = fault.stall, 0.0
                    time.sleep(stall)
                if fault and fault.cut_after:
                    n = fault.cut_after.pop(0)
                    self.wfile.write(body[:n])
                    self.wfile.flush()
                    self.close_connection = True
                    return None
                view = memoryview(body)
                for i in range(0, len(body), 1 << 20):
                    self.wfile.write(view[i : i + (1 << 20)])
                return None

        return Handler

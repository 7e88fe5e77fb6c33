"""A static file server for the download benchmark that sends with sendfile(2).

A stand-in for GitHub's CDN: its own CPU cost stays near zero, so curl and the app compete
for the same two cores only with each other.
"""

from __future__ import annotations

import os
import sys
from http.server import HTTPServer, SimpleHTTPRequestHandler
from typing import Any


class Handler(SimpleHTTPRequestHandler):
    """GET and HEAD of files, bodies sent by the kernel."""

    def log_message(self, *args: Any) -> None:
        pass

    def copyfile(self, source: Any, outputfile: Any) -> None:
        self.wfile.flush()
        self.connection.sendfile(source)


def main() -> None:
    directory, port = sys.argv[1], int(sys.argv[2])
    os.chdir(directory)
    HTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()

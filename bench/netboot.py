"""The netboot server: curl fetching a large initrd from it, beside a bare sendfile server."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from app.core.netboot import NetbootServer, NetbootSource
from bench.common import ROOT, Row, main_for, mb_s, median, workdir
from bench.download import _wait_http
from tests.support.sshd import free_port


def measure(size_mb: int = 512, runs: int = 5) -> list[Row]:
    """Interleaved curl runs against bench/httpd.py and the app's NetbootServer; medians."""
    with workdir() as work:
        initrd = work / "initrd"
        with initrd.open("wb") as f:
            for _ in range(size_mb):
                f.write(os.urandom(1 << 20))
        size = initrd.stat().st_size
        source = NetbootSource(("bzImage", initrd), (("initrd", initrd),), "init=/init", "bench")
        ours_srv = NetbootServer(source, "127.0.0.1", 0).start()
        port = free_port()
        ref_srv = subprocess.Popen(
            [sys.executable, "-m", "bench.httpd", str(work), str(port)], cwd=ROOT
        )
        try:
            ref_url = f"http://127.0.0.1:{port}/initrd"
            _wait_http(ref_url)
            ref, ours = [], []
            for _ in range(runs):
                ref.append(_curl(ref_url))
                ours.append(_curl(f"{ours_srv.url}/initrd"))
        finally:
            ref_srv.terminate()
            ref_srv.wait(10)
            ours_srv.stop()
    r, o = median(ref), median(ours)
    return [
        Row(
            f"netboot server: curl fetches a {size / 1e6:.0f} MB initrd over loopback",
            f"a bare sendfile server (bench/httpd.py): {mb_s(size, r):.0f} MB/s",
            f"{mb_s(size, o):.0f} MB/s = {r / o:.2f}x",
            "-",
            None,
        )
    ]


def _curl(url: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["curl", "-sSf", "-o", "/dev/null", url], check=True)
    return time.perf_counter() - t0


if __name__ == "__main__":
    raise SystemExit(main_for(measure, __doc__, size_mb=512, runs=5))

"""Download from a loopback HTTP server into the cache (sha256 on the fly) beside ``curl -o``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from app.core.catalog import Asset
from app.core.download import Downloader, ImageCache, sha256_file
from app.core.imagecheck import check_tarball
from app.core.settings import Settings
from bench.common import ROOT, Row, main_for, mb_s, median, random_file, workdir
from tests.support.sshd import free_port


def make_tarball(work: Path, size_mb: int) -> Path:
    """A kexec-shaped tar.gz whose initrd is ``size_mb`` MiB of random bytes."""
    tree = work / "tree" / "kexec"
    tree.mkdir(parents=True)
    for name in ("run", "bzImage", "kexec", "ip"):
        (tree / name).write_bytes(b"#!/bin/sh\n")
    random_file(tree / "initrd", size_mb)
    out = work / "www" / "nixos-kexec-installer-noninteractive-x86_64-linux.tar.gz"
    out.parent.mkdir()
    with out.open("wb") as f:
        tar = subprocess.Popen(
            ["tar", "-C", str(tree.parent), "-cf", "-", "kexec"], stdout=subprocess.PIPE
        )
        subprocess.run(["gzip", "-1"], stdin=tar.stdout, stdout=f, check=True)
        tar.wait()
    shutil.rmtree(tree.parent)
    return out


def measure(size_mb: int = 1024, runs: int = 5) -> list[Row]:
    """Interleaved runs of curl and the app's Downloader.fetch; medians."""
    with workdir() as work:
        src = make_tarball(work, size_mb)
        size = src.stat().st_size
        digest = sha256_file(src)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "bench.httpd", str(src.parent), str(port)], cwd=ROOT
        )
        try:
            url = f"http://127.0.0.1:{port}/{src.name}"
            _wait_http(url)
            settings = Settings(allow_http=True)
            asset = Asset(name=src.name, url=url, size=size, digest=digest)
            ref, ours, checks = [], [], []
            for i in range(runs):
                out = work / "curl.out"
                os.sync()  # each run starts with no dirty pages left from the previous one
                t0 = time.perf_counter()
                subprocess.run(["curl", "-sSf", "-o", str(out), url], check=True)
                ref.append(time.perf_counter() - t0)
                out.unlink()
                cache = ImageCache(work / f"cache{i}")
                os.sync()
                t0 = time.perf_counter()
                part, info = Downloader(settings, cache).download(asset)
                ours.append(time.perf_counter() - t0)
                if info.sha256 != digest:
                    raise SystemExit("digest mismatch")
                t0 = time.perf_counter()
                check_tarball(part)
                checks.append(time.perf_counter() - t0)
                shutil.rmtree(cache.root)
        finally:
            server.terminate()
            server.wait(5)
    r, o, c = median(ref), median(ours), median(checks)
    ratio = r / o
    return [
        Row(
            f"download {size / 1e6:.0f} MB from a loopback HTTP server to the cache, "
            "sha256 on the fly",
            f"`curl -o`: {mb_s(size, r):.0f} MB/s",
            f"{mb_s(size, o):.0f} MB/s = {ratio:.2f}x",
            ">= 0.95x",
            ratio >= 0.95,
        ),
        Row(
            "then the tarball member check (once per image, before it is cached)",
            "-",
            f"{c:.2f} s ({mb_s(size, c):.0f} MB/s)",
            "-",
            None,
        ),
    ]


def _wait_http(url: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if subprocess.run(["curl", "-sfI", "-o", "/dev/null", url]).returncode == 0:
            return
        time.sleep(0.1)
    raise SystemExit(f"the bench HTTP server at {url} did not answer within 10 s")


if __name__ == "__main__":
    raise SystemExit(main_for(measure, __doc__, size_mb=1024, runs=5))

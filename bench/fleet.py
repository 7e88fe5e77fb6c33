"""Many servers: N loopback machines at once vs one after another, and memory with 10 servers.

Each round boots fresh loopback machines (their kexec really 'reboots' them into the stand-in
installer) and runs the app's command line as a user would: once with every machine as a
target (``--parallel N``), once per machine one after another; the order alternates between
rounds. The image is in the cache before the first run, so both sides do the same work. Peak
memory is the app process's maximum resident set (``wait4``), with 10 servers and with one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from bench.common import ROOT, Row, main_for, median, need_root, workdir
from tests.support.machine import Machine
from tests.support.releases import ReleasesServer
from tests.support.sshd import free_port, keygen
from tests.support.tarballs import standin_tarball

ASSET = "nixos-kexec-installer-noninteractive-x86_64-linux.tar.gz"


class _Bed:
    """Loopback machines, the releases stand-in and one app home shared by every run."""

    def __init__(self, work: Path, releases: ReleasesServer) -> None:
        self.work = work
        self.client = keygen(work / "client")
        self.host_key = keygen(work / "ssh_host_ed25519_key")
        self.env = {
            **os.environ,
            "NIXOS_KEXEC_WIZARD_HOME": str(work / "home"),
            "NIXOS_KEXEC_WIZARD_API_URL": releases.api_url,
            "NIXOS_KEXEC_WIZARD_DOWNLOAD_URL": releases.download_url,
            "NIXOS_KEXEC_WIZARD_ALLOW_HTTP": "1",
        }
        self.made = 0

    @contextmanager
    def machines(self, n: int) -> Iterator[list[Machine]]:
        ms = []
        try:
            for _ in range(n):
                self.made += 1
                m = Machine(self.work / f"m{self.made}", free_port(), [self.host_key],
                            [self.client.with_suffix(".pub")])  # fmt: skip
                ms.append(m)
                m.start()
            yield ms
        finally:
            for m in ms:
                m.stop()

    def app(self, *args: str) -> tuple[float, int, int]:
        """Run the command line; its wall time, exit code and peak resident memory (KiB)."""
        cmd = [sys.executable, "-m", "app", *args]
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        _pid, status, usage = os.wait4(p.pid, 0)
        took = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        return took, p.returncode, usage.ru_maxrss

    def install(self, ms: Sequence[Machine], *extra: str) -> tuple[float, int, int]:
        targets = [f"root@127.0.0.1:{m.port}" for m in ms]
        return self.app(
            "install", "--json", "--yes", "--accept-new-host-key", *targets, "-i",
            str(self.client), "--transfer", "upload", "--down-timeout", "30", "--timeout", "30",
            *extra,
        )  # fmt: skip


def measure(servers: int = 3, runs: int = 3, memory_servers: int = 10) -> list[Row]:
    """Rows: N at once vs one after another (every round), and peak memory with 10 servers."""
    need_root("bench/fleet.py")
    with workdir() as work:
        releases = ReleasesServer()
        releases.add("nixos-26.05", ASSET, standin_tarball(work / ASSET).read_bytes())
        releases.start()
        try:
            bed = _Bed(work, releases)
            _, code, _ = bed.app("download", "--json")
            assert code == 0, "the stand-in image could not be cached"
            pairs: list[tuple[float, float]] = []
            for i in range(runs):
                together = one_by_one = 0.0
                for side in (
                    ("together", "one-by-one") if i % 2 == 0 else ("one-by-one", "together")
                ):
                    with bed.machines(servers) as ms:
                        if side == "together":
                            together, code, _ = bed.install(ms, "--parallel", str(servers))
                            ok = code == 0
                        else:
                            one_by_one = 0.0
                            ok = True
                            for m in ms:
                                t, code, _ = bed.install([m])
                                one_by_one += t
                                ok = ok and code == 0
                        if not ok or any(m.state != "installer" for m in ms):
                            raise SystemExit(f"bench/fleet.py: an install failed ({side})")
                pairs.append((together, one_by_one))
                line = f"{servers} at once {together:.1f} s, one after another {one_by_one:.1f} s"
                print(f"   round {i + 1}: {line} ({together / one_by_one:.2f}x)", file=sys.stderr)
            with bed.machines(memory_servers) as ms:
                _, code, rss_many = bed.install(ms, "--parallel", str(memory_servers))
                assert code == 0, "the install on 10 servers failed"
            with bed.machines(1) as ms:
                _, code, rss_one = bed.install(ms)
                assert code == 0
        finally:
            releases.stop()
    ratios = [t / s for t, s in pairs]
    every = ", ".join(f"{t:.1f}/{s:.1f} s" for t, s in pairs)
    return [
        Row(
            f"fleet: {servers} loopback servers at once vs one after another (wall time)",
            f"one after another {median([s for _, s in pairs]):.1f} s",
            f"{median(ratios):.2f}x median of {runs} (at once/one by one: {every})",
            "-",
            None,
        ),
        Row(
            f"fleet: peak memory of the app installing on {memory_servers} servers at once",
            f"one server {rss_one / 1024:.0f} MB",
            f"{rss_many / 1024:.0f} MB ({rss_many / rss_one:.2f}x)",
            "<= 300 MB",
            rss_many / 1024 <= 300,
        ),
    ]


if __name__ == "__main__":
    raise SystemExit(main_for(measure, __doc__, servers=3, runs=3, memory_servers=10))

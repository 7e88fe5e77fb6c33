"""Shared parts of the benchmarks: result rows, medians and a loopback sshd with a bench user."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.core.ssh import ConnectOptions, Credentials, KnownHosts, Session, Target, connect  # noqa: E402
from tests.support.sshd import SSHServer, TestUser, ensure_user, free_port, keygen, remove_user  # noqa: E402

BENCH_USER = "nkw-bench"


@dataclass(frozen=True)
class Row:
    """One line of the benchmark table."""

    what: str
    reference: str
    result: str
    target: str
    met: bool | None  # None: a figure with no target

    @property
    def verdict(self) -> str:
        """met / MISSED / -, for the table."""
        return "-" if self.met is None else ("met" if self.met else "MISSED")


def median(values: list[float]) -> float:
    """The median (of at least one value)."""
    return statistics.median(values)


def mb_s(size: int, seconds: float) -> float:
    """Throughput in MB/s (10^6 bytes)."""
    return size / seconds / 1e6


def need_root(script: str) -> None:
    """Benchmarks that start sshd or create users run as root; say so plainly otherwise."""
    if os.geteuid() != 0:
        raise SystemExit(f"{script} starts sshd and creates a local user: run it as root")


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A scratch folder on disk (not tmpfs), readable by the bench user."""
    work = Path(tempfile.mkdtemp(prefix="nkw-bench-", dir="/var/tmp"))
    os.chmod(work, 0o755)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class BenchServer:
    """A loopback sshd with one user who logs in with ``key``."""

    srv: SSHServer
    user: TestUser
    key: Path
    known_hosts: Path

    @property
    def target(self) -> Target:
        """Where the app connects."""
        return Target("127.0.0.1", self.srv.port, self.user.name, identity_files=(str(self.key),))

    def connect(self) -> Session:
        """An app session, host key checked against the bench's known_hosts."""
        kh = KnownHosts(self.known_hosts, self.known_hosts)
        return connect(self.target, Credentials(method="key"), kh, ConnectOptions())

    def ssh_command(self, remote: str) -> list[str]:
        """The same login with OpenSSH's ``ssh``."""
        return [
            "ssh", "-p", str(self.srv.port), "-i", str(self.key),
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", f"{self.user.name}@127.0.0.1", remote,
        ]  # fmt: skip


@contextlib.contextmanager
def bench_sshd(work: Path) -> Iterator[BenchServer]:
    """Start sshd on 127.0.0.1 with a fresh user; remove both afterwards."""
    key = keygen(work / "client")
    host = [keygen(work / "ssh_host_ed25519_key")]
    user = TestUser(BENCH_USER, "unused-Pass-1", work / "home", "none")
    ensure_user(user, [key])
    srv = SSHServer(free_port(), work, host)
    try:
        srv.start()
        pub = host[0].with_suffix(".pub").read_text().split()
        kh = work / "known_hosts"
        kh.write_text(f"[127.0.0.1]:{srv.port} {pub[0]} {pub[1]}\n")
        yield BenchServer(srv, user, key, kh)
    finally:
        srv.stop()
        remove_user(BENCH_USER)


def random_file(path: Path, size_mb: int) -> Path:
    """``size_mb`` MiB of incompressible bytes."""
    with path.open("wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(1 << 20))
    return path


def main_for(measure: Callable[..., list[Row]], doc: str | None, **defaults: int) -> int:
    """Command line of one benchmark: an integer option per keyword, then its rows printed."""
    ap = argparse.ArgumentParser(description=doc)
    for name, value in defaults.items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, default=value)
    for row in measure(**vars(ap.parse_args())):
        print(f"{row.what}: {row.result} (reference: {row.reference}; target {row.target})")
    return 0

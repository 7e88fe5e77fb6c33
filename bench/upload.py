"""Upload throughput: the app's transfer path beside OpenSSH's ``ssh host 'cat > f' < file``."""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.core.ssh import ConnectOptions, Credentials, KnownHosts, Target, connect  # noqa: E402
from tests.support.sshd import SSHServer, TestUser, ensure_user, free_port, keygen, remove_user  # noqa: E402

USER = "nkw-bench"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mb", type=int, default=400)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/upload.py starts sshd and creates a user: run it as root")
    work = Path(tempfile.mkdtemp(prefix="nkw-bench-", dir="/var/tmp"))
    os.chmod(work, 0o755)
    try:
        return run(work, args.size_mb, args.runs)
    finally:
        remove_user(USER)
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, size_mb: int, runs: int) -> int:
    key = keygen(work / "client")
    host = [keygen(work / "ssh_host_ed25519_key")]
    user = TestUser(USER, "unused-Pass-1", work / "home", "none")
    ensure_user(user, [key])
    srv = SSHServer(free_port(), work, host)
    srv.start()
    src = work / "payload.bin"
    with src.open("wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(1 << 20))
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    kh = work / "known_hosts"
    pub = host[0].with_suffix(".pub").read_text().split()
    kh.write_text(f"[127.0.0.1]:{srv.port} {pub[0]} {pub[1]}\n")
    dest = user.home / "dest.bin"
    target = Target("127.0.0.1", srv.port, USER, identity_files=(str(key),))
    ssh_cmd = [
        "ssh", "-p", str(srv.port), "-i", str(key), "-o", f"UserKnownHostsFile={kh}",
        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", f"{USER}@127.0.0.1",
        f"cat > {dest}",
    ]  # fmt: skip
    ours, theirs, sends = [], [], []
    try:
        for _ in range(runs):
            t0 = time.perf_counter()
            with src.open("rb") as f:
                subprocess.run(ssh_cmd, stdin=f, check=True)
            theirs.append(time.perf_counter() - t0)
            dest.unlink()
            t0 = time.perf_counter()
            creds = Credentials(method="key")
            with connect(target, creds, KnownHosts(kh, kh), ConnectOptions()) as s:
                t1 = time.perf_counter()
                s.upload(src, str(dest))
                sends.append(time.perf_counter() - t1)
                remote = s.run(f"sha256sum {dest}", timeout=120).stdout.split()[0]
            ours.append(time.perf_counter() - t0)
            assert want == remote, "checksum mismatch"
            dest.unlink()
    finally:
        srv.stop()
    mb = size_mb * 1.048576
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"upload of {size_mb} MiB to a loopback sshd, median of {runs} runs")
    print(f"  OpenSSH  ssh 'cat > f' < file : {mb / t:7.1f} MB/s ({t:.2f} s)")
    print(f"  app      upload + remote sha256: {mb / o:7.1f} MB/s ({o:.2f} s)")
    snd = statistics.median(sends)
    print(f"  app      upload alone          : {mb / snd:7.1f} MB/s ({snd:.2f} s)")
    print(f"  ratio app/OpenSSH throughput   : {t / o:.2f}x (upload alone {t / snd:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Transfer to a loopback sshd: the app's upload and sha256 check beside ``ssh 'cat > f'``."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time

from app.core.transfer import remote_sha256
from bench.common import Row, bench_sshd, main_for, mb_s, median, need_root, random_file, workdir


def measure(size_mb: int = 400, runs: int = 5) -> list[Row]:
    """Interleaved runs of OpenSSH and the app; medians."""
    need_root("bench/upload.py")
    with workdir() as work, bench_sshd(work) as b:
        src = random_file(work / "payload.bin", size_mb)
        want = hashlib.sha256(src.read_bytes()).hexdigest()
        dest = b.user.home / "dest.bin"
        ref, ours, send = [], [], []
        for _ in range(runs):
            os.sync()  # each run starts with no dirty pages left from the previous one
            t0 = time.perf_counter()
            with src.open("rb") as f:
                subprocess.run(b.ssh_command(f"cat > {dest}"), stdin=f, check=True)
            ref.append(time.perf_counter() - t0)
            dest.unlink()
            os.sync()
            t0 = time.perf_counter()
            with b.connect() as s:
                t1 = time.perf_counter()
                s.upload(src, str(dest))
                send.append(time.perf_counter() - t1)
                got = remote_sha256(s, str(dest), timeout=120)
            ours.append(time.perf_counter() - t0)
            if got != want:
                raise SystemExit(f"checksum mismatch: {got} != {want}")
            dest.unlink()
    size = size_mb << 20
    r, o, s_ = median(ref), median(ours), median(send)
    ratio = r / o
    return [
        Row(
            f"transfer {size_mb} MiB to a loopback sshd, sha256 check included",
            f"OpenSSH `ssh host 'cat > f'`: {mb_s(size, r):.0f} MB/s",
            f"{mb_s(size, o):.0f} MB/s = {ratio:.2f}x (sending alone {r / s_:.2f}x)",
            ">= 0.95x",
            ratio >= 0.95,
        )
    ]


if __name__ == "__main__":
    raise SystemExit(main_for(measure, __doc__, size_mb=400, runs=5))

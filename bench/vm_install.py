"""VM: the app's whole ``install`` beside the floor, the same steps by hand with OpenSSH."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, Row, main_for, median
from tests.vm.qemu import VM, testbed

TIMEOUTS = ["--down-timeout", "60", "--timeout", "120", "--connect-timeout", "20"]


def measure(runs: int = 3) -> list[Row]:
    """Fresh origin VM per run, alternating the floor script and the app's CLI."""
    bed = testbed()
    key, image = bed / "client_ed25519", bed / "installer-ok.tar.gz"
    floor, app = [], []
    with tempfile.TemporaryDirectory(prefix="nkw-bench-vm-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        for i in range(runs):
            floor.append(_timed(work, bed, ["sh", str(ROOT / "bench" / "vm_floor.sh"), "{port}",
                                            str(key), str(image)]))  # fmt: skip
            home = work / f"home{i}"
            app.append(_timed(work, bed, [
                sys.executable, "-m", "app", "--home", str(home), "install", "--yes",
                "--accept-new-host-key", "root@127.0.0.1:{port}", "-i", str(key),
                "--image", str(image), "--transfer", "upload", *TIMEOUTS,
            ]))  # fmt: skip
    f, a = median(floor), median(app)
    vm = _accel_name()
    return [
        Row(
            f"VM ({vm}): `install` to the verified installer",
            f"floor (ssh by hand, 0.2 s polls): {f:.1f} s",
            f"{a:.1f} s = {a / f:.2f}x the floor",
            "<= 1.1x",
            a / f <= 1.1,
        )
    ]


def _accel_name() -> str:
    from tests.vm import qemu

    return qemu._accel or "tcg"


def _timed(work: Path, bed: Path, cmd: list[str]) -> float:
    vm = VM(bed, work).start()
    try:
        argv = [a.replace("{port}", str(vm.port)) for a in cmd]
        t0 = time.perf_counter()
        p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
        took = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"{argv[:3]} failed ({p.returncode}):\n{p.stderr[-3000:]}")
        return took
    finally:
        vm.stop()


if __name__ == "__main__":
    raise SystemExit(main_for(measure, __doc__, runs=3))

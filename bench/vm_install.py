"""VM: the app's whole ``install`` beside the floor, the same steps by hand with OpenSSH."""

# A fresh origin VM per run, alternating the floor and the app. The guest's serial console is
# timestamped here, on the host, as its lines arrive: the installer kernel's first line marks the
# kexec, "nkw: installer ready" the moment its sshd listens. Between the two the VM boots, and
# under TCG that time varies by 2x; a tool's *own cost* is what lies outside it: the time before
# the kexec plus the time after the installer's sshd listens.

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import ROOT, Row, main_for, median
from tests.vm.qemu import VM, testbed

TIMEOUTS = ["--down-timeout", "60", "--timeout", "120", "--connect-timeout", "20"]
KEXEC_LINE = "Linux version"  # the installer kernel's first console line (the origin's is quiet)
SSHD_LINE = "nkw: installer ready"  # printed once the installer's sshd listens on port 22


@dataclass
class Run:
    """One timed run: wall time, and the guest's kexec and sshd-listening moments."""

    wall: float
    kexec: float  # seconds from the start to the installer kernel's first line
    sshd: float  # seconds from the start to the installer's sshd listening
    reachable: float | None = None  # the app: seconds from the start to "answers on port"
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def own(self) -> float:
        """The tool's own cost: before the kexec, plus after the installer listens."""
        return self.kexec + (self.wall - self.sshd)


class Serial:
    """Follows a console log file, stamping each line with the host's clock as it appears."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self) -> Serial:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(2)

    def _follow(self) -> None:
        offset, partial = 0, b""
        while not self._stop.wait(0.01):
            try:
                with self.path.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except OSError:
                continue
            if not chunk:
                continue
            offset += len(chunk)
            now = time.perf_counter()
            *done, partial = (partial + chunk).split(b"\n")
            self.lines += [(now, ln.decode(errors="replace")) for ln in done]

    def first(self, text: str, after: float) -> float | None:
        """When the first line holding ``text`` appeared after ``after``."""
        return next((t for t, ln in self.lines if t >= after and text in ln), None)


def measure(runs: int = 3) -> list[Row]:
    """Fresh origin VM per run, alternating the floor script and the app's CLI."""
    bed = testbed()
    key, image = bed / "client_ed25519", bed / "installer-ok.tar.gz"
    floor: list[Run] = []
    app: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="nkw-bench-vm-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        for i in range(runs):
            floor.append(_timed(work, bed, ["sh", str(ROOT / "bench" / "vm_floor.sh"), "{port}",
                                            str(key), str(image)]))  # fmt: skip
            home = work / f"home{i}"
            app.append(_timed(work, bed, [
                sys.executable, "-m", "app", "--home", str(home), "install", "--yes", "--json",
                "--accept-new-host-key", "root@127.0.0.1:{port}", "-i", str(key),
                "--image", str(image), "--transfer", "upload", *TIMEOUTS,
            ]))  # fmt: skip
    vm = _accel_name()
    fw, aw = median([r.wall for r in floor]), median([r.wall for r in app])
    fo, ao = median([r.own for r in floor]), median([r.own for r in app])
    reach = [r.reachable - r.sshd for r in app if r.reachable is not None]
    floor_reach = [r.wall - r.sshd for r in floor]  # its first login that sees the installer
    rows = [
        Row(
            f"VM ({vm}): `install` to the verified installer, wall time",
            f"floor (ssh by hand, 0.2 s polls): {fw:.1f} s median ({_every(floor, 'wall')})",
            f"{aw:.1f} s median ({_every(app, 'wall')}) = {aw / fw:.2f}x the floor",
            "<= 1.1x",
            aw / fw <= 1.1,
        ),
        Row(
            f"VM ({vm}): own cost (before the kexec + after the installer's sshd listens)",
            f"floor: {fo:.1f} s median ({_every(floor, 'own')})",
            f"{ao:.1f} s median ({_every(app, 'own')}) = {ao / fo:.2f}x the floor",
            "<= 1.1x",
            ao / fo <= 1.1,
        ),
        Row(
            f"VM ({vm}): the installer's sshd listening -> the app reports it reachable",
            "from the guest's console line; floor (OpenSSH's first login that sees the "
            f"installer): {median(floor_reach):.2f} s median "
            f"({', '.join(f'{x:.2f}' for x in floor_reach)})",
            f"{median(reach):.2f} s median ({', '.join(f'{x:.2f}' for x in reach)})"
            if reach
            else "not seen",
            "<= 1 s median",
            bool(reach) and median(reach) <= 1.0,
        ),
    ]
    for name in ("key", "transfer", "checksum", "unpack", "run", "down", "up", "verify"):
        took = [r.stages[name] for r in app if name in r.stages]
        if took:
            rows.append(Row(f"VM ({vm}): the app's `{name}` stage", "-",
                            f"{median(took):.1f} s median ({', '.join(f'{x:.1f}' for x in took)})",
                            "-", None))  # fmt: skip
    return rows


def _every(runs: list[Run], what: str) -> str:
    return "runs: " + ", ".join(f"{getattr(r, what):.1f}" for r in runs)


def _accel_name() -> str:
    from tests.vm import qemu

    return qemu._accel or "tcg"


def _timed(work: Path, bed: Path, cmd: list[str]) -> Run:
    vm = VM(bed, work).start()
    try:
        argv = [a.replace("{port}", str(vm.port)) for a in cmd]
        stamped: list[tuple[float, str]] = []
        with Serial(vm.serial) as serial:
            t0 = time.perf_counter()
            p = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)  # fmt: skip
            err: list[str] = []
            reader = threading.Thread(target=lambda: err.extend(p.stderr or []), daemon=True)
            reader.start()
            for line in p.stdout or []:
                stamped.append((time.perf_counter(), line))
            p.wait(600)
            took = time.perf_counter() - t0
            reader.join(5)
            time.sleep(0.05)  # the last console lines
        if p.returncode != 0:
            raise SystemExit(f"{argv[:3]} failed ({p.returncode}):\n{''.join(err)[-3000:]}")
        kexec, sshd = serial.first(KEXEC_LINE, t0), serial.first(SSHD_LINE, t0)
        if kexec is None or sshd is None:
            raise SystemExit(
                f"the console never showed the kexec or the installer:\n{vm.console()[-2000:]}"
            )
        run = Run(took, kexec - t0, sshd - t0)
        for t, line in stamped:
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            if event.get("stage") == "up" and "answers on port" in event.get("message", ""):
                run.reachable = t - t0
            if event.get("event") == "result":
                run.stages = dict(event.get("timings") or {})
        return run
    finally:
        vm.stop()


if __name__ == "__main__":
    raise SystemExit(main_for(measure, __doc__, runs=3))

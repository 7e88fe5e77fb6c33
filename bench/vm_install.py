"""VM: the app's whole ``install`` beside the floor, the same steps by hand with OpenSSH."""

# A fresh origin VM per run, alternating the floor and the app. The guest's serial console is
# timestamped here, on the host, as its lines arrive: the installer kernel's first line marks the
# kexec, "nkw: installer ready" the moment its sshd listens. Between the two the VM boots, and
# under TCG that time varies by 2x; a tool's *own cost* is what lies outside it: the time before
# the kexec plus the time after the installer's sshd listens.

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import ROOT, Row, median
from tests.vm.qemu import VM, testbed

TIMEOUTS = ["--down-timeout", "60", "--timeout", "120", "--connect-timeout", "20"]
KEXEC_LINE = "Linux version"  # the installer kernel's first console line (the origin's is quiet)
SSHD_LINE = "nkw: installer ready"  # printed once the installer's sshd listens on port 22
START = "start"  # the app's start, connection and host-key check, up to the probe
STEPS = (START, "probe", "key", "transfer", "checksum", "unpack", "run", "down", "up", "verify")
OWN = {START, "probe", "key", "transfer", "checksum", "unpack", "run", "verify"}
STEP_NAMES = {
    START: "the app's start, SSH connection and host-key check (to the probe)",
    "probe": "the app's probe (one round trip)",
}
# nixos-anywhere's kexec phase waits for the machine to go down with `timeout 10 ssh ... exit 0`
# every second; an installer that is up within those 10 s keeps answering, and it never ends.
ANYWHERE_DEADLINE = 120.0


@dataclass
class Run:
    """One timed run: wall time, and the guest's kexec and sshd-listening moments."""

    wall: float
    kexec: float  # seconds from the start to the installer kernel's first line
    sshd: float  # seconds from the start to the installer's sshd listening
    reachable: float | None = None  # the app: seconds from the start to "answers on port"
    stages: dict[str, float] = field(default_factory=dict)
    finished: bool = True  # False: stopped at its deadline (only a reference may be)
    said: str = ""  # an unfinished run's last line on stderr

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


def measure(runs: int = 3, nixos_anywhere: str = "") -> list[Row]:
    """For a 2-CPU and a 1-CPU server, a fresh origin VM per run, alternating the floor script,
    the app's CLI and (on 2 CPUs, given a copy of its script, ``NKW_BENCH_NIXOS_ANYWHERE`` or
    ``--nixos-anywhere``) nixos-anywhere."""
    anywhere_script = nixos_anywhere or os.environ.get("NKW_BENCH_NIXOS_ANYWHERE", "")
    rows: list[Row] = []
    for cpus in (2, 1):
        rows += _measure(runs, cpus, anywhere_script if cpus == 2 else "")
    return rows


def _measure(runs: int, cpus: int, anywhere_script: str) -> list[Row]:
    bed = testbed()
    key, image = bed / "client_ed25519", bed / "installer-ok.tar.gz"
    floor: list[Run] = []
    app: list[Run] = []
    anywhere: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="nkw-bench-vm-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        for i in range(runs):
            floor.append(_timed(work, bed, cpus, ["sh", str(ROOT / "bench" / "vm_floor.sh"),
                                                  "{port}", str(key), str(image)]))  # fmt: skip
            _say(f"{cpus} CPU(s), round {i + 1} floor", floor[-1])
            home = work / f"home{i}"
            app.append(_timed(work, bed, cpus, [
                sys.executable, "-m", "app", "--home", str(home), "install", "--yes", "--json",
                "--accept-new-host-key", "root@127.0.0.1:{port}", "-i", str(key),
                "--image", str(image), "--transfer", "upload", *TIMEOUTS,
            ]))  # fmt: skip
            _say(f"{cpus} CPU(s), round {i + 1} app", app[-1])
            if anywhere_script:
                cmd = _anywhere_cmd(anywhere_script, work, key, image)
                anywhere.append(_timed(work, bed, cpus, cmd, prepare=_give_bash,
                                       deadline=ANYWHERE_DEADLINE))  # fmt: skip
                _say(f"{cpus} CPU(s), round {i + 1} nixos-anywhere", anywhere[-1])
    vm = f"{_accel_name()}, {cpus} vCPU{'s' if cpus > 1 else ''}"
    own_target = 1.0 if cpus > 1 else 1.1  # streaming pays where a second CPU unpacks
    fw, aw = median([r.wall for r in floor]), median([r.wall for r in app])
    fo, ao = median([r.own for r in floor]), median([r.own for r in app])
    reach = [r.reachable - r.sshd for r in app if r.reachable is not None]
    floor_reach = [r.wall - r.sshd for r in floor]  # its first login that sees the installer
    rows = [
        Row(
            f"VM ({vm}): `install` to the verified installer, wall time",
            "floor (ssh by hand, streamed into tar, 0.2 s polls): "
            f"{fw:.1f} s median ({_every(floor, 'wall')})",
            f"{aw:.1f} s median ({_every(app, 'wall')}) = {aw / fw:.2f}x the floor",
            "<= 1.1x",
            aw / fw <= 1.1,
        ),
        Row(
            f"VM ({vm}): own cost (before the kexec + after the installer's sshd listens)",
            f"floor: {fo:.1f} s median ({_every(floor, 'own')})",
            f"{ao:.1f} s median ({_every(app, 'own')}) = {ao / fo:.2f}x the floor",
            f"<= {own_target:.1f}x",
            ao / fo <= own_target,
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
    stuck = [r for r in anywhere if not r.finished]
    if stuck:
        rows.append(Row(
            f"VM ({vm}): nixos-anywhere's kexec phase",
            f"nixos-anywhere `--phases kexec`: did not finish within {ANYWHERE_DEADLINE:.0f} s "
            f"in {len(stuck)} of {len(anywhere)} runs (installer up {_every(stuck, 'sshd')} s "
            f"in; its last line: {stuck[-1].said[:120]!r})",
            "-", "-", None,
        ))  # fmt: skip
    anywhere = [r for r in anywhere if r.finished]
    if anywhere:
        nw, no = median([r.wall for r in anywhere]), median([r.own for r in anywhere])
        rows += [
            Row(
                f"VM ({vm}): `install` beside nixos-anywhere's kexec phase, wall time",
                f"nixos-anywhere `--phases kexec`: {nw:.1f} s median ({_every(anywhere, 'wall')})",
                f"{aw:.1f} s = {aw / nw:.2f}x nixos-anywhere",
                "<= 0.85x",
                aw / nw <= 0.85,
            ),
            Row(
                f"VM ({vm}): own cost beside nixos-anywhere's",
                f"nixos-anywhere: {no:.1f} s median ({_every(anywhere, 'own')})",
                f"{ao:.1f} s = {ao / no:.2f}x nixos-anywhere",
                "<= 0.8x",
                ao / no <= 0.8,
            ),
        ]
    for name in STEPS:
        took = [r.stages[name] for r in app if name in r.stages]
        if not took:
            continue
        result = f"{median(took):.2f} s median ({', '.join(f'{x:.2f}' for x in took)})"
        if name in OWN:  # wholly inside the own cost: its share of it
            result += f" = {median(took) / ao:.1%} of the app's own cost"
        what = STEP_NAMES.get(name, f"the app's `{name}` stage")
        rows.append(Row(f"VM ({vm}): {what}", "-", result, "-", None))
    return rows


def _anywhere_cmd(script: str, work: Path, key: Path, image: Path) -> list[str]:
    """nixos-anywhere's kexec phase with the same tarball and key: no flake, nothing built
    (two empty files stand in for the store paths the later phases would use)."""
    path = Path(script)
    if path.is_dir():
        path = path / "src" / "nixos-anywhere.sh"
    stub = work / "no-store-path"
    stub.touch()
    return [
        "bash", str(path), "--phases", "kexec", "--build-on", "remote", "--store-paths",
        str(stub), str(stub), "--kexec", str(image), "-i", str(key), "-p", "{port}",
        "--post-kexec-ssh-port", "{port}", "--ssh-option", "StrictHostKeyChecking=no",
        "--ssh-option", "UserKnownHostsFile=/dev/null", "root@127.0.0.1",
    ]  # fmt: skip


def _say(label: str, r: Run) -> None:
    """Each run as it ends (a bench stopped halfway still leaves what it measured)."""
    more = f", reachable {r.reachable - r.sshd:.2f} s after sshd" if r.reachable else ""
    end = "" if r.finished else f", STOPPED at its deadline ({r.said[:80]!r})"
    line = f"{label}: wall {r.wall:.1f} s, kexec at {r.kexec:.1f}, installer sshd at "
    print(f"{line}{r.sshd:.1f}, own cost {r.own:.1f} s{more}{end}", file=sys.stderr, flush=True)


def _every(runs: list[Run], what: str) -> str:
    return "runs: " + ", ".join(f"{getattr(r, what):.1f}" for r in runs)


def _accel_name() -> str:
    from tests.vm import qemu

    return qemu._accel or "tcg"


def _give_bash(vm: VM, key: Path) -> None:
    """nixos-anywhere runs bash on the server; the busybox origin has none: copy in Debian's
    static one before the clock starts (a real server has bash)."""
    with Path("/bin/bash-static").open("rb") as f:
        subprocess.run(
            ["ssh", "-p", str(vm.port), "-i", str(key), "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "root@127.0.0.1",
             "cat > /bin/bash && chmod 755 /bin/bash"],
            stdin=f, check=True, timeout=120, capture_output=True,
        )  # fmt: skip


def _timed(
    work: Path,
    bed: Path,
    cpus: int,
    cmd: list[str],
    prepare: Callable[[VM, Path], None] | None = None,
    deadline: float | None = None,
) -> Run:
    """One run on a fresh VM. Without a ``deadline`` the tool must finish (within 600 s);
    with one (a reference) a run still going then is stopped and kept as unfinished."""
    vm = VM(bed, work, cpus=cpus).start()
    try:
        if prepare is not None:
            prepare(vm, bed / "client_ed25519")
        argv = [a.replace("{port}", str(vm.port)) for a in cmd]
        stamped: list[tuple[float, str]] = []
        with Serial(vm.serial) as serial:
            t0 = time.perf_counter()
            p = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, start_new_session=True)  # fmt: skip
            err: list[str] = []
            readers = [
                threading.Thread(target=lambda: err.extend(p.stderr or []), daemon=True),
                threading.Thread(
                    target=lambda: stamped.extend(
                        (time.perf_counter(), ln) for ln in p.stdout or []
                    ),
                    daemon=True,
                ),
            ]
            for r in readers:
                r.start()
            try:
                p.wait(deadline or 600)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
                if deadline is None:
                    raise SystemExit(f"{argv[:3]} did not finish in 600 s") from None
            took = time.perf_counter() - t0
            for r in readers:
                r.join(5)
            time.sleep(0.05)  # the last console lines
        kexec, sshd = serial.first(KEXEC_LINE, t0), serial.first(SSHD_LINE, t0)
        if p.returncode == -signal.SIGKILL and deadline is not None:
            last = next((ln.strip() for ln in reversed(err) if ln.strip()), "")
            return Run(took, (kexec or t0) - t0, (sshd or t0) - t0, finished=False, said=last)
        if p.returncode != 0:
            raise SystemExit(f"{argv[:3]} failed ({p.returncode}):\n{''.join(err)[-3000:]}")
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
            if event.get("event") == "stage" and event.get("stage") == "probe":
                if event.get("state") == "start":  # everything before: Python, connect, key
                    run.stages[START] = t - t0
                elif event.get("seconds") is not None:
                    run.stages["probe"] = float(event["seconds"])
            if event.get("event") == "result":
                run.stages.update(event.get("timings") or {})
        return run
    finally:
        vm.stop()


def _main() -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    copy = "a copy of nixos-anywhere (its checkout, or src/nixos-anywhere.sh)"
    ap.add_argument("--nixos-anywhere", default="", metavar="PATH", help=copy)
    args = ap.parse_args()
    for row in measure(args.runs, args.nixos_anywhere):
        print(f"{row.what}: {row.result} (reference: {row.reference}; target {row.target})")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())

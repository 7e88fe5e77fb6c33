"""Start and stop the origin server VM (QEMU, user networking restricted to loopback forwards)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.sshd import free_port

HERE = Path(__file__).resolve().parent
GUEST_HTTP = "10.0.2.100:8080"  # where the guest reaches the host's releases server
_accel: str | None = None
# Under TCG: the default qemu64 model lacks AES-NI and PCLMUL, which every real server has;
# without them the guest decrypts SSH in slow table-driven C.
CPU = "qemu64,+ssse3,+sse4.1,+sse4.2,+aes,+pclmulqdq,+popcnt"
STAGE_TIMINGS: list[str] = []  # one line per install, shown in pytest's terminal summary


def testbed() -> Path:
    """Build (or find in the cache) the test bed; returns its folder."""
    out = subprocess.run(
        ["bash", str(HERE / "build.sh")], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def debian_origin(release: str, arch: str = "amd64") -> Path:
    """Build (or find in the cache) a debootstrapped Debian origin; returns its folder."""
    out = subprocess.run(
        ["bash", str(HERE / "debian.sh"), release, arch], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(
            f"building the Debian {release} {arch} origin failed:\n{out.stderr[-3000:]}"
        )
    return Path(out.stdout.strip().splitlines()[-1])


@dataclass
class VM:
    """One origin server; its serial console goes to a log file."""

    bed: Path
    workdir: Path
    memory_mb: int = 2048
    append: str = ""
    guest_ip: str = ""  # forward to this guest address (a static one); default: the DHCP lease
    http_port: int | None = None  # the host's releases server, reachable at GUEST_HTTP
    netboot_port: int | None = None  # boot by iPXE from the host's netboot server instead
    ready: str = "nkw: origin ready"  # the console line that says the VM is up
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    accel: str = "tcg"
    # A real distribution instead of the busybox origin: its folder from debian.sh (its own
    # kernel and initramfs, the root file system on a virtio disk, never written: snapshot=on).
    distro: Path | None = None
    arch: str = "x86_64"  # or aarch64: QEMU's arm virt machine (always TCG here)
    cpus: int = 1  # virtual CPUs (the benchmark also measures a 2-CPU server)
    # More virtio disks, written for real: (raw image file, serial); the first is vdb after a
    # distro's own disk (vda), else vda.
    disks: tuple[tuple[Path, str], ...] = ()
    resets: list[float] = field(default_factory=list)  # when each reboot power-cycled it
    _cycling: bool = False

    def power_cycle_on_reset(self) -> None:
        """From now on a reboot starts the VM again, as a power cycle goes through the
        firmware to the disk: QEMU runs with -no-reboot (a reset would boot the kernel given
        by -kernel, the installer's after a kexec), so its exit is the reset, and the VM
        starts again with the origin's own kernel, initramfs and disk (a fresh snapshot: the
        disk as the old system left it)."""
        self._cycling = True
        threading.Thread(target=self._cycle, daemon=True).start()

    def _cycle(self) -> None:
        while self._cycling:
            proc = self.proc
            if proc is not None and proc.poll() is not None and self._cycling:
                self.resets.append(time.monotonic())
                self.serial.rename(self.workdir / f"serial-{self.port}-{len(self.resets)}.log")
                self.proc = subprocess.Popen(
                    self._cmd(self.accel), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            time.sleep(0.2)

    @property
    def serial(self) -> Path:
        """The console log."""
        return self.workdir / f"serial-{self.port}.log"

    def _cmd(self, accel: str) -> list[str]:
        fwd = f"hostfwd=tcp:127.0.0.1:{self.port}-{self.guest_ip}:22"
        if self.http_port:
            # One relay per connection (a `tcp:` forward is one connection for the VM's life).
            fwd += f",guestfwd=tcp:{GUEST_HTTP}-cmd:busybox nc 127.0.0.1 {self.http_port}"
        boot = [
            "-kernel", str(self.bed / "vmlinuz"), "-initrd", str(self.bed / "origin.img"),
            "-append", f"console=ttyS0 panic=-1 quiet {self.append}".strip(),
        ]  # fmt: skip
        console = "ttyAMA0" if self.arch == "aarch64" else "ttyS0"
        if self.distro is not None:
            boot = [
                "-kernel", str(self.distro / "vmlinuz"), "-initrd",
                str(self.distro / "initrd.img"), "-append",
                f"root=/dev/vda rw console={console} panic=-1 {self.append}".strip(),
                "-drive", f"file={self.distro / 'disk.img'},format=raw,if=virtio,snapshot=on",
                # The users' keys, as a cloud's metadata brings them (debian.sh's nkw-keys).
                "-fw_cfg", f"name=opt/nkw/authorized_keys,file={self.bed / 'client_ed25519.pub'}",
            ]  # fmt: skip
        for n, (image, serial) in enumerate(self.disks):
            boot += ["-drive", f"file={image},format=raw,if=none,id=extra{n}",
                     # Away from slot 3, where the network card is.
                     "-device", f"virtio-blk-pci,drive=extra{n},serial={serial},addr={8 + n:#x}"]  # fmt: skip
        if self.netboot_port:
            # iPXE opens a new connection per file: a `cmd:` forward runs one relay per
            # connection (a `tcp:` forward is a single connection for the VM's lifetime).
            relay = f"busybox nc 127.0.0.1 {self.netboot_port}"
            fwd += (
                f",guestfwd=tcp:{GUEST_HTTP}-cmd:{relay},bootfile=http://{GUEST_HTTP}/netboot.ipxe"
            )
            boot = ["-boot", "n"]
        machine = ["qemu-system-x86_64", "-accel", accel, "-cpu", CPU if accel == "tcg" else "host"]
        if self.arch == "aarch64":
            # pauth-impdef: the same pointer authentication, with a hash TCG computes fast.
            machine = ["qemu-system-aarch64", "-M", "virt", "-accel", "tcg",
                       "-cpu", "max,pauth-impdef=on"]  # fmt: skip
        return [
            *machine, "-m", str(self.memory_mb), "-smp", str(self.cpus),
            "-nographic", "-no-reboot", "-monitor", "none", "-serial", f"file:{self.serial}",
            *boot, "-netdev", f"user,id=n0,restrict=on,{fwd}",
            # In slot 3, as on most clouds: the interface is ens3 under systemd's naming.
            "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,addr=0x3",
        ]  # fmt: skip

    def start(self, deadline: float = 90.0) -> VM:
        """Boot; KVM when it really runs guests here, else software emulation (TCG)."""
        global _accel
        if self.arch != "x86_64":
            self.accel = "tcg"
            if not self._boot("tcg", deadline):
                raise RuntimeError(
                    f"the VM did not boot within {deadline:.0f} s:\n{self.console()[-3000:]}"
                )
            return self
        if _accel is None:
            _accel = (
                "kvm"
                if os.access("/dev/kvm", os.R_OK | os.W_OK) and self._boot("kvm", 20)
                else "tcg"
            )
            if _accel == "tcg":
                self._boot("tcg", deadline)
            self.accel = _accel
            return self
        self.accel = _accel
        if not self._boot(_accel, deadline):
            raise RuntimeError(
                f"the VM did not boot within {deadline:.0f} s:\n{self.console()[-3000:]}"
            )
        return self

    def _boot(self, accel: str, deadline: float) -> bool:
        self.stop()
        self.serial.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            self._cmd(accel), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        end = time.monotonic() + deadline
        next_banner = 0.0
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return False
            console = self.console()
            if self.ready in console:
                return True
            # A getty starting on the console hangs up whoever writes to it (agetty's vhangup),
            # which can swallow the ready line: once the login prompt is up, an SSH banner on
            # the forwarded port says the same.
            if "login:" in console[-200:] and time.monotonic() >= next_banner:
                next_banner = time.monotonic() + 2.0
                if self._ssh_banner():
                    return True
            time.sleep(0.1)
        self.stop()
        return False

    def _ssh_banner(self) -> bool:
        """Whether the guest's sshd answers on the forwarded port with its banner."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=3) as s:
                s.settimeout(3)
                return s.recv(8).startswith(b"SSH-")
        except OSError:
            return False

    def console(self) -> str:
        """Everything the VM printed on its serial console (each boot before a power cycle
        first)."""
        logs = [
            self.workdir / f"serial-{self.port}-{n}.log" for n in range(1, len(self.resets) + 1)
        ]
        text = ""
        for log in [*logs, self.serial]:
            with contextlib.suppress(OSError):
                text += log.read_text(errors="replace")
        return text

    def stop(self) -> None:
        """Kill QEMU by pid and wait for it."""
        self._cycling = False
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

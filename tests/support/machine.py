"""A loopback test machine: sshd in its own mount and UTS namespace, rebooted by a simulated kexec."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.cpio import read_initrd
from tests.support.sshd import sshd_config

# Builds the machine's root from bind mounts (so /.dockerenv and the real /root are not there),
# overlays the machine's own files, then runs sshd chrooted. Everything vanishes with the
# namespace when the machine's last process dies.
BOOT = r"""
set -e
R=$1; M=$2
mount --make-rprivate /
mount -t tmpfs tmpfs "$R"
for d in usr etc proc sys dev run tmp var root; do mkdir -p "$R/$d"; done
ln -s usr/bin "$R/bin"; ln -s usr/lib "$R/lib"; ln -s usr/lib64 "$R/lib64"; ln -s usr/sbin "$R/sbin"
mount --rbind /usr "$R/usr"
mount --bind /etc "$R/etc"
mount --bind "$M/os-release" "$R/usr/lib/os-release"
mount --bind "$M/etc-ssh" "$R/etc/ssh"
mount --rbind /proc "$R/proc"
if [ -f "$M/boot_id" ]; then mount --bind "$M/boot_id" "$R/proc/sys/kernel/random/boot_id"; fi
mount --rbind /sys "$R/sys"
mount --rbind /dev "$R/dev"
mount --bind "$M/run" "$R/run"
mount --bind /tmp "$R/tmp"
mount --bind /var "$R/var"
mount --bind "$M/root" "$R/root"
hostname "$(cat "$M/hostname")"
exec chroot "$R" /usr/sbin/sshd -D -e -f /etc/ssh/sshd_config
"""

DEBIAN = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n'
INSTALLER = (
    'ANSI_COLOR="1;34"\nBUILD_ID="26.05.20261120.abcdef0"\nID=nixos\nNAME=NixOS\n'
    'PRETTY_NAME="NixOS 26.05 (Yarara)"\nVARIANT_ID=installer\nVERSION_ID="26.05"\n'
)


def _mnt_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


@dataclass
class Machine:
    """One simulated server on 127.0.0.1: the old system, then (after kexec) the installer."""

    workdir: Path
    port: int
    host_keys: list[Path]  # private key files; their .pub beside them
    root_keys: list[Path]  # public keys authorized for root on the old system
    installer_port: int | None = None  # default: the same port
    installer_mode: str = "ok"  # ok | silent (sshd never starts) | other-key
    boot_delay: float = 1.0
    # How the old system ends at kexec -e: "kill" (every socket closes at once), or "freeze"
    # (as a real kexec looks from outside: open connections and the port stay, nothing answers
    # until the new system boots).
    power_off_mode: str = "kill"
    state: str = "off"  # off | original | down | installer
    carried: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    loaded: list[str] = field(default_factory=list)
    kexec_files: dict[str, bytes] = field(default_factory=dict)
    events: list[tuple[float, str]] = field(default_factory=list)
    _proc: subprocess.Popen[bytes] | None = None
    _watch: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _down: threading.Event = field(
        default_factory=threading.Event
    )  # set once a kexec has powered off

    # -- layout -------------------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        d = self.workdir / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def signal_dir(self) -> Path:
        """The machine's /run/nkw-machine, where the stub kexec leaves its requests."""
        return self.workdir / "run" / "nkw-machine"

    def _write_sshd_config(self, etc: Path, port: int, keys: list[str]) -> None:
        paths = [f"/etc/ssh/{k}" for k in keys]
        (etc / "sshd_config").write_text(sshd_config(port, paths, "/run/sshd.pid"))

    def _prepare(self, os_release: str, hostname: str, boot_id: str | None) -> None:
        for name in ("run", "root"):
            shutil.rmtree(self.workdir / name, ignore_errors=True)
        self._dir("run/sshd").chmod(0o755)
        self.signal_dir.mkdir(parents=True, exist_ok=True)
        root = self._dir("root")
        root.chmod(0o700)
        (self.workdir / "os-release").write_text(os_release)
        (self.workdir / "hostname").write_text(hostname + "\n")
        boot = self.workdir / "boot_id"
        if boot_id:
            boot.write_text(boot_id + "\n")
        else:
            boot.unlink(missing_ok=True)

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> Machine:
        """Boot the old system: Debian, its own host keys, root's authorized keys."""
        self._prepare(DEBIAN, "web-1", None)
        etc = self.workdir / "etc-ssh"
        shutil.rmtree(etc, ignore_errors=True)
        etc.mkdir()
        for k in self.host_keys:
            shutil.copy2(k, etc / k.name)
            shutil.copy2(k.with_suffix(".pub"), etc / (k.name + ".pub"))
        self._write_sshd_config(etc, self.port, [k.name for k in self.host_keys])
        ssh = self._dir("root/.ssh")
        ssh.chmod(0o700)
        (ssh / "authorized_keys").write_text("".join(p.read_text() for p in self.root_keys))
        self._boot()
        self.state = "original"
        self._stop.clear()
        self._watch = threading.Thread(target=self._watch_kexec, daemon=True, name="machine")
        self._watch.start()
        return self

    def _boot(self, port: int | None = None) -> None:
        rootfs = self._dir("rootfs")
        args = ["unshare", "--mount", "--uts", "--propagation", "private"]
        with (self.workdir / "sshd.log").open("ab") as log:
            self._proc = subprocess.Popen(
                [*args, "sh", "-c", BOOT, "sh", str(rootfs), str(self.workdir)], stderr=log
            )
        self._wait_banner(port or self.port)

    def _wait_banner(self, port: int, deadline: float = 10.0) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(
                    "the machine's sshd exited: " + (self.workdir / "sshd.log").read_text()[-2000:]
                )
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    if s.recv(8).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.01)  # fine-grained: the reachability benchmark times from here
        raise RuntimeError(f"the machine did not answer on port {port}")

    def processes(self) -> list[int]:
        """Every process living in the machine's mount namespace."""
        if self._proc is None:
            return []
        ns = _mnt_ns(self._proc.pid)
        if ns is None:
            return []
        return [int(p) for p in os.listdir("/proc") if p.isdigit() and _mnt_ns(int(p)) == ns]

    def power_off(self) -> None:
        """Kill everything in the machine at once, as kexec -e or a power cut does."""
        for _ in range(3):
            pids = self.processes()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        if self._proc is not None:
            self._proc.wait(5)
            self._proc = None

    def stop(self) -> None:
        """Stop the harness and the machine."""
        self._stop.set()
        if self._watch is not None:
            self._watch.join(5)
        self.power_off()
        self.state = "off"

    # -- the simulated kexec ------------------------------------------------------------

    def _watch_kexec(self) -> None:
        trigger = self.signal_dir / "exec"
        while not self._stop.wait(0.05):
            if trigger.exists():
                self._kexec()
                return

    def _host_path(self, inner: str) -> Path:
        if inner == "/root" or inner.startswith("/root/"):
            return self.workdir / "root" / inner[len("/root/") :]
        return Path(inner)

    def _kexec(self) -> None:
        loaded = (self.signal_dir / "loaded").read_text().split("\n")
        initrd = next(a.split("=", 1)[1] for a in loaded if a.startswith("--initrd="))
        files = read_initrd(self._host_path(initrd).read_bytes())
        self.loaded = loaded  # kexec --load's arguments, one per line
        folder = self._host_path(initrd).parent  # the image's kexec/ folder, as the kexec saw it
        self.kexec_files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        self.events.append((time.monotonic(), "kexec"))
        self.carried = files
        if self.power_off_mode == "freeze":
            self.freeze()
        else:
            self.power_off()
        self.state = "down"
        self._down.set()
        if self._stop.wait(self.boot_delay) or self.installer_mode == "silent":
            return
        self.power_off()  # a frozen old system's sockets go only now, as the new kernel boots
        self.boot_installer(files)

    def freeze(self) -> None:
        """Stop every process of the machine: its connections and port stay open, silent."""
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def boot_installer(self, files: dict[str, tuple[int, bytes]] | None = None) -> None:
        """Start the installer from what `run` carried (a silent machine's late boot, too)."""
        if files is None:
            # A late boot from a test: the kexec's power-off must be over, or it would kill
            # the installer's sshd as it starts.
            if not self._down.wait(10):
                raise RuntimeError("the machine never went down, so it cannot boot the installer")
            files = self.carried
        port = self.installer_port or self.port
        self._prepare(INSTALLER, "nixos-installer", str(uuid.uuid4()))
        etc = self.workdir / "etc-ssh"
        shutil.rmtree(etc, ignore_errors=True)
        etc.mkdir()
        keys = []
        for name, (mode, data) in files.items():
            if name.startswith("ssh/ssh_host_"):
                target = etc / name.removeprefix("ssh/")
                target.write_bytes(data)
                target.chmod(mode or 0o600)
                if name.endswith("_key") and ("ed25519" in name or "rsa" in name):
                    keys.append(target.name)  # the installer serves only these two (upstream)
        if self.installer_mode == "other-key" or not keys:
            subprocess.run(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-f",
                    str(etc / "ssh_host_ed25519_key"),
                ],
                check=True,
            )
            keys = ["ssh_host_ed25519_key"]
        self._write_sshd_config(etc, port, sorted(keys))
        ssh = self._dir("root/.ssh")
        ssh.chmod(0o700)
        (ssh / "authorized_keys").write_bytes(files.get("ssh/authorized_keys", (0, b""))[1])
        self._boot(port)
        self.state = "installer"
        self.events.append((time.monotonic(), "installer"))

"""A real OpenSSH sshd on 127.0.0.1 with its own host keys, config and test users."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SUDOERS = Path("/etc/sudoers.d/nkw-test")


@contextlib.contextmanager
def sudoers_line(line: str) -> Iterator[None]:
    """The fixture's sudoers file with ``line`` added (say ``Defaults:nkw-nopw requiretty``),
    restored afterwards."""
    before = SUDOERS.read_text()
    SUDOERS.write_text(before + line + "\n")
    try:
        yield
    finally:
        SUDOERS.write_text(before)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sshd_config(port: int, host_keys: list[str], pid_file: str, extra: str = "") -> str:
    """An sshd_config for a test server on 127.0.0.1 (keys by path; password login allowed).

    sshd takes the first value of each keyword, so a keyword in ``extra`` replaces the default
    line here (``MaxSessions 1`` is one)."""
    lines = [
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        *[f"HostKey {k}" for k in host_keys],
        f"PidFile {pid_file}",
        "AuthorizedKeysFile .ssh/authorized_keys",
        "PasswordAuthentication yes",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "UsePAM no",
        "StrictModes no",
        "MaxStartups 100:30:200",
        "MaxSessions 100",
        "MaxAuthTries 20",
        "Subsystem sftp internal-sftp",
    ]
    given = {ln.split()[0].lower() for ln in extra.splitlines() if ln.strip()}
    kept = [ln for ln in lines if ln.split()[0].lower() not in given]
    return "\n".join([*kept, extra]) + "\n"


def keygen(path: Path, kind: str = "ed25519", passphrase: str = "") -> Path:
    """Generate an OpenSSH key pair at ``path`` (and ``path.pub``)."""
    args = [
        "ssh-keygen",
        "-q",
        "-t",
        kind,
        "-N",
        passphrase,
        "-C",
        f"test-{path.name}",
        "-f",
        str(path),
    ]
    if kind == "rsa":
        args[4:4] = ["-b", "2048"]
    subprocess.run(args, check=True)
    return path


def fingerprint(pub: Path) -> str:
    """``SHA256:...`` as ssh-keygen prints it."""
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(pub)], check=True, capture_output=True, text=True
    )
    return out.stdout.split()[1]


@dataclass
class TestUser:
    """A local account the fixture creates, with a known password and key."""

    name: str
    password: str
    home: Path
    sudo: str  # "nopasswd", "password" or "none"


@dataclass
class SSHServer:
    """One running sshd; ``stop()`` kills it by pid."""

    port: int
    workdir: Path
    host_keys: list[Path]
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=Path)

    @property
    def host_key_pub(self) -> Path:
        """The ed25519 host public key."""
        return next(k for k in self.host_keys if "ed25519" in k.name).with_suffix(".pub")

    def start(self, extra_config: str = "") -> None:
        """Write the config and start sshd, waiting (10 s deadline) for its banner."""
        cfg = self.workdir / "sshd_config"
        pid = str(self.workdir / "sshd.pid")
        keys = [str(k) for k in self.host_keys]
        cfg.write_text(sshd_config(self.port, keys, pid, f"LogLevel VERBOSE\n{extra_config}"))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.log = self.workdir / f"sshd-{self.port}.log"
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg), "-E", str(self.log)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"sshd exited: {self.log.read_text() if self.log.exists() else ''}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(8).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("sshd did not answer within 10 s")

    def stop(self) -> None:
        """Stop sshd and wait for it (5 s deadline)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def ensure_user(user: TestUser, authorized: list[Path]) -> None:
    """Create (or refresh) a local account with a password, a home and authorized keys."""
    exists = subprocess.run(["id", user.name], capture_output=True).returncode == 0
    if exists:
        kill_processes(user.name)
        subprocess.run(["usermod", "-d", str(user.home), user.name], check=True)
    else:
        subprocess.run(
            ["useradd", "-M", "-d", str(user.home), "-s", "/bin/sh", user.name], check=True
        )
    subprocess.run(["chpasswd"], input=f"{user.name}:{user.password}\n".encode(), check=True)
    ssh_dir = user.home / ".ssh"
    ssh_dir.mkdir(parents=True, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(
        "".join(p.with_suffix(".pub").read_text() for p in authorized)
    )
    subprocess.run(["chown", "-R", f"{user.name}:{user.name}", str(user.home)], check=True)
    os.chmod(user.home, 0o755)
    os.chmod(ssh_dir, 0o700)


def kill_processes(name: str) -> None:
    """End what a test left running as ``name`` (a remote command outlives its channel)."""
    subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if subprocess.run(["pgrep", "-u", name], capture_output=True).returncode != 0:
            return
        time.sleep(0.05)


def remove_user(name: str) -> None:
    """Delete a test account (its home is removed with the fixture's folder)."""
    kill_processes(name)
    subprocess.run(["userdel", name], capture_output=True)


@dataclass
class SSHEnv:
    """The running sshd, its users and the client keys that log in."""

    server: SSHServer
    key: Path  # unencrypted ed25519, authorized for every user
    enc_key: Path  # passphrase-protected ed25519, authorized for every user
    stranger_key: Path  # authorized nowhere
    nopw: TestUser  # sudo without password
    pw: TestUser  # sudo with password
    plain: TestUser  # no sudo at all

    @property
    def port(self) -> int:
        return self.server.port

"""After the kexec: the installer's ssh command, a terminal, nixos-anywhere, the hardware report."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from app.core.errors import ConfigError, RemoteCommandError
from app.core.keys import slug
from app.core.profiles import Profile
from app.core.result import InstallerInfo
from app.core.settings import Settings
from app.core.ssh import (
    ConnectOptions,
    Credentials,
    KnownHosts,
    Session,
    Target,
    connect,
    jump_spec,
    load_ssh_config,
    parse_jump,
)


def installer_ssh_command(info: InstallerInfo, jump: Target | None, known_hosts: Path) -> list[str]:
    """The OpenSSH command for the installer, checking its key against the app's known_hosts."""
    cmd = Target(info.host, info.port, "root", jump=jump).ssh_command(info.identity_file)
    # OpenSSH splits this option's value at spaces; a path with one is double-quoted.
    files = " ".join(_ssh_quote(str(p)) for p in (known_hosts, Path.home() / ".ssh/known_hosts"))
    return [cmd[0], "-o", f"UserKnownHostsFile={files}", *cmd[1:]]


def ssh_config_snippet(installers: Sequence[tuple[str, InstallerInfo, Target | None]],
                       known_hosts: Path) -> str:  # fmt: skip
    """An ``~/.ssh/config`` block with a ``Host NAME-installer`` entry per installer, checking
    each one's key against the app's known_hosts as :func:`installer_ssh_command` does."""
    files = " ".join(_ssh_quote(str(p)) for p in (known_hosts, Path.home() / ".ssh/known_hosts"))
    blocks = []
    for name, info, jump in installers:
        lines = [f"Host {slug(name)}-installer", f"    HostName {info.host}",
                 f"    Port {info.port}", "    User root"]  # fmt: skip
        if info.identity_file:
            lines += [
                f"    IdentityFile {_ssh_quote(info.identity_file)}",
                "    IdentitiesOnly yes",
            ]
        lines += [f"    UserKnownHostsFile {files}", "    StrictHostKeyChecking yes"]
        if jump is not None:
            lines.append(f"    ProxyJump {jump_spec(Target(info.host, info.port, jump=jump))}")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def _ssh_quote(path: str) -> str:
    """A path as one word of an OpenSSH option value."""
    if not any(c.isspace() or c in "\"'\\" for c in path):
        return path
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def profile_installer(profile: Profile) -> tuple[InstallerInfo, Target | None]:
    """The recorded installer of a profile and its jump host."""
    if not profile.installer:
        raise ConfigError(
            f"Profile {profile.name!r} has no installer recorded.",
            "Reconnecting opens the installer the app booted and verified.",
            "Install first (or inspect a server that already runs the installer).",
        )
    info = InstallerInfo.from_json(profile.installer, f"profile {profile.name!r}")
    jump = parse_jump(profile.jump, load_ssh_config()) if profile.jump else None
    return info, jump


TERMINALS: list[list[str]] = [
    ["x-terminal-emulator", "-e"],
    ["gnome-terminal", "--"],
    ["konsole", "-e"],
    ["xfce4-terminal", "-x"],
    ["alacritty", "-e"],
    ["kitty"],
    ["foot"],
    ["xterm", "-e"],
]


def terminal_command(
    ssh: Sequence[str], which: Callable[[str], str | None] = shutil.which
) -> list[str] | None:
    """A command opening the user's terminal running ``ssh``, or None when there is none."""
    env_term = os.environ.get("TERMINAL")
    candidates = ([[env_term, "-e"]] if env_term else []) + TERMINALS
    for cand in candidates:
        if which(cand[0]):
            return [*cand, *ssh]
    return None


FLATPAK_INFO = Path("/.flatpak-info")  # present in every Flatpak sandbox


def open_terminal(ssh: Sequence[str], sandbox: Path = FLATPAK_INFO) -> str | None:
    """Open the user's terminal with ``ssh``; returns why not, or None on success."""
    if sandbox.exists():
        return "the Flatpak sandbox cannot start programs of your desktop"
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "there is no graphical session to open a terminal in"
    term = terminal_command(ssh)
    if term is None:
        return "no terminal program was found (set $TERMINAL to yours)"
    subprocess.Popen(term, start_new_session=True)
    return None


def nixos_anywhere_command(info: InstallerInfo, flake_attr: str = "my-host") -> str:
    """The next step: nixos-anywhere against the running installer (it skips its own kexec)."""
    args = [
        "nix", "run", "github:nix-community/nixos-anywhere", "--",
        "--flake", f".#{flake_attr}", "--target-host", f"root@{info.host}",
    ]  # fmt: skip
    if info.port != 22:
        args += ["-p", str(info.port)]
    if info.identity_file:
        args += ["-i", info.identity_file]
    return shlex.join(args)


def connect_installer(
    info: InstallerInfo,
    jump: Target | None,
    known_hosts: KnownHosts,
    creds: Credentials,
    settings: Settings,
) -> Session:
    """Log in to the verified installer, insisting on its recorded host key."""
    ids = (info.identity_file,) if info.identity_file else ()
    target = Target(info.host, info.port, "root", identity_files=ids, jump=jump)
    opts = ConnectOptions(timeout=settings.connect_timeout, expect_key=info.host_key)
    return connect(target, creds, known_hosts, opts)


def hardware_report(session: Session, timeout: float = 180.0) -> dict[str, Any]:
    """Run ``nixos-facter`` on the installer and return its JSON report."""
    res = session.run("nixos-facter", timeout=timeout, what="nixos-facter")
    if not res.ok:
        raise RemoteCommandError(
            f"nixos-facter failed on {session.target.host}: {res.stderr.strip()[:300]}",
            "The hardware report comes from nixos-facter, which the installer ships.",
            "Check that the server really runs the NixOS installer, then try again.",
        )
    try:
        report = json.loads(res.stdout)
    except ValueError as exc:
        raise RemoteCommandError(
            "nixos-facter printed something that is not JSON.",
            f"({exc})",
            "Run nixos-facter by hand on the installer to see what it says.",
        ) from exc
    if not isinstance(report, dict):
        raise RemoteCommandError("nixos-facter's report is not a JSON object.")
    return report


def reboot_installer(session: Session) -> None:
    """Reboot the installer (it runs from RAM: the old system comes back from disk)."""
    res = session.run("systemctl reboot", timeout=30, what="systemctl reboot")
    if not res.ok:
        raise RemoteCommandError(
            f"The reboot was refused: {res.stderr.strip()[:200]}",
            "systemctl could not reboot the installer.",
            "Power-cycle the server from your provider's panel.",
        )

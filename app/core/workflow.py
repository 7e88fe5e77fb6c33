"""Flow steps both faces share: images, profiles, the installer's ssh command, hardware report."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from app.core.catalog import BUNDLE_DROPPED, BUNDLE_RE, Asset, Catalog, Release, asset_name
from app.core.download import CachedImage
from app.core.errors import ConfigError, RemoteCommandError, UsageError
from app.core.install import InstallerInfo
from app.core.probe import Facts
from app.core.profiles import Profile, ProfileStore, check_name
from app.core.secrets import SecretStore, password_key, sudo_key
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

# ---------------------------------------------------------------------------------------------
# Images


def release_of(catalog: Catalog, channel: str | None) -> Release:
    """The release of ``channel`` (default: the newest stable), or a clear error."""
    chosen = channel or catalog.default_channel()
    release = catalog.release(chosen)
    if release is None:
        raise UsageError(
            f"There is no channel {chosen!r}.",
            "Known channels: " + ", ".join(catalog.channels()) + ".",
            "Pick one of them.",
        )
    return release


def channel_asset(
    catalog: Catalog, channel: str | None, variant: str, arch: str
) -> tuple[Asset, dict[str, str]]:
    """The kexec tarball of ``channel`` (default: newest stable) for ``variant``/``arch``."""
    release = release_of(catalog, channel)
    chosen = release.channel
    found = release.kexec_asset(variant, arch)
    if found is None:
        raise UsageError(
            f"{chosen} has no {variant} image for {arch} ({asset_name(variant, arch)}).",
            "Not every release carries every variant.",
            "Choose another channel, variant or arch.",
        )
    return found, {"channel": chosen, "arch": arch, "variant": variant}


def bundle_asset(catalog: Catalog, channel: str | None, arch: str) -> tuple[Asset, dict[str, str]]:
    """The legacy kexec-bundle of ``channel`` (only releases frozen before 2023 have one)."""
    release = release_of(catalog, channel)
    chosen = release.channel
    found = release.bundle_asset(arch)
    if found is None:
        having = [r.channel for r in catalog.releases if r.bundle_asset(arch)]
        raise UsageError(
            f"{chosen} has no kexec-bundle for {arch}.",
            f"nixos-images dropped the kexec-bundle in {BUNDLE_DROPPED} in favour of the kexec "
            "tarball; only releases frozen before then may still carry it"
            + (f" (here: {', '.join(having)})." if having else "."),
            "Use the kexec tarball (leave out --bundle), or one of those channels.",
        )
    return found, {"channel": chosen, "arch": arch, "variant": "kexec-bundle"}


def image_kind(asset: Asset | None, meta: dict[str, str], image: CachedImage | None = None) -> str:
    """Whether the image is a legacy kexec-bundle (by content, variant or name) or a tarball."""
    if image is not None:
        return image.info.kind
    if meta.get("variant") == "kexec-bundle" or (asset and BUNDLE_RE.match(asset.name)):
        return "bundle"
    return "tarball"


def url_asset(url: str, settings: Settings) -> Asset:
    """An image at a URL the user typed (checked for https)."""
    settings.check_url(url, "image URL")
    name = url.rstrip("/").rsplit("/", 1)[-1] or "image.tar.gz"
    return Asset(name=name, url=url)


# ---------------------------------------------------------------------------------------------
# Profiles


def installer_info_from_session(session: Session, facts: Facts) -> InstallerInfo:
    """Installer details for a server that already runs the installer."""
    ids = session.target.identity_files
    return InstallerInfo(
        host=session.target.host,
        port=session.target.port,
        user=session.target.user,
        host_key=session.host_key_line,
        fingerprint=session.host_key_fingerprint,
        boot_id=facts.boot_id,
        hostname=facts.hostname,
        os_release=facts.os_release,
        identity_file=ids[0] if ids else None,
    )


def save_profile(
    store: ProfileStore,
    secrets: SecretStore,
    name: str,
    *,
    target: Target,
    creds: Credentials,
    host_key: str,
    facts: Facts | None,
    image: dict[str, str] | None = None,
    installer: InstallerInfo | None = None,
    state: str | None = None,
    remember: bool = False,
) -> tuple[Profile, str | None]:
    """Save (or update) a profile; secrets go to the keyring only. Returns a warning, if any."""
    name = check_name(name)
    existing = store.load().get(name)
    remember = remember or bool(existing and existing.remember_password)
    is_installer = installer is not None or bool(facts and facts.is_installer)
    profile = Profile(
        name=name,
        host=target.alias or target.host,
        port=target.port,
        user=target.user,
        jump=jump_spec(target),
        auth=creds.method,
        key_path=target.identity_files[0] if target.identity_files else "",
        host_key=host_key,
        state=state or ("installer" if is_installer else "original"),
        facts=facts.summary() if facts else (existing.facts if existing else {}),
        image=image or (existing.image if existing else {}),
        installer=installer.to_json() if installer else (existing.installer if existing else {}),
        remember_password=remember,
    ).touched()
    store.put(profile)
    warning = None
    if remember:
        stored = True
        if creds.password:
            stored = secrets.set(password_key(name), creds.password) and stored
        if creds.sudo_password:
            stored = secrets.set(sudo_key(name), creds.sudo_password) and stored
        if not stored and secrets.available:
            warning = (
                f"The password was not remembered: {secrets.where()} refused it (it may be "
                "locked), so you will be asked each time."
            )
        elif not stored:
            warning = f"The password was not remembered: {secrets.where()}."
    return profile, warning


def forget_profile(store: ProfileStore, secrets: SecretStore, name: str) -> bool:
    """Delete a profile and its keyring entries."""
    gone = store.delete(name)
    secrets.delete(password_key(name))
    secrets.delete(sudo_key(name))
    return gone


# ---------------------------------------------------------------------------------------------
# Reaching the installer


def installer_ssh_command(info: InstallerInfo, jump: Target | None, known_hosts: Path) -> list[str]:
    """The OpenSSH command for the installer, checking its key against the app's known_hosts."""
    cmd = Target(info.host, info.port, "root", jump=jump).ssh_command(info.identity_file)
    # OpenSSH splits this option's value at spaces; a path with one is double-quoted.
    files = " ".join(_ssh_quote(str(p)) for p in (known_hosts, Path.home() / ".ssh/known_hosts"))
    return [cmd[0], "-o", f"UserKnownHostsFile={files}", *cmd[1:]]


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


def open_terminal(ssh: Sequence[str]) -> str | None:
    """Open the user's terminal with ``ssh``; returns why not, or None on success."""
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

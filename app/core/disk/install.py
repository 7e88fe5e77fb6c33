"""nixos-install onto the mounted disk: files written, host keys kept, the install checked."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from shlex import quote as q

from app.core.disk.layout import MNT, PART_FUNCTION, Layout, Partition
from app.core.errors import DiskError, RemoteCommandError
from app.core.remote_sh import framed, unframe
from app.core.settings import DEFAULT_BINARY_CACHE as DEFAULT_CACHE
from app.core.settings import DEFAULT_NIXPKGS_ARCHIVE
from app.core.ssh.session import Session
from app.core.ssh.streams import LineSink
from app.core.text import printable

# Nix downloads the system's closure (hundreds of MB to GBs) from the binary cache: a slow
# link needs long; the command still ends at this deadline.
INSTALL_TIMEOUT = 7200.0
FILES_TIMEOUT = 600.0  # the swapfile is written whole (fallocate is not on every file system)
VERSION_TOKEN = "nixosversion"
CHECK_TOKEN = "installed"
REVISION_RE = re.compile(r"[0-9a-f]{40}")
VERSION_RE = re.compile(r"(\d{2}\.\d{2})[0-9A-Za-z._-]*")
ETC = f"{MNT}/etc/nixos"
SWAPFILE = f"{MNT}/var/lib/swapfile"
# The new system's own /tmp, on its disk, made by root here: nixos-install's temporary files.
NEW_TMP = f"{MNT}/tmp"  # noqa: S108
COPYING = re.compile(r"^copying path '(/nix/store/[^']+)'")


@dataclass(frozen=True)
class Release:
    """The installer's NixOS release, as ``nixos-version --json`` names it."""

    version: str  # 25.11.20251120.abc1234
    revision: str  # the nixpkgs commit it was built from

    @property
    def state_version(self) -> str:
        """The release an installed system starts with: "25.11"."""
        m = VERSION_RE.fullmatch(self.version)
        return m.group(1) if m else ""


def version_command() -> str:
    """The installer's release (its own nixpkgs revision pins the install to what it has)."""
    return framed("nixos-version --json", VERSION_TOKEN)


def parse_version(stdout: str) -> Release | None:
    """The release ``version_command`` printed; None when it is not one (not NixOS, or a
    revision that is not a commit, which could not pin anything)."""
    own = unframe(stdout, VERSION_TOKEN)
    try:
        data = json.loads(own or "")
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    version, rev = str(data.get("nixosVersion", "")), str(data.get("nixpkgsRevision", ""))
    if not VERSION_RE.fullmatch(version) or not REVISION_RE.fullmatch(rev):
        return None
    return Release(version, rev)


def nixpkgs_url(revision: str, archive: str = DEFAULT_NIXPKGS_ARCHIVE) -> str:
    """The tarball of that nixpkgs commit, which the server downloads itself."""
    if not REVISION_RE.fullmatch(revision):
        raise ValueError(f"{revision!r} is not a nixpkgs commit")
    return f"{archive.rstrip('/')}/{revision}.tar.gz"


def _here_doc(path: str, text: str, end: str) -> str:
    if end in text.splitlines():
        raise ValueError("the text holds the here-document's end line")
    body = text if text.endswith("\n") else text + "\n"
    return f"cat > {q(path)} <<'{end}'\n{body}{end}"


def files_script(configuration: str, disko: str, swapfile_mib: int = 0) -> str:
    """As root on the installer, with the new disk mounted: a swapfile on the new root when
    RAM is short (the evaluation needs about 2 GiB), the hardware configuration, the app's
    configuration.nix and disko file, and the installer's host keys (the old system's) copied,
    mode kept, so the installed system answers with the same key. ``set -eu``."""
    lines = [
        "set -eu",
        "umask 022",
        f"mkdir -p {ETC} {MNT}/etc/ssh {MNT}/var/lib",
        f"mkdir -p -m 1777 {NEW_TMP}",
    ]
    if swapfile_mib:
        lines += [
            f"if ! swapon --show=NAME --noheadings | grep -qx {q(SWAPFILE)}; then",
            f"  rm -f {q(SWAPFILE)}",
            f"  dd if=/dev/zero of={q(SWAPFILE)} bs=1M count={int(swapfile_mib)} status=none",
            f"  chmod 600 {q(SWAPFILE)}",
            f"  mkswap {q(SWAPFILE)} >/dev/null",
            f"  swapon {q(SWAPFILE)}",
            "fi",
        ]
    lines += [
        # Only its hardware part: its configuration.nix boots with systemd-boot and EFI
        # variables, which a wrong UEFI/BIOS guess after the kexec cannot survive.
        f"nixos-generate-config --root {MNT} --show-hardware-config "
        f"> {ETC}/hardware-configuration.nix.tmp",
        f"mv {ETC}/hardware-configuration.nix.tmp {ETC}/hardware-configuration.nix",
        _here_doc(f"{ETC}/configuration.nix", configuration, "NKW_END_CONFIGURATION"),
        _here_doc(f"{ETC}/disko-config.nix", disko, "NKW_END_DISKO"),
        "for k in /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub; do",
        f'  if [ -e "$k" ]; then cp -p "$k" {MNT}/etc/ssh/; fi',
        "done",
        f"ls {MNT}/etc/ssh/ssh_host_*_key >/dev/null",
    ]
    return "\n".join(lines) + "\n"


def install_command(url: str, cache: str = DEFAULT_CACHE) -> str:
    """``nixos-install`` pinned to ``url``'s nixpkgs, its temporary files and caches on the
    new disk (the installer's / is RAM), no root password (keys only), no channel copy; a
    binary cache other than the default replaces it (``--option substituters``)."""
    env = f"NIX_PATH={q('nixpkgs=' + url)} TMPDIR={NEW_TMP} XDG_CACHE_HOME={MNT}/var/cache/nkw"
    mirror = f" --option substituters {q(cache)}" if cache != DEFAULT_CACHE else ""
    return (f"{env} nixos-install --root {MNT} --no-root-passwd --no-channel-copy{mirror}"
            " </dev/null")  # fmt: skip


def boot_files(layout: Layout) -> list[str]:
    """What GRUB leaves when it installed: its configuration, the removable EFI loader, and
    on x86_64 its BIOS modules."""
    efi = "BOOTX64.EFI" if layout.arch == "x86_64" else "BOOTAA64.EFI"
    files = [f"{MNT}/boot/grub/grub.cfg", f"{MNT}/boot/EFI/BOOT/{efi}"]
    if layout.arch == "x86_64":
        files.append(f"{MNT}/boot/grub/i386-pc/core.img")
    return files


def _bios_boot(layout: Layout) -> Partition | None:
    return next((p for p in layout.partitions() if p.typecode == "EF02"), None)


def check_command(layout: Layout) -> str:
    """The new system's toplevel, each boot file that exists, and on x86_64 whether GRUB's
    code is in the disk's first sector and in the BIOS boot partition."""
    # The profile's links name paths inside the new system (/nix/store/...): followed one by
    # one under /mnt, as a chroot would (readlink -f would look in the installer's own store).
    lines = [
        f"p={MNT}/nix/var/nix/profiles/system; n=0; "
        'while [ -L "$p" ] && [ $n -lt 16 ]; do t=$(readlink "$p"); '
        f'case "$t" in /*) p={MNT}$t ;; *) p=$(dirname "$p")/$t ;; esac; n=$((n+1)); done; '
        f'if [ -d "$p" ]; then echo "toplevel ${{p#{MNT}}}"; fi'
    ]
    lines += [f'[ -s {q(f)} ] && echo "file {f}"' for f in boot_files(layout)]
    bios = _bios_boot(layout)
    if bios is not None:
        # GRUB's boot code in the MBR and its core in the BIOS boot partition (both zeroed by
        # the partitioning script, so only GRUB's own bytes count), found through the disk.
        n = layout.partitions().index(bios) + 1
        lines += [f"disk=$(readlink -f {q(layout.disk)}); name=${{disk##*/}}", *PART_FUNCTION]
        for what, dev, size in (("mbr", '"$disk"', 440), ("bios-boot", f'"$(part {n})"', 4096)):
            lines.append(f"[ -n \"$(head -c {size} {dev} | tr -d '\\000' | head -c 1)\" ] "
                         f"&& echo \"code {what}\"")  # fmt: skip
    return framed("\n".join([*lines, "true"]), CHECK_TOKEN)


@dataclass(frozen=True)
class Installed:
    """What nixos-install left on the disk, as read back."""

    toplevel: str
    missing: tuple[str, ...]  # boot files or boot code that are not there


def parse_check(stdout: str, layout: Layout) -> Installed:
    """Read ``check_command``'s output; everything it did not confirm is missing."""
    own = unframe(stdout, CHECK_TOKEN) or ""
    toplevel, seen = "", set()
    for line in own.splitlines():
        word, _, rest = line.partition(" ")
        if word == "toplevel" and re.fullmatch(r"/nix/store/[0-9a-z]{32}-[^/\s]+", rest.strip()):
            toplevel = rest.strip()
        elif word in ("file", "code"):
            seen.add(rest.strip())
    wanted = boot_files(layout)
    if _bios_boot(layout) is not None:
        wanted += ["mbr", "bios-boot"]
    return Installed(toplevel, tuple(w for w in wanted if w not in seen))


def install_nixos(
    session: Session,
    layout: Layout,
    configuration: str,
    disko: str,
    url: str,
    *,
    swapfile_mib: int = 0,
    cache: str = DEFAULT_CACHE,
    on_line: LineSink | None = None,
    on_copied: Callable[[int], None] | None = None,
    timeout: float = INSTALL_TIMEOUT,
) -> Installed:
    """Write the files, run nixos-install with ``on_line`` hearing its words (and
    ``on_copied`` the number of store paths copied so far), then check what it left. Never
    trusts "installation finished!": a failed exit, a missing toplevel or boot file is a
    DiskError, and nothing reboots."""
    res = session.run(f"sh -c {q(files_script(configuration, disko, swapfile_mib))}",
                      timeout=FILES_TIMEOUT, privileged=True, on_line=on_line,
                      what="writing the configuration onto the new disk")  # fmt: skip
    if not res.ok:
        raise DiskError(
            f"Writing the configuration onto {layout.disk} failed: {_last(res.stderr)}",
            "The disk is partitioned and mounted under /mnt; nothing is installed on it yet. "
            "The installer still runs; nothing rebooted.",
            "Read the installer's words above and run the install again.",
        )
    copied = [0]

    def lines(stream: str, line: str) -> None:
        if COPYING.match(line):
            copied[0] += 1
            if on_copied is not None:
                on_copied(copied[0])
        if on_line is not None:
            on_line(stream, line)

    try:
        res = session.run(install_command(url, cache), timeout=timeout, privileged=True,
                          on_line=lines, what="nixos-install")  # fmt: skip
    except RemoteCommandError as exc:  # its deadline passed or the connection broke
        raise DiskError(
            f"nixos-install did not finish: {exc.what}",
            "The disk holds a partial installation that does not boot, and nixos-install may "
            "still be running on the server. The installer still runs; nothing rebooted.",
            "Log in to the installer (the ssh command above) and watch nixos-install end "
            "(ps ax | grep nixos-install); then run the install again.",
        ) from exc
    if not res.ok:
        raise DiskError(
            f"nixos-install failed (exit status {res.status}): {_last(res.stderr or res.stdout)}",
            "The disk holds a partial installation that does not boot; the old system on it is "
            "gone. The installer still runs; nothing rebooted.",
            "Read nixos-install's words above (a typo in the configuration, no route to the "
            "binary cache, a full disk) and run the install again: it starts over.",
        )
    check = session.run(check_command(layout), timeout=60, privileged=True,
                        what="checking the installed system and its boot loader")  # fmt: skip
    if not check.ok:
        raise DiskError(
            f"The installed system could not be checked: {_last(check.stderr)}",
            "Nothing reboots into a system the app could not look at. The installer still "
            "runs; nothing rebooted.",
            "Look at /mnt on the installer (the ssh command above) and run the install again.",
        )
    installed = parse_check(check.stdout, layout)
    if not installed.toplevel or installed.missing:
        what = ", ".join(installed.missing) if installed.toplevel else "the system profile"
        raise DiskError(
            f"nixos-install said it finished, but the disk lacks {what}.",
            "Booting it would start nothing (GRUB can fail after the system was copied), so "
            "nothing rebooted. The installer still runs.",
            "Read nixos-install's words above for the boot loader's error (boot.loader.grub in "
            "configuration.nix) and run the install again.",
        )
    return installed


def _last(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return printable(lines[-1][:300]) if lines else "(no words from the server)"

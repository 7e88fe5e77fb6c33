"""The one-disk layout as a disko file and as the app's own partitioning script, built alike."""

from __future__ import annotations

import re
from dataclasses import dataclass
from shlex import quote as q

ROOT_FILE_SYSTEMS = ("ext4",)
DISK_NAME = "main"  # disko's name for the disk: partition labels are disk-main-<partition>
MNT = "/mnt"
# A device path the scripts may name: a /dev path of plain characters (no quoting surprises).
DEVICE_RE = re.compile(r"/dev/[A-Za-z0-9._:/+-]+")


@dataclass(frozen=True)
class Partition:
    """One GPT partition, in disko's words: its name, size, type code and what goes on it."""

    name: str
    size: str  # "1M", "512M", "2048M" or "100%"
    typecode: str  # sgdisk's: EF02 BIOS boot, EF00 ESP, 8200 swap, 8300 Linux
    fs: str = ""  # vfat, ext4, swap; "" for none (the BIOS boot partition)
    mountpoint: str = ""
    mount_options: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """Its GPT partition label, as disko names it."""
        return f"disk-{DISK_NAME}-{self.name}"

    @property
    def device(self) -> str:
        """The stable path udev gives it by that label."""
        return f"/dev/disk/by-partlabel/{self.label}"


@dataclass(frozen=True)
class Layout:
    """The layout everyone converges on for one disk: GPT, a 1 MiB BIOS boot partition (not on
    aarch64), an ESP on /boot, optional swap, the root on the rest; GRUB boots it on BIOS and
    UEFI alike."""

    disk: str
    arch: str = "x86_64"
    esp_mib: int = 512
    swap_mib: int = 0
    root_fs: str = "ext4"

    def __post_init__(self) -> None:
        if not DEVICE_RE.fullmatch(self.disk):
            raise ValueError(f"{self.disk!r} is not a device path the app names in a script")
        if self.root_fs not in ROOT_FILE_SYSTEMS:
            raise ValueError(f"root file system {self.root_fs!r} is not one of {ROOT_FILE_SYSTEMS}")
        if self.esp_mib < 100 or self.swap_mib < 0:
            raise ValueError("the ESP needs at least 100 MiB and swap cannot be negative")

    def partitions(self) -> list[Partition]:
        """In disko's order: by priority (BIOS boot, then sized ones by name, the rest last)."""
        parts = []
        if self.arch == "x86_64":
            parts.append(Partition("boot", "1M", "EF02"))
        parts.append(Partition("ESP", f"{self.esp_mib}M", "EF00", "vfat", "/boot", ("umask=0077",)))
        if self.swap_mib:
            parts.append(Partition("swap", f"{self.swap_mib}M", "8200", "swap"))
        parts.append(Partition("root", "100%", "8300", self.root_fs, "/"))
        return parts


def disko_nix(layout: Layout) -> str:
    """The layout as a disko configuration, to keep with the user's configuration and to
    reproduce later with disko or nixos-anywhere."""
    out = [
        "# The disk layout the NixOS Kexec Wizard installed; disko and nixos-anywhere read it.",
        "{",
        "  disko.devices.disk.main = {",
        '    type = "disk";',
        f"    device = {_nix_str(layout.disk)};",
        "    content = {",
        '      type = "gpt";',
        "      partitions = {",
    ]
    for p in layout.partitions():
        out.append(f"        {p.name} = {{")
        out.append(f"          size = {_nix_str(p.size)};")
        out.append(f"          type = {_nix_str(p.typecode)};")
        if p.fs == "swap":
            out.append('          content = { type = "swap"; };')
        elif p.fs:
            opts = " ".join(_nix_str(o) for o in p.mount_options)
            out += [
                "          content = {",
                '            type = "filesystem";',
                f"            format = {_nix_str(p.fs)};",
                f"            mountpoint = {_nix_str(p.mountpoint)};",
                *([f"            mountOptions = [ {opts} ];"] if opts else []),
                "          };",
            ]
        out.append("        };")
    out += ["      };", "    };", "  };", "}", ""]
    return "\n".join(out)


def _nix_str(s: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._:/%=+-]*", s):
        raise ValueError(f"{s!r} is not a plain string for a Nix file")
    return f'"{s}"'


def partition_script(layout: Layout) -> str:
    """The app's own script for the layout, in disko's order of commands: release what holds
    the disk (swap, mounts, md arrays, LVM), wipe every signature, new GPT partitions with
    disko's type codes and labels, let udev catch up, make the file systems, mount under /mnt.
    Run as root on the installer, with ``set -eu``: the first failure stops it."""
    disk = q(layout.disk)
    lines = [
        "set -eu",
        f"disk=$(readlink -f {disk})",
        '[ -b "$disk" ] || { echo "$disk is not a disk on this system" >&2; exit 1; }',
        "# Release everything on the disk: mounts under /mnt, swap, md arrays, LVM.",
        step("release"),
        f"umount -R {MNT} 2>/dev/null || :",
        'for dev in $(lsblk -nrpo NAME "$disk"); do',
        '  swapoff "$dev" 2>/dev/null || :',
        "done",
        'for md in $(lsblk -nrpo NAME,TYPE "$disk" '
        "| awk '$2 ~ /^raid/ {print $1}' | sort -u); do",
        '  mdadm --stop "$md"',
        "done",
        'for vg in $(pvs --noheadings -o vg_name $(lsblk -nrpo NAME "$disk") 2>/dev/null '
        "| sort -u); do",
        '  vgchange -an "$vg"',
        "done",
        "# Nothing on it may still be in use: wipefs --force would wipe a mounted file system.",
        'if lsblk -nrpo MOUNTPOINT "$disk" | grep -q .; then',
        '  echo "$disk is still in use: $(lsblk -nrpo NAME,MOUNTPOINT "$disk" | '
        "awk '$2 != \"\" {print $1 \" on \" $2}' | tr '\\n' ' ')\" >&2",
        "  exit 1",
        "fi",
        step("wipe"),
        'for dev in $(lsblk -nrpo NAME "$disk" | sort -r); do',
        '  wipefs --all --force "$dev"',
        "done",
        'sgdisk --zap-all "$disk" >/dev/null',
        step("partition"),
        'sgdisk --clear "$disk"',
    ]
    for n, p in enumerate(layout.partitions(), start=1):
        end = "-0" if p.size == "100%" else f"+{p.size}"
        lines += [
            f"sgdisk --align-end --new={n}:0:{end} --partition-guid={n}:R "
            f"--change-name={n}:{p.label} --typecode={n}:{p.typecode} --attributes={n}:=:0 "
            '"$disk"',
            'partprobe "$disk" || :',
            "udevadm trigger --subsystem-match=block",
            "udevadm settle --timeout 120",
        ]
    lines.append(step("format"))
    for p in layout.partitions():
        if p.fs == "swap":
            lines.append(f"mkswap {p.device}")
        elif p.fs:
            lines.append(f"mkfs.{p.fs} {p.device}")
    for p in layout.partitions():
        if p.fs == "swap":  # the evaluation of a NixOS configuration needs the memory
            lines.append(f"swapon --options=defaults {p.device}")
    lines.append(step("mount"))
    mounted = sorted((p for p in layout.partitions() if p.mountpoint), key=lambda p: p.mountpoint)
    for p in mounted:
        opts = ",".join(p.mount_options) if p.mount_options else "defaults"  # as disko does
        where = f"{MNT}{p.mountpoint}".rstrip("/") or MNT
        lines.append(f"mount {p.device} {where} -t {p.fs} -o {opts} -o X-mount.mkdir")
    lines.append(step("done"))
    return "\n".join(lines) + "\n"


STEP_MARK = "@@nkw step "
STEPS = ("release", "wipe", "partition", "format", "mount", "done")


def step(name: str) -> str:
    """The line that tells the app how far the script got (what state a failure left)."""
    if name not in STEPS:
        raise ValueError(f"no partitioning step {name!r}")
    return f"echo '{STEP_MARK}{name}'"

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


# The partition numbered $1 of the disk in $disk (its kernel name in $name), from the kernel's
# own list in sysfs: never by a label another disk may hold too.
PART_FUNCTION = (
    "part() {",
    '  for f in /sys/class/block/"$name"/*/partition; do',
    '    if [ -e "$f" ] && [ "$(cat "$f")" = "$1" ]; then',
    '      p=${f%/partition}; echo "/dev/${p##*/}"; return 0',
    "    fi",
    "  done",
    '  echo "the kernel sees no partition $1 on $disk" >&2; return 1',
    "}",
)


def partition_script(layout: Layout, expect: tuple[str, int] | None = None) -> str:
    """The app's own script for the layout, in disko's order of commands: release what holds
    the disk (swap, mounts, LVM, dm-crypt, md arrays), wipe every signature, new GPT partitions
    with disko's type codes and labels, let udev catch up, make the file systems, mount under
    /mnt. Run as root on the installer, with ``set -eu``: the first failure stops it.

    ``expect`` is the disk the user confirmed, (kernel path, size in bytes): the script stops
    before anything else unless ``layout.disk`` still resolves to exactly that disk. Unlike
    disko, it names partitions through the disk (sysfs), never by their labels: a label such as
    disk-main-root can also be on another disk (an earlier install), and udev may point the
    by-partlabel link at either one."""
    disk = q(layout.disk)
    parts = layout.partitions()
    lines = [
        "set -eu",
        f"disk=$(readlink -f {disk})",
        '[ -b "$disk" ] || { echo "$disk is not a disk on this system" >&2; exit 1; }',
        "name=${disk##*/}",
    ]
    if expect is not None:
        path, size = expect
        if not DEVICE_RE.fullmatch(path):
            raise ValueError(f"{path!r} is not a device path the app names in a script")
        lines += [
            f'if [ "$disk" != {q(path)} ] || '
            f'[ "$(( $(cat "/sys/class/block/$name/size") * 512 ))" != {int(size)} ]; then',
            f'  echo "{layout.disk} is now $disk, not the disk that was confirmed ({path}, '
            f'{int(size)} bytes)" >&2',
            "  exit 1",
            "fi",
        ]
    lines += [
        *PART_FUNCTION,
        "# Release everything on the disk: /mnt and swap under it, swap, LVM, dm-crypt, md arrays.",
        step("release"),
        f"awk 'NR > 1 && index($1, \"{MNT}/\") == 1 {{print $1}}' /proc/swaps "
        '| while read -r f; do swapoff "$f"; done',
        f"if findmnt {MNT} >/dev/null; then umount -R {MNT}; fi",
        'for dev in $(lsblk -nrpo NAME "$disk"); do',
        '  swapoff "$dev" 2>/dev/null || :',
        "done",
        'for vg in $(pvs --noheadings -o vg_name $(lsblk -nrpo NAME "$disk") 2>/dev/null '
        "| sort -u); do",
        '  vgchange -an "$vg"',
        "done",
        'for c in $(lsblk -nrpo NAME,TYPE "$disk" '
        "| awk '$2 == \"crypt\" {print $1}' | sort -u); do",
        '  cryptsetup close "$c"',
        "done",
        'for md in $(lsblk -nrpo NAME,TYPE "$disk" '
        "| awk '$2 ~ /^raid/ {print $1}' | sort -u); do",
        '  mdadm --stop "$md"',
        "done",
        "# Nothing on it may still be in use: wipefs --force would wipe a mounted file system,",
        "# and with holders left the kernel keeps the old partition table.",
        'if lsblk -nrpo MOUNTPOINT "$disk" | grep -q .; then',
        '  echo "$disk is still in use: $(lsblk -nrpo NAME,MOUNTPOINT "$disk" | '
        "awk '$2 != \"\" {print $1 \" on \" $2}' | tr '\\n' ' ')\" >&2",
        "  exit 1",
        "fi",
        'held=$(lsblk -nrpo NAME,TYPE "$disk" | awk \'$2 != "disk" && $2 != "part" {print $1}\')',
        'if [ -n "$held" ]; then',
        '  echo "$disk is still held by $(echo $held)" >&2',
        "  exit 1",
        "fi",
        step("wipe"),
        'for dev in $(lsblk -nrpo NAME "$disk" | sort -r); do',
        '  wipefs --all --force "$dev"',
        "done",
        'sgdisk --zap-all "$disk" >/dev/null',
        "# An old boot loader's code is not a signature: cleared, so only GRUB's counts later.",
        'dd if=/dev/zero of="$disk" bs=440 count=1 conv=notrunc status=none',
        step("partition"),
        'sgdisk --clear "$disk"',
    ]
    for n, p in enumerate(parts, start=1):
        end = "-0" if p.size == "100%" else f"+{p.size}"
        lines += [
            f"sgdisk --align-end --new={n}:0:{end} --partition-guid={n}:R "
            f"--change-name={n}:{p.label} --typecode={n}:{p.typecode} --attributes={n}:=:0 "
            '"$disk"',
            'partprobe "$disk" || :',
            "udevadm trigger --subsystem-match=block",
            "udevadm settle --timeout 120",
        ]
    lines += [f"for n in {' '.join(str(n) for n in range(1, len(parts) + 1))}; do "
              'part "$n" >/dev/null; done']  # fmt: skip
    lines.append(step("format"))
    for n, p in enumerate(parts, start=1):
        dev = f'"$(part {n})"'
        if p.typecode == "EF02":  # GRUB's core goes here: nothing older may look like it
            lines.append(f"dd if=/dev/zero of={dev} bs=1M count=1 status=none")
        elif p.fs == "swap":
            lines.append(f"mkswap {dev}")
        elif p.fs:
            lines.append(f"mkfs.{p.fs} {dev}")
    for n, p in enumerate(parts, start=1):
        if p.fs == "swap":  # the evaluation of a NixOS configuration needs the memory
            lines.append(f'swapon --options=defaults "$(part {n})"')
    lines.append(step("mount"))
    mounted = sorted(
        ((n, p) for n, p in enumerate(parts, start=1) if p.mountpoint),
        key=lambda np: np[1].mountpoint,
    )
    for n, p in mounted:
        opts = ",".join(p.mount_options) if p.mount_options else "defaults"  # as disko does
        where = f"{MNT}{p.mountpoint}".rstrip("/") or MNT
        lines.append(f'mount "$(part {n})" {where} -t {p.fs} -o {opts} -o X-mount.mkdir')
    lines.append(step("done"))
    return "\n".join(lines) + "\n"


STEP_MARK = "@@nkw step "
STEPS = ("release", "wipe", "partition", "format", "mount", "done")


def step(name: str) -> str:
    """The line that tells the app how far the script got (what state a failure left)."""
    if name not in STEPS:
        raise ValueError(f"no partitioning step {name!r}")
    return f"echo '{STEP_MARK}{name}'"

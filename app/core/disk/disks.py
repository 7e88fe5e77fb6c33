"""The server's disks as the installer sees them, which may be wiped, and the old root disk."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field, replace
from typing import Any

from app.core.disk.layout import DEVICE_RE
from app.core.remote_sh import framed, unframe
from app.core.text import printable

# MOUNTPOINT, not MOUNTPOINTS: the old system's lsblk may be older than util-linux 2.37.
LSBLK_COLUMNS = "NAME,PATH,TYPE,SIZE,RO,RM,MODEL,SERIAL,TRAN,FSTYPE,LABEL,PARTLABEL,MOUNTPOINT"
MIN_DISK_BYTES = 8 << 30  # a small NixOS, its first rebuild and the caches nixos-install keeps
LIST_TOKEN = "disks"
OLD_ROOT_TOKEN = "oldroot"
# Preferred among several /dev/disk/by-id links: names a person recognises (the bus, model and
# serial) before the world-wide and EUI numbers that say nothing to a person.
UNFRIENDLY_ID = ("wwn-", "nvme-eui.", "nvme-nvme.", "dm-", "md-uuid-", "lvm-pv-uuid-")
# Mounts the installer's own teardown releases: an earlier try's /mnt, swap it turned on.
RELEASABLE = ("/mnt", "[SWAP]")


@dataclass(frozen=True)
class Volume:
    """A partition (or an md array, an LVM volume) on a disk, and what is on it now."""

    path: str
    kind: str  # part, raid1, lvm, crypt, ...
    size: int
    fstype: str = ""
    label: str = ""
    partlabel: str = ""
    mountpoint: str = ""


@dataclass(frozen=True)
class Disk:
    """One whole disk: what identifies it to a person and to a script, and what is on it."""

    name: str  # the kernel's name, vda or nvme0n1
    path: str  # /dev/vda
    size: int
    model: str = ""
    serial: str = ""
    transport: str = ""  # nvme, sata, virtio, usb, ... ("" when lsblk cannot tell)
    read_only: bool = False
    removable: bool = False
    by_id: str = ""
    by_path: str = ""
    volumes: tuple[Volume, ...] = ()
    mountpoint: str = ""  # a file system on the whole disk, no partition table

    @property
    def stable_path(self) -> str:
        """The path a script names it by: by-id (stays after a reboot), else by-path, else
        the kernel's name (a virtio disk without a serial has no by-id link)."""
        return self.by_id or self.by_path or self.path

    @property
    def mounts(self) -> list[str]:
        """Where the disk and everything on it is mounted (``[SWAP]`` for swap in use)."""
        return [m for m in (self.mountpoint, *(v.mountpoint for v in self.volumes)) if m]

    def describe(self) -> str:
        """How a person recognises it: "vda, 20.0 GiB, QEMU HARDDISK (virtio, serial nkw-1)"."""
        extra = ", ".join(x for x in (self.transport, self.serial and f"serial {self.serial}") if x)
        model = f", {self.model}" if self.model else ""
        text = f"{self.name}, {size_text(self.size)}{model}" + (f" ({extra})" if extra else "")
        return printable(text)  # the model and serial are the server's words


@dataclass(frozen=True)
class OldRoot:
    """The disk that held the old system's root file system, recorded before the kexec."""

    source: str  # what / was mounted from: /dev/vda1, /dev/mapper/vg-root
    disks: tuple[tuple[str, str, int], ...]  # (name, serial, size) of each disk under it
    used_bytes: int | None = None
    os_name: str = ""

    def to_json(self) -> dict[str, Any]:
        """The form a profile keeps."""
        return {"source": self.source, "disks": [list(d) for d in self.disks],
                "used_bytes": self.used_bytes, "os_name": self.os_name}  # fmt: skip

    @classmethod
    def from_json(cls, data: object) -> OldRoot | None:
        """Read a kept record; None for anything that is not one."""
        if not isinstance(data, dict):
            return None
        try:
            disks = tuple((str(n), str(s), int(z)) for n, s, z in data["disks"])
            used = data.get("used_bytes")
            return cls(str(data["source"]), disks, int(used) if used is not None else None,
                       str(data.get("os_name", "")))  # fmt: skip
        except (KeyError, TypeError, ValueError):
            return None

    def matches(self, disk: Disk) -> bool:
        """``disk`` is one of them: by serial and size when the old system saw a serial
        (names can change across the kexec), else by the kernel's name and size."""
        for name, serial, size in self.disks:
            if size == disk.size and (serial == disk.serial if serial else name == disk.name):
                return True
        return False

    @property
    def by_serial(self) -> bool:
        """Every disk under the old root had a serial: a match is by serial, not by a name
        the kernel may have given to another disk after the kexec."""
        return all(serial for _name, serial, _size in self.disks)


@dataclass(frozen=True)
class Choice:
    """The disks the user may pick, the ones refused with why, and the default (or none)."""

    candidates: tuple[Disk, ...]
    refused: tuple[tuple[Disk, str], ...] = ()
    default: Disk | None = None
    why_no_default: str = ""
    notes: dict[str, str] = field(default_factory=dict)  # disk name -> what the wipe releases


def list_command(token: str = LIST_TOKEN) -> str:
    """Every block device as JSON, then each /dev/disk/by-id and by-path link and its target."""
    return framed(
        f"lsblk -J -b -o {LSBLK_COLUMNS}; echo '@@links'; "
        "for l in /dev/disk/by-id/* /dev/disk/by-path/*; do "
        '[ -L "$l" ] && printf \'%s %s\\n\' "$l" "$(readlink -f "$l")"; done; true',
        token,
    )


def parse_disks(stdout: str, token: str = LIST_TOKEN) -> list[Disk]:
    """The whole disks ``list_command`` found (not loop, zram or optical devices); ValueError
    when its output is not what it prints."""
    own = unframe(stdout, token)
    if own is None or "@@links\n" not in own:
        raise ValueError("the disk listing did not come back whole")
    listing, links = own.split("@@links\n", 1)
    try:
        tree = json.loads(listing)
    except ValueError as exc:
        raise ValueError(
            f"lsblk did not list the disks: {printable(listing.strip()[:200])!r}"
        ) from exc
    by_target: dict[str, list[str]] = {}
    for line in links.splitlines():
        link, _, target = line.partition(" ")
        if DEVICE_RE.fullmatch(link) and target:
            by_target.setdefault(target, []).append(link)
    disks = []
    for dev in tree.get("blockdevices", []):
        if dev.get("type") != "disk" or str(dev.get("name", "")).startswith(("zram", "ram")):
            continue
        path = _s(dev, "path") or f"/dev/{_s(dev, 'name')}"
        links_here = sorted(by_target.get(path, []))
        ids = [x for x in links_here if x.startswith("/dev/disk/by-id/")]
        friendly = [x for x in ids if not x.rsplit("/", 1)[1].startswith(UNFRIENDLY_ID)]
        paths = [x for x in links_here if x.startswith("/dev/disk/by-path/")]
        disks.append(
            Disk(
                name=_s(dev, "name"),
                path=path,
                size=int(dev.get("size") or 0),
                model=_s(dev, "model"),
                serial=_s(dev, "serial"),
                transport=_s(dev, "tran"),
                read_only=_flag(dev.get("ro")),
                removable=_flag(dev.get("rm")),
                by_id=(friendly or ids or [""])[0],
                by_path=(paths or [""])[0],
                volumes=tuple(_volumes(dev.get("children") or [])),
                mountpoint=_s(dev, "mountpoint"),
            )
        )
    # Two disks with one serial (cloned virtual disks) share one by-id link, which udev may
    # give to either: name them by their bus path instead.
    serials = [d.serial for d in disks if d.serial]
    return [replace(d, by_id="") if d.serial and serials.count(d.serial) > 1 else d for d in disks]


def _volumes(children: list[dict[str, Any]]) -> list[Volume]:
    out = []
    for c in children:
        out.append(
            Volume(
                path=_s(c, "path") or f"/dev/{_s(c, 'name')}",
                kind=_s(c, "type"),
                size=int(c.get("size") or 0),
                fstype=_s(c, "fstype"),
                label=_s(c, "label"),
                partlabel=_s(c, "partlabel"),
                mountpoint=_s(c, "mountpoint"),
            )
        )
        out += _volumes(c.get("children") or [])
    return out


def _s(d: dict[str, Any], key: str) -> str:
    v = d.get(key)
    return "" if v is None else str(v).strip()


def _flag(v: object) -> bool:
    """lsblk says true/false in JSON from util-linux 2.33, "1"/"0" before."""
    return v is True or v == "1" or v == 1


def choose(disks: list[Disk], old_root: OldRoot | None, *, needed: int = MIN_DISK_BYTES) -> Choice:
    """Which disks may be wiped: never a read-only or removable one, one the installer is
    using, or one too small; the old system's root disk is the default when it is the only
    candidate (or the only one that matches), else the user must choose."""
    ok: list[Disk] = []
    refused: list[tuple[Disk, str]] = []
    notes: dict[str, str] = {}
    for d in disks:
        busy = [m for m in d.mounts if not _releasable(m)]
        if d.read_only:
            refused.append((d, "it is read-only"))
        elif d.removable:
            refused.append((d, "it is removable (a USB stick or a virtual CD)"))
        elif busy:
            refused.append(
                (d, printable(f"the installer is using it (mounted on {', '.join(busy)})"))
            )
        elif d.size < needed:
            refused.append((d, f"it holds {size_text(d.size)}; NixOS needs {size_text(needed)}"))
        elif not DEVICE_RE.fullmatch(d.stable_path):
            refused.append((d, f"its path {d.stable_path!r} has characters a script cannot name"))
        else:
            ok.append(d)
            held = sorted({v.kind for v in d.volumes if v.kind not in ("part", "disk")})
            if d.mounts or held:
                what = [*(f"mounted on {m}" for m in d.mounts), *(f"{k} on it" for k in held)]
                notes[d.name] = printable("the wipe first releases it: " + ", ".join(what))
    default, why = None, ""
    old = [d for d in ok if old_root is not None and old_root.matches(d)]
    if len(old) == 1 and (len(ok) == 1 or (old_root is not None and old_root.by_serial)):
        default = old[0]
    elif len(ok) == 1 and old_root is None:
        default, why = ok[0], ""
    elif not ok:
        why = "no disk can be wiped"
    elif len(old) > 1:
        why = "the old system's root spanned several disks; name the one to install on"
    elif len(old) == 1:
        why = (
            f"{old[0].name} has the old root disk's name and size, but no serial proves it is "
            "the same disk (the kernel may name disks in another order); name the one to "
            "install on"
        )
    else:
        why = (
            "the old system's root disk is not among them"
            if old_root is not None
            else "there is more than one disk"
        ) + "; name the one to install on"
    return Choice(tuple(ok), tuple(refused), default, why, notes)


def _releasable(mount: str) -> bool:
    return any(mount == r or mount.startswith(r + "/") for r in RELEASABLE)


# What / is mounted from (-v: a btrfs subvolume's source without its [/@] suffix, which lsblk
# cannot take), every disk under it, and how much of / is used. Also a section of the probe.
OLD_ROOT_SCRIPT = (
    'src=$(findmnt -n -v -o SOURCE -T / 2>/dev/null) && echo "source $src" && '
    'lsblk -n -b -P -s -o NAME,TYPE,SERIAL,SIZE "$src" 2>/dev/null; '
    "df -Pk / 2>/dev/null | awk 'NR == 2 {print \"used\", $3}'"
)


def old_root_command(token: str = OLD_ROOT_TOKEN) -> str:
    """Run on the old system before the kexec: what / is mounted from, every disk under it
    (through partitions, md, LVM and dm-crypt), and how much of / is used."""
    return framed(OLD_ROOT_SCRIPT, token)


PAIRS = re.compile(r'[A-Z]+="[^"\n]*"(?: [A-Z]+="[^"\n]*")*')


def parse_old_root(stdout: str, os_name: str = "", token: str = OLD_ROOT_TOKEN) -> OldRoot | None:
    """The record ``old_root_command`` printed, or None when the old system could not tell
    (a container, a root on ZFS or over the network, no findmnt or lsblk)."""
    own = unframe(stdout, token)
    return None if own is None else old_root_from_lines(own.splitlines(), os_name)


def old_root_from_lines(lines: list[str], os_name: str = "") -> OldRoot | None:
    """The record in the lines ``OLD_ROOT_SCRIPT`` printed; None without a source or a disk."""
    source, disks, used = "", [], None
    for line in lines:
        if line.startswith("source "):
            source = printable(line.removeprefix("source ").strip())
        elif line.startswith("used ") and line[5:].strip().isdigit():
            used = int(line[5:]) * 1024
        elif PAIRS.fullmatch(line):
            row = dict(pair.split("=", 1) for pair in shlex.split(line))
            if row.get("TYPE") == "disk" and row.get("SIZE", "").isdigit():
                disks.append((row.get("NAME", ""), row.get("SERIAL", "").strip(), int(row["SIZE"])))
    if not source or not disks:
        return None
    return OldRoot(source, tuple(disks), used, os_name)


def size_text(n: int) -> str:
    """A size as people read disks: "20.0 GiB", "512 MiB"."""
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n >> 20} MiB"


def what_is_on(disk: Disk, old_root: OldRoot | None) -> str:
    """What the wipe destroys, in a person's words."""
    if old_root is not None and old_root.matches(disk):
        used = f", {size_text(old_root.used_bytes)} used" if old_root.used_bytes else ""
        name = old_root.os_name or "the old system"
        return printable(f"the old system's root file system ({name}{used})")
    found = [
        " ".join(x for x in (v.fstype, v.label and f"“{v.label}”") if x)
        for v in disk.volumes
        if v.fstype
    ]
    if not found:
        return "no file system the installer recognises"
    return printable("file systems: " + ", ".join(found))

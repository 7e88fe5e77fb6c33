"""Wiping, partitioning and mounting the chosen disk on the installer, and proving the result."""

from __future__ import annotations

import json
from shlex import quote as q
from typing import Any

from app.core.disk.disks import Disk
from app.core.disk.layout import MNT, STEP_MARK, Layout, partition_script
from app.core.errors import ConfigError, DiskError, RemoteCommandError
from app.core.remote_sh import framed, unframe
from app.core.ssh.session import Session
from app.core.ssh.streams import LineSink
from app.core.text import printable

# udevadm settle may wait 120 s after each of up to four partitions, and mkfs discards the
# whole device first, which takes minutes on a large thin-provisioned disk.
PARTITION_TIMEOUT = 1800.0
CHECK_TOKEN = "layout"
# sgdisk's type codes as the GPT partition type GUIDs lsblk reports.
TYPE_GUIDS = {
    "EF02": "21686148-6449-6e6f-744e-656564454649",
    "EF00": "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
    "8200": "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f",
    "8300": "0fc63daf-8483-4772-8e79-3d69d8477de4",
}
# What a failure after each step leaves on the disk, in a person's words.
LEFT = {
    "": "The disk was not changed.",
    "release": "The disk was not changed (what held it may have been released: its swap "
    "turned off, its md arrays and LVM volumes stopped; its data is all there).",
    "wipe": "The disk was partly wiped: partition tables and file system signatures may be "
    "gone; the data behind them is still on the disk, but no longer found by its old layout.",
    "partition": "The disk holds a new partition table, perhaps not all of it; its old data "
    "is no longer reachable.",
    "format": "The disk holds the new partitions, not all of them formatted yet.",
    "mount": "The disk is partitioned and formatted, not (or not all) mounted under /mnt.",
    "done": "The disk is partitioned, formatted and mounted under /mnt.",
}


def confirm_wipe(disk: Disk, typed: str) -> None:
    """The user named the disk to wipe: its kernel name (``vda``), its /dev path or the
    stable path the layout uses; anything else (``--yes`` alone) is refused."""
    names = {disk.name, disk.path, disk.stable_path}
    if typed.strip() not in names:
        raise ConfigError(
            f"The disk to wipe was not named: {disk.describe()} is chosen, "
            f"{typed.strip()!r} was typed." if typed.strip() else
            f"The disk to wipe was not named: {disk.describe()} is chosen.",
            "Wiping a disk cannot be undone, so it happens only after its name was typed.",
            f"Pass --yes-wipe {disk.name} (in the wizard, type {disk.name} on the Erase page).",
        )  # fmt: skip


def prepare_disk(
    session: Session,
    layout: Layout,
    disk: Disk,
    *,
    on_line: LineSink | None = None,
    timeout: float = PARTITION_TIMEOUT,
) -> None:
    """Run the app's partitioning script as root on the installer for ``disk`` (the one the
    user confirmed: the script stops unless ``layout.disk`` still is that disk), then read the
    disk back and check it holds exactly the layout. Not cancellable once started: a script
    stopped half-way leaves the disk in a state nobody chose. DiskError names the state left."""
    reached = [""]

    def lines(stream: str, line: str) -> None:
        if stream == "stdout" and line.startswith(STEP_MARK):
            reached[0] = line.removeprefix(STEP_MARK).strip()
        elif on_line is not None:
            on_line(stream, line)

    try:
        res = session.run(
            f"sh -c {q(partition_script(layout, (disk.path, disk.size)))}",
            timeout=timeout,
            privileged=True,
            on_line=lines,
            what=f"partitioning {layout.disk}",
        )
    except RemoteCommandError as exc:  # the deadline passed or the connection broke
        raise DiskError(
            f"Partitioning {layout.disk} did not finish: {exc.what}",
            _left(reached[0]) + " The script may still be running on the server.",
            "Log in to the installer (the ssh command above), wait for the script to end "
            "(ps ax | grep sgdisk), then run the install again: it starts over.",
        ) from exc
    if not res.ok or reached[0] != "done":
        said = printable(res.stderr.strip().splitlines()[-1][:300]) if res.stderr.strip() else ""
        raise DiskError(
            f"Partitioning {layout.disk} failed"
            + (f" while it was at the {reached[0]} step" if reached[0] else "")
            + (f": {said}" if said else f" (exit status {res.status})."),
            _left(reached[0]),
            "Read the installer's words above; fix what they name (a disk still in use, a "
            "missing tool) and run the install again: it starts over from an empty disk.",
        )
    check_layout(session, layout)


def _left(reached: str) -> str:
    """What a script that got as far as ``reached`` left on the disk, and that nothing else
    happened."""
    return LEFT.get(reached, LEFT["wipe"]) + " The installer still runs; nothing rebooted."


def read_back_command(layout: Layout, token: str = CHECK_TOKEN) -> str:
    """The disk's partitions as lsblk sees them now: label, type, file system, mount point."""
    return framed(
        "lsblk -J -b -o PATH,TYPE,PARTLABEL,PARTTYPE,FSTYPE,MOUNTPOINT "
        f'"$(readlink -f {q(layout.disk)})"',
        token,
    )


def layout_problems(layout: Layout, stdout: str, token: str = CHECK_TOKEN) -> list[str]:
    """What differs between the layout and the disk as ``read_back_command`` printed it
    (an empty list when the disk holds exactly the layout)."""
    own = unframe(stdout, token)
    if own is None:
        return ["the disk could not be read back (lsblk's answer did not come back whole)"]
    try:
        rows = _flat(json.loads(own)["blockdevices"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return [f"the disk could not be read back: lsblk said {printable(own.strip()[:300])!r}"]
    parts = {c.get("partlabel"): c for c in rows if c.get("type") == "part"}
    problems = []
    want = layout.partitions()
    if len(parts) != len(want):
        problems.append(f"{len(parts)} partitions where the layout has {len(want)}")
    for p in want:
        got = parts.get(p.label)
        if got is None:
            problems.append(f"no partition labelled {p.label}")
            continue
        if (got.get("parttype") or "").lower() != TYPE_GUIDS[p.typecode]:
            problems.append(f"{p.label} has type {got.get('parttype')}, not {p.typecode}")
        if (got.get("fstype") or "") != p.fs:
            problems.append(f"{p.label} holds {got.get('fstype') or 'no file system'}, not {p.fs}")
        where = (MNT + p.mountpoint).rstrip("/") if p.mountpoint else ""
        if where and got.get("mountpoint") != where:
            now = got.get("mountpoint")
            problems.append(f"{p.label} is mounted on {now}, not {where}" if now
                            else f"{p.label} is not mounted on {where}")  # fmt: skip
    return [printable(x) for x in problems]


def _flat(devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """lsblk's rows, whether it nested them (with a NAME column) or listed them flat."""
    out = []
    for d in devices:
        out += [d, *_flat(d.get("children") or [])]
    return out


def check_layout(session: Session, layout: Layout) -> None:
    """DiskError unless the disk holds exactly the layout, mounted under /mnt."""
    res = session.run(read_back_command(layout), timeout=30, privileged=True,
                      what="reading the new partitions back")  # fmt: skip
    problems = layout_problems(layout, res.stdout) if res.ok else [
        f"lsblk failed: {printable(res.stderr.strip()[:200])}"]  # fmt: skip
    if problems:
        raise DiskError(
            f"{layout.disk} does not hold the layout after partitioning: {'; '.join(problems)}.",
            "The script reported success, but the disk says otherwise; nothing is installed "
            "on a disk the app cannot vouch for. The installer still runs; nothing rebooted.",
            "Look at the disk on the installer (lsblk -f) and run the install again.",
        )

"""The server's disks: the listing as lsblk prints it, which disks may be wiped, the old root disk."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from app.core.disk.disks import (
    Disk,
    OldRoot,
    choose,
    list_command,
    old_root_command,
    parse_disks,
    parse_old_root,
    what_is_on,
)
from app.core.disk.layout import Layout
from app.core.disk.prepare import confirm_wipe, layout_problems
from app.core.errors import ConfigError
from app.core.flow import record
from app.core.probe import Facts, parse_probe, probe_script
from app.core.profiles import ProfileStore
from app.core.remote_sh import framed
from app.core.secrets import SecretStore
from app.core.ssh import Credentials, Target

GiB = 1 << 30


def sh(cmd: str) -> str:
    """``cmd`` run by a real /bin/sh on this machine, as the server's shell runs it."""
    return subprocess.run(
        ["/bin/sh", "-c", cmd], capture_output=True, text=True, timeout=30, check=False
    ).stdout


def dev(name: str, size: int, kind: str = "disk", **kw: Any) -> dict[str, Any]:
    """One lsblk -J row, with the columns the app asks for."""
    row: dict[str, Any] = {
        "name": name, "path": f"/dev/{name}", "type": kind, "size": size, "ro": False,
        "rm": False, "model": None, "serial": None, "tran": None, "fstype": None,
        "label": None, "partlabel": None, "mountpoint": None,
    }  # fmt: skip
    row.update(kw)
    return row


def listing(devices: list[dict[str, Any]], links: str = "") -> str:
    """What list_command prints on a server with these devices and links."""
    body = json.dumps({"blockdevices": devices}) + "\n@@links\n" + links
    return sh(framed(f"cat <<'EOF'\n{body}EOF\n", "disks"))


# An installer's view of a rented server: the old system's disk with an md leftover, a second
# small disk, the provider's virtual CD, a USB stick, the installer's zram swap.
SERVER = [
    dev(
        "vda",
        40 * GiB,
        model="QEMU HARDDISK",
        serial="nkw-1",
        tran="virtio",
        children=[
            dev("vda1", 1 << 20, "part", partlabel="bios"),
            dev("vda2", 39 * GiB, "part", fstype="ext4", label="debian-root"),
            dev(
                "vda3",
                GiB,
                "part",
                fstype="linux_raid_member",
                children=[dev("md127", GiB, "raid1", fstype="swap")],
            ),
        ],
    ),
    dev("vdb", 2 * GiB, serial="small"),
    dev("sr0", 400 << 20, "rom", rm=True),
    dev("sda", 16 * GiB, rm=True, tran="usb", model="Cruzer"),
    dev("zram0", 4 * GiB, mountpoint="[SWAP]"),
]
LINKS = (
    "/dev/disk/by-id/wwn-0x5000 /dev/vda\n"
    "/dev/disk/by-id/virtio-nkw-1 /dev/vda\n"
    "/dev/disk/by-path/pci-0000:00:04.0 /dev/vda\n"
    "/dev/disk/by-path/pci-0000:00:05.0 /dev/vdb\n"
)


def test_the_listing_names_each_disk_by_a_link_a_person_reads_and_lists_what_is_on_it() -> None:
    disks = {d.name: d for d in parse_disks(listing(SERVER, LINKS))}
    assert sorted(disks) == ["sda", "vda", "vdb"]  # no zram, no optical drive
    vda = disks["vda"]
    assert vda.stable_path == "/dev/disk/by-id/virtio-nkw-1"  # not the wwn- number
    assert disks["vdb"].stable_path == "/dev/disk/by-path/pci-0000:00:05.0"  # no by-id link
    assert [v.path for v in vda.volumes] == ["/dev/vda1", "/dev/vda2", "/dev/vda3", "/dev/md127"]
    assert vda.describe() == "vda, 40.0 GiB, QEMU HARDDISK (virtio, serial nkw-1)"
    assert Layout(vda.stable_path).disk == "/dev/disk/by-id/virtio-nkw-1"


def test_the_real_lsblk_of_this_machine_parses() -> None:
    """The command as built, run by a real sh with this machine's util-linux."""
    disks = parse_disks(sh(list_command()))
    assert disks and all(d.path.startswith("/dev/") and d.size > 0 for d in disks)


def test_a_listing_cut_short_is_refused_not_read_as_no_disks() -> None:
    whole = listing(SERVER, LINKS)
    with pytest.raises(ValueError):
        parse_disks(whole[: whole.index("@@links")])


def test_removable_read_only_small_and_busy_disks_are_refused_with_why() -> None:
    devices = [*SERVER, dev("vdc", 50 * GiB, ro=True), dev("vdd", 50 * GiB, children=[
        dev("vdd1", 50 * GiB, "part", fstype="ext4", mountpoint="/nix/.rw-store")])]  # fmt: skip
    choice = choose(parse_disks(listing(devices, LINKS)), None)
    why = {d.name: reason for d, reason in choice.refused}
    assert "removable" in why["sda"] and "read-only" in why["vdc"]
    assert "2.0 GiB" in why["vdb"] and "using it" in why["vdd"] and "/nix/.rw-store" in why["vdd"]
    assert [d.name for d in choice.candidates] == ["vda"]
    assert choice.default is not None and choice.default.name == "vda"
    # What the teardown releases is said, not hidden: the md array left from the old system.
    assert "raid1" in choice.notes["vda"]


def test_an_earlier_try_mounted_on_mnt_is_released_not_refused() -> None:
    devices = [dev("vda", 40 * GiB, children=[
        dev("vda1", 40 * GiB, "part", fstype="ext4", mountpoint="/mnt")])]  # fmt: skip
    choice = choose(parse_disks(listing(devices)), None)
    assert [d.name for d in choice.candidates] == ["vda"] and "/mnt" in choice.notes["vda"]


def test_two_disks_need_a_choice_unless_one_held_the_old_root() -> None:
    devices = [dev("vda", 40 * GiB, serial="a"), dev("vdb", 40 * GiB, serial="b")]
    disks = parse_disks(listing(devices))
    none = choose(disks, None)
    assert none.default is None and "more than one disk" in none.why_no_default
    # The kernel named the disks the other way round after the kexec: the serial decides.
    old = OldRoot("/dev/vda2", (("vda", "b", 40 * GiB),), 5 * GiB, "Debian GNU/Linux 12")
    assert choose(disks, old).default == disks[1]
    elsewhere = OldRoot("/dev/sda2", (("sda", "c", 80 * GiB),))
    assert choose(disks, elsewhere).default is None
    assert "not among them" in choose(disks, elsewhere).why_no_default


def test_without_a_serial_the_old_root_is_matched_by_name_and_size() -> None:
    disks = parse_disks(listing([dev("vda", 40 * GiB), dev("vdb", 40 * GiB)]))
    assert OldRoot("/dev/vdb1", (("vdb", "", 40 * GiB),)).matches(disks[1])
    assert not OldRoot("/dev/vdb1", (("vdb", "", 41 * GiB),)).matches(disks[1])


def test_what_the_wipe_destroys_is_named() -> None:
    vda = parse_disks(listing(SERVER, LINKS))[0]
    old = OldRoot(
        "/dev/vda2", (("vda", "nkw-1", 40 * GiB),), int(18.4 * GiB), "Debian GNU/Linux 12"
    )
    assert what_is_on(vda, old) == (
        "the old system's root file system (Debian GNU/Linux 12, 18.4 GiB used)"
    )
    assert what_is_on(vda, None) == "file systems: ext4 “debian-root”, linux_raid_member, swap"


@pytest.mark.fault
def test_a_hostile_model_serial_or_link_cannot_reach_a_script_or_the_terminal() -> None:
    devices = [dev("vda", 40 * GiB, model="\x1b[2Jx", serial="s\x07")]
    (vda,) = parse_disks(listing(devices, "/dev/disk/by-id/a;reboot /dev/vda\n"))
    assert "\x1b" not in vda.describe() and "\x07" not in vda.describe()
    assert vda.stable_path == "/dev/vda"  # the link a script could not name is not used


def test_old_lsblk_says_flags_as_strings() -> None:
    """util-linux before 2.33 writes "ro": "1" in JSON."""
    devices = [dev("vda", 40 * GiB, ro="1"), dev("vdb", 40 * GiB, ro="0", rm="0")]
    choice = choose(parse_disks(listing(devices)), None)
    assert [d.name for d in choice.candidates] == ["vdb"]


def test_the_old_root_is_recorded_by_the_real_tools_of_this_machine() -> None:
    old = parse_old_root(sh(old_root_command()), "this machine")
    real = sh("findmnt -n -o SOURCE -T /").strip()
    if old is None:  # / on an overlay or a network file system has no disk under it
        assert not real.startswith("/dev/") or "disk" not in sh(f"lsblk -n -s -o TYPE {real}")
        return
    assert old.source == real and old.disks and old.used_bytes is not None
    assert all(size > 0 for _name, _serial, size in old.disks)


def test_the_old_root_through_lvm_and_md_names_every_disk_and_nothing_else() -> None:
    printed = sh(
        framed(
            "printf '%s\\n' 'source /dev/mapper/vg-root' "
            '\'NAME="vg-root" TYPE="lvm" SERIAL="" SIZE="100"\' '
            '\'NAME="md0" TYPE="raid1" SERIAL="" SIZE="100"\' '
            '\'NAME="sda" TYPE="disk" SERIAL="S1 x" SIZE="4000"\' '
            '\'NAME="sdb" TYPE="disk" SERIAL="" SIZE="4000"\' \'used 12\'',
            "oldroot",
        )
    )
    old = parse_old_root(printed)
    assert old == OldRoot("/dev/mapper/vg-root", (("sda", "S1 x", 4000), ("sdb", "", 4000)), 12288)
    assert parse_old_root(printed[:-20]) is None  # cut short: not a record
    assert isinstance(old, OldRoot) and not old.matches(Disk("sdc", "/dev/sdc", 4000))


def _read_back(rows: list[dict[str, Any]]) -> str:
    """What read_back_command prints for these partitions: flat, as lsblk lists them
    without a NAME column."""
    body = json.dumps({"blockdevices": [{"path": "/dev/vdb", "type": "disk"}, *rows]})
    return sh(framed(f"cat <<'EOF'\n{body}\nEOF\n", "layout"))


GOOD = [
    {"path": "/dev/vdb1", "type": "part", "partlabel": "disk-main-boot",
     "parttype": "21686148-6449-6e6f-744e-656564454649", "fstype": None, "mountpoint": None},
    {"path": "/dev/vdb2", "type": "part", "partlabel": "disk-main-ESP",
     "parttype": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "fstype": "vfat",
     "mountpoint": "/mnt/boot"},
    {"path": "/dev/vdb3", "type": "part", "partlabel": "disk-main-root",
     "parttype": "0fc63daf-8483-4772-8e79-3d69d8477de4", "fstype": "ext4", "mountpoint": "/mnt"},
]  # fmt: skip


def test_the_disk_read_back_must_hold_exactly_the_layout() -> None:
    layout = Layout("/dev/disk/by-id/virtio-nkw-disk-1")
    assert layout_problems(layout, _read_back(GOOD)) == []
    wrong = [dict(GOOD[0]), dict(GOOD[1], fstype="ext4"), dict(GOOD[2], mountpoint=None)]
    assert layout_problems(layout, _read_back(wrong)) == [
        "disk-main-ESP holds ext4, not vfat",
        "disk-main-root is not mounted on /mnt",
    ]
    assert layout_problems(layout, _read_back(GOOD[1:])) == [
        "2 partitions where the layout has 3",
        "no partition labelled disk-main-boot",
    ]
    cut = _read_back(GOOD)
    assert layout_problems(layout, cut[: len(cut) // 2]) != []


def test_a_wipe_happens_only_for_the_disk_named() -> None:
    (vda,) = parse_disks(listing([dev("vda", 40 * GiB, serial="nkw-1")],
                                 "/dev/disk/by-id/virtio-nkw-1 /dev/vda\n"))  # fmt: skip
    for typed in ("vda", "/dev/vda", "/dev/disk/by-id/virtio-nkw-1", " vda\n"):
        confirm_wipe(vda, typed)
    for typed in ("", "yes", "vdb", "VDA", "/dev/vd"):
        with pytest.raises(ConfigError) as err:
            confirm_wipe(vda, typed)
        assert "--yes-wipe vda" in err.value.fix


@pytest.mark.fault
def test_two_disks_with_one_serial_are_named_by_their_bus_path() -> None:
    """udev gives the one by-id link of a duplicated serial to either disk, and may move it."""
    devices = [dev("vda", 40 * GiB, serial="clone"), dev("vdb", 40 * GiB, serial="clone")]
    links = ("/dev/disk/by-id/virtio-clone /dev/vdb\n/dev/disk/by-path/pci-0000:00:04.0 /dev/vda\n"
             "/dev/disk/by-path/pci-0000:00:05.0 /dev/vdb\n")  # fmt: skip
    vda, vdb = parse_disks(listing(devices, links))
    assert vdb.stable_path == "/dev/disk/by-path/pci-0000:00:05.0"
    assert vda.stable_path == "/dev/disk/by-path/pci-0000:00:04.0"


@pytest.mark.fault
def test_an_old_root_known_only_by_name_is_no_default_among_several_disks() -> None:
    """The kernel may name the disks in another order after the kexec."""
    disks = parse_disks(listing([dev("vda", 40 * GiB), dev("vdb", 40 * GiB)]))
    choice = choose(disks, OldRoot("/dev/vda1", (("vda", "", 40 * GiB),)))
    assert choice.default is None and "no serial" in choice.why_no_default
    alone = choose(disks[:1], OldRoot("/dev/vda1", (("vda", "", 40 * GiB),)))
    assert alone.default == disks[0]


@pytest.mark.fault
def test_a_mount_point_from_the_server_reaches_no_terminal_raw() -> None:
    devices = [dev("vda", 40 * GiB, children=[
        dev("vda1", 40 * GiB, "part", fstype="ext4", mountpoint="/srv/\x1b[2Jx")])]  # fmt: skip
    (why,) = [r for _d, r in choose(parse_disks(listing(devices)), None).refused]
    assert "\x1b" not in why and "\\x1b" in why


def test_the_probe_records_the_root_disk_of_the_system_it_runs_on(tmp_path: Path) -> None:
    """The probe itself, run here: its old-root section is this machine's / and its disks."""
    facts = parse_probe(sh(probe_script(str(tmp_path / "staging"), "")))
    real = sh("findmnt -n -v -o SOURCE -T /").strip()
    disks = sh(f"lsblk -n -s -r -o NAME,TYPE {real} 2>/dev/null").split()
    if "disk" not in disks:  # / on an overlay, a tmpfs or a network: no disk to record
        assert facts.old_root is None
        return
    assert facts.old_root is not None and facts.old_root.source == real
    assert [name for name, _serial, _size in facts.old_root.disks] == [
        disks[i - 1] for i, word in enumerate(disks) if word == "disk"
    ]
    assert facts.old_root.os_name == facts.os_release.get("PRETTY_NAME", "")


def test_the_profile_keeps_the_old_root_through_the_installer(tmp_path: Path) -> None:
    """Seen on the old system before the kexec; the installer's probe (its / is RAM) has
    none and must not erase it, since the install onto the disk needs it afterwards."""
    store = ProfileStore(tmp_path / "profiles.json")
    target = Target("203.0.113.9", 22, "root")
    old = OldRoot("/dev/vda2", (("vda", "nkw-1", 40 * GiB),), 5 * GiB, "Debian GNU/Linux 12")
    before = Facts(os_release={"ID": "debian"}, old_root=old)
    after = Facts(os_release={"ID": "nixos", "VARIANT_ID": "installer"})
    for facts in (before, after):
        record(store, SecretStore(), "web-1", target=target, creds=Credentials(),
               host_key="", facts=facts)  # fmt: skip
    kept = store.load()["web-1"].old_root
    assert OldRoot.from_json(kept) == old
    assert OldRoot.from_json(json.loads(json.dumps(kept))) == old  # as profiles.json holds it
    assert OldRoot.from_json({"source": "/dev/vda", "disks": "nonsense"}) is None

"""The one-disk layout: the disko file the app writes, evaluated by the real disko, matches its script."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from app.core.disk.layout import Layout, disko_nix, partition_script
from tests.test_dead_man import VENDOR

DISKO = next(iter(sorted(VENDOR.glob("disko-*.tar.gz"))), None)
NIXPKGS_LIB = next(iter(sorted(VENDOR.glob("nixpkgs-lib-*.tar.gz"))), None)
EVAL = """{ layout }:
let
  lib = import ./nixpkgs-lib/lib;
  diskoLib = import ./disko/lib { inherit lib; makeTest = null; eval-config = null; qemu-common = null; };
  cfg = lib.evalModules {
    modules = [ { options.disko.devices = lib.mkOption { type = diskoLib.toplevel; }; } layout ];
  };
in cfg.config.disko.devices._create + cfg.config.disko.devices._mount
"""
LAYOUTS = {
    "x86_64": Layout("/dev/disk/by-id/virtio-nkw-disk-1"),
    "x86_64 with swap": Layout("/dev/vda", swap_mib=2048),
    "aarch64": Layout("/dev/disk/by-path/platform-a003e00.virtio_mmio", arch="aarch64"),
}


def _nix() -> str:
    nix = shutil.which("nix-instantiate")
    if nix is None:
        pytest.skip("needs Debian's nix-bin (tests/setup-host.sh installs it)")
    return nix


def unpack_disko(into: Path) -> Path | None:
    """The vendored disko and nixpkgs lib, unpacked into ``into``, with the evaluation that
    prints the commands disko itself would run (create, then mount); None when the vendored
    sources or Debian's nix-bin are not here."""
    if DISKO is None or NIXPKGS_LIB is None or shutil.which("nix-instantiate") is None:
        return None
    for archive in (DISKO, NIXPKGS_LIB):
        with tarfile.open(archive) as t:
            t.extractall(into, filter="data")
    (into / "eval.nix").write_text(EVAL)
    return into


@pytest.fixture(scope="module")
def disko(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """disko, unpacked once for the module (see unpack_disko)."""
    root = unpack_disko(tmp_path_factory.mktemp("disko"))
    if root is None:
        pytest.skip(f"needs the vendored disko and nixpkgs lib in {VENDOR} and nix-bin")
    return root


def disko_ops(disko: Path, layout: Layout, tmp_path: Path) -> list[tuple[str, ...]]:
    """What disko's own script does to the disk for the disko file the app keeps."""
    (tmp_path / "disko.nix").write_text(disko_nix(layout))
    r = subprocess.run(
        [_nix(), "--eval", "--strict", "--json", str(disko / "eval.nix"),
         "--arg", "layout", str(tmp_path / "disko.nix")],
        cwd=disko, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return _ops(json.loads(r.stdout), layout.disk)


def _ops(script: str, disk: str) -> list[tuple[str, ...]]:
    """What a script does to the disk, in order: new partitions (number, end, label, type
    code), file systems made, swap made, and mounts (device, where, type, options). Not the
    app's `swapon`: disko's mount script (this version) leaves swap off; nixos-install wants it."""
    text = script.replace("\\\n", " ")
    ops: list[tuple[str, ...]] = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0] == "then":
            continue
        if (words[0] == "sgdisk" and any(w.startswith("--new=") for w in words)) or (
            words[:2] == ["if", "!"] and "--new=" in line
        ):
            get = {w.split("=", 1)[0]: w.split("=", 1)[1].strip('"') for w in words if "=" in w}
            ops.append(("new", get["--new"], get["--change-name"], get["--typecode"]))
        elif words[0].startswith("mkfs."):
            ops.append(("mkfs", words[0].removeprefix("mkfs."), words[-1].strip('"')))
        elif words[0] == "mkswap":
            ops.append(("mkswap", words[-1].strip('"')))
        elif words[0] == "mount" and len(words) > 2:
            dev, where = words[1].strip('"'), words[2].strip('"').rstrip("/") or "/"
            opts = [words[i + 1].strip("'") for i, w in enumerate(words) if w == "-o"]
            ops.append(("mount", dev, where, words[words.index("-t") + 1].strip('"'),
                        ",".join(sorted(opts))))  # fmt: skip
    return ops


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_the_app_partitions_as_disko_would_from_the_file_it_keeps(
    name: str, disko: Path, tmp_path: Path
) -> None:
    layout = LAYOUTS[name]
    theirs = disko_ops(disko, layout, tmp_path)
    # The app names each partition through the disk ("$(part N)"), disko by its label: the
    # same partition, here written as disko writes it.
    script = partition_script(layout).replace('"$disk"', layout.disk)
    for n, p in enumerate(layout.partitions(), start=1):
        script = script.replace(f'"$(part {n})"', p.device)
    ours = _ops(script, layout.disk)
    assert ours == theirs
    assert ("new", "1:0:+1M", "1:disk-main-boot", "1:EF02") in ours or name == "aarch64"
    assert ours[-1][0] == "mount" and ours[-1][2] == "/mnt/boot" and "umask=0077" in ours[-1][4]


def test_the_disko_file_parses_and_names_the_disk_the_user_chose(tmp_path: Path) -> None:
    text = disko_nix(LAYOUTS["x86_64 with swap"])
    (tmp_path / "disko.nix").write_text(text)
    r = subprocess.run([_nix(), "--parse", str(tmp_path / "disko.nix")],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert 'device = "/dev/vda";' in text and re.search(r'swap = \{\n\s+size = "2048M"', text)


@pytest.mark.parametrize(
    "bad",
    [dict(disk="/dev/sda; reboot"), dict(disk="sda"), dict(disk="/dev/vda", root_fs="zfs"),
     dict(disk="/dev/vda", esp_mib=10)],
)  # fmt: skip
def test_a_layout_the_scripts_could_not_name_safely_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Layout(**bad)  # type: ignore[arg-type]


def test_the_script_stops_at_the_first_failure_and_releases_the_disk_first() -> None:
    script = partition_script(LAYOUTS["x86_64"]).splitlines()
    assert script[0] == "set -eu"
    wipe = next(i for i, ln in enumerate(script) if "wipefs" in ln)
    for holder in ("swapoff", "mdadm --stop", "vgchange -an", "umount -R /mnt"):
        assert next(i for i, ln in enumerate(script) if holder in ln) < wipe, holder
    assert wipe < next(i for i, ln in enumerate(script) if ln.startswith("sgdisk --align-end"))


@pytest.mark.fault
def test_partitions_are_named_through_the_confirmed_disk_never_by_a_label_another_may_hold() -> (
    None
):
    """A label like disk-main-root can also be on another disk (an earlier install): udev may
    point /dev/disk/by-partlabel at either, and mkfs would format the other disk."""
    script = partition_script(LAYOUTS["x86_64 with swap"], ("/dev/vda", 20 << 30))
    assert "by-partlabel" not in script
    lines = script.splitlines()
    guard = next(i for i, ln in enumerate(lines) if "not the disk that was confirmed" in ln)
    assert guard < lines.index("echo '@@nkw step release'")
    assert '[ "$disk" != /dev/vda ]' in script and "!= 21474836480 ]" in script
    assert 'mkfs.ext4 "$(part 4)"' in script and 'mount "$(part 2)" /mnt/boot' in script


@pytest.mark.fault
def test_the_wipe_clears_old_boot_code_and_a_retry_releases_the_last_swapfile() -> None:
    """After a failed install the swapfile on /mnt is still on (umount -R failed "busy"), and
    an old boot loader's bytes are not a signature wipefs removes: both would fool the app."""
    lines = partition_script(LAYOUTS["x86_64"], ("/dev/vda", 20 << 30)).splitlines()
    swapfiles = next(i for i, ln in enumerate(lines) if "/proc/swaps" in ln)
    assert swapfiles < next(i for i, ln in enumerate(lines) if "umount -R /mnt" in ln)
    assert "2>/dev/null" not in next(ln for ln in lines if "umount -R /mnt" in ln)
    mbr = lines.index('dd if=/dev/zero of="$disk" bs=440 count=1 conv=notrunc status=none')
    assert lines.index("echo '@@nkw step wipe'") < mbr
    assert 'dd if=/dev/zero of="$(part 1)" bs=1M count=1 status=none' in lines  # BIOS boot
    held = next(i for i, ln in enumerate(lines) if ln.startswith("held=$("))
    assert held < lines.index("echo '@@nkw step wipe'")  # dm-crypt, LVM, md left: stop first

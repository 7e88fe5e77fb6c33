"""The disk step on a real Debian with systemd and udev: list, choose, refuse a busy disk, partition."""

from __future__ import annotations

import io
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.core.disk.config import Network, SystemConfig, configuration_nix
from app.core.disk.disks import choose, list_command, parse_disks
from app.core.disk.install import install_nixos, nixpkgs_url, parse_version, version_command
from app.core.disk.layout import Layout, disko_nix
from app.core.disk.prepare import confirm_wipe, prepare_disk
from app.core.errors import ConfigError, DiskError
from app.core.kinds import PrivilegeKind
from app.core.privilege import establish_privilege
from app.core.probe import Facts
from app.core.settings import Settings
from app.core.ssh import Credentials, KnownHosts, Target
from app.core.ssh.auth import AuthMethod
from app.core.ssh.session import ConnectOptions, Session, connect
from tests.support.cache_server import CacheServer
from tests.support.gpt import file_system, read_gpt
from tests.test_disk_layout import disko_ops, unpack_disko
from tests.vm.qemu import STAGE_TIMINGS, VM
from tests.vm.test_dead_man import trixie
from tests.vm.test_debian import BOOT_DEADLINE

HERE = Path(__file__).resolve().parent
DISK_GIB = 12
SERIAL = "nkw-disk-1"
# The old system's data disk as a rented server may have it: two partitions in an md mirror
# (the installer assembled it at boot) holding an ext4 file system.
LEFTOVERS = (
    "sgdisk --zap-all /dev/vdb >/dev/null; sgdisk -n1:0:+1G -t1:FD00 -n2:0:+1G -t2:FD00 /dev/vdb"
    " >/dev/null && udevadm settle && yes | mdadm --create /dev/md0 --level=1 --raid-devices=2 "
    "--metadata=1.2 --run /dev/vdb1 /dev/vdb2 2>&1 && mkfs.ext4 -q -L old-data /dev/md0"
)


def _tools() -> Path:
    out = subprocess.run(["bash", str(HERE / "disk-tools.sh")], capture_output=True, text=True,
                         timeout=900, check=True)  # fmt: skip
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def installer(make_vm: Callable[..., VM], tmp_path: Path) -> Iterator[tuple[VM, Path]]:
    """Debian trixie (systemd 257 and its udev, as the NixOS installer has; its own root on
    vda, as the installer's RAM root is in use) with a blank 12 GiB disk, vdb, serial
    nkw-disk-1, and a stand-in binary cache and nixpkgs archive at GUEST_HTTP. The disk step
    does not care how the system came up, so there is no kexec."""
    image = tmp_path / "disk.img"
    with image.open("wb") as f:
        f.truncate(DISK_GIB << 30)
    t0 = time.monotonic()
    with CacheServer() as cache:  # the binary cache and nixpkgs archive, at GUEST_HTTP
        vm = make_vm(BOOT_DEADLINE, distro=trixie(), disks=((image, SERIAL),), http_port=cache.port)
        STAGE_TIMINGS.append(f"[{vm.accel}] debian trixie + a blank disk: booted in "
                             f"{time.monotonic() - t0:.1f} s")  # fmt: skip
        yield vm, image


def _standins() -> bytes:
    """nixos-install, nixos-generate-config and nixos-version stand-ins, as a tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for f in sorted((HERE / "nixos-standins").iterdir()):
            tar.add(f, arcname=f.name)
    return buf.getvalue()


def _session(vm: VM, bed: Path, tmp_path: Path) -> Session:
    pub = (trixie() / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{vm.port} {pub[0]} {pub[1]}\n")
    target = Target("127.0.0.1", vm.port, "deploy", identity_files=(str(bed / "client_ed25519"),))
    s = connect(target, Credentials(method=AuthMethod.KEY, use_agent=False),
                KnownHosts(kh, user_file=tmp_path / "none"), ConnectOptions(timeout=30))  # fmt: skip
    # The cloud user with passwordless sudo; establish_privilege proves sudo gives uid 0.
    establish_privilege(s, Facts(user="deploy", privilege=PrivilegeKind.SUDO), None, Settings())
    return s


def _root(s: Session, cmd: str, timeout: float = 120) -> str:
    res = s.run(cmd, timeout=timeout, privileged=True, what="test bed set-up")
    assert res.ok, res.stdout[-2000:] + res.stderr[-2000:]
    return res.stdout


@pytest.mark.timeout(900)
def test_a_busy_disk_is_refused_then_partitioned_as_disko_would_and_installed(
    installer: tuple[VM, Path], bed: Path, tmp_path: Path
) -> None:
    vm, image = installer
    tools = _tools()
    with _session(vm, bed, tmp_path) as s:
        res = s.run("cat > /tmp/disk-tools.tar.gz", stdin=tools.read_bytes(), timeout=120)
        assert res.ok, res.stderr
        res = s.run("cat > /tmp/standins.tar", stdin=_standins(), timeout=60)
        assert res.ok, res.stderr
        _root(s, "tar -xzf /tmp/disk-tools.tar.gz -C /opt && "
                 "ln -sf /opt/nkw-disk-tools/* /usr/local/sbin/ && "
                 "tar -xf /tmp/standins.tar -C /usr/local/sbin")  # fmt: skip
        _root(s, LEFTOVERS)
        _root(s, "mkdir -p /srv/old && mount /dev/md0 /srv/old && echo kept > /srv/old/f")

        # In use (mounted outside /mnt): refused when listed...
        disks = parse_disks(s.run(list_command(), timeout=60).stdout)
        choice = choose(disks, None)
        why = {d.name: reason for d, reason in choice.refused}
        assert "/srv/old" in why["vdb"] and "using it" in why["vdb"]
        assert "using it" in why["vda"]  # the stand-in's own root
        vdb = next(d for d in disks if d.name == "vdb")
        assert vdb.stable_path == f"/dev/disk/by-id/virtio-{SERIAL}"
        layout = Layout(vdb.stable_path, swap_mib=512)
        with pytest.raises(ConfigError):
            confirm_wipe(vdb, "")  # --yes alone names no disk
        # ...and, mounted after it was chosen, the script stops before the wipe.
        with pytest.raises(DiskError) as err:
            prepare_disk(s, layout, vdb)
        assert "release" in err.value.what and "not changed" in err.value.why
        assert _root(s, "cat /srv/old/f; blkid -s LABEL -o value /dev/md0").split() == [
            "kept", "old-data"]  # fmt: skip

        _root(s, "umount /srv/old")
        choice = choose(parse_disks(s.run(list_command(), timeout=60).stdout), None)
        assert choice.default is not None and choice.default.name == "vdb"
        assert "raid1" in choice.notes["vdb"]  # the teardown stops the array: said
        confirm_wipe(choice.default, "vdb")
        t0 = time.monotonic()
        said: list[str] = []
        prepare_disk(s, layout, choice.default, on_line=lambda _stream, line: said.append(line))
        took = time.monotonic() - t0
        mounts = _root(s, "findmnt -rn -o TARGET,FSTYPE -R /mnt; swapon --show=NAME --noheadings; "
                          "cat /proc/mdstat; sync")  # fmt: skip
        STAGE_TIMINGS.append(f"[{vm.accel}] wipe md leftovers, partition, format, mount "
                             f"{DISK_GIB} GiB: {took:.1f} s")  # fmt: skip
    assert "/mnt ext4" in mounts and "/mnt/boot vfat" in mounts and "md0" not in mounts
    assert "/dev/vdb3" in mounts  # the swap partition is on, for nixos-install's evaluation
    assert any("operation has completed successfully" in line for line in said)  # sgdisk's words
    assert not any(line.startswith("@@nkw step") for line in said)  # the app's markers, not shown

    # What the host reads in the image's bytes: disko's table and file systems, nothing older.
    parts = read_gpt(image)
    assert [(p.number, p.typecode, p.label) for p in parts] == [
        (1, "EF02", "disk-main-boot"), (2, "EF00", "disk-main-ESP"),
        (3, "8200", "disk-main-swap"), (4, "8300", "disk-main-root"),
    ]  # fmt: skip
    assert [p.size for p in parts[:3]] == [1 << 20, 512 << 20, 512 << 20]
    disko = unpack_disko(tmp_path / "disko")
    if disko is not None:  # the table disko's own script makes from the disko file kept
        theirs = [(op[2], op[3]) for op in disko_ops(disko, layout, tmp_path) if op[0] == "new"]
        assert theirs == [(f"{p.number}:{p.label}", f"{p.number}:{p.typecode}") for p in parts]
    assert parts[3].size > (DISK_GIB - 2) << 30
    assert [file_system(image, p) for p in parts] == ["", "vfat", "swap", "ext4"]

    # nixos-install (a stand-in) on the mounted disk: a failure half-way and a boot loader that
    # died are errors, never a reboot; then the install whose result is read back.
    key = " ".join((bed / "client_ed25519.pub").read_text().split()[:2])
    disko_text = disko_nix(layout)
    with _session(vm, bed, tmp_path) as s:
        release = parse_version(_root(s, version_command()))
        assert release is not None and release.state_version == "26.05"
        url = nixpkgs_url(release.revision, "http://127.0.0.1:9/nixpkgs")
        cfg = SystemConfig("web-1", release.state_version, (key,))
        config_text, _notes = configuration_nix(cfg, layout, Network())
        for mode, words in (("fails-halfway", "nixos-install failed"),
                            ("no-bootloader", "said it finished, but the disk lacks")):  # fmt: skip
            _root(s, f"echo {mode} > /etc/nkw-standin-mode")
            with pytest.raises(DiskError) as err:
                install_nixos(s, layout, config_text, disko_text, url, swapfile_mib=256)
            assert words in err.value.what and "nothing rebooted" in err.value.why
        assert "/mnt/boot/grub/grub.cfg" in err.value.what and "mbr" in err.value.what
        _root(s, "echo ok > /etc/nkw-standin-mode")
        said: list[str] = []
        copied: list[int] = []
        t0 = time.monotonic()
        installed = install_nixos(s, layout, config_text, disko_text, url, swapfile_mib=256,
                                  on_line=lambda _s, line: said.append(line),
                                  on_copied=copied.append)  # fmt: skip
        STAGE_TIMINGS.append(f"[{vm.accel}] configuration, swapfile, nixos-install (stand-in): "
                             f"{time.monotonic() - t0:.1f} s")  # fmt: skip
        assert installed.missing == () and installed.toplevel.endswith(
            f"-nixos-system-web-1-{release.version}"
        )
        assert copied == [1, 2, 3, 4, 5, 6] and "installation finished!" in said
        on_disk = _root(s, "cat /mnt/etc/nixos/configuration.nix; echo @@; "
                           "cat /mnt/etc/nixos/disko-config.nix; echo @@; "
                           "cat /mnt/etc/nixos/hardware-configuration.nix; echo @@; "
                           "cat /mnt/etc/ssh/ssh_host_ed25519_key.pub; "
                           "stat -c %a /mnt/etc/ssh/ssh_host_ed25519_key; "
                           "swapon --show=NAME --noheadings")  # fmt: skip
        # "Run the install again: it starts over": with the swapfile on and /mnt mounted.
        prepare_disk(s, layout, choice.default)
        again = _root(s, "swapon --show=NAME --noheadings; ls /mnt")
    ours, disko_on_disk, hardware, keys = on_disk.split("@@\n")
    assert ours == config_text and disko_on_disk == disko_text
    assert 'fileSystems."/" = { device = "/dev/disk/by-uuid/' in hardware
    assert 'fileSystems."/boot"' in hardware
    pub = " ".join((trixie() / "ssh_host_ed25519_key.pub").read_text().split()[:2])
    assert keys.split()[:2] == pub.split() and keys.split()[3] == "600"  # mode kept
    assert "/mnt/var/lib/swapfile" in keys
    assert "/mnt/var/lib/swapfile" not in again and "etc" not in again.split()  # a new, empty root

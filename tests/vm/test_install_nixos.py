"""`install-nixos` from the command line on a stand-in installer: asks, refuses, fails, installs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.support.gpt import file_system, read_gpt
from tests.test_cli import Run, cli
from tests.vm.qemu import GUEST_HTTP, STAGE_TIMINGS, VM
from tests.vm.test_dead_man import trixie
from tests.vm.test_disk_prepare import SERIAL, _root, _session, _standins, _tools
from tests.vm.test_disk_prepare import installer as installer  # the fixture: trixie + a disk

# What makes trixie the installer for the probe, as the kexec installer is: its os-release, and
# root's key as `kexec/run` carried it over (plain, without the cloud image's forced command).
INSTALLER_OS_RELEASE = (
    'NAME=NixOS\nID=nixos\nVERSION_ID="26.05"\nPRETTY_NAME="NixOS 26.05 (Yarara)"\n'
    "VARIANT_ID=installer\nVARIANT=Installer\n"
)


def _as_installer(vm: VM, bed: Path, tmp_path: Path) -> None:
    tools = _tools()
    key = (bed / "client_ed25519.pub").read_text().strip()
    with _session(vm, bed, tmp_path) as s:
        assert s.run("cat > /tmp/disk-tools.tar.gz", stdin=tools.read_bytes(), timeout=120).ok
        assert s.run("cat > /tmp/standins.tar", stdin=_standins(), timeout=60).ok
        _root(s, "tar -xzf /tmp/disk-tools.tar.gz -C /opt && "
                 "ln -sf /opt/nkw-disk-tools/* /usr/local/sbin/ && "
                 "tar -xf /tmp/standins.tar -C /usr/local/sbin && "
                 f"rm /etc/os-release && printf '{INSTALLER_OS_RELEASE}' > /etc/os-release && "
                 f"printf '%s\\n' '{key}' > /root/.ssh/authorized_keys")  # fmt: skip


def _install_nixos(
    vm: VM, bed: Path, tmp_path: Path, what: str, *args: str, profile: bool = False
) -> Run:
    """`install-nixos --json` at the VM, or (``profile``) at the installer the profile keeps."""
    kh = tmp_path / "known_hosts"
    pub = (trixie() / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    kh.write_text(f"[127.0.0.1]:{vm.port} {pub[0]} {pub[1]}\n")
    t0 = time.monotonic()
    r = cli(
        "install-nixos", "--json", "--known-hosts", str(kh), "--allow-http",
        "--nixpkgs-archive", f"http://{GUEST_HTTP}/nixpkgs", *(() if "--binary-cache" in args
        else ("--binary-cache", f"http://{GUEST_HTTP}/cache")),
        *(("--profile", "web") if profile else (f"root@127.0.0.1:{vm.port}", "-i",
          str(bed / "client_ed25519"), "--save-profile", "web")), *args, timeout=600,
    )  # fmt: skip
    timings = next((e["timings"] for e in r.events if e.get("timings")), {})
    stages = ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
    STAGE_TIMINGS.append(f"[{vm.accel}] install-nixos, {what}: exit {r.code} in "
                         f"{time.monotonic() - t0:.1f} s ({stages or 'no stage ran'})")  # fmt: skip
    return r


@pytest.mark.timeout(1200)
def test_install_nixos_asks_for_the_disk_by_name_fails_safely_and_installs(
    installer: tuple[VM, Path], bed: Path, tmp_path: Path
) -> None:
    vm, image = installer
    _as_installer(vm, bed, tmp_path)

    # A binary cache the installer cannot reach stops the install before the question.
    r = _install_nixos(vm, bed, tmp_path, "no binary cache", "--yes-wipe", "vdb",
                       "--binary-cache", f"http://{GUEST_HTTP}/elsewhere")  # fmt: skip
    assert r.code == 30, r.stdout[-3000:] + r.stderr[-2000:]
    assert f"http://{GUEST_HTTP}/elsewhere/nix-cache-info (HTTP 404)" in r.result["error"]["what"]
    assert "--binary-cache" in r.result["error"]["fix"]
    with image.open("rb") as f:
        assert not f.read(2 << 20).strip(b"\0")

    # No --yes-wipe (from a script: the question becomes the error naming the option), then
    # the wrong disk's name: nothing is written either time.
    for typed in ((), ("--yes-wipe", "vda")):
        r = _install_nixos(vm, bed, tmp_path, f"wipe confirmed by {typed or 'nothing'}", *typed)
        assert r.code == 2, r.stdout[-3000:] + r.stderr[-2000:]
        error = r.result["error"]
        assert "--yes-wipe vdb" in error["fix"] and "erases vdb, 12.0 GiB" in error["what"]
        assert "This cannot be undone" in error["why"]
        with image.open("rb") as f:
            assert not f.read(2 << 20).strip(b"\0")  # the blank disk's start, untouched
    plans = [e["plan"]["disk"] for e in r.events if e["event"] == "plan"]
    assert plans[0]["disk"] == f"/dev/disk/by-id/virtio-{SERIAL}"  # the one disk that can take it
    assert plans[0]["release"] == "26.05.20261120.4f3c2a1" and plans[0]["swapfile_mib"] >= 1024

    # nixos-install fails half-way: its own outcome, the disk's state named, no reboot.
    with _session(vm, bed, tmp_path) as s:
        boot_id = _root(s, "echo fails-halfway > /etc/nkw-standin-mode; "
                           "cat /proc/sys/kernel/random/boot_id")  # fmt: skip
    r = _install_nixos(vm, bed, tmp_path, "nixos-install fails", "--yes-wipe", "vdb")
    assert r.code == 50, r.stdout[-3000:] + r.stderr[-2000:]
    assert r.result["outcome"] == "disk" and "nothing rebooted" in r.result["error"]["why"]

    with _session(vm, bed, tmp_path) as s:
        _root(s, "echo ok > /etc/nkw-standin-mode")
    # By the profile alone: the installer it keeps (root, the key that proved it).
    r = _install_nixos(vm, bed, tmp_path, "installs", "--yes-wipe", "vdb", "--hostname",
                       "web-1", "--timezone", "Europe/Berlin", profile=True)  # fmt: skip
    assert r.code == 0, r.stdout[-3000:] + r.stderr[-2000:]
    res = r.result
    assert res["outcome"] == "nixos-installed" and res["disk_name"] == "vdb"
    assert res["toplevel"].endswith("-nixos-system-web-1-26.05.20261120.4f3c2a1")
    assert set(res["timings"]) == {"disks", "partition", "nixos-install"}
    folder = Path(res["configuration"])
    assert folder.is_relative_to(tmp_path)
    with _session(vm, bed, tmp_path) as s:
        on_disk = _root(s, "cat /mnt/etc/nixos/configuration.nix; echo @@; "
                           "cat /mnt/etc/nixos/disko-config.nix; echo @@; "
                           "cat /proc/sys/kernel/random/boot_id")  # fmt: skip
    ours, disko, still = on_disk.split("@@\n")
    assert still == boot_id  # nothing rebooted the server, after the error nor after the install
    assert ours == (folder / "configuration.nix").read_text()
    assert disko == (folder / "disko-config.nix").read_text()
    assert 'networking.hostName = "web-1";' in ours and '"Europe/Berlin"' in ours
    key = " ".join((bed / "client_ed25519.pub").read_text().split()[:2])
    assert key in ours  # root's key as the installer had it, the one the app logs in with
    assert [file_system(image, p) for p in read_gpt(image)] == ["", "vfat", "ext4"]
    profiles = json.loads((tmp_path / "app" / "config" / "profiles.json").read_text())
    (web,) = [p for p in profiles["profiles"] if p["name"] == "web"]
    assert web["state"] == "installed" and web["system"] == str(folder)

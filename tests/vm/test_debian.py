"""Real Debian servers: debootstrapped, systemd as PID 1, Debian's sshd, a cloud-style login."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_cli import Run, cli
from tests.vm.qemu import STAGE_TIMINGS, VM, debian_origin
from tests.vm.test_kexec import TIMEOUTS, ssh

# Each release in one VM or two (every VM boot costs about a minute under TCG): bullseye
# (kernel 5.10: run's branch without --kexec-syscall-auto, ifupdown) by DHCP, bookworm
# (ifupdown) by DHCP and static, trixie (systemd-networkd) static here and by DHCP through the
# wizard (tests/vm/test_wizard.py).
CASES = [("bullseye", "dhcp"), ("bookworm", "dhcp"), ("bookworm", "static"), ("trixie", "static")]
BOOT_DEADLINE = 240.0  # systemd under TCG: about 30 s here, slower on a loaded machine


@functools.cache
def origin_of(release: str) -> Path:
    """A release's origin (built once, cached by its inputs' hash)."""
    return debian_origin(release)


def install_as(
    vm: VM, bed: Path, user: str, what: str, *args: str, env: dict[str, str] | None = None
) -> Run:
    """``install --json`` as ``user`` with the test bed's key; the stage timings are kept."""
    t0 = time.monotonic()
    r = cli(
        "install", "--json", "--yes", "--accept-new-host-key", f"{user}@127.0.0.1:{vm.port}",
        "-i", str(bed / "client_ed25519"), "--transfer", "upload", *TIMEOUTS, *args,
        env=env, timeout=400,
    )  # fmt: skip
    timings = next((e["timings"] for e in r.events if e.get("timings")), {})
    stages = ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
    STAGE_TIMINGS.append(
        f"[{vm.accel}] {what}: exit {r.code} in {time.monotonic() - t0:.1f} s "
        f"({stages or 'no stage ran'})"
    )
    return r


def _install(vm: VM, bed: Path, user: str, what: str) -> Run:
    return install_as(vm, bed, user, what, "--image", str(bed / "installer-ok.tar.gz"))


@pytest.mark.timeout(1200)  # a boot, then two installs of up to 400 s each
@pytest.mark.parametrize(("release", "address"), CASES, ids=[f"{r}-{a}" for r, a in CASES])
def test_a_cloud_style_debian_server_boots_the_installer_with_its_host_key(
    make_vm: Callable[..., VM], bed: Path, release: str, address: str, tmp_path: Path
) -> None:
    origin = origin_of(release)
    static = address == "static"
    t0 = time.monotonic()
    vm = make_vm(
        BOOT_DEADLINE, distro=origin, guest_ip="10.0.2.15" if static else "",
        append="nkw.static=10.0.2.15/24,10.0.2.2" if static else "",
    )  # fmt: skip
    STAGE_TIMINGS.append(f"[{vm.accel}] debian {release} ({address}): booted in "
                         f"{time.monotonic() - t0:.1f} s")  # fmt: skip
    # root's key carries the cloud image's forced command: the app names the user to use.
    refused = _install(vm, bed, "root", f"debian {release} as root")
    assert refused.code == 26, refused.stdout[-2000:]
    assert refused.result["error"]["suggested_user"] == "deploy"
    assert f"install deploy@127.0.0.1:{vm.port}" in refused.result["error"]["fix"]
    r = install_as(vm, bed, "deploy", f"debian {release} ({address}) as deploy", "--image",
                   str(bed / "installer-ok.tar.gz"), "--save-profile", "origin")  # fmt: skip
    assert r.code == 0, r.stdout[-3000:] + r.stderr[-2000:] + vm.console()[-3000:]
    # The old system's root disk, seen by the probe before the kexec, kept in the profile.
    saved = json.loads((tmp_path / "app" / "config" / "profiles.json").read_text())
    (profile,) = [p for p in saved["profiles"] if p["name"] == "origin"]
    assert profile["old_root"]["source"] == "/dev/vda"
    assert [d[0] for d in profile["old_root"]["disks"]] == ["vda"]
    assert profile["old_root"]["os_name"].startswith("Debian GNU/Linux")
    # run picks kexec's syscall by the kernel: bullseye's 5.10 takes the branch without
    # --kexec-syscall-auto (its kexec_file_load path is older than 6.1's).
    load = [e["message"] for e in r.events if e["event"] == "output" and "--load" in e["message"]]
    assert load and ("--kexec-syscall-auto" in load[0]) == (release != "bullseye"), load
    inst = r.result["installer"]
    assert inst["hostname"] == "nixos-installer" and inst["os_release"]["VARIANT_ID"] == "installer"
    # Debian's own host key (made by openssh-server's postinst), pinned across the kexec.
    t, b64 = (origin / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    assert inst["host_key"] == f"{t} {b64}"
    # deploy's key, carried by run through sudo, lets root into the installer.
    out = ssh(vm, bed / "client_ed25519", tmp_path / "app" / "config" / "known_hosts",
              "cat /etc/os-release; ip -4 -o addr show dev eth0")  # fmt: skip
    assert "VARIANT_ID=installer" in out and "10.0.2.15/24" in out
    if static:  # the static address came back as static, not by DHCP
        assert "dynamic" not in out.splitlines()[-1]

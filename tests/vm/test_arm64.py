"""arm64: a Debian arm64 server under qemu-system-aarch64 gets the aarch64 installer by itself."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.releases import ASSET, ReleasesServer
from tests.test_cli import cli
from tests.vm.qemu import STAGE_TIMINGS, VM, debian_origin
from tests.vm.test_debian import install_as
from tests.vm.test_kexec import TIMEOUTS, ssh

ARM_ASSET = "nixos-kexec-installer-noninteractive-aarch64-linux.tar.gz"
BOOT_DEADLINE = 480.0  # systemd on an emulated arm64 CPU: about two minutes here


@pytest.fixture(scope="session")
def arm64() -> Path:
    """Debian 12 for arm64 and its arm64 stand-in installer (built once, cached)."""
    return debian_origin("bookworm", "arm64")


@pytest.mark.timeout(1800)  # an emulated arm64 boot, two refusals, then one run on two servers
def test_an_arm64_server_gets_the_aarch64_image_by_itself_also_beside_an_x86_64_one(
    make_vm: Callable[..., VM], bed: Path, arm64: Path, releases: ReleasesServer, tmp_path: Path
) -> None:
    # The release carries both arches' stand-ins (published before the app reads the catalog).
    releases.add("nixos-unstable", ARM_ASSET, (arm64 / ARM_ASSET).read_bytes())
    releases.add("nixos-unstable", ASSET, (bed / "installer-ok.tar.gz").read_bytes())
    env = {
        "NIXOS_KEXEC_WIZARD_API_URL": releases.api_url,
        "NIXOS_KEXEC_WIZARD_DOWNLOAD_URL": releases.download_url,
        "NIXOS_KEXEC_WIZARD_ALLOW_HTTP": "1",
    }
    t0 = time.monotonic()
    vm = make_vm(BOOT_DEADLINE, distro=arm64, arch="aarch64")
    STAGE_TIMINGS.append(f"[tcg] debian bookworm arm64: booted in {time.monotonic() - t0:.1f} s")
    # The x86_64 stand-in's real kernel says x86_64 in its header: refused before any upload.
    wrong = install_as(vm, bed, "deploy", "arm64, x86_64 file", "--image",
                       str(bed / "installer-ok.tar.gz"), env=env)  # fmt: skip
    assert wrong.code == 30, wrong.stdout[-3000:]
    assert "holds a kernel for x86_64; the server is aarch64" in wrong.result["error"]["what"]
    # Asking for the x86_64 release by name: the preflight names the mismatch too.
    named = install_as(vm, bed, "deploy", "arm64, --arch x86_64", "--channel", "nixos-unstable",
                       "--arch", "x86_64", env=env)  # fmt: skip
    assert named.code == 30 and "the server is aarch64" in named.result["error"]["what"]
    assert not releases.downloads(ASSET) and not releases.downloads(ARM_ASSET)
    # No image named, with an x86_64 server in the same run: the probe says each one's arch,
    # and each gets its own release image (each downloaded once).
    x86 = make_vm()
    t0 = time.monotonic()
    r = cli(
        "install", "--json", "--yes", "--accept-new-host-key", f"deploy@127.0.0.1:{vm.port}",
        f"root@127.0.0.1:{x86.port}", "--channel", "nixos-unstable", "-i",
        str(bed / "client_ed25519"), "--transfer", "upload", *TIMEOUTS, env=env, timeout=600,
    )  # fmt: skip
    STAGE_TIMINGS.append(f"[tcg] arm64 + x86_64 in one run: exit {r.code} in "
                         f"{time.monotonic() - t0:.1f} s")  # fmt: skip
    assert r.code == 0, r.stdout[-4000:] + r.stderr[-2000:] + vm.console()[-3000:]
    assert len(releases.downloads(ARM_ASSET)) == 1 and len(releases.downloads(ASSET)) == 1
    results = {e["host"]: e for e in r.events if e["event"] == "result"}
    arm_result = results[f"deploy@127.0.0.1:{vm.port}"]
    inst = arm_result["installer"]
    assert inst["os_release"]["VARIANT_ID"] == "installer" and inst["hostname"] == "nixos-installer"
    t, b64 = (arm64 / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    assert inst["host_key"] == f"{t} {b64}"  # Debian's own key, carried across the kexec
    known = tmp_path / "app" / "config" / "known_hosts"
    assert ssh(vm, bed / "client_ed25519", known, "uname -m").strip() == "aarch64"
    assert ssh(x86, bed / "client_ed25519", known, "uname -m").strip() == "x86_64"
    assert results[f"root@127.0.0.1:{x86.port}"]["installer"]["hostname"] == "nixos-installer"

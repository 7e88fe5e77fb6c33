"""The whole install, end to end, against a loopback machine whose kexec 'reboots' it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SSHEnv
from tests.support.machine import Machine
from tests.test_cli import cli

pytestmark = pytest.mark.sshd


def test_cli_install_reaches_the_verified_installer(
    ssh_env: SSHEnv, machine: Machine, releases: object, tmp_path: Path
) -> None:
    from tests.support.releases import ReleasesServer

    assert isinstance(releases, ReleasesServer)
    env = {
        "NIXOS_KEXEC_WIZARD_API_URL": releases.api_url,
        "NIXOS_KEXEC_WIZARD_DOWNLOAD_URL": releases.download_url,
        "NIXOS_KEXEC_WIZARD_ALLOW_HTTP": "1",
    }
    old_boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    r = cli(
        "install", "--json", "--yes", "--accept-new-host-key", f"root@127.0.0.1:{machine.port}",
        "-i", str(ssh_env.key), "--transfer", "upload", "--down-timeout", "30", "--timeout", "30",
        "--save-profile", "web-1", env=env,
    )  # fmt: skip
    assert r.code == 0, r.stdout[-3000:] + r.stderr[-2000:]
    res = r.result
    inst = res["installer"]
    assert res["outcome"] == "installer-ready" and machine.state == "installer"
    assert inst["os_release"]["VARIANT_ID"] == "installer" and inst["hostname"] == "nixos-installer"
    assert inst["boot_id"] != old_boot
    pub = (
        next(k for k in machine.host_keys if "ed25519" in k.name)
        .with_suffix(".pub")
        .read_text()
        .split()
    )
    assert inst["host_key"] == f"{pub[0]} {pub[1]}"  # the same host key as before the kexec
    assert set(res["timings"]) == {
        "key",
        "transfer",
        "checksum",
        "unpack",
        "run",
        "down",
        "up",
        "verify",
    }
    # A fresh OpenSSH connection with the app's known_hosts sees the installer.
    ssh = [
        *res["ssh_command"][:-1],
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-i",
        str(ssh_env.key),
        res["ssh_command"][-1],
    ]
    out = subprocess.run(
        [*ssh, "cat /etc/os-release; hostname"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert "VARIANT_ID=installer" in out.stdout and out.stdout.strip().endswith("nixos-installer")
    profile = json.loads((tmp_path / "app" / "config" / "profiles.json").read_text())["profiles"][0]
    assert profile["state"] == "installer" and profile["installer"]["port"] == machine.port
    again = cli("reconnect", "web-1", "--print", "--json")
    assert again.result["command"] == res["ssh_command"]

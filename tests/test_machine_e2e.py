"""The whole install, end to end, against a loopback machine whose kexec 'reboots' it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.machine import Machine
from tests.support.sshd import SSHEnv
from tests.test_cli import ROOT, cli


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
    # An upload was chosen, so whether the server reaches the download server changes
    # nothing: the probe does not wait for it (the probe's own check is curl's).
    asked = [
        q.path for q in releases.requests if q.headers.get("User-Agent", "").startswith("curl")
    ]
    assert asked == [], asked
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


@pytest.mark.fault
def test_the_end_of_the_old_system_is_seen_by_fresh_attempts_not_on_its_dead_connection(
    ssh_env: SSHEnv, machine: Machine, releases: object
) -> None:
    """After the kexec the old connection stays open and silent (as a real one does until TCP
    gives up); the down stage must not wait on it, but see at the next fresh attempt that no
    SSH server answers any more."""
    from app.core.install.wait import DOWN_PROBE_TIMEOUT
    from tests.support.releases import ReleasesServer

    assert isinstance(releases, ReleasesServer)
    machine.power_off_mode = "freeze"
    machine.boot_delay = 6.0  # longer than any command deadline on the old connection
    env = {
        "NIXOS_KEXEC_WIZARD_API_URL": releases.api_url,
        "NIXOS_KEXEC_WIZARD_DOWNLOAD_URL": releases.download_url,
        "NIXOS_KEXEC_WIZARD_ALLOW_HTTP": "1",
    }
    args = [
        "install", "--json", "--yes", "--accept-new-host-key", f"root@127.0.0.1:{machine.port}",
        "-i", str(ssh_env.key), "--transfer", "upload", "--down-timeout", "30", "--timeout", "30",
    ]  # fmt: skip
    with subprocess.Popen(
        [sys.executable, "-m", "app", *args], cwd=ROOT, env={**os.environ, **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    ) as p:  # fmt: skip
        stamped = [(time.monotonic(), line) for line in p.stdout or []]  # one clock, both sides
        err = (p.stderr.read() if p.stderr else "")[-2000:]
        assert p.wait(60) == 0, "".join(ln for _, ln in stamped)[-3000:] + err
    events = [(t, json.loads(ln)) for t, ln in stamped if ln.startswith("{")]
    went = [
        (t, e["message"]) for t, e in events
        if e.get("stage") == "down" and e.get("event") == "log" and "went down" in e["message"]
    ]  # fmt: skip
    kexec_at = next(t for t, what in machine.events if what == "kexec")
    # One poll, one banner probe that gets no banner, and slack for a loaded machine; a wait on
    # the old connection lasts at least its 3 s command deadline.
    assert went and went[0][0] - kexec_at < 0.2 + DOWN_PROBE_TIMEOUT + 1.0, went[0][0] - kexec_at
    assert "no SSH banner" in went[0][1], went
    assert events[-1][1]["outcome"] == "installer-ready"

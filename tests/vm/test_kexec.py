"""A real kernel replaced by kexec under the app's control, in a QEMU VM, driven by the CLI."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_cli import Run, cli
from tests.vm.qemu import STAGE_TIMINGS, VM

TIMEOUTS = ["--down-timeout", "60", "--timeout", "120", "--connect-timeout", "20"]


def host_key(bed: Path) -> str:
    t, b64 = (bed / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    return f"{t} {b64}"


def install(
    vm: VM,
    bed: Path,
    *args: str,
    image: str = "installer-ok.tar.gz",
    env: dict[str, str] | None = None,
) -> Run:
    t0 = time.monotonic()
    r = cli(
        "install", "--json", "--yes", "--accept-new-host-key", f"root@127.0.0.1:{vm.port}",
        "--image", str(bed / image), *TIMEOUTS, *args, env=env, timeout=400,
    )  # fmt: skip
    timings = next(
        (
            e.get("timings")
            for e in r.events
            if e["event"] in ("result", "timings") and e.get("timings")
        ),
        {},
    )
    stages = ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
    STAGE_TIMINGS.append(
        f"[{vm.accel}] {image} {' '.join(a for a in args if not a.startswith('/'))}: "
        f"exit {r.code} in {time.monotonic() - t0:.1f} s ({stages or 'no stage ran'})"
    )
    return r


def ssh(vm: VM, key: Path, known_hosts: Path, command: str) -> str:
    out = subprocess.run(
        ["ssh", "-p", str(vm.port), "-i", str(key), "-o", f"UserKnownHostsFile={known_hosts}",
         "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
         "root@127.0.0.1", command],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def assert_installer(r: Run, vm: VM, bed: Path, tmp_path: Path, key: Path) -> None:
    assert r.code == 0, r.stdout[-3000:] + r.stderr[-2000:] + vm.console()[-2000:]
    res = r.result
    inst = res["installer"]
    assert res["outcome"] == "installer-ready"
    assert inst["os_release"]["VARIANT_ID"] == "installer" and inst["hostname"] == "nixos-installer"
    assert inst["host_key"] == host_key(bed)  # the same host key as before the kexec
    known = tmp_path / "app" / "config" / "known_hosts"
    out = ssh(
        vm,
        key,
        known,
        "cat /etc/os-release; echo @; hostname; echo @; cat /proc/sys/kernel/random/boot_id; echo @; uname -r",
    )
    osr, hostname, boot_id, _kernel = out.split("@\n")
    assert "VARIANT_ID=installer" in osr and hostname.strip() == "nixos-installer"
    assert boot_id.strip() == inst["boot_id"]
    assert "nkw: installer ready (ok)" in vm.console()


def test_upload_kexec_and_verify_the_installer(
    make_vm: Callable[..., VM], bed: Path, tmp_path: Path
) -> None:
    vm = make_vm()
    old_boot = subprocess.run(
        ["ssh", "-p", str(vm.port), "-i", str(bed / "client_ed25519"), "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "root@127.0.0.1", "cat /proc/sys/kernel/random/boot_id"],
        capture_output=True, text=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    r = install(vm, bed, "-i", str(bed / "client_ed25519"), "--transfer", "upload")
    assert_installer(r, vm, bed, tmp_path, bed / "client_ed25519")
    assert r.result["installer"]["boot_id"] != old_boot and old_boot


def test_the_server_downloads_the_image_itself(
    make_vm: Callable[..., VM], bed: Path, tmp_path: Path
) -> None:
    from tests.support.releases import ReleasesServer
    from tests.vm.qemu import GUEST_HTTP

    asset = "nixos-kexec-installer-noninteractive-x86_64-linux.tar.gz"
    srv = ReleasesServer()
    srv.add("nixos-26.05", asset, (bed / "installer-ok.tar.gz").read_bytes())
    srv.start()
    try:
        vm = make_vm(http_port=srv.port)
        env = {
            "NIXOS_KEXEC_WIZARD_API_URL": srv.api_url,
            # The guest reaches the host's server through QEMU's guestfwd (loopback on the host).
            "NIXOS_KEXEC_WIZARD_DOWNLOAD_URL": f"http://{GUEST_HTTP}/download",
            "NIXOS_KEXEC_WIZARD_ALLOW_HTTP": "1",
        }
        r = cli(
            "install", "--json", "--yes", "--accept-new-host-key", f"root@127.0.0.1:{vm.port}",
            "-i", str(bed / "client_ed25519"), "--transfer", "remote", *TIMEOUTS, env=env, timeout=400,
        )  # fmt: skip
        assert_installer(r, vm, bed, tmp_path, bed / "client_ed25519")
        fetched = srv.downloads(asset)
        assert len(fetched) == 1 and fetched[0].headers.get("User-Agent", "").startswith("curl/")
        assert any(e.get("mode") == "remote" for e in r.events)
    finally:
        srv.stop()


def test_password_login_installs_the_apps_key_which_the_installer_accepts(
    make_vm: Callable[..., VM], bed: Path, tmp_path: Path
) -> None:
    vm = make_vm(append="nkw.nokey")
    env = {"ROOTPW": (bed / "root-password").read_text().strip()}
    r = install(
        vm, bed, "--auth", "password", "--password-env", "ROOTPW", "--save-profile", "vm", env=env
    )
    key = tmp_path / "app" / "config" / "keys" / "vm_ed25519"
    assert_installer(r, vm, bed, tmp_path, key)
    assert r.result["installer"]["identity_file"] == str(key)
    assert env["ROOTPW"] not in r.stdout + r.stderr


def test_a_static_address_comes_back_on_the_installer(
    make_vm: Callable[..., VM], bed: Path, tmp_path: Path
) -> None:
    vm = make_vm(append="nkw.static=10.0.2.50/24,10.0.2.2", guest_ip="10.0.2.50")
    r = install(vm, bed, "-i", str(bed / "client_ed25519"), "--transfer", "upload")
    assert_installer(r, vm, bed, tmp_path, bed / "client_ed25519")
    net = ssh(
        vm,
        bed / "client_ed25519",
        tmp_path / "app" / "config" / "known_hosts",
        "ip -4 addr show eth0; ip -4 route",
    )
    assert "10.0.2.50/24" in net and "default via 10.0.2.2" in net


@pytest.mark.parametrize(
    ("vm_options", "check", "words"),
    [
        ({"append": "nkw.nokexec"}, "kexec", "kexec is disabled"),
        ({"memory_mb": 900}, "memory", "of RAM"),
        ({"append": "nkw.nocpio"}, "tools", "cpio"),
    ],
    ids=["kexec-disabled", "too-little-ram", "no-cpio"],
)
@pytest.mark.fault
def test_preflight_stops_before_anything_changes(
    make_vm: Callable[..., VM],
    bed: Path,
    tmp_path: Path,
    vm_options: dict[str, object],
    check: str,
    words: str,
) -> None:
    vm = make_vm(**vm_options)
    r = install(vm, bed, "-i", str(bed / "client_ed25519"))
    assert r.code == 30 and r.result["outcome"] == "preflight", r.stdout[-2000:]
    assert words in r.result["error"]["what"]
    probe = cli("probe", "--json", f"root@127.0.0.1:{vm.port}", "-i", str(bed / "client_ed25519"))
    assert any(v["check"] == check and v["level"] == "stop" for v in probe.result["verdicts"])
    left = ssh(
        vm,
        bed / "client_ed25519",
        tmp_path / "app" / "config" / "known_hosts",
        "ls /root; cat /proc/sys/kernel/random/boot_id",
    )
    assert "nixos-kexec-wizard" not in left  # nothing was put on the server


@pytest.mark.fault
def test_run_that_never_kexecs_is_never_went_down(make_vm: Callable[..., VM], bed: Path) -> None:
    vm = make_vm()
    r = install(
        vm,
        bed,
        "-i",
        str(bed / "client_ed25519"),
        "--down-timeout",
        "20",
        image="installer-fake.tar.gz",
    )
    assert r.code == 41 and r.result["outcome"] == "never-went-down"
    assert "machine will boot into nixos" in "\n".join(e.get("message", "") for e in r.events)


@pytest.mark.fault
def test_an_installer_without_sshd_never_comes_back(make_vm: Callable[..., VM], bed: Path) -> None:
    vm = make_vm()
    r = install(
        vm,
        bed,
        "-i",
        str(bed / "client_ed25519"),
        "--timeout",
        "45",
        image="installer-nosshd.tar.gz",
    )
    assert r.code == 43 and r.result["outcome"] == "never-came-back", r.stdout[-2000:]
    err = r.result["error"]
    assert "did not come back within 45 s" in err["what"] and "10.0.2.15" in err["why"]
    assert "nkw: installer ready (nosshd)" in vm.console()


@pytest.mark.fault
def test_an_installer_with_another_host_key_is_refused(
    make_vm: Callable[..., VM], bed: Path
) -> None:
    vm = make_vm()
    r = install(vm, bed, "-i", str(bed / "client_ed25519"), image="installer-newkey.tar.gz")
    assert r.code == 44 and r.result["outcome"] == "installer-key-changed"
    assert "ANOTHER host key" in r.result["error"]["what"]


@pytest.mark.parametrize("user", ["alice", "bob"], ids=["passwordless-sudo", "sudo-with-password"])
def test_a_sudo_user_boots_the_installer(
    make_vm: Callable[..., VM], bed: Path, tmp_path: Path, user: str
) -> None:
    vm = make_vm()
    env = {"SUDOPW": (bed / "bob-password").read_text().strip()}
    extra = ["--sudo-password-env", "SUDOPW"] if user == "bob" else []
    r = cli(
        "install", "--json", "--yes", "--accept-new-host-key", f"{user}@127.0.0.1:{vm.port}",
        "-i", str(bed / "client_ed25519"), "--image", str(bed / "installer-ok.tar.gz"),
        *TIMEOUTS, *extra, env=env, timeout=400,
    )  # fmt: skip
    # The key reaches the installer because run carries $SUDO_USER's authorized_keys.
    assert_installer(r, vm, bed, tmp_path, bed / "client_ed25519")
    messages = [e.get("message", "") for e in r.events if e["event"] == "log"]
    assert any("Your login key is in a file the installer keeps" in m for m in messages)
    assert env["SUDOPW"] not in r.stdout + r.stderr


def test_two_vms_at_once_each_reach_their_installer(
    make_vm: Callable[..., VM], bed: Path, tmp_path: Path
) -> None:
    """A run on many servers with real kernels: both kexec at the same time, both verified."""
    a, b = make_vm(), make_vm()
    t0 = time.monotonic()
    key = bed / "client_ed25519"
    r = cli(
        "install", "--json", "--yes", "--accept-new-host-key", f"root@127.0.0.1:{a.port}",
        f"root@127.0.0.1:{b.port}", "--image", str(bed / "installer-ok.tar.gz"), "-i", str(key),
        "--transfer", "upload", *TIMEOUTS, timeout=600,
    )  # fmt: skip
    took = time.monotonic() - t0
    STAGE_TIMINGS.append(f"[{a.accel}] two VMs at once: exit {r.code} in {took:.1f} s")
    assert r.code == 0, r.stdout[-4000:] + a.console()[-1500:] + b.console()[-1500:]
    results = {e["host"]: e for e in r.events if e["event"] == "result"}
    for vm in (a, b):
        inst = results[f"root@127.0.0.1:{vm.port}"]["installer"]
        assert inst["host_key"] == host_key(bed) and inst["hostname"] == "nixos-installer"
        out = ssh(vm, key, tmp_path / "app" / "config" / "known_hosts", "cat /etc/os-release")
        assert "VARIANT_ID=installer" in out and "nkw: installer ready (ok)" in vm.console()
    boots = {results[h]["installer"]["boot_id"] for h in results}
    assert len(boots) == 2  # two machines, each booted its own installer
    assert r.events[-1] == {**r.events[-1], "event": "summary", "ok": True, "exit_code": 0}

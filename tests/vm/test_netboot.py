"""Netboot by QEMU's iPXE ROM from the app's HTTP server, and the legacy kexec-bundle, in a VM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.core.catalog import netboot_names, parse_releases
from app.core.download import Downloader, ImageCache
from app.core.netboot import NetbootServer, release_source
from app.core.settings import Settings
from tests.support.releases import ReleasesServer
from tests.support.sshd import fingerprint
from tests.test_cli import ROOT, cli
from tests.vm.qemu import STAGE_TIMINGS, VM
from tests.vm.test_kexec import TIMEOUTS


def ssh(vm: VM, key: Path, command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-p", str(vm.port), "-i", str(key), "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
         "root@127.0.0.1", command],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture
def serve_cli(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[str], dict]]]:
    """`nixos-kexec-wizard netboot --serve` as a process; stopped with Ctrl-C at the end."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> tuple[subprocess.Popen[str], dict]:
        env = {**os.environ, "NIXOS_KEXEC_WIZARD_HOME": str(tmp_path / "app")}
        p = subprocess.Popen(
            [sys.executable, "-m", "app", "netboot", "--json", "--serve", "127.0.0.1:0", *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(p)
        assert p.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            event = json.loads(line)
            if event.get("chain_url"):
                return p, event
        raise AssertionError(f"the server did not start: {p.stderr.read() if p.stderr else ''}")

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def test_the_kexec_installer_netboots_with_our_keys_and_answers_ssh(
    make_vm: Callable[..., VM],
    bed: Path,
    serve_cli: Callable[..., tuple[subprocess.Popen[str], dict]],
) -> None:
    t0 = time.monotonic()
    proc, started = serve_cli(
        "--from-kexec", "--image", str(bed / "installer-ok.tar.gz"),
        "--authorized-keys", str(bed / "client_ed25519.pub"), "--serve-for", "300",
    )  # fmt: skip
    port = int(started["chain_url"].split(":")[2].split("/")[0])
    vm = make_vm(netboot_port=port, ready="nkw: installer ready")
    wait_banner(vm.port)
    booted = time.monotonic() - t0
    out = ssh(vm, bed / "client_ed25519", "hostname; cat /etc/os-release; cat /proc/cmdline")
    assert out.returncode == 0, out.stderr + vm.console()[-2000:]
    assert out.stdout.startswith("nixos-installer\n") and "VARIANT_ID=installer" in out.stdout
    assert "init=/init" in out.stdout  # the command line taken from the tarball's run script
    assert "Filename: http://10.0.2.100:8080/netboot.ipxe" in vm.console()

    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=30)
    events = [json.loads(ln) for ln in stdout.splitlines()]
    served = {e["request"]: e for e in events if e.get("request")}
    assert set(served) >= {"/netboot.ipxe", "/bzImage", "/initrd", "/keys.cpio.gz"}
    assert all(e["status"] == 200 for e in served.values())
    assert served["/bzImage"]["sent"] == (bed / "vmlinuz").stat().st_size
    result = events[-1]
    assert result["event"] == "result" and result["outcome"] == "stopped" and result["ok"]
    STAGE_TIMINGS.append(f"[{vm.accel}] netboot of the kexec installer: SSH after {booted:.1f} s")


def test_the_release_netboot_image_boots_and_needs_the_console(
    make_vm: Callable[..., VM], bed: Path, tmp_path: Path
) -> None:
    names = netboot_names("x86_64")
    srv = ReleasesServer()
    srv.add("nixos-26.05", names.kernel, (bed / "vmlinuz").read_bytes())
    srv.add("nixos-26.05", names.initrd, (bed / "netboot-initrd.img").read_bytes())
    script = (
        "#!ipxe\n"
        f"kernel {srv.url('nixos-26.05', names.kernel)} init=/init initrd={names.initrd} "
        "console=ttyS0 panic=-1 quiet ${cmdline}\n"
        f"initrd {srv.url('nixos-26.05', names.initrd)}\nboot\n"
    )
    srv.add("nixos-26.05", names.script, script.encode())
    srv.start()
    settings = Settings(api_url=srv.api_url, download_url=srv.download_url, allow_http=True)
    (release,) = parse_releases(srv.releases_json(), settings)
    downloader = Downloader(settings, ImageCache(tmp_path / "images"))
    source = release_source(downloader, release, "x86_64")
    server = NetbootServer(source, "127.0.0.1", 0).start()
    try:
        vm = make_vm(netboot_port=server.port, ready="nkw: installer ready")
        # sshd answers, but root has no key: this image needs its console to log in.
        assert wait_banner(vm.port).startswith("SSH-2.0-OpenSSH")
        out = ssh(vm, bed / "client_ed25519", "true")
        assert out.returncode == 255 and "Permission denied" in out.stderr, (
            out.stderr + vm.console()[-3000:]
        )
        paths = [r.path for r in server.requests]
        assert paths[:3] == ["/netboot.ipxe", f"/{names.kernel}", f"/{names.initrd}"]
        assert all(r.status == 200 and r.sent == r.size for r in server.requests)
    finally:
        server.stop()
        srv.stop()
    # Every part came from the cache, verified against the releases API's digests.
    assert {i.name for i in downloader.cache.entries()} == {
        names.kernel,
        names.initrd,
        names.script,
    }


def wait_banner(port: int, deadline: float = 30) -> str:
    """The SSH banner once the guest's sshd answers through the forward (within ``deadline``)."""
    end = time.monotonic() + deadline
    last = ""
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                s.settimeout(3)
                last = s.recv(256).decode(errors="replace")
                if last.startswith("SSH-"):
                    return last
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise AssertionError(f"no SSH banner on port {port} within {deadline} s: {last}")


def test_a_legacy_kexec_bundle_is_uploaded_run_and_verified(
    make_vm: Callable[..., VM], bed: Path, tmp_path: Path
) -> None:
    vm = make_vm()
    before = ssh(vm, bed / "client_ed25519", "cat /proc/sys/kernel/random/boot_id")
    # The bundle's own host key, compared "on the console" beforehand and accepted by name.
    new_fp = fingerprint(bed / "bundle_host_ed25519_key.pub")
    t0 = time.monotonic()
    r = cli(
        "install", "--json", "--yes", "--accept-new-host-key", f"root@127.0.0.1:{vm.port}",
        "-i", str(bed / "client_ed25519"), "--image", str(bed / "kexec-bundle-x86_64"),
        "--accept-host-key", new_fp, *TIMEOUTS, timeout=400,
    )  # fmt: skip
    assert r.code == 0, r.stdout[-3000:] + r.stderr[-2000:] + vm.console()[-2000:]
    inst = r.result["installer"]
    assert inst["os_release"]["ID"] == "nixos" and "VARIANT_ID" not in inst["os_release"]
    assert inst["os_release"]["BUILD_ID"].startswith("22.05")
    assert inst["boot_id"] != before.stdout.strip() and before.stdout.strip()
    messages = " ".join(e.get("message", "") for e in r.events)
    assert "nixos-images dropped in December 2022" in messages
    # Accepted by the user, never called verified.
    assert inst["fingerprint"] == new_fp and inst["host_key_verified"] is False
    assert "accepted by you, not verified" in messages and "Verified" not in messages
    # The new host key is trusted for the address now; the old one stays, as a comment.
    known = tmp_path / "app" / "config" / "known_hosts"
    text = known.read_text().splitlines()
    lines = [ln for ln in text if ln.startswith(f"[127.0.0.1]:{vm.port} ")]
    assert len(lines) == 1 and inst["host_key"] in lines[0]
    assert any(ln.startswith("# replaced ") and f"[127.0.0.1]:{vm.port} ssh-" in ln for ln in text)
    STAGE_TIMINGS.append(
        f"[{vm.accel}] kexec-bundle: exit 0 in {time.monotonic() - t0:.1f} s "
        f"({', '.join(f'{k} {v:.1f}' for k, v in r.result['timings'].items())})"
    )

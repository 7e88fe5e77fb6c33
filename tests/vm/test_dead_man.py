"""The dead-man switch on a real systemd: it fires when the installer is unreachable, not once disarmed."""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from app.core.install.deadman import disarm_script
from tests.vm.qemu import STAGE_TIMINGS, VM, debian_origin
from tests.vm.systemd_installer import systemd_installer
from tests.vm.test_debian import BOOT_DEADLINE, install_as
from tests.vm.test_kexec import ssh

MINUTES = "1"  # the switch's deadline in the tests: 60 s from the installer's boot


def _note_restart(vm: VM, what: str, ended: float) -> None:
    """When the installer's kernel restarted (its own clock) and how long the old system then
    took to answer the app, in the stage timings summary."""
    first = (vm.workdir / f"serial-{vm.port}-1.log").read_text(errors="replace")
    m = re.search(r"\[\s*([\d.]+)\] reboot: Restarting system", first)
    panic = re.search(r"\[\s*([\d.]+)\] Rebooting in (\d+) seconds", first)
    at = (
        f"{float(m.group(1)):.1f} s after the installer's boot" if m
        else f"{float(panic.group(1)) + int(panic.group(2)):.1f} s after the installer's boot "
        f"({panic.group(2)} s after its panic)" if panic
        else "at an unknown time"
    )  # fmt: skip
    STAGE_TIMINGS.append(f"[{vm.accel}] {what}: restarted {at}; the old system answered the "
                         f"app {ended - vm.resets[0]:.1f} s after the restart")  # fmt: skip


@functools.cache
def trixie() -> Path:
    return debian_origin("trixie")


def _origin(make_vm: Callable[..., VM]) -> VM:
    t0 = time.monotonic()
    vm = make_vm(BOOT_DEADLINE, distro=trixie())
    STAGE_TIMINGS.append(f"[{vm.accel}] debian trixie (dead-man): booted in "
                         f"{time.monotonic() - t0:.1f} s")  # fmt: skip
    vm.power_cycle_on_reset()
    return vm


@pytest.mark.timeout(900)
def test_the_app_disarms_the_switch_and_the_installer_stays_up_past_its_deadline(
    make_vm: Callable[..., VM], bed: Path, tmp_path: Path
) -> None:
    vm = _origin(make_vm)
    image = systemd_installer(tmp_path, bed, trixie(), "ok")
    r = install_as(vm, bed, "deploy", "trixie, dead-man disarmed", "--image", str(image),
                   "--dead-man", MINUTES)  # fmt: skip
    assert r.code == 0, r.stdout[-3000:] + r.stderr[-2000:] + vm.console()[-3000:]
    said = [e["message"] for e in r.events if e.get("dead_man")]
    if r.result["installer"]["dead_man"] != "disarmed":
        again = ssh(
            vm, bed / "client_ed25519", tmp_path / "app" / "config" / "known_hosts", disarm_script()
        )
        raise AssertionError("\n".join([*(m[:300] for m in said), again]))
    assert any(e.get("dead_man") == "armed" for e in r.events)
    ended = time.monotonic()
    time.sleep(max(0.0, 60 + 20 - (time.monotonic() - ended)))  # well past the deadline
    assert vm.resets == [], vm.console()[-3000:]
    out = ssh(vm, bed / "client_ed25519", tmp_path / "app" / "config" / "known_hosts",
              "cat /proc/cmdline; systemctl show --property=LoadState --value nkw-dead-man.timer; "
              "systemctl is-active nkw-dead-man.timer; systemctl show --property=Result --value "
              "nkw-dead-man.service; . /etc/os-release; echo $VARIANT_ID")  # fmt: skip
    cmdline, load, active, result, variant = out.strip().splitlines()[-5:]
    assert "systemd.wants=nkw-dead-man.timer" in cmdline and "panic=30" in cmdline
    assert len(cmdline.encode()) <= 2016
    # Stopped, or (stopped too late in the boot) fired into a service that failed: no restart.
    assert (load, variant) == ("loaded", "installer")
    assert active == "inactive" and result in ("success", "exit-code"), (active, result)


@pytest.mark.fault
@pytest.mark.timeout(900)
def test_the_switch_brings_the_old_system_back_when_the_installer_has_no_network(
    make_vm: Callable[..., VM], bed: Path, tmp_path: Path
) -> None:
    vm = _origin(make_vm)
    image = systemd_installer(tmp_path, bed, trixie(), "nonet")
    r = install_as(vm, bed, "deploy", "trixie, installer without network", "--image", str(image),
                   "--dead-man", MINUTES)  # fmt: skip
    assert r.code == 45, r.stdout[-3000:] + r.stderr[-2000:] + vm.console()[-3000:]
    err = r.result["error"]
    assert r.result["outcome"] == "dead-man-fired" and "within 1 min" in err["what"]
    assert "--kexec-extra-flags" in err["fix"] and "network" in err["why"]
    assert len(vm.resets) == 1  # one restart: the switch's
    _note_restart(vm, "dead-man switch (1 min)", time.monotonic())
    assert "nkw: origin ready" in vm.console().split("nkw: origin ready", 1)[1]  # booted again


@pytest.mark.fault
@pytest.mark.timeout(900)
def test_a_kernel_panic_in_the_installer_comes_back_as_the_old_system(
    make_vm: Callable[..., VM], bed: Path, tmp_path: Path
) -> None:
    vm = _origin(make_vm)
    image = systemd_installer(tmp_path, bed, trixie(), "panic")
    r = install_as(vm, bed, "deploy", "trixie, installer panics", "--image", str(image),
                   "--dead-man", "10")  # fmt: skip
    assert r.code == 45, r.stdout[-3000:] + r.stderr[-2000:] + vm.console()[-3000:]
    err = r.result["error"]
    assert "before the dead-man switch's timer was due" in err["what"]
    assert "panicked (the switch's panic=30" in err["why"]
    assert len(vm.resets) == 1 and "Kernel panic" in vm.console()
    _note_restart(vm, "kernel panic (panic=30)", time.monotonic())

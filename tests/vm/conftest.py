"""Fixtures for the VM tests: the test bed (built once, cached) and one VM per test."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.vm.qemu import STAGE_TIMINGS, VM, testbed


@pytest.fixture(scope="session")
def bed() -> Path:
    """The built test bed (kernel, origin initramfs, installer tarballs, keys)."""
    return testbed()


@pytest.fixture
def make_vm(bed: Path) -> Iterator[Callable[..., VM]]:
    """Start VMs with options; every one is killed at the end of the test."""
    vms: list[VM] = []
    work = Path(tempfile.mkdtemp(prefix="nkw-vm-", dir="/var/tmp"))

    def start(deadline: float = 90.0, **kw: object) -> VM:
        vm = VM(bed, work, **kw)  # type: ignore[arg-type]
        vms.append(vm)
        return vm.start(deadline)

    yield start
    for vm in vms:
        vm.stop()
    shutil.rmtree(work, ignore_errors=True)  # the serial logs (a failed test printed them)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print each VM install's stage timings (seconds) after the run."""
    if STAGE_TIMINGS:
        terminalreporter.section("VM install stage timings (seconds)")
        for line in STAGE_TIMINGS:
            terminalreporter.write_line(line)

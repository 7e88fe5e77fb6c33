"""The wizard installs NixOS onto the disk of a stand-in installer: Done → Disks → … → Installed."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from PySide6.QtWidgets import QMessageBox
from pytestqt.exceptions import TimeoutError as QtTimeout
from pytestqt.qtbot import QtBot

from app.ui.pages.base import PageId
from app.ui.pages.disk import DiskInstallPage, DisksPage, InstalledPage, SystemPage, WipePage
from app.ui.pages.done import DonePage
from app.ui.wizard import KexecWizard
from tests.support.gpt import file_system, read_gpt
from tests.test_gui import click, next_page
from tests.vm.qemu import STAGE_TIMINGS, VM
from tests.vm.test_dead_man import trixie
from tests.vm.test_disk_prepare import installer as installer  # the fixture: trixie + a disk
from tests.vm.test_install_nixos import _as_installer
from tests.vm.test_wizard import connect_as_root
from tests.vm.test_wizard import vm_wizard as vm_wizard  # the fixture: the wizard for VMs

COMMIT_BUTTON = KexecWizard.WizardButton.CommitButton


def _wait(qtbot: QtBot, w: KexecWizard, until: Callable[[], bool], what: str) -> None:
    """Until ``until()``; else fail with what the page and its error panel showed."""
    try:
        qtbot.waitUntil(until, timeout=90_000)
    except QtTimeout as exc:
        page = w.currentPage()
        error = getattr(page, "error", None)
        said = error.text.text() if error is not None and error.isVisible() else ""
        raise AssertionError(f"waited for {what}: page {w.currentId()} ({page.title()}), "
                             f"busy {page.busy}, error {said!r}") from exc  # fmt: skip


def _shot(w: KexecWizard, name: str) -> None:
    """Keep the page as the README shows it, when NKW_SCREENSHOTS names a folder."""
    folder = os.environ.get("NKW_SCREENSHOTS")
    if folder:
        w.grab().save(str(Path(folder) / name))


@pytest.mark.timeout(900)
def test_the_wizard_installs_nixos_on_the_disk_the_user_typed(
    qtbot: QtBot, vm_wizard: KexecWizard, installer: tuple[VM, Path], bed: Path, tmp_path: Path
) -> None:
    vm, image = installer
    _as_installer(vm, bed, tmp_path)
    w = vm_wizard
    connect_as_root(qtbot, w, vm, bed, trixie() / "ssh_host_ed25519_key.pub")
    qtbot.waitUntil(lambda: w.state.facts is not None and not w.currentPage().busy, timeout=60_000)
    assert w.state.facts is not None and w.state.facts.is_installer
    next_page(qtbot, w)
    done = w.page_of(PageId.DONE)
    assert isinstance(done, DonePage) and w.currentId() == PageId.DONE
    assert done.install_nixos.isVisible()
    click(qtbot, done.install_nixos)

    disks = w.page_of(PageId.DISKS)
    assert isinstance(disks, DisksPage)
    _wait(qtbot, w, lambda: w.currentId() == PageId.DISKS and disks.isComplete(), "the disks")
    assert list(disks.buttons) == ["vdb"] and disks.chosen() == "vdb"  # the one that can take it
    assert "vda" in disks.refused.text() and "using it" in disks.refused.text()
    _shot(w, "16-disks.png")
    next_page(qtbot, w)

    # A host name NixOS refuses: said on the next page, nothing written; back, fixed, on.
    system = w.page_of(PageId.SYSTEM)
    assert isinstance(system, SystemPage)
    system.hostname.clear()
    qtbot.keyClicks(system.hostname, "web.example.org")
    next_page(qtbot, w)
    wipe = w.page_of(PageId.WIPE)
    assert isinstance(wipe, WipePage)
    _wait(qtbot, w, lambda: wipe.error.isVisible(), "the refused host name")
    assert "web.example.org" in wipe.error.text.text() and not wipe.configuration.toPlainText()
    click(qtbot, w.button(KexecWizard.WizardButton.BackButton))
    system.hostname.clear()
    qtbot.keyClicks(system.hostname, "web-1")
    _shot(w, "17-system.png")
    next_page(qtbot, w)
    _wait(qtbot, w, lambda: bool(wipe.configuration.toPlainText()), "the configuration")
    assert 'networking.hostName = "web-1";' in wipe.configuration.toPlainText()
    assert "disk-main" not in wipe.configuration.toPlainText() and wipe.disko.toPlainText()
    assert "This cannot be undone" in wipe.warning.text()
    commit = w.button(COMMIT_BUTTON)
    qtbot.keyClicks(wipe.typed, "vda")  # another disk's name: no
    assert not commit.isEnabled()
    wipe.typed.clear()
    qtbot.keyClicks(wipe.typed, "vdb")
    qtbot.waitUntil(lambda: commit.isEnabled(), timeout=5_000)
    _shot(w, "18-erase.png")
    with image.open("rb") as f:
        assert not f.read(2 << 20).strip(b"\0")  # nothing written before the commit
    click(qtbot, commit)

    install = w.page_of(PageId.DISK_INSTALL)
    assert isinstance(install, DiskInstallPage)
    qtbot.waitUntil(lambda: w.currentId() == PageId.INSTALLED, timeout=400_000)
    assert all(s == "done" for s in install.stages.stage_state.values()), install.log.toPlainText()
    installed = w.page_of(PageId.INSTALLED)
    assert isinstance(installed, InstalledPage)
    assert "NixOS is installed on vdb" in installed.headline.text()
    assert "-nixos-system-web-1-" in installed.headline.text()
    _shot(w, "19-installed.png")
    STAGE_TIMINGS.append(f"[{vm.accel}] wizard, NixOS onto the disk: "
                         f"{install.stages.items['partition'].text(2)} partition, "
                         f"{install.stages.items['nixos-install'].text(2)} nixos-install")  # fmt: skip
    assert [file_system(image, p) for p in read_gpt(image)] == ["", "vfat", "ext4"]
    run = w.state.disk_run
    assert run is not None and run.disk is not None and run.disk.saved is not None
    assert (run.disk.saved / "configuration.nix").read_text() == wipe.configuration.toPlainText()

    # Reboot, asked first: the installer's systemd takes the server down (from the disk next).
    click(qtbot, installed.reboot)
    box = installed.reboot_box
    assert box is not None and "starts the NixOS just installed" in box.text()
    click(qtbot, box.button(QMessageBox.StandardButton.Yes))
    qtbot.waitUntil(lambda: "rebooting" in installed.status.text(), timeout=60_000)

"""The wizard, driven by pytest-qt, boots the installer in the QEMU VM with a local tarball."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PySide6.QtWidgets import QApplication
from pytestqt.exceptions import TimeoutError as QtTimeout
from pytestqt.qtbot import QtBot

from app.core.paths import AppPaths
from app.core.settings import Settings
from app.ui.context import AppContext
from app.ui.pages.base import PageId
from app.ui.pages.connect import ConnectPage
from app.ui.pages.image import ImagePage
from app.ui.pages.inspect import InspectPage
from app.ui.pages.install import InstallPage
from app.ui.wizard import KexecWizard
from tests.support.sshd import fingerprint
from tests.test_gui import click, confirm_and_install, connect_and_trust, fill_connect, next_page
from tests.vm.qemu import GUEST_HTTP, STAGE_TIMINGS, VM
from tests.vm.test_debian import BOOT_DEADLINE, origin_of


def wait_for_done(qtbot: QtBot, w: KexecWizard, vm: VM, timeout_ms: int = 300_000) -> None:
    """Until the Done page shows; else fail with what the wizard and the VM showed then."""
    try:
        qtbot.waitUntil(lambda: w.currentId() == PageId.DONE, timeout=timeout_ms)
    except QtTimeout as exc:
        install = w.page_of(PageId.INSTALL)
        assert isinstance(install, InstallPage)
        modal = QApplication.activeModalWidget()
        raise AssertionError(
            f"no Done page after {timeout_ms / 1000:.0f} s; page {w.currentId()}, stages "
            f"{install.stages.stage_state}, dialog {modal.windowTitle() if modal else None!r}\n"
            f"error: {install.error.text.text() if install.error.isVisible() else ''}\n"
            f"log: {install.log.toPlainText()[-3000:]}\nconsole: {vm.console()[-3000:]}"
        ) from exc


@pytest.fixture
def vm_wizard(qtbot: QtBot, tmp_path: Path) -> Iterator[KexecWizard]:
    settings = Settings(
        download_url="http://127.0.0.1:9/", allow_http=True, connect_timeout=20,
        binary_cache=f"http://{GUEST_HTTP}/cache", nixpkgs_archive=f"http://{GUEST_HTTP}/nixpkgs",
        up_timeout=120, down_timeout=60, poll_interval=0.5,
    )  # fmt: skip
    w = KexecWizard(AppContext(AppPaths.resolve(tmp_path / "app"), settings))
    qtbot.addWidget(w)
    w.show()
    yield w
    for page in w.busy_pages():
        page.cancel_job(wait_ms=20_000)
    w.state.drop_session()


def connect_as_root(qtbot: QtBot, w: KexecWizard, vm: VM, bed: Path, host_key: Path) -> ConnectPage:
    """A new server, root@ the VM with the bed's key, its host key trusted; on to Inspect."""
    click(qtbot, w.page_of(PageId.SERVERS).new_button)  # type: ignore[attr-defined]
    connect = w.page_of(PageId.CONNECT)
    assert isinstance(connect, ConnectPage)
    fill_connect(qtbot, connect, vm.port, "root", key=bed / "client_ed25519")
    connect_and_trust(qtbot, w, fingerprint(host_key))
    next_page(qtbot, w, timeout=30_000)
    return connect


def choose_local_file(qtbot: QtBot, w: KexecWizard, tarball: Path) -> None:
    """On the Image page: the tarball as a local file, checked and hashed by the page."""
    image = w.page_of(PageId.IMAGE)
    assert isinstance(image, ImagePage)
    image.use_file.setChecked(True)
    image.file.setText(str(tarball))
    image.update_choice()
    qtbot.waitUntil(lambda: w.state.image is not None, timeout=60_000)


# Longer than the waits inside (so those fail first, with their message): pytest-timeout's
# signal, arriving while Qt's event loop runs, would leave the loop waiting for ever.
@pytest.mark.timeout(900)
def test_the_wizard_kexecs_the_vm_into_the_installer(
    qtbot: QtBot, vm_wizard: KexecWizard, make_vm: Callable[..., VM], bed: Path
) -> None:
    vm = make_vm()
    w = vm_wizard
    connect_as_root(qtbot, w, vm, bed, bed / "ssh_host_ed25519_key.pub")
    qtbot.waitUntil(lambda: w.state.facts is not None and not w.currentPage().busy, timeout=60_000)
    facts = w.state.facts
    assert facts is not None and facts.hostname == "origin" and facts.virt in ("qemu", "kvm", "")
    inspect = w.page_of(PageId.INSPECT)
    if inspect.override.isVisible():  # type: ignore[attr-defined]
        inspect.override.setChecked(True)  # type: ignore[attr-defined]
    next_page(qtbot, w)
    choose_local_file(qtbot, w, bed / "installer-ok.tar.gz")
    assert w.state.image is not None and w.state.image.info.verification == "local"
    install = confirm_and_install(qtbot, w)
    wait_for_done(qtbot, w, vm, 240_000)
    assert all(s == "done" for s in install.stages.stage_state.values())
    info = w.state.info
    assert info is not None and info.hostname == "nixos-installer"
    assert info.os_release["VARIANT_ID"] == "installer"
    t, b64 = (bed / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    assert info.host_key == f"{t} {b64}"
    assert "nkw: installer ready (ok)" in vm.console()


@pytest.mark.timeout(1200)
def test_the_wizard_logs_in_as_the_user_a_debian_cloud_image_names_and_installs(
    qtbot: QtBot, vm_wizard: KexecWizard, make_vm: Callable[..., VM], bed: Path
) -> None:
    origin = origin_of("trixie")  # systemd-networkd, by DHCP; the CLI tests it with a static one
    t0 = time.monotonic()
    vm = make_vm(BOOT_DEADLINE, distro=origin)
    STAGE_TIMINGS.append(f"[{vm.accel}] debian trixie (dhcp, wizard): booted in "
                         f"{time.monotonic() - t0:.1f} s")  # fmt: skip
    w = vm_wizard
    connect = connect_as_root(qtbot, w, vm, bed, origin / "ssh_host_ed25519_key.pub")
    # root's key runs the cloud image's forced command: the page offers the user it names.
    inspect = w.page_of(PageId.INSPECT)
    assert isinstance(inspect, InspectPage)
    qtbot.waitUntil(lambda: inspect.switch_user.isVisible(), timeout=60_000)
    assert inspect.switch_user.text() == "Log in as deploy &instead"
    click(qtbot, inspect.switch_user)
    qtbot.waitUntil(lambda: w.currentId() == int(PageId.CONNECT), timeout=5_000)
    assert connect.user.text() == "deploy"
    qtbot.waitUntil(lambda: connect.isComplete(), timeout=30_000)
    next_page(qtbot, w, timeout=30_000)
    qtbot.waitUntil(lambda: w.state.facts is not None and not w.currentPage().busy, timeout=60_000)
    facts = w.state.facts
    assert facts is not None and facts.user == "deploy" and facts.hostname == "origin-trixie"
    qtbot.waitUntil(
        lambda: bool(w.state.run and w.state.run.rooted), timeout=30_000
    )  # sudo, no password
    if inspect.override.isVisible():
        inspect.override.setChecked(True)
    next_page(qtbot, w)
    choose_local_file(qtbot, w, bed / "installer-ok.tar.gz")
    t1 = time.monotonic()
    install = confirm_and_install(qtbot, w)
    wait_for_done(qtbot, w, vm)
    STAGE_TIMINGS.append(f"[{vm.accel}] debian trixie (dhcp, wizard): Install to Done in "
                         f"{time.monotonic() - t1:.1f} s")  # fmt: skip
    assert all(s == "done" for s in install.stages.stage_state.values())
    info = w.state.info
    assert info is not None and info.os_release["VARIANT_ID"] == "installer"
    t, b64 = (origin / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    assert info.host_key == f"{t} {b64}"  # Debian's own key, pinned across the kexec

"""The wizard, driven by pytest-qt, boots the installer in the QEMU VM with a local tarball."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from app.core.paths import AppPaths
from app.core.settings import Settings
from app.ui.context import AppContext
from app.ui.pages.base import PageId
from app.ui.pages.connect import ConnectPage
from app.ui.pages.image import ImagePage
from app.ui.wizard import KexecWizard
from tests.support.sshd import fingerprint
from tests.test_gui import click, confirm_and_install, connect_and_trust, fill_connect, next_page
from tests.vm.qemu import VM

pytestmark = pytest.mark.vm


@pytest.fixture
def vm_wizard(qtbot: QtBot, tmp_path: Path) -> Iterator[KexecWizard]:
    settings = Settings(
        download_url="http://127.0.0.1:9/", allow_http=True, connect_timeout=20,
        up_timeout=120, down_timeout=60, poll_interval=0.5,
    )  # fmt: skip
    w = KexecWizard(AppContext(AppPaths.resolve(tmp_path / "app"), settings))
    qtbot.addWidget(w)
    w.show()
    yield w
    for page in w.busy_pages():
        page.cancel_job(wait_ms=20_000)
    w.flow.drop_session()


def test_the_wizard_kexecs_the_vm_into_the_installer(
    qtbot: QtBot, vm_wizard: KexecWizard, make_vm: Callable[..., VM], bed: Path
) -> None:
    vm = make_vm()
    w = vm_wizard
    click(qtbot, w.page_of(PageId.SERVERS).new_button)  # type: ignore[attr-defined]
    connect = w.page_of(PageId.CONNECT)
    assert isinstance(connect, ConnectPage)
    fill_connect(qtbot, connect, vm.port, "root", key=bed / "client_ed25519")
    connect_and_trust(qtbot, w, fingerprint(bed / "ssh_host_ed25519_key.pub"))
    next_page(qtbot, w, timeout=30_000)
    qtbot.waitUntil(lambda: w.flow.facts is not None, timeout=60_000)
    facts = w.flow.facts
    assert facts is not None and facts.hostname == "origin" and facts.virt in ("qemu", "kvm", "")
    inspect = w.page_of(PageId.INSPECT)
    if inspect.override.isVisible():  # type: ignore[attr-defined]
        inspect.override.setChecked(True)  # type: ignore[attr-defined]
    next_page(qtbot, w)
    image = w.page_of(PageId.IMAGE)
    assert isinstance(image, ImagePage)
    image.use_file.setChecked(True)
    image.file.setText(str(bed / "installer-ok.tar.gz"))
    image.update_choice()
    qtbot.waitUntil(lambda: w.flow.image is not None, timeout=60_000)  # checked and hashed here
    assert w.flow.image is not None and w.flow.image.info.verification == "local"
    install = confirm_and_install(qtbot, w)
    qtbot.waitUntil(lambda: w.currentId() == PageId.DONE, timeout=240_000)
    assert all(s == "done" for s in install.stages.stage_state.values())
    info = w.flow.info
    assert info is not None and info.hostname == "nixos-installer"
    assert info.os_release["VARIANT_ID"] == "installer"
    t, b64 = (bed / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    assert info.host_key == f"{t} {b64}"
    assert "nkw: installer ready (ok)" in vm.console()

"""The "Other ways to boot" dialog and the legacy kexec-bundle in the wizard, driven by pytest-qt."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QAbstractButton, QComboBox, QLineEdit, QSpinBox, QWizard
from pytestqt.qtbot import QtBot

from app.core.paths import AppPaths
from app.core.settings import Settings
from app.ui.context import AppContext
from app.ui.netboot import NetbootDialog
from app.ui.wizard import KexecWizard
from tests.support.machine import Machine
from tests.support.releases import ReleasesServer
from tests.support.sshd import SSHEnv, free_port
from tests.test_gui import click, reach_image_page
from tests.test_netboot import BUNDLE, KEY, KEY_PART, publish_netboot

BUTTON3 = QWizard.WizardButton.CustomButton3


@pytest.fixture
def wizard(qtbot: QtBot, tmp_path: Path, settings: Settings) -> Iterator[KexecWizard]:
    w = KexecWizard(AppContext(AppPaths.resolve(tmp_path / "app"), settings))
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    yield w
    if w.netboot_dialog is not None:
        w.netboot_dialog.reject()
    for page in w.busy_pages():
        page.cancel_job(wait_ms=20_000)
    w.state.drop_session()


def open_dialog(qtbot: QtBot, w: KexecWizard) -> NetbootDialog:
    assert w.button(BUTTON3).text() == "Other wa&ys to boot…"
    click(qtbot, w.button(BUTTON3))
    d = w.netboot_dialog
    assert d is not None
    qtbot.waitUntil(lambda: d.chain.text().startswith("chain "), timeout=10_000)
    return d


def test_the_chain_url_is_shown_explained_and_copied(
    qtbot: QtBot, wizard: KexecWizard, releases: ReleasesServer
) -> None:
    publish_netboot(releases)
    d = open_dialog(qtbot, wizard)
    url = releases.url("nixos-26.05", "netboot-x86_64-linux.ipxe")
    assert d.chain.text() == f"chain {url}" and d.chain.isReadOnly()
    texts = " ".join(label.text() for label in d.findChildren(type(d.status)))
    assert "root has no password and no SSH key" in texts and "console" in texts
    click(qtbot, d.copy_chain)
    assert QGuiApplication.clipboard().text() == f"chain {url}"
    # A channel without a netboot image cannot serve one.
    d.channel.setCurrentIndex(d.channel.findData("nixos-25.11"))
    assert not d.serve_release.isEnabled() and d.serve_kexec.isChecked()
    assert "lists no netboot image" in d.chain.toolTip()


def test_serving_the_kexec_installer_logs_requests_and_stops_on_close(
    qtbot: QtBot, wizard: KexecWizard, tmp_path: Path
) -> None:
    pub = tmp_path / "mine.pub"
    pub.write_text(KEY + "\n")
    d = open_dialog(qtbot, wizard)
    d.keys.setText(str(pub))
    port = free_port()
    d.port.setValue(port)
    click(qtbot, d.start_button)
    qtbot.waitUntil(lambda: d.server is not None, timeout=30_000)
    assert d.served_chain.text() == f"chain http://127.0.0.1:{port}/netboot.ipxe"
    assert d.start_button.text() == "&Stop"
    script = requests.get(f"http://127.0.0.1:{port}/netboot.ipxe", timeout=5).text
    assert "initrd keys.cpio.gz" in script
    keys = requests.get(f"http://127.0.0.1:{port}/keys.cpio.gz", timeout=5).content
    import gzip

    assert KEY_PART.encode() in gzip.decompress(keys)
    qtbot.waitUntil(lambda: "GET /keys.cpio.gz 200" in d.log.toPlainText(), timeout=5_000)
    assert "GET /netboot.ipxe 200" in d.log.toPlainText()
    d.reject()  # closing the dialog stops the server: nothing keeps serving unseen
    qtbot.waitUntil(lambda: wizard.netboot_dialog is None, timeout=5_000)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


@pytest.mark.fault
def test_an_address_that_is_not_ours_and_missing_keys_are_explained(
    qtbot: QtBot, wizard: KexecWizard, tmp_path: Path
) -> None:
    d = open_dialog(qtbot, wizard)
    d.keys.setText(str(tmp_path / "nothing.pub"))
    click(qtbot, d.start_button)
    assert d.error.isVisible() and "Cannot read" in d.error.text.text()
    pub = tmp_path / "mine.pub"
    pub.write_text(KEY + "\n")
    d.keys.setText(str(pub))
    d.address.setText("192.0.2.1")  # TEST-NET-1: never an address of this machine
    click(qtbot, d.start_button)
    qtbot.waitUntil(
        lambda: "not an address of this computer" in d.error.text.text(), timeout=30_000
    )
    assert d.server is None and d.start_button.text() == "&Start serving"


def test_every_dialog_control_has_an_accessible_name(qtbot: QtBot, wizard: KexecWizard) -> None:
    d = open_dialog(qtbot, wizard)
    missing = [
        type(w).__name__
        for cls in (QLineEdit, QComboBox, QSpinBox, QAbstractButton)
        for w in d.findChildren(cls)
        if not w.accessibleName()
        and not (isinstance(w, QAbstractButton) and w.text())
        and type(w.parent()).__name__ not in ("QSpinBox", "QComboBox")
    ]
    assert missing == []


def test_the_legacy_bundle_is_offered_explained_and_refused_where_missing(
    qtbot: QtBot,
    wizard: KexecWizard,
    machine: Machine,
    ssh_env: SSHEnv,
    releases: ReleasesServer,
) -> None:
    releases.add("nixos-22.05", "kexec-bundle-x86_64", BUNDLE, digest=False)
    image = reach_image_page(qtbot, wizard, machine, ssh_env)
    image.variant.setCurrentIndex(image.variant.findData("kexec-bundle"))
    qtbot.waitUntil(image.error.isVisible, timeout=5_000)
    assert "dropped the kexec-bundle in December 2022" in image.error.text.text()
    assert "nixos-22.05" in image.error.text.text() and not image.isComplete()
    image.channel.setCurrentIndex(image.channel.findData("nixos-22.05"))
    qtbot.waitUntil(image.isComplete, timeout=20_000)
    assert wizard.state.image is not None and wizard.state.image.info.kind == "bundle"
    assert "Legacy image." in image.details.text() and "new host key" in image.details.text()
    click(qtbot, wizard.button(QWizard.WizardButton.NextButton))
    summary = wizard.currentPage().summary.text()  # type: ignore[attr-defined]
    assert "kexec-bundle-x86_64" in summary and "new host key" in summary

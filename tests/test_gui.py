"""The wizard driven like a person would, against the real sshd, HTTP server and loopback machine."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QMessageBox, QWidget, QWizard
from pytestqt.qtbot import QtBot

from app.core.events import CancelToken, discard
from app.core.paths import AppPaths
from app.core.profiles import Profile
from app.core.settings import Settings
from app.ui.context import AppContext
from app.ui.pages.base import PageId
from app.ui.pages.confirm import ConfirmPage
from app.ui.pages.connect import ConnectPage
from app.ui.pages.done import DonePage
from app.ui.pages.image import ImagePage
from app.ui.pages.inspect import InspectPage
from app.ui.pages.install import InstallPage
from app.ui.pages.servers import ServersPage
from app.ui.wizard import KexecWizard
from bench.stall import StallProbe
from tests.support.keyrings import SlowKeyring
from tests.support.machine import Machine
from tests.support.releases import ASSET, ReleasesServer
from tests.support.sshd import SSHEnv, fingerprint
from tests.support.tarballs import standin_tarball

pytestmark = pytest.mark.sshd
NEXT = QWizard.WizardButton.NextButton
COMMIT = QWizard.WizardButton.CommitButton
LEFT = Qt.MouseButton.LeftButton


@pytest.fixture
def ctx(tmp_path: Path, settings: Settings) -> AppContext:
    from dataclasses import replace

    return AppContext(
        AppPaths.resolve(tmp_path / "app"), replace(settings, up_timeout=30, down_timeout=30)
    )


@pytest.fixture
def wizard(qtbot: QtBot, ctx: AppContext) -> Iterator[KexecWizard]:
    w = KexecWizard(ctx)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    yield w
    for page in w.busy_pages():
        page.cancel_job(wait_ms=20_000)
    w.state.drop_session()


def click(qtbot: QtBot, widget: object) -> None:
    qtbot.mouseClick(widget, LEFT)  # type: ignore[arg-type]


def next_page(qtbot: QtBot, w: KexecWizard, timeout: int = 20_000) -> None:
    qtbot.waitUntil(
        lambda: w.button(NEXT).isEnabled() and w.button(NEXT).isVisible(), timeout=timeout
    )
    click(qtbot, w.button(NEXT))


def fill_connect(
    qtbot: QtBot,
    page: ConnectPage,
    port: int,
    user: str,
    key: Path | None = None,
    password: str | None = None,
) -> None:
    qtbot.keyClicks(page.address, "127.0.0.1")
    page.port.setValue(port)
    qtbot.keyClicks(page.user, user)
    if key is not None:
        page.auth.setCurrentIndex(page.auth.findData("key"))
        qtbot.keyClicks(page.key_path, str(key))
    if password is not None:
        page.auth.setCurrentIndex(page.auth.findData("password"))
        qtbot.keyClicks(page.password, password)


def connect_and_trust(qtbot: QtBot, w: KexecWizard, expected_fp: str) -> ConnectPage:
    page = w.page_of(PageId.CONNECT)
    assert isinstance(page, ConnectPage)
    assert not w.button(NEXT).isEnabled()  # Next only after a real connection
    click(qtbot, page.connect_button)
    qtbot.waitUntil(lambda: page.host_key_dialog is not None, timeout=10_000)
    dialog = page.host_key_dialog
    assert dialog is not None and dialog.fingerprint.text() == expected_fp
    click(qtbot, dialog.trust)
    qtbot.waitUntil(lambda: page.isComplete(), timeout=10_000)
    assert "Connected as" in page.status.text()
    return page


def test_the_whole_wizard_boots_the_installer(
    qtbot: QtBot,
    wizard: KexecWizard,
    machine: Machine,
    ssh_env: SSHEnv,
    releases: ReleasesServer,
    tmp_path: Path,
) -> None:
    w = wizard
    servers = w.page_of(PageId.SERVERS)
    assert isinstance(servers, ServersPage) and servers.empty.isVisible()
    click(qtbot, servers.new_button)
    assert w.currentId() == PageId.CONNECT
    connect_page = w.page_of(PageId.CONNECT)
    assert isinstance(connect_page, ConnectPage)
    fill_connect(qtbot, connect_page, machine.port, "root", key=ssh_env.key)
    connect_and_trust(
        qtbot,
        w,
        fingerprint(next(k for k in machine.host_keys if "ed25519" in k.name).with_suffix(".pub")),
    )
    assert connect_page.profile_name.text() == "127.0.0.1"
    connect_page.profile_name.setText("web-1")
    next_page(qtbot, w)

    inspect = w.page_of(PageId.INSPECT)
    assert isinstance(inspect, InspectPage) and w.currentId() == PageId.INSPECT
    qtbot.waitUntil(lambda: w.state.facts is not None and not w.currentPage().busy, timeout=20_000)
    facts = w.state.facts
    assert facts is not None and facts.hostname == "web-1" and facts.container in ("", "none")
    titles = [r.objectName() for r in inspect.checklist.rows]
    assert "verdict-memory" in titles and "verdict-kexec" in titles
    if inspect.override.isVisible():  # warnings need an explicit "I know what I'm doing"
        assert not w.button(NEXT).isEnabled()
        inspect.override.setChecked(True)
    assert "keeps" in inspect.net_label.text() or "DHCP" in inspect.net_label.text()
    next_page(qtbot, w)

    image = w.page_of(PageId.IMAGE)
    assert isinstance(image, ImagePage) and w.currentId() == PageId.IMAGE
    qtbot.waitUntil(lambda: image.isComplete(), timeout=20_000)
    assert image.channel.currentData() == "nixos-26.05" and image.arch.currentData() == "x86_64"
    assert w.state.transfer == "remote"  # the server reaches the (local) download server
    assert "sha256 from the releases API" in image.details.text()
    next_page(qtbot, w)

    assert w.currentId() == PageId.CONFIRM
    commit = w.button(COMMIT)
    assert (
        commit.isVisible()
        and not commit.isEnabled()
        and commit.text().replace("&", "") == "Install"
    )
    confirm = w.currentPage()
    qtbot.keyClicks(confirm.typed, "127.0.0.")  # type: ignore[attr-defined]
    assert not commit.isEnabled()
    qtbot.keyClicks(confirm.typed, "1")  # type: ignore[attr-defined]
    assert commit.isEnabled()
    click(qtbot, commit)

    install = w.page_of(PageId.INSTALL)
    assert isinstance(install, InstallPage) and w.currentId() == PageId.INSTALL
    qtbot.waitUntil(lambda: not install.safe_to_cancel, timeout=30_000)
    assert "too late" in install.cancel_button.text().lower()
    qtbot.waitUntil(lambda: w.currentId() == PageId.DONE, timeout=60_000)
    assert all(s == "done" for s in install.stages.stage_state.values()), install.stages.stage_state
    assert install.overall.value() == 100
    assert any(
        "machine will boot into nixos" in line for line in install.log.toPlainText().splitlines()
    )

    done = w.page_of(PageId.DONE)
    assert isinstance(done, DonePage)
    assert "root@127.0.0.1" in done.headline.text() and "same as before" in done.headline.text()
    cmd = done.command.toPlainText()
    assert f"-p {machine.port}" in cmd and cmd.endswith("root@127.0.0.1")
    assert machine.state == "installer"
    profile = json.loads((tmp_path / "app" / "config" / "profiles.json").read_text())["profiles"][0]
    assert profile["name"] == "web-1" and profile["state"] == "installer"
    assert profile["installer"]["hostname"] == "nixos-installer"

    # The hardware report runs nixos-facter, which the stand-in installer lacks: a clear error.
    done.save_report(tmp_path / "facter.json")
    qtbot.waitUntil(lambda: done.error.isVisible(), timeout=20_000)
    assert "nixos-facter failed" in done.error.text.text()
    assert not (tmp_path / "facter.json").exists()
    click(qtbot, done.reboot)
    assert done.reboot_box is not None
    done.reboot_box.button(QMessageBox.StandardButton.Cancel).click()  # never reboot this machine
    assert done.reboot_box is None and machine.state == "installer"


def test_a_stop_verdict_blocks_next_without_override(
    qtbot: QtBot, wizard: KexecWizard, machine: Machine, ssh_env: SSHEnv
) -> None:
    (
        machine.workdir / "run" / ".containerenv"
    ).touch()  # the machine now looks like a podman container
    w = wizard
    click(qtbot, w.page_of(PageId.SERVERS).new_button)  # type: ignore[attr-defined]
    fill_connect(qtbot, w.page_of(PageId.CONNECT), machine.port, "root", key=ssh_env.key)  # type: ignore[arg-type]
    connect_and_trust(
        qtbot,
        w,
        fingerprint(next(k for k in machine.host_keys if "ed25519" in k.name).with_suffix(".pub")),
    )
    next_page(qtbot, w)
    inspect = w.page_of(PageId.INSPECT)
    assert isinstance(inspect, InspectPage)
    qtbot.waitUntil(lambda: w.state.facts is not None and not w.currentPage().busy, timeout=20_000)
    assert w.state.facts is not None and w.state.facts.container == "podman"
    assert [v.check for v in w.state.verdicts if v.level.value == "stop"] == ["container"]
    assert not w.button(NEXT).isEnabled() and not inspect.override.isVisible()
    assert "stop the kexec" in inspect.status.text()
    assert inspect.checklist.rows[0].objectName() == "verdict-container"  # the stop comes first


@pytest.mark.fault
def test_wrong_password_keeps_next_disabled(
    qtbot: QtBot, wizard: KexecWizard, ssh_env: SSHEnv, trusted: Path
) -> None:
    w = wizard
    click(qtbot, w.page_of(PageId.SERVERS).new_button)  # type: ignore[attr-defined]
    page = w.page_of(PageId.CONNECT)
    assert isinstance(page, ConnectPage)
    fill_connect(qtbot, page, ssh_env.port, "nkw-plain", password="Wrong-Secret-1")
    click(qtbot, page.connect_button)
    qtbot.waitUntil(lambda: page.error.isVisible(), timeout=10_000)
    assert "refused the password" in page.error.text.text()
    assert not w.button(NEXT).isEnabled()
    page.password.clear()
    qtbot.keyClicks(page.password, ssh_env.plain.password)
    click(qtbot, page.connect_button)
    qtbot.waitUntil(lambda: w.button(NEXT).isEnabled(), timeout=10_000)
    log = w.ctx.log.path.read_text()
    assert "Wrong-Secret-1" not in log and ssh_env.plain.password not in log


@pytest.mark.fault
def test_cancel_during_the_upload_leaves_the_server_as_it_was(
    qtbot: QtBot,
    wizard: KexecWizard,
    machine: Machine,
    ssh_env: SSHEnv,
    releases: ReleasesServer,
    tmp_path: Path,
) -> None:
    releases.add(
        "nixos-26.05", ASSET, standin_tarball(tmp_path / "big.tar.gz", size=64 << 20).read_bytes()
    )
    w = wizard
    image = reach_image_page(qtbot, w, machine, ssh_env)
    image.transfer.setCurrentIndex(image.transfer.findData("upload"))
    qtbot.waitUntil(lambda: w.state.image is not None, timeout=30_000)  # downloaded for the upload
    install = confirm_and_install(qtbot, w)
    qtbot.waitUntil(
        lambda: (
            install.stages.stage_state["transfer"] == "running"
            or install.stages.stage_state["transfer"] != "waiting"
        ),
        timeout=20_000,
    )
    assert install.safe_to_cancel and "safe" in install.cancel_button.text()
    click(qtbot, install.cancel_button)
    qtbot.waitUntil(lambda: install.error.isVisible(), timeout=20_000)
    assert "left as it was" in install.error.text.text()
    assert not (machine.workdir / "root" / "nixos-kexec-wizard").exists()
    assert machine.state == "original"


def machine_fingerprint(machine: Machine) -> str:
    return fingerprint(
        next(k for k in machine.host_keys if "ed25519" in k.name).with_suffix(".pub")
    )


def reach_image_page(qtbot: QtBot, w: KexecWizard, machine: Machine, ssh_env: SSHEnv) -> ImagePage:
    """New server → connect as root → inspect (accepting warnings) → image, catalog loaded."""
    click(qtbot, w.page_of(PageId.SERVERS).new_button)  # type: ignore[attr-defined]
    fill_connect(qtbot, w.page_of(PageId.CONNECT), machine.port, "root", key=ssh_env.key)  # type: ignore[arg-type]
    connect_and_trust(qtbot, w, machine_fingerprint(machine))
    next_page(qtbot, w)
    qtbot.waitUntil(lambda: w.state.facts is not None and not w.currentPage().busy, timeout=20_000)
    inspect = w.page_of(PageId.INSPECT)
    if inspect.override.isVisible():  # type: ignore[attr-defined]
        inspect.override.setChecked(True)  # type: ignore[attr-defined]
    next_page(qtbot, w)
    image = w.page_of(PageId.IMAGE)
    assert isinstance(image, ImagePage)
    qtbot.waitUntil(lambda: w.state.catalog is not None, timeout=20_000)
    return image


def confirm_and_install(qtbot: QtBot, w: KexecWizard) -> InstallPage:
    """From the image page: Next, type the host name, Install."""
    next_page(qtbot, w)
    qtbot.keyClicks(w.currentPage().typed, "127.0.0.1")  # type: ignore[attr-defined]
    click(qtbot, w.button(COMMIT))
    install = w.page_of(PageId.INSTALL)
    assert isinstance(install, InstallPage)
    return install


def test_stop_waiting_after_the_kexec_then_wait_again(
    qtbot: QtBot, wizard: KexecWizard, machine: Machine, ssh_env: SSHEnv, releases: ReleasesServer
) -> None:
    machine.installer_mode = "silent"  # the installer does not come up (yet)
    w = wizard
    reach_image_page(qtbot, w, machine, ssh_env)
    install = confirm_and_install(qtbot, w)
    qtbot.waitUntil(lambda: install.stages.stage_state["up"] == "running", timeout=30_000)
    assert not install.safe_to_cancel and "too late" in install.cancel_button.text().lower()
    # A wait of unknown length: a busy bar and the stage's own timer and deadline, no percentage.
    qtbot.waitUntil(lambda: "of at most" in install.now.text(), timeout=5_000)
    assert install.overall.maximum() == 0
    assert install.now.text().startswith("Wait for the installer to answer: ")
    assert f"of at most {w.ctx.settings.up_timeout:.0f} s" in install.now.text()
    click(qtbot, install.cancel_button)
    qtbot.waitUntil(lambda: install.error.isVisible(), timeout=10_000)
    assert "Stopped waiting" in install.error.text.text()
    assert install.retry.isVisible() and install.retry_address.text() == "127.0.0.1"
    assert "Expected network" in install.expected.text()
    profile = w.ctx.profiles.load()["127.0.0.1"]
    assert profile.state == "unknown"  # after the point of no return the app cannot know
    machine.boot_installer()  # it comes up late
    click(qtbot, install.retry_button)
    qtbot.waitUntil(lambda: w.currentId() == PageId.DONE, timeout=30_000)
    assert w.state.info is not None and w.state.info.hostname == "nixos-installer"
    assert w.ctx.profiles.load()["127.0.0.1"].state == "installer"


@pytest.mark.fault
def test_stopping_a_download_on_the_image_page(
    qtbot: QtBot,
    wizard: KexecWizard,
    machine: Machine,
    ssh_env: SSHEnv,
    releases: ReleasesServer,
    tmp_path: Path,
) -> None:
    from tests.support.releases import Fault

    releases.add(
        "nixos-26.05", ASSET, standin_tarball(tmp_path / "big.tar.gz", size=32 << 20).read_bytes()
    )
    releases.faults[f"nixos-26.05/{ASSET}"] = Fault(stall=3.0)  # slow enough to stop by hand
    w = wizard
    image = reach_image_page(qtbot, w, machine, ssh_env)
    image.transfer.setCurrentIndex(image.transfer.findData("upload"))
    qtbot.waitUntil(lambda: image.cancel_download.isVisible(), timeout=5_000)
    assert not w.button(NEXT).isEnabled()
    click(qtbot, image.cancel_download)
    qtbot.waitUntil(lambda: "stopped" in image.progress_text.text(), timeout=10_000)
    assert not w.button(NEXT).isEnabled() and w.state.image is None
    # Choosing the server download instead needs no local copy.
    image.transfer.setCurrentIndex(image.transfer.findData("remote"))
    assert w.button(NEXT).isEnabled()


@pytest.mark.fault
def test_closing_while_connecting_asks_cancels_and_waits(qtbot: QtBot, wizard: KexecWizard) -> None:
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts, never speaks SSH: the connect would wait for its banner
    try:
        w = wizard
        click(qtbot, w.page_of(PageId.SERVERS).new_button)  # type: ignore[attr-defined]
        page = w.page_of(PageId.CONNECT)
        assert isinstance(page, ConnectPage)
        fill_connect(qtbot, page, silent.getsockname()[1], "root")
        click(qtbot, page.connect_button)
        qtbot.waitUntil(lambda: page.busy, timeout=5_000)
        w.close()
        assert w.isVisible() and w.close_prompt is not None
        w.close_prompt.button(QMessageBox.StandardButton.No).click()
        assert w.isVisible() and page.busy
        w.close()
        assert w.close_prompt is not None
        w.close_prompt.button(QMessageBox.StandardButton.Yes).click()
        qtbot.waitUntil(lambda: not w.isVisible(), timeout=5_000)
        assert not page.busy
    finally:
        silent.close()


def test_a_server_with_nixos_on_its_disk_is_listed_as_such(qtbot: QtBot, ctx: AppContext) -> None:
    ctx.profiles.put(
        Profile("web", "198.51.100.8", state="installed", system="/x", last_contact=1.0)
    )
    w = KexecWizard(ctx)
    qtbot.addWidget(w)
    w.show()
    page = w.page_of(PageId.SERVERS)
    assert isinstance(page, ServersPage)
    item = page.tree.topLevelItem(0)
    assert item is not None and item.text(2) == "NixOS on its disk (reboot to start it)"


def test_saved_servers_reconnect_and_forget(qtbot: QtBot, ctx: AppContext) -> None:
    ctx.profiles.put(Profile("old", "198.51.100.7", state="original", last_contact=1.0))
    ctx.profiles.put(
        Profile(
            "nix", "203.0.113.9", state="installer", last_contact=2.0,
            installer={"host": "203.0.113.9", "port": 22, "user": "root", "host_key": "ssh-ed25519 AAAA",
                       "fingerprint": "SHA256:x", "boot_id": "b", "hostname": "nixos-installer", "os_release": {}},
        )
    )  # fmt: skip
    w = KexecWizard(ctx)
    qtbot.addWidget(w)
    w.show()
    page = w.page_of(PageId.SERVERS)
    assert isinstance(page, ServersPage)
    names = [page.tree.topLevelItem(i).text(0) for i in range(page.tree.topLevelItemCount())]  # type: ignore[union-attr]
    assert names == ["nix", "old"]  # most recent first
    assert page.tree.topLevelItem(0).text(2) == "NixOS installer"  # type: ignore[union-attr]
    assert page.reconnect_button.isEnabled()
    page.tree.setCurrentItem(page.tree.topLevelItem(1))
    assert not page.reconnect_button.isEnabled()
    click(qtbot, page.forget_button)
    assert page.confirm_forget is not None
    page.confirm_forget.button(QMessageBox.StandardButton.Yes).click()
    # Forgetting touches the keyring, so it runs in a job: the list follows when it is done.
    qtbot.waitUntil(lambda: page.tree.topLevelItemCount() == 1, timeout=5_000)
    assert set(ctx.profiles.load()) == {"nix"}
    # Continue with a profile: the connect page is filled in from it.
    page.tree.setCurrentItem(page.tree.topLevelItem(0))
    click(qtbot, w.button(NEXT))
    connect = w.page_of(PageId.CONNECT)
    assert isinstance(connect, ConnectPage)
    assert connect.address.text() == "203.0.113.9" and connect.profile_name.text() == "nix"
    # The page reads ~/.ssh/config and the keyring in a job: let it report before the window
    # goes (alone, this test ended while that job still imported paramiko, and Qt aborted).
    qtbot.waitUntil(lambda: not connect.busy, timeout=10_000)


def test_settings_are_validated_and_saved(
    qtbot: QtBot, wizard: KexecWizard, ctx: AppContext
) -> None:
    dialog = wizard.open_settings()
    dialog.allow_http.setChecked(False)
    dialog.api.setText("http://mirror.example/api")
    dialog._save()
    assert dialog.isVisible() and "plain http" in dialog.error.text()
    dialog.api.setText("https://mirror.example/api")
    dialog.download.setText("https://mirror.example/download")
    dialog.up_timeout.setValue(900)
    dialog._save()
    saved = json.loads(ctx.paths.settings_file.read_text())
    assert saved["api_url"] == "https://mirror.example/api" and saved["up_timeout"] == 900
    assert ctx.settings.api_url == "https://mirror.example/api"


def test_every_control_has_an_accessible_name(wizard: KexecWizard) -> None:
    from PySide6.QtWidgets import QAbstractButton, QComboBox, QLineEdit, QSpinBox

    missing = []
    for pid, page in wizard.pages.items():
        for cls in (QLineEdit, QComboBox, QSpinBox, QAbstractButton):
            for widget in page.findChildren(cls):
                if not widget.accessibleName() and not (
                    isinstance(widget, QAbstractButton) and widget.text()
                ):
                    if widget.parent() is not None and type(widget.parent()).__name__ in (
                        "QSpinBox",
                        "QComboBox",
                        "QDoubleSpinBox",
                    ):
                        continue
                    missing.append(f"{pid.name}: {type(widget).__name__} {widget.objectName()}")
    assert missing == []


def test_smoke_test_flag_opens_and_quits(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    r = subprocess.run(
        [sys.executable, "-m", "app", "--smoke-test", "--home", str(tmp_path / "h")],
        cwd=Path(__file__).resolve().parent.parent, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "wizard shown after" in r.stdout


def test_the_stall_probe_sees_a_blocked_gui_thread(qtbot: QtBot) -> None:
    """The event-loop probe behind bench/gui_stall.py reports a real 150 ms block, not less."""
    probe = StallProbe(5)
    probe.start()
    qtbot.wait(50)
    QTimer.singleShot(0, lambda: time.sleep(0.15))  # the GUI thread does blocking work
    qtbot.wait(100)
    worst = probe.stop()
    assert 0.14 <= worst < 0.5 and probe.ticks > 5
    probe.start()
    qtbot.wait(100)
    assert probe.stop() < 0.1  # an idle loop shows no such stall


@pytest.mark.fault
def test_each_hop_is_asked_about_once_and_its_answer_sticks(
    qtbot: QtBot, wizard: KexecWizard, ssh_env: SSHEnv, tmp_path: Path
) -> None:
    from tests.support.sshd import SSHServer, free_port, keygen

    d = tmp_path / "hop-sshd"
    d.mkdir()
    hop = SSHServer(free_port(), d, [keygen(d / "ssh_host_ed25519_key")])
    hop.start()
    try:
        shutil.copy(ssh_env.key, Path.home() / ".ssh" / "id_ed25519")  # the hop's own login
        next_page(qtbot, wizard)
        page = wizard.page_of(PageId.CONNECT)
        assert isinstance(page, ConnectPage)
        fill_connect(qtbot, page, ssh_env.port, "nkw-nopw", key=ssh_env.key)
        qtbot.keyClicks(page.jump, f"nkw-plain@127.0.0.1:{hop.port}")
        asked: list[str] = []
        click(qtbot, page.connect_button)
        for _ in range(2):  # the hop first, then the target: one question each
            qtbot.waitUntil(lambda: page.host_key_dialog is not None, timeout=10_000)
            dialog = page.host_key_dialog
            assert dialog is not None
            asked.append(dialog.fingerprint.text())
            click(qtbot, dialog.trust)
        qtbot.waitUntil(lambda: page.isComplete(), timeout=10_000)
        assert asked == [fingerprint(hop.host_key_pub), fingerprint(ssh_env.server.host_key_pub)]
        assert page.host_key_dialog is None
    finally:
        hop.stop()


@pytest.mark.fault
def test_the_done_page_shows_what_the_server_says_as_text_and_names_the_key_left_behind(
    wizard: KexecWizard,
) -> None:
    from app.core.result import InstallerInfo

    info = InstallerInfo(
        "192.0.2.9", 22, "root", "ssh-ed25519 AAAA", "SHA256:abc", "boot",
        "<img src=x>evil", {"PRETTY_NAME": "<b>NixOS</b> & co"},
        host_key_verified=False,
        key_left_in="/home/deploy/.ssh/authorized_keys", key_comment="nixos-kexec-wizard:web",
    )  # fmt: skip
    wizard.state.info = info
    page = wizard.page_of(PageId.DONE)
    assert isinstance(page, DonePage)
    page.initializePage()
    text = page.headline.text()
    # The server's words are escaped, never markup.
    assert "&lt;img src=x&gt;evil" in text and "<img" not in text
    assert "&lt;b&gt;NixOS&lt;/b&gt; &amp; co" in text
    # An accepted key is not called the same as before, and the leftover is named.
    assert "not verified" in text and "same as before" not in text
    assert "/home/deploy/.ssh/authorized_keys" in text and "sed -i" in text


def _mnemonics(widget: QWidget) -> list[tuple[str, str]]:
    """(key, text) of every Alt+key a widget's buttons, labels and group boxes define."""
    from PySide6.QtWidgets import QAbstractButton, QGroupBox, QLabel

    texts = [b.text() for b in widget.findChildren(QAbstractButton)]
    texts += [lb.text() for lb in widget.findChildren(QLabel) if lb.buddy() is not None]
    texts += [g.title() for g in widget.findChildren(QGroupBox)]
    return [pair for text in texts for pair in _mnemonics_of_text(text)]


def _clashes(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for key, text in pairs:
        seen.setdefault(key, []).append(text)
    return {k: v for k, v in seen.items() if len(v) > 1}


def test_no_two_controls_share_a_mnemonic(wizard: KexecWizard, ctx: AppContext) -> None:
    from app.core.errors import HostKeyUnknown
    from app.ui.dialogs import (
        HostKeyDialog,
        HostKeysDialog,
        SecretDialog,
        SettingsDialog,
        SeveralServersDialog,
    )
    from app.ui.netboot import NetbootDialog

    wb = QWizard.WizardButton
    found = {}
    for pid, page in wizard.pages.items():
        # The wizard's own buttons that show on this page, beside the page's controls.
        shown = [wb.BackButton, wb.CustomButton1, wb.CustomButton2, wb.CustomButton3]
        if page.isCommitPage():
            shown.append(wb.CommitButton)
        elif page.nextId() == -1:
            shown.append(wb.FinishButton)
        else:
            shown.append(wb.NextButton)
        buttons = [pair for b in shown for pair in _mnemonics_of_text(wizard.buttonText(b))]
        if clash := _clashes(_mnemonics(page) + buttons):
            found[pid.name] = clash
    unknown = HostKeyUnknown("h", 22, "ssh-ed25519", "SHA256:x")
    dialogs = {
        "host key": HostKeyDialog(unknown),
        "host keys": HostKeysDialog([("web-1", unknown), ("web-2", unknown)]),
        "several servers": SeveralServersDialog(["web-1", "db-2"]),
        "secret": SecretDialog("Password", "Password:"),
        "settings": SettingsDialog(ctx.settings, "/tmp/cache"),
        "netboot": NetbootDialog(ctx, None),
    }
    for name, dialog in dialogs.items():
        if clash := _clashes(_mnemonics(dialog)):
            found[name] = clash
        dialog.deleteLater()
    assert found == {}


def _mnemonics_of_text(text: str) -> list[tuple[str, str]]:
    """The (key, text) of a text's Alt+key, if it has one ("&&" is a literal "&")."""
    import re

    m = re.search(r"&([^&\s])", text.replace("&&", ""))
    return [(m.group(1).lower(), text)] if m else []


def test_a_remembered_sudo_password_is_used_as_the_command_line_uses_it(
    qtbot: QtBot, wizard: KexecWizard, ctx: AppContext, ssh_env: SSHEnv, trusted: Path
) -> None:
    from app.core.secrets import sudo_key

    ctx.profiles.put(
        Profile(
            "pw-box", "127.0.0.1", port=ssh_env.port, user="nkw-pw", auth="key",
            key_path=str(ssh_env.key), remember_password=True, last_contact=3.0,
        )
    )  # fmt: skip
    assert ctx.secrets.set(sudo_key("pw-box"), ssh_env.pw.password)
    servers = wizard.page_of(PageId.SERVERS)
    assert isinstance(servers, ServersPage)
    servers.reload()
    servers.tree.setCurrentItem(servers.tree.topLevelItem(0))
    next_page(qtbot, wizard)
    page = wizard.page_of(PageId.CONNECT)
    assert isinstance(page, ConnectPage) and page.profile_name.text() == "pw-box"
    # The click lands after the keyring's thread has ended but before its answer has reached
    # the page (what a quick user hits by chance): the connect still waits for that answer.
    look_around = page.job
    assert look_around is not None and look_around.name == "keyring"
    assert look_around.wait(5_000)
    assert page.busy  # not done until it has reported
    click(qtbot, page.connect_button)
    qtbot.waitUntil(lambda: page.isComplete(), timeout=10_000)
    # The run the page connected becomes root with the remembered password, asking nothing
    # (its steps called one by one: this test machine is a container, which preflight stops,
    # and a stop ends the run before root, on the Inspect page as on the command line).
    run = wizard.state.run
    assert run is not None
    run.inspect(discard, CancelToken())
    run.become_root(wizard.state.answers)
    assert run.rooted and run.session is not None and run.session.privilege is not None
    assert run.session.privilege.kind == "sudo-password"
    run.close()


def test_the_wizard_and_the_command_line_build_the_same_plan(
    qtbot: QtBot,
    wizard: KexecWizard,
    machine: Machine,
    ssh_env: SSHEnv,
    releases: ReleasesServer,
    urls: dict[str, str],
) -> None:
    from tests.test_cli import cli

    image = reach_image_page(qtbot, wizard, machine, ssh_env)
    image.transfer.setCurrentIndex(image.transfer.findData("upload"))
    qtbot.waitUntil(lambda: wizard.state.image is not None, timeout=30_000)
    next_page(qtbot, wizard)  # -> Confirm
    confirm = wizard.currentPage()
    assert isinstance(confirm, ConfirmPage)
    qtbot.keyClicks(confirm.typed, "127.0.0.1")
    # The command line's --installer-port and --kexec-extra-flags, under Advanced.
    click(qtbot, confirm.advanced)
    assert confirm.advanced_box.isVisible()
    confirm.installer_port.setValue(2222)
    qtbot.keyClicks(confirm.kexec_flags, "-c; reboot")
    assert not confirm.isComplete() and "does not look like kexec options" in (
        confirm.flags_error.text()
    )
    confirm.kexec_flags.setText("-c")
    assert confirm.isComplete() and not confirm.flags_error.isVisible()
    # The dead-man switch (--dead-man): on by default, its minutes beside it, or off.
    assert confirm.dead_man.isChecked() and confirm.dead_man_minutes.value() == 10
    click(qtbot, confirm.dead_man)
    assert confirm.request().dead_man_minutes is None and not confirm.dead_man_minutes.isEnabled()
    click(qtbot, confirm.dead_man)
    confirm.dead_man_minutes.setValue(7)
    assert confirm.validatePage()  # what the Install button does first; nothing runs yet
    run = wizard.state.run
    assert run is not None and run.plan is not None
    gui_plan = run.plan.summary()
    wizard.state.drop_session()
    # The same answers on the command line: without --yes it stops after planning.
    r = cli(
        "install", "--json", f"root@127.0.0.1:{machine.port}", "-i", str(ssh_env.key),
        "--transfer", "upload", "--save-profile", "127.0.0.1", "--installer-port", "2222",
        "--kexec-extra-flags=-c", "--dead-man", "7", env=urls,
    )  # fmt: skip
    assert r.code == 2 and "needs a confirmation" in r.stdout, r.stdout + r.stderr
    (cli_plan,) = [e["plan"] for e in r.events if e["event"] == "plan"]
    assert cli_plan == gui_plan
    assert gui_plan["transfer"] == "upload" and gui_plan["kind"] == "tarball"
    assert gui_plan["installer_port"] == 2222 and gui_plan["kexec_extra_flags"] == "-c"
    assert gui_plan["dead_man_minutes"] == 7
    assert machine.state == "original"


@pytest.mark.fault
def test_a_slow_keyring_never_blocks_the_window_and_closing_waits_for_it(
    qtbot: QtBot, wizard: KexecWizard, ctx: AppContext
) -> None:
    """A keyring that waits (an unlock prompt, a slow D-Bus) is read in a job; closing while
    it runs cancels, answers at once, and the window goes when the job has reported."""
    import keyring

    from app.core.secrets import SERVICE, password_key

    slow = SlowKeyring(1.5)
    slow.store[(SERVICE, password_key("slow"))] = "remembered"
    previous = keyring.get_keyring()
    keyring.set_keyring(slow)
    try:
        _walk_to_a_slow_keyring(qtbot, wizard, ctx)
    finally:
        keyring.set_keyring(previous)


def _walk_to_a_slow_keyring(qtbot: QtBot, w: KexecWizard, ctx: AppContext) -> None:
    ctx.profiles.put(Profile("slow", "192.0.2.1", remember_password=True, last_contact=1.0))
    servers = w.page_of(PageId.SERVERS)
    assert isinstance(servers, ServersPage)
    servers.reload()
    servers.tree.setCurrentItem(servers.tree.topLevelItem(0))
    probe = StallProbe(5)
    probe.start()
    next_page(qtbot, w)
    page = w.page_of(PageId.CONNECT)
    assert isinstance(page, ConnectPage) and page.busy  # reading the keyring in the background
    w.close()
    assert w.close_prompt is not None
    t0 = time.monotonic()
    w.close_prompt.button(QMessageBox.StandardButton.Yes).click()
    assert time.monotonic() - t0 < 0.5 and w.isVisible()  # cancelled; not waited for here
    assert page.busy  # a keyring read cannot be interrupted: the window waits for its report
    qtbot.waitUntil(lambda: not w.isVisible(), timeout=10_000)
    assert not page.busy and time.monotonic() - t0 >= 1.0
    assert probe.stop() < 0.5  # the window kept answering through the 1.5 s keyring reads


def test_the_image_page_says_once_what_a_local_file_check_proves(
    qtbot: QtBot, wizard: KexecWizard, machine: Machine, ssh_env: SSHEnv, releases: ReleasesServer,
    tmp_path: Path,
) -> None:  # fmt: skip
    from PySide6.QtWidgets import QLabel

    w = wizard
    image = reach_image_page(qtbot, w, machine, ssh_env)
    local = standin_tarball(tmp_path / "nixos-kexec-installer-noninteractive-x86_64-linux.tar.gz")
    image.use_file.setChecked(True)
    image.file.setText(str(local))
    image.update_choice()
    qtbot.waitUntil(lambda: w.state.image is not None, timeout=20_000)
    said = " ".join(
        label.text() for label in image.findChildren(QLabel) if label.isVisible()
    ).lower()
    assert said.count("up to you") == 1, said
    assert "checksum" not in image.transfer_reason.text().lower()


def test_the_image_page_says_once_that_a_release_has_no_checksum(
    qtbot: QtBot, wizard: KexecWizard, machine: Machine, ssh_env: SSHEnv, releases: ReleasesServer,
    tmp_path: Path,
) -> None:  # fmt: skip
    from PySide6.QtWidgets import QLabel

    releases.add(
        "nixos-26.05", ASSET, standin_tarball(tmp_path / "t.tar.gz").read_bytes(), digest=False
    )
    w = wizard
    image = reach_image_page(qtbot, w, machine, ssh_env)
    qtbot.waitUntil(lambda: w.state.image is not None, timeout=20_000)
    said = " ".join(
        label.text() for label in image.findChildren(QLabel) if label.isVisible()
    ).lower()
    assert said.count("checksum") == 1 and "not verified" not in said, said

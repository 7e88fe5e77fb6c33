"""NixOS onto the disk, from the installer: Disks → System → Erase (typed) → Install → Installed."""

from __future__ import annotations

import html
import shlex
from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, QUrl, Slot
from PySide6.QtGui import QDesktopServices, QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
    QWizard,
)

from app.core.disk.config import NetworkMode
from app.core.disk.disks import Disk, what_is_on
from app.core.disk.run import DiskRun
from app.core.errors import WizardError
from app.core.events import (
    CancelToken,
    Event,
    EventSink,
    LogEvent,
    OutputEvent,
    ProgressEvent,
    StageEvent,
)
from app.core.handoff import connect_installer, installer_ssh_command, reboot_installer
from app.core.plan import ImageRequest, InstallRequest
from app.core.result import Outcome
from app.core.run import HostRun, RunRequest, Step
from app.core.text import printable
from app.ui.context import AppContext, WizardState
from app.ui.pages.base import BasePage, PageId
from app.ui.widgets import (
    DISK_STAGE_NAMES,
    ErrorPanel,
    StageList,
    ask,
    terminal_or_clipboard,
    wrap_label,
)


def _fixed(widget: QPlainTextEdit) -> QPlainTextEdit:
    widget.setReadOnly(True)
    widget.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
    return widget


class _DiskPage(BasePage):
    """A page of the disk install: the installer's run, and the request its choices make."""

    @property
    def disk_run(self) -> HostRun | None:
        """The run on the installer."""
        return self.state.disk_run

    @property
    def disk(self) -> DiskRun | None:
        """What the disk steps found so far."""
        run = self.state.disk_run
        return run.disk if run is not None else None

    def fresh_run(self) -> None:
        """A new run on the installer, after one that ended (a setting the engine refused
        ends its run; nothing was written): the choices made so far stay in the answers."""
        run = self.state.run
        if self.state.disk_run is not None:
            self.state.disk_run.close()
        if run is not None:
            self.state.disk_run = run.onto_disk(self.state.answers, self.state.disk_request)

    def request(self) -> RunRequest:
        """The run's request: the System page's choices, nothing about an image."""
        return RunRequest(ImageRequest(), InstallRequest(), disk=self.state.disk_request)


def _go(
    run: HostRun, state: WizardState, request: RunRequest, until: Step, emit: EventSink,
    cancel: CancelToken,
) -> Outcome | None:  # fmt: skip
    """Take the installer's run as far as ``until`` (in a job); a failed end raises its error."""
    outcome = run.go(state.answers, emit, cancel, request=request, until=until)
    if outcome is not None and outcome.error is not None:
        raise outcome.error
    return outcome


class DisksPage(_DiskPage):
    """The installer's disks: the ones that can take NixOS, the ones refused and why."""

    def __init__(self, ctx: AppContext, state: WizardState) -> None:
        super().__init__(ctx, state)
        self.setTitle("Install NixOS: the disk")
        self.setSubTitle("Choose the disk NixOS goes on. Nothing is written until you confirm.")
        self.status = wrap_label("")
        self.status.setAccessibleName("Disks status")
        self.error = ErrorPanel(self)
        self.list_box = QWidget(self)
        self.list_layout = QVBoxLayout(self.list_box)
        self.list_layout.setContentsMargins(0, 0, 0, 0)
        self.group = QButtonGroup(self)
        self.group.buttonToggled.connect(self.completeChanged)
        self.refused = wrap_label("")
        self.refused.setAccessibleName("Disks that cannot be used")
        self.swap = QSpinBox(self)
        self.swap.setRange(0, 65536)
        self.swap.setSingleStep(512)
        self.swap.setSuffix(" MiB")
        self.swap.setSpecialValueText("none")
        self.swap.setAccessibleName("Swap partition")
        self.again = QPushButton("Look &again", self)
        self.again.clicked.connect(self._look_again)
        self.swap.setMinimumWidth(140)
        swap_row = QHBoxLayout()
        swap_row.addWidget(QLabel("Swap partition:", self))
        swap_row.addWidget(self.swap)
        swap_row.addWidget(QLabel("(a swapfile is added by itself when memory is short)", self))
        swap_row.addStretch(1)
        top = QHBoxLayout()
        top.addWidget(self.status, 1)
        top.addWidget(self.again)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.error)
        layout.addWidget(self.list_box)
        layout.addWidget(self.refused)
        layout.addLayout(swap_row)
        layout.addStretch(1)
        self.buttons: dict[str, QRadioButton] = {}

    def initializePage(self) -> None:
        if self.disk is None or self.disk.choice is None:
            self.look()

    @Slot()
    def _look_again(self) -> None:
        self.fresh_run()
        self.look()

    @Slot()
    def look(self) -> None:
        """Connect to the installer and list its disks (in the background)."""
        run, state, request = self.disk_run, self.state, self.request()
        if run is None:
            return
        self.error.clear()

        def work(emit: EventSink, cancel: CancelToken) -> Outcome | None:
            return _go(run, state, request, Step.ROOT, emit, cancel)

        self.run("disks", work, lambda _o: self._show(), failed=self._failed,
                 ended=self.completeChanged.emit)  # fmt: skip
        self.status.setText(f"Looking at the disks of {run.label}…")
        self.completeChanged.emit()

    def _failed(self, error: WizardError) -> None:
        self.status.setText("The disks could not be listed. Look again once fixed.")
        self.error.show_error(error)
        self.fresh_run()  # the run ended with the error: Look again starts a new one

    def _show(self) -> None:
        disk = self.disk
        if disk is None or disk.choice is None:
            return
        for b in self.buttons.values():
            self.group.removeButton(b)
            b.deleteLater()
        self.buttons.clear()
        choice, old_root = disk.choice, self.disk_run and self.disk_run.old_root()
        for d in choice.candidates:
            note = choice.notes.get(d.name, "")
            text = f"{d.describe()}\n      {d.stable_path} — {what_is_on(d, old_root or None)}"
            button = QRadioButton(text + (f" ({note})" if note else ""), self.list_box)
            button.setAccessibleName(f"Disk {d.name}")
            button.setProperty("disk", d.name)
            self.group.addButton(button)
            self.list_layout.addWidget(button)
            self.buttons[d.name] = button
        if choice.default is not None:
            self.buttons[choice.default.name].setChecked(True)
        self.refused.setText("\n".join(f"Not {d.describe()}: {why}." for d, why in choice.refused))
        n = len(choice.candidates)
        self.status.setText(
            "No disk here can take NixOS." if not n else
            f"{n} disk(s) can take NixOS" + (
                f"; {choice.default.name} is chosen for you." if choice.default else
                f". {choice.why_no_default or 'Choose one.'}"
            )
        )  # fmt: skip
        self.completeChanged.emit()

    def chosen(self) -> str:
        """The kernel name of the disk chosen, or ""."""
        button = self.group.checkedButton()
        return str(button.property("disk")) if button is not None else ""

    def isComplete(self) -> bool:
        return bool(self.chosen()) and not self.busy

    def validatePage(self) -> bool:
        run = self.disk_run
        if run is None:
            return False
        self.state.answers.disks[run.label] = self.chosen()
        self.state.disk_request = replace(self.state.disk_request, swap_mib=self.swap.value())
        return True

    def nextId(self) -> int:
        return int(PageId.SYSTEM)


class SystemPage(_DiskPage):
    """The installed system: its name, time zone, keys, admin user and network."""

    def __init__(self, ctx: AppContext, state: WizardState) -> None:
        super().__init__(ctx, state)
        self.setTitle("Install NixOS: the system")
        self.setSubTitle("How the installed NixOS is set up. You see its configuration next.")
        self.hostname = QLineEdit(self)
        self.hostname.setAccessibleName("Host name")
        self.timezone = QLineEdit("UTC", self)
        self.timezone.setAccessibleName("Time zone")
        self.admin = QLineEdit(self)
        self.admin.setPlaceholderText("none (root only, by key)")
        self.admin.setAccessibleName("Admin user")
        self.network = QComboBox(self)
        self.network.addItem("As the server has it now (addresses, routes, DNS)", "as-before")
        self.network.addItem("DHCP", "dhcp")
        self.network.setAccessibleName("Network")
        self.keys = QPlainTextEdit(self)
        self.keys.setPlaceholderText("ssh-ed25519 AAAA… you@laptop (one per line)")
        self.keys.setAccessibleName("More authorized keys")
        self.kept_keys = wrap_label("")
        form = QFormLayout()
        form.addRow("Host name:", self.hostname)
        form.addRow("Time zone:", self.timezone)
        form.addRow("Admin user with sudo:", self.admin)
        form.addRow("Network:", self.network)
        form.addRow("Root's keys:", self.kept_keys)
        form.addRow("More keys:", self.keys)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addStretch(1)

    def initializePage(self) -> None:
        disk = self.disk
        if disk is None:
            return
        if not self.hostname.text():
            self.hostname.setText(disk.hostname)
        n = len(disk.keys)
        self.kept_keys.setText(
            f"the {n} key(s) the installer accepts now, the one this app logs in with among "
            "them" if n else "none yet: the key this app logs in with is added"
        )  # fmt: skip

    def validatePage(self) -> bool:
        keys = [k for k in self.keys.toPlainText().splitlines() if k.strip()]
        disk = self.disk
        if disk is not None:  # the key the app logs in with, always (twice is once)
            keys += list(disk.login_keys)
        self.state.disk_request = replace(
            self.state.disk_request,
            hostname=self.hostname.text().strip(),
            timezone=self.timezone.text().strip() or "UTC",
            admin_user=self.admin.text().strip(),
            keys=tuple(keys),
            network=NetworkMode(str(self.network.currentData())),
        )
        return True

    def nextId(self) -> int:
        return int(PageId.WIPE)


class WipePage(_DiskPage):
    """The configuration to be installed, and the wipe confirmed by typing the disk's name."""

    def __init__(self, ctx: AppContext, state: WizardState) -> None:
        super().__init__(ctx, state)
        self.setTitle("Install NixOS: erase the disk")
        self.setSubTitle("Read what will be installed; type the disk's name to erase it.")
        self.setCommitPage(True)
        self.setButtonText(QWizard.WizardButton.CommitButton, "&Erase and install")
        self.warning = wrap_label("", rich=True)
        self.warning.setAccessibleName("What will be erased")
        self.error = ErrorPanel(self)
        self.files = QTabWidget(self)
        self.configuration = _fixed(QPlainTextEdit(self))
        self.configuration.setAccessibleName("configuration.nix")
        self.disko = _fixed(QPlainTextEdit(self))
        self.disko.setAccessibleName("disko-config.nix")
        self.files.addTab(self.configuration, "configuration.nix")
        self.files.addTab(self.disko, "disko-config.nix")
        self.kept = wrap_label("")
        self.open_folder = QPushButton("Open the configuration &folder", self)
        self.open_folder.clicked.connect(self._open_folder)
        self.typed = QLineEdit(self)
        self.typed.setAccessibleName("Type the disk's name")
        self.typed.textChanged.connect(self.completeChanged)
        form = QFormLayout()
        self.type_label = QLabel("Type the disk's name:", self)
        self.type_label.setTextFormat(Qt.TextFormat.PlainText)  # the name is the server's word
        form.addRow(self.type_label, self.typed)
        layout = QVBoxLayout(self)
        layout.addWidget(self.warning)
        layout.addWidget(self.error)
        layout.addWidget(self.files, 1)
        kept_row = QHBoxLayout()
        kept_row.addWidget(self.kept, 1)
        kept_row.addWidget(self.open_folder)
        layout.addLayout(kept_row)
        layout.addLayout(form)

    def initializePage(self) -> None:
        run, state, request = self.disk_run, self.state, self.request()
        if run is None:
            return
        self.typed.clear()
        self.error.clear()
        self.configuration.clear()
        self.disko.clear()
        self.kept.clear()
        self.type_label.setText("Type the disk's name:")
        self.warning.setText("Preparing the configuration…")

        def work(emit: EventSink, cancel: CancelToken) -> Outcome | None:
            return _go(run, state, request, Step.PREPARED, emit, cancel)

        self.run("layout", work, lambda _o: self._show(), failed=self._failed,
                 ended=self.completeChanged.emit)  # fmt: skip

    def _failed(self, error: WizardError) -> None:
        self.warning.setText("The configuration could not be made. Go back to change it.")
        self.error.show_error(error)
        self.fresh_run()  # nothing was written; the next try starts a new run

    def _show(self) -> None:
        disk, run = self.disk, self.disk_run
        if disk is None or disk.disk is None or run is None:
            return
        d: Disk = disk.disk
        on_it = what_is_on(d, run.old_root())
        self.warning.setText(
            f"<h3>⚠ This erases {html.escape(d.describe())}</h3>"
            f"On it now: {html.escape(on_it)}.<br><b>This cannot be undone.</b> NixOS "
            f"{html.escape(disk.release.version if disk.release else '')} is installed in its "
            "place; the installer keeps running until the server reboots."
        )
        self.configuration.setPlainText(disk.configuration)
        self.disko.setPlainText(disk.disko)
        self.kept.setText(f"Kept on this computer in {disk.saved}" if disk.saved else "")
        self.type_label.setText(printable(f"Type {d.name} to erase it:"))
        self.completeChanged.emit()

    @Slot()
    def _open_folder(self) -> None:
        disk = self.disk
        if disk is not None and disk.saved is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(disk.saved)))

    def isComplete(self) -> bool:
        chosen = self.disk.disk if self.disk is not None else None
        if chosen is None or self.disk is None or not self.disk.configuration or self.busy:
            return False
        return self.typed.text().strip() == chosen.name

    def validatePage(self) -> bool:
        run = self.disk_run
        if run is None:
            return False
        self.state.answers.wipes[run.label] = self.typed.text().strip()
        if run.disk is not None:  # the wipe is confirmed for what this page showed, no other
            self.state.answers.shown[run.label] = run.disk.digest()
        return True

    def nextId(self) -> int:
        return int(PageId.DISK_INSTALL)


class DiskInstallPage(_DiskPage):
    """Partitioning and nixos-install, each stage with its timer, and the server's words."""

    def __init__(self, ctx: AppContext, state: WizardState) -> None:
        super().__init__(ctx, state)
        self.setTitle("Install NixOS: installing")
        self.setSubTitle("The disk is being written. Nothing reboots, even after an error.")
        self.stages = StageList(self, DISK_STAGE_NAMES)
        self.stages.setAccessibleName("Disk install stages")
        self.now = QLabel(self)
        self.bar = QProgressBar(self)
        self.bar.setRange(0, 0)
        self.log = _fixed(QPlainTextEdit(self))
        self.log.setMaximumBlockCount(5000)
        self.log.setAccessibleName("Output of nixos-install")
        self.error = ErrorPanel(self)
        layout = QVBoxLayout(self)
        layout.addWidget(self.stages, 1)
        layout.addWidget(self.now)
        layout.addWidget(self.bar)
        layout.addWidget(self.log, 3)
        layout.addWidget(self.error)
        self.timer = QTimer(self)
        self.timer.setInterval(1000)
        self.timer.timeout.connect(self.stages.tick)
        self.outcome: Outcome | None = None

    def initializePage(self) -> None:
        run, state, request = self.disk_run, self.state, self.request()
        if run is None:
            return

        def work(emit: EventSink, cancel: CancelToken) -> Outcome | None:
            return _go(run, state, request, Step.DONE, emit, cancel)

        job = self.run("nixos-install", work, self._done, failed=self._failed, ended=self._ended)
        job.message.connect(self._event)
        self.ctx.inhibitor.acquire("Installing NixOS onto a server's disk")
        self.timer.start()

    @Slot(object)
    def _event(self, e: Event) -> None:
        if isinstance(e, StageEvent):
            self.stages.set_state(e.stage, e.state, e.seconds, e.deadline)
            self.now.setText(DISK_STAGE_NAMES.get(e.stage, e.stage) + "…")
        elif isinstance(e, ProgressEvent):
            self.stages.detail(e.stage, e.message)
        elif isinstance(e, OutputEvent):
            self.log.appendPlainText(e.message)
        elif isinstance(e, LogEvent):
            self.log.appendPlainText(("! " if e.level == "warn" else "• ") + e.message)

    def _ended(self) -> None:
        self.timer.stop()
        self.stages.tick()
        self.ctx.inhibitor.release()
        self.bar.setRange(0, 100)
        self.completeChanged.emit()

    def _done(self, outcome: Outcome | None) -> None:
        self.outcome = outcome
        self.bar.setValue(100)
        self.now.setText("NixOS is installed on the disk.")
        self.completeChanged.emit()
        self.wizard().next()

    def _failed(self, error: WizardError) -> None:
        self.bar.setValue(0)
        self.now.setText("The install stopped; the server still runs the installer.")
        self.error.show_error(error)

    def isComplete(self) -> bool:
        return self.outcome is not None and not self.busy

    def nextId(self) -> int:
        return int(PageId.INSTALLED)


class InstalledPage(_DiskPage):
    """NixOS on the disk: where its configuration is, and how to reach the server."""

    def __init__(self, ctx: AppContext, state: WizardState) -> None:
        super().__init__(ctx, state)
        self.setTitle("Installed")
        self.setSubTitle("NixOS is on the disk. It starts when the server reboots.")
        self.setFinalPage(True)
        self.headline = wrap_label("", rich=True)
        self.headline.setAccessibleName("Result")
        self.status = wrap_label("")
        self.open_terminal = QPushButton("&Open terminal", self)
        self.copy_ssh = QPushButton("Copy &SSH command", self)
        self.open_folder = QPushButton("Open the &configuration folder", self)
        self.reboot = QPushButton("&Reboot into NixOS…", self)
        buttons = (self.open_terminal, self.copy_ssh, self.open_folder, self.reboot)
        for b in buttons:
            b.setAccessibleName(b.text().replace("&", "").rstrip("…"))
        self.open_terminal.clicked.connect(self._terminal)
        self.copy_ssh.clicked.connect(self._copy)
        self.open_folder.clicked.connect(self._folder)
        self.reboot.clicked.connect(self._ask_reboot)
        self.error = ErrorPanel(self)
        row = QHBoxLayout()
        for b in buttons:
            row.addWidget(b)
        row.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.headline)
        layout.addLayout(row)
        layout.addWidget(self.status)
        layout.addWidget(self.error)
        layout.addStretch(1)
        self.reboot_box: QMessageBox | None = None

    def _ssh(self) -> list[str]:
        info = self.state.info
        jump = self.state.target.jump if self.state.target else None
        assert info is not None
        return installer_ssh_command(info, jump, self.ctx.known_hosts.app_file)

    def initializePage(self) -> None:
        disk = self.disk
        if disk is None or disk.installed is None or disk.disk is None:
            return
        where = html.escape(str(disk.saved)) if disk.saved else "not kept"
        self.headline.setText(
            f"<h3>✔ NixOS is installed on {html.escape(disk.disk.describe())}</h3>"
            f"System <code>{html.escape(disk.installed.toplevel)}</code>, host name "
            f"<b>{html.escape(disk.config.hostname if disk.config else '')}</b>.<br>"
            f"Its configuration is kept in {where}.<br><br>"
            "The server still runs the installer from RAM. <b>Reboot it</b> to start the "
            "installed NixOS from the disk; it keeps the server's host key and accepts the "
            "same keys, so the same SSH command reaches it. The app does not yet watch it "
            "come back: give it a minute or two."
        )
        self.open_folder.setEnabled(disk.saved is not None)

    @Slot()
    def _terminal(self) -> None:
        self.status.setText(terminal_or_clipboard(self._ssh()))

    @Slot()
    def _copy(self) -> None:
        QGuiApplication.clipboard().setText(shlex.join(self._ssh()))
        self.status.setText("SSH command copied.")

    @Slot()
    def _folder(self) -> None:
        disk = self.disk
        if disk is not None and disk.saved is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(Path(disk.saved))))

    @Slot()
    def _ask_reboot(self) -> None:
        self.reboot_box = ask(
            self,
            "Reboot into NixOS",
            "Reboot the server now?\n\nThe installer in RAM ends and the server starts the "
            "NixOS just installed on its disk.",
            self._reboot_answered,
            yes="Reboot",
        )

    @Slot(int)
    def _reboot_answered(self, answer: int) -> None:
        self.reboot_box = None
        run, info = self.disk_run, self.state.info
        if answer != QMessageBox.StandardButton.Yes or run is None or info is None:
            return
        creds, ctx = run.credentials(self.state.answers), self.ctx
        jump = self.state.target.jump if self.state.target else None

        def work(_emit: EventSink, _cancel: CancelToken) -> None:
            with connect_installer(info, jump, ctx.known_hosts, creds, ctx.settings) as s:
                reboot_installer(s)

        self.reboot.setEnabled(False)
        self.run("reboot", work, self._rebooted, failed=self._reboot_failed)

    def _reboot_failed(self, error: WizardError) -> None:
        self.reboot.setEnabled(True)
        self.error.show_error(error)

    def _rebooted(self, _none: None) -> None:
        self.status.setText("The server is rebooting into the NixOS on its disk.")

    def nextId(self) -> int:
        return -1

"""Done page: where the installer runs, how to reach it, and what to do next."""

from __future__ import annotations

import html
import json
import shlex
from pathlib import Path

from PySide6.QtCore import Slot
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QFileDialog,
    QGridLayout,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
)

from app.core.disk.run import DiskRequest
from app.core.errors import WizardError
from app.core.events import CancelToken, EventSink
from app.core.handoff import (
    connect_installer,
    hardware_report,
    installer_ssh_command,
    nixos_anywhere_command,
    reboot_installer,
)
from app.core.result import DEAD_MAN_STOP, InstallerInfo, leftover_note
from app.core.ssh import Credentials
from app.ui.context import AppContext, WizardState
from app.ui.pages.base import BasePage, PageId
from app.ui.widgets import ErrorPanel, ask, terminal_or_clipboard, wrap_label


class DonePage(BasePage):
    """The verified installer, one click away."""

    def __init__(self, ctx: AppContext, state: WizardState) -> None:
        super().__init__(ctx, state)
        self.setTitle("Done")
        self.setSubTitle("The installer runs from RAM. Connect to it and install NixOS.")
        self.setFinalPage(True)
        self.headline = wrap_label("", rich=True)
        self.headline.setAccessibleName("Result")
        self.command = QPlainTextEdit(self)
        self.command.setReadOnly(True)
        self.command.setAccessibleName("SSH command")
        self.command.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.command.setFixedHeight(self.command.fontMetrics().lineSpacing() * 4 + 12)
        self.status = wrap_label("")
        self.status.setAccessibleName("Status")
        self.error = ErrorPanel(self)
        self.open_terminal = QPushButton("&Open terminal", self)
        self.copy_ssh = QPushButton("Copy &SSH command", self)
        self.report = QPushButton("Save &hardware report…", self)
        self.copy_anywhere = QPushButton("Copy &nixos-anywhere command", self)
        self.reboot = QPushButton("&Reboot to the original system…", self)
        self.install_nixos = QPushButton("&Install NixOS on this server's disk…", self)
        self.install_nixos.setAccessibleName("Install NixOS on this server's disk")
        self.install_nixos.setToolTip(
            "Choose a disk and the system's settings; nothing is written until you type the "
            "disk's name"
        )
        self.install_nixos.clicked.connect(self._install_nixos)
        bold = self.install_nixos.font()
        bold.setBold(True)
        self.install_nixos.setFont(bold)  # the way on, where the rest are ways out
        grid = QGridLayout()
        buttons = (self.open_terminal, self.copy_ssh, self.report, self.copy_anywhere, self.reboot)
        for i, b in enumerate(buttons):
            b.setAccessibleName(b.text().replace("&", "").rstrip("…"))
            grid.addWidget(b, i // 2, i % 2)
        self.open_terminal.clicked.connect(self._open_terminal)
        self.copy_ssh.clicked.connect(self._copy_ssh)
        self.report.clicked.connect(self._ask_report_path)
        self.copy_anywhere.clicked.connect(self._copy_anywhere)
        self.reboot.clicked.connect(self._ask_reboot)
        layout = QVBoxLayout(self)
        layout.addWidget(self.headline)
        layout.addWidget(self.command)
        grid.addWidget(self.install_nixos, len(buttons) // 2, len(buttons) % 2)
        layout.addLayout(grid)
        layout.addWidget(self.status)
        layout.addWidget(self.error)
        layout.addStretch(1)
        self.reboot_box: QMessageBox | None = None
        self.report_path: Path | None = None

    @property
    def info(self) -> InstallerInfo | None:
        """The verified installer."""
        return self.state.info

    def ssh_command(self) -> list[str]:
        """The exact OpenSSH command for the installer."""
        assert self.info is not None
        jump = self.state.target.jump if self.state.target else None
        return installer_ssh_command(self.info, jump, self.ctx.known_hosts.app_file)

    def initializePage(self) -> None:
        info = self.info
        if info is None:
            return
        port = f" (port {info.port})" if info.port != 22 else ""
        # What the server says about itself is shown as text, never as markup.
        name = html.escape(info.os_release.get("PRETTY_NAME", "NixOS installer"))
        proof = (
            "Its host key is the same as before the kexec"
            if info.host_key_verified
            else "Its host key is new and <b>not verified</b>: you accepted it"
        )
        note = leftover_note(info)
        self.headline.setText(
            f"<h3>✔ The NixOS installer is running at root@{html.escape(info.host)}{port}</h3>"
            f"{name}, host name <b>{html.escape(info.hostname)}</b>.<br>"
            f"{proof}: <code>{html.escape(info.fingerprint)}</code>.<br>"
            "It runs from RAM: nothing on the disks has changed yet."
            + (f"<br><br>{html.escape(note)}" if note else "")
            + (
                "<br><br><b>⚠ The dead-man switch could not be confirmed off:</b> it may "
                "restart the server into its old system at its deadline. Stop it now: open a "
                f"terminal and run <code>{html.escape(DEAD_MAN_STOP)}</code>."
                if info.dead_man == "still-armed"
                else ""
            )
        )
        self.command.setPlainText(shlex.join(self.ssh_command()))

    # -- actions --------------------------------------------------------------------------

    @Slot()
    def _open_terminal(self) -> None:
        self.status.setText(terminal_or_clipboard(self.ssh_command()))

    @Slot()
    def _copy_ssh(self) -> None:
        QGuiApplication.clipboard().setText(self.command.toPlainText())
        self.status.setText("SSH command copied.")

    @Slot()
    def _copy_anywhere(self) -> None:
        if self.info is None:
            return
        QGuiApplication.clipboard().setText(
            nixos_anywhere_command(self.info, self.state.profile_name or "my-host")
        )
        self.status.setText("nixos-anywhere command copied: run it in your flake's folder.")

    def _installer_creds(self) -> Credentials:
        run = self.state.run
        return run.installer_credentials(self.state.answers) if run else Credentials()

    @Slot()
    def _ask_report_path(self) -> None:
        if self.info is None:
            return
        suggested = str(Path.home() / f"facter-{self.state.profile_name or self.info.host}.json")
        path, _ = QFileDialog.getSaveFileName(
            self, "Save hardware report", suggested, "JSON (*.json)"
        )
        if path:
            self.save_report(Path(path))

    def save_report(self, path: Path) -> None:
        """Run nixos-facter on the installer and save its report at ``path``."""
        info, creds, ctx = self.info, self._installer_creds(), self.ctx
        assert info is not None
        jump = self.state.target.jump if self.state.target else None

        def work(_emit: EventSink, _cancel: CancelToken) -> Path:
            with connect_installer(info, jump, ctx.known_hosts, creds, ctx.settings) as s:
                report = hardware_report(s)
            tmp = path.with_name(path.name + ".part")
            tmp.write_text(json.dumps(report, indent=2) + "\n")
            tmp.replace(path)
            return path

        self.run("hardware-report", work, self._report_saved, failed=self._report_failed)
        self.status.setText("Running nixos-facter on the installer…")

    def _report_saved(self, path: Path) -> None:
        self.report_path = path
        self.status.setText(f"Hardware report saved to {path}.")
        self.error.clear()

    def _report_failed(self, error: WizardError) -> None:
        self.status.setText("")
        self.error.show_error(error)

    @Slot()
    def _ask_reboot(self) -> None:
        self.reboot_box = ask(
            self,
            "Reboot to the original system",
            "Reboot the server now?\n\nThe installer runs from RAM, so after the reboot the "
            "original system starts again from its disks, as it was.",
            self._reboot_answered,
        )

    @Slot(int)
    def _reboot_answered(self, answer: int) -> None:
        self.reboot_box = None
        if answer != QMessageBox.StandardButton.Yes or self.info is None:
            return
        info, creds, ctx = self.info, self._installer_creds(), self.ctx
        jump = self.state.target.jump if self.state.target else None

        def work(_emit: EventSink, _cancel: CancelToken) -> None:
            with connect_installer(info, jump, ctx.known_hosts, creds, ctx.settings) as s:
                reboot_installer(s)

        self.run("reboot", work, self._rebooted)

    def _rebooted(self, _none: None) -> None:
        self.status.setText("The server is rebooting into its original system.")

    def show_error(self, error: WizardError) -> None:
        """Show a failure on this page."""
        self.error.show_error(error)

    @Slot()
    def _install_nixos(self) -> None:
        """On to the disk's pages, with a run on this installer."""
        run = self.state.run
        if run is None or self.info is None:
            return
        try:
            settings = self.ctx.settings
            request = DiskRequest(
                nixpkgs_archive=settings.nixpkgs_archive.rstrip("/"),
                binary_cache=settings.binary_cache.rstrip("/"),
            )
            self.state.disk_request = request
            if self.state.disk_run is not None:  # back from the disk's pages: start afresh
                self.state.disk_run.close()
            self.state.disk_run = run.onto_disk(self.state.answers, request)
        except WizardError as exc:
            self.error.show_error(exc)
            return
        self.wizard().next()

    def nextId(self) -> int:
        # The last page of one server's walk, unless the disk's pages follow (the batch pages
        # come after it by id).
        return int(PageId.DISKS) if self.state.disk_run is not None else -1

"""The wizard window: the pages over one run, settings and log buttons, a careful close."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QSize, QTimer, QUrl, Slot
from PySide6.QtGui import QCloseEvent, QDesktopServices, QIcon
from PySide6.QtWidgets import QMessageBox, QWidget, QWizard

from app.core.settings import save_user_settings
from app.ui.context import AppContext, WizardState
from app.ui.dialogs import SettingsDialog
from app.ui.pages.base import BasePage, PageId
from app.ui.pages.batch import (
    BatchConfirmPage,
    BatchDonePage,
    BatchInspectPage,
    BatchInstallPage,
)
from app.ui.pages.confirm import ConfirmPage
from app.ui.pages.connect import ConnectPage
from app.ui.pages.disk import DiskInstallPage, DisksPage, InstalledPage, SystemPage, WipePage
from app.ui.pages.done import DonePage
from app.ui.pages.image import ImagePage
from app.ui.pages.inspect import InspectPage
from app.ui.pages.install import InstallPage
from app.ui.pages.servers import ServersPage

CLOSE_FALLBACK_MS = 10_000  # then the window goes even if a job has not reported yet

if TYPE_CHECKING:
    from app.ui.netboot import NetbootDialog


class KexecWizard(QWizard):
    """Servers → Connect → Inspect → Image → Confirm → Install → Done; for several servers,
    Servers → Inspect all → Confirm → Install all → Done. From Done, NixOS onto the disk:
    Disks → System → Erase → Installing → Installed."""

    def __init__(
        self, ctx: AppContext, icon: QIcon | None = None, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.state = WizardState()
        self.setWindowTitle("NixOS Kexec Wizard")
        if icon is not None:
            self.setWindowIcon(icon)
            self.setPixmap(QWizard.WizardPixmap.LogoPixmap, icon.pixmap(48, 48))
        self.setWizardStyle(QWizard.WizardStyle.ModernStyle)
        self.setMinimumSize(QSize(820, 640))
        self.setOption(QWizard.WizardOption.NoBackButtonOnLastPage, True)
        self.setOption(QWizard.WizardOption.NoCancelButtonOnLastPage, True)
        self.setOption(QWizard.WizardOption.HaveCustomButton1, True)
        self.setOption(QWizard.WizardOption.HaveCustomButton2, True)
        self.setOption(QWizard.WizardOption.HaveCustomButton3, True)
        self.setButtonText(QWizard.WizardButton.CustomButton1, "Se&ttings…")
        self.setButtonText(QWizard.WizardButton.CustomButton2, "Open &log")
        self.setButtonText(QWizard.WizardButton.CustomButton3, "Other wa&ys to boot…")
        self.button(QWizard.WizardButton.CustomButton3).setToolTip(
            "Netboot by iPXE: the release's chain URL, or serve an installer from this computer"
        )
        self.setButtonLayout(
            [
                QWizard.WizardButton.CustomButton1,
                QWizard.WizardButton.CustomButton2,
                QWizard.WizardButton.CustomButton3,
                QWizard.WizardButton.Stretch,
                QWizard.WizardButton.BackButton,
                QWizard.WizardButton.NextButton,
                QWizard.WizardButton.CommitButton,
                QWizard.WizardButton.FinishButton,
                QWizard.WizardButton.CancelButton,
            ]
        )
        self.customButtonClicked.connect(self._custom_button)
        self.pages: dict[PageId, BasePage] = {
            PageId.SERVERS: ServersPage(ctx, self.state),
            PageId.CONNECT: ConnectPage(ctx, self.state),
            PageId.INSPECT: InspectPage(ctx, self.state),
            PageId.IMAGE: ImagePage(ctx, self.state),
            PageId.CONFIRM: ConfirmPage(ctx, self.state),
            PageId.INSTALL: InstallPage(ctx, self.state),
            PageId.DONE: DonePage(ctx, self.state),
            PageId.BATCH_INSPECT: BatchInspectPage(ctx, self.state),
            PageId.BATCH_CONFIRM: BatchConfirmPage(ctx, self.state),
            PageId.BATCH_INSTALL: BatchInstallPage(ctx, self.state),
            PageId.BATCH_DONE: BatchDonePage(ctx, self.state),
            PageId.DISKS: DisksPage(ctx, self.state),
            PageId.SYSTEM: SystemPage(ctx, self.state),
            PageId.WIPE: WipePage(ctx, self.state),
            PageId.DISK_INSTALL: DiskInstallPage(ctx, self.state),
            PageId.INSTALLED: InstalledPage(ctx, self.state),
        }
        for pid, page in self.pages.items():
            self.setPage(int(pid), page)
        self.setStartId(int(PageId.SERVERS))
        self.close_prompt: QMessageBox | None = None
        self.settings_dialog: SettingsDialog | None = None
        self.netboot_dialog: NetbootDialog | None = None
        self._closing = False
        self._close_polls = 0
        self._close_timer = QTimer(self)
        self._close_timer.setInterval(50)
        self._close_timer.timeout.connect(self._poll_close)

    def page_of(self, pid: PageId) -> BasePage:
        """The page object for ``pid``."""
        return self.pages[pid]

    # -- buttons --------------------------------------------------------------------------

    @Slot(int)
    def _custom_button(self, which: int) -> None:
        if which == QWizard.WizardButton.CustomButton1.value:
            self.open_settings()
        elif which == QWizard.WizardButton.CustomButton2.value:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.ctx.log.path)))
        elif which == QWizard.WizardButton.CustomButton3.value:
            self.open_netboot()

    def open_netboot(self) -> NetbootDialog:
        """Show the "Other ways to boot" dialog for the chosen channel and server arch."""
        if self.netboot_dialog is not None:
            self.netboot_dialog.raise_()
            return self.netboot_dialog
        from app.ui.netboot import NetbootDialog  # on first use: not on the start-up path

        image = self.pages[PageId.IMAGE]
        channel = image.channel.currentData() if isinstance(image, ImagePage) else None
        arch = self.state.facts.arch if self.state.facts else None
        dialog = NetbootDialog(self.ctx, self.state.catalog, channel, arch, self)
        dialog.finished.connect(self._netboot_closed)
        self.netboot_dialog = dialog
        dialog.open()
        return dialog

    @Slot()
    def _netboot_closed(self) -> None:
        if self.netboot_dialog is not None:
            self.netboot_dialog.deleteLater()
        self.netboot_dialog = None

    def open_settings(self) -> SettingsDialog:
        """Show the settings dialog (not blocking)."""
        default_cache = str(self.ctx.paths.images_dir.parent)
        dialog = SettingsDialog(self.ctx.settings, default_cache, self)
        dialog.accepted.connect(self._settings_saved)
        self.settings_dialog = dialog
        dialog.open()
        return dialog

    @Slot()
    def _settings_saved(self) -> None:
        dialog = self.settings_dialog
        if dialog is None:
            return
        save_user_settings(self.ctx.paths.settings_file, dialog.settings)
        self.ctx.reload_settings()
        self.state.catalog = None  # the releases URL may have changed
        self.settings_dialog = None

    # -- closing --------------------------------------------------------------------------

    def busy_pages(self) -> list[BasePage]:
        """Pages whose job is still running."""
        return [p for p in self.pages.values() if p.busy]

    def reject(self) -> None:
        """Cancel, Escape or the window's close button: ask first when a job runs."""
        if self._closing or not self.busy_pages():
            self._shutdown()
            super().reject()
            return
        self._ask_to_close()

    def closeEvent(self, event: QCloseEvent) -> None:
        if self._closing or not self.busy_pages():
            self._shutdown()
            super().closeEvent(event)
            return
        event.ignore()
        self._ask_to_close()

    def _ask_to_close(self) -> None:
        if self.close_prompt is not None:
            return
        install = self.pages[PageId.INSTALL]
        late = isinstance(install, InstallPage) and install.busy and not install.safe_to_cancel
        text = (
            "The server is already rebooting into the installer: closing now only stops "
            "watching it. Close anyway?"
            if late
            else "Work is still running. Cancel it and close? Before the kexec starts, the "
            "server is left as it was."
        )
        box = QMessageBox(
            QMessageBox.Icon.Question,
            "Close the wizard",
            text,
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            self,
        )
        box.setDefaultButton(QMessageBox.StandardButton.No)
        box.finished.connect(self._close_answered)
        self.close_prompt = box
        box.open()

    @Slot(int)
    def _close_answered(self, answer: int) -> None:
        self.close_prompt = None
        if answer != QMessageBox.StandardButton.Yes:
            return
        # Cancel everything, then close when the last job has reported (never blocking the
        # GUI thread on a job); dropping the SSH session unblocks any read at once.
        self._closing = True
        busy = self.busy_pages()
        for page in busy:
            page.cancel_job()
        self.state.drop_session()
        if self.state.batch is not None:
            self.state.batch.close()
        if not busy:
            self.reject()
            return
        self.setEnabled(False)
        self._close_timer.start()
        self._poll_close()

    @Slot()
    def _poll_close(self) -> None:
        """Close once no job runs; after CLOSE_FALLBACK_MS the window goes anyway, and the app
        ends when the last job (each has its own deadline) has reported."""
        waited = self._close_timer.interval() * self._close_polls
        self._close_polls += 1
        if self.busy_pages():
            if waited >= CLOSE_FALLBACK_MS and self.isVisible():
                self.hide()  # the user asked to close: go, and end once the jobs have
            return
        self._close_timer.stop()
        self.reject()

    def _shutdown(self) -> None:
        if self.netboot_dialog is not None:
            self.netboot_dialog.stop()
        self.ctx.inhibitor.release()
        self.state.drop_session()
        if self.state.batch is not None:
            self.state.batch.close()

"""Install page: the stages with state and timers, transfer progress, the run's output, cancel."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QTimer, Slot
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.core.errors import NewSystemHostKey, WizardError
from app.core.events import CancelToken, Event, EventSink
from app.core.flow import installer_for
from app.core.install import Installer, InstallerInfo, NeverCameBack
from app.core.netpreview import preview
from app.core.workflow import save_profile
from app.ui.context import AppContext, Flow
from app.ui.dialogs import HostKeyDialog
from app.ui.jobs import JobResult
from app.ui.pages.base import BasePage, PageId
from app.ui.widgets import ErrorPanel, StageList, show_progress, wrap_label

WEIGHTS = {
    "key": 2,
    "transfer": 40,
    "checksum": 5,
    "unpack": 5,
    "run": 8,
    "down": 10,
    "up": 25,
    "verify": 5,
}
SAFE = "Cancel (safe: the server has not been changed yet)"
LATE = "Stop waiting (too late to cancel: the server is rebooting into the installer)"


class InstallPage(BasePage):
    """Runs the engine's stages in the background and shows every step."""

    def __init__(self, ctx: AppContext, flow: Flow) -> None:
        super().__init__(ctx, flow)
        self.setTitle("Install")
        self.setSubTitle("Booting the NixOS installer. Every wait has a deadline.")
        self.stages = StageList(self)
        self.overall = QProgressBar(self)
        self.overall.setRange(0, 100)
        self.overall.setAccessibleName("Overall progress")
        self.transfer = QProgressBar(self)
        self.transfer.setAccessibleName("Transfer progress")
        self.transfer.hide()
        self.transfer_text = QLabel(self)
        self.log = QPlainTextEdit(self)
        self.log.setReadOnly(True)
        self.log.setAccessibleName("Output of the install")
        self.log.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.log.setMaximumBlockCount(5000)
        self.cancel_button = QPushButton(SAFE, self)
        self.cancel_button.setAccessibleName("Cancel the install")
        self.cancel_button.clicked.connect(self._cancel)
        self.error = ErrorPanel(self)
        self.retry = QWidget(self)
        rl = QHBoxLayout(self.retry)
        rl.setContentsMargins(0, 0, 0, 0)
        self.retry_address = QLineEdit(self)
        self.retry_address.setAccessibleName("Address to look for the installer")
        self.retry_button = QPushButton("&Wait again", self)
        self.retry_button.setAccessibleName("Wait again")
        self.retry_button.clicked.connect(self._wait_again)
        rl.addWidget(QLabel("Look for the installer at:", self))
        rl.addWidget(self.retry_address, 1)
        rl.addWidget(self.retry_button)
        self.retry.hide()
        self.expected = wrap_label("")
        self.expected.hide()
        layout = QVBoxLayout(self)
        layout.addWidget(self.stages, 2)
        layout.addWidget(self.overall)
        layout.addWidget(self.transfer)
        layout.addWidget(self.transfer_text)
        layout.addWidget(self.log, 2)
        layout.addWidget(self.error)
        layout.addWidget(self.expected)
        layout.addWidget(self.retry)
        layout.addWidget(self.cancel_button)
        self.timer = QTimer(self)
        self.timer.setInterval(1000)
        self.timer.timeout.connect(self.stages.tick)
        self.done: set[str] = set()
        self.safe_to_cancel = True
        self.host_key_dialog: HostKeyDialog | None = None

    def initializePage(self) -> None:
        plan, session, facts = self.flow.plan, self.flow.session, self.flow.facts
        if plan is None or session is None or facts is None:
            return
        ctx, creds = self.ctx, self.flow.creds
        holder: dict[str, Installer] = {}
        self._holder = holder

        def work(emit: EventSink, cancel: CancelToken) -> InstallerInfo:
            inst = installer_for(
                plan, session, facts, creds, ctx.known_hosts, ctx.settings, ctx.paths.keys_dir,
                emit=emit, cancel=cancel,
            )  # fmt: skip
            holder["installer"] = inst
            return inst.run()

        self._run(work)

    def _run(self, work: Any) -> None:
        job = self.start_job("install", work)
        job.message.connect(self._event)
        job.finished.connect(self._finished)
        self.error.clear()
        self.retry.hide()
        self.expected.hide()
        self.cancel_button.setEnabled(True)
        self.cancel_button.setText(SAFE if self.safe_to_cancel else LATE)
        self.ctx.inhibitor.acquire("Booting the NixOS installer on a server")
        self.timer.start()
        job.start()
        self.completeChanged.emit()

    # -- progress -------------------------------------------------------------------------

    @Slot(object)
    def _event(self, e: Event) -> None:
        d = e.data
        if e.type == "stage":
            self.stages.set_state(e.stage, str(d.get("state")), d.get("seconds"))
            if d.get("state") == "done":
                self.done.add(e.stage)
                self.overall.setValue(sum(WEIGHTS.get(s, 0) for s in self.done))
            if e.stage == "transfer":
                running = d.get("state") == "start"
                self.transfer.setVisible(running)
                self.transfer_text.setVisible(running)
        elif e.type == "progress" and "done" in d:
            text = show_progress(self.transfer, d)
            self.transfer_text.setText(text)
            self.stages.detail(e.stage, text)
        elif e.type == "progress" and e.stage == "up":
            self.stages.detail("up", f"attempt {d.get('attempts')}")
        elif e.type == "output":
            self.log.appendPlainText(e.message)
        elif e.type == "log":
            if d.get("safe_to_cancel") is False:
                self.safe_to_cancel = False
                self.cancel_button.setText(LATE)
            prefix = "! " if d.get("level") == "warn" else "• "
            self.log.appendPlainText(prefix + e.message)

    @Slot()
    def _cancel(self) -> None:
        self.cancel_button.setEnabled(False)
        self.cancel_button.setText("Cancelling…" if self.safe_to_cancel else "Stopping the wait…")
        self.cancel_job()

    # -- the end --------------------------------------------------------------------------

    @Slot(object)
    def _finished(self, result: JobResult) -> None:
        self.timer.stop()
        self.stages.tick()
        self.ctx.inhibitor.release()
        inst = self._holder.get("installer")
        self.flow.installer = inst
        if result.ok:
            self.flow.info = result.value
            self.overall.setValue(100)
            self.cancel_button.hide()
            self._save("installer")
            self.completeChanged.emit()
            self.wizard().next()
            return
        self.cancel_button.setEnabled(False)
        err = result.wizard_error
        assert err is not None
        late = inst is not None and inst.point_of_no_return
        self._save("unknown" if late else "original")
        if result.cancelled and not late:
            err = WizardError(
                "Cancelled. The server was left as it was.",
                "The uploaded image and any key the app added were removed again.",
                "Close the wizard, or go back to the start to try again.",
            )
        self.error.show_error(err, "warn" if result.cancelled else "stop")
        if isinstance(result.error, NewSystemHostKey) and inst is not None:
            self._ask_new_key(result.error)
        if isinstance(result.error, NeverCameBack) or (result.cancelled and late):
            self._offer_retry()
        self.completeChanged.emit()

    def _ask_new_key(self, error: NewSystemHostKey) -> None:
        """A kexec-bundle's system answered with a new key: ask before anything is sent."""
        dialog = HostKeyDialog(error, self)
        dialog.accepted.connect(self._new_key_accepted)
        self.host_key_dialog = dialog
        dialog.open()

    @Slot()
    def _new_key_accepted(self) -> None:
        dialog, inst = self.host_key_dialog, self.flow.installer
        self.host_key_dialog = None
        if dialog is not None and inst is not None:
            inst.accept_host_key(dialog.error.fingerprint)
            self._wait_again()

    def _offer_retry(self) -> None:
        facts, target = self.flow.facts, self.flow.target
        if facts is None or target is None:
            return
        pv = preview(facts)
        self.retry_address.setText(target.host)
        lines = list(pv.keeps) + list(pv.loses)
        if lines:
            self.expected.setText(
                "Expected network after the kexec:\n" + "\n".join(f"• {s}" for s in lines)
            )
            self.expected.show()
        self.retry.show()

    @Slot()
    def _wait_again(self) -> None:
        inst = self.flow.installer
        if inst is None:
            return
        host = self.retry_address.text().strip() or None
        inst.cancel = CancelToken()

        def work(emit: EventSink, cancel: CancelToken) -> InstallerInfo:
            inst.emit = emit
            inst.cancel = cancel
            return inst.wait_for_installer(host)

        self._holder = {"installer": inst}
        self.safe_to_cancel = False
        self._run(work)

    def _save(self, state: str) -> None:
        t, s = self.flow.target, self.flow.session
        if t is None or s is None or not self.flow.profile_name:
            return
        try:
            save_profile(
                self.ctx.profiles, self.ctx.secrets, self.flow.profile_name,
                target=t, creds=self.flow.creds, host_key=s.host_key_line, facts=self.flow.facts,
                image=self.flow.image_meta or None, installer=self.flow.info, state=state,
                remember=self.flow.remember_password,
            )  # fmt: skip
        except (WizardError, ValueError) as exc:
            self.ctx.note("profile", f"not saved: {exc}")

    def isComplete(self) -> bool:
        return self.flow.info is not None and not self.busy

    def nextId(self) -> int:
        return int(PageId.DONE)

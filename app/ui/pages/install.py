"""Install page: the stages with state and timers, transfer progress, the run's output, cancel."""

from __future__ import annotations

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

from app.core.errors import NeverCameBack, NewSystemHostKey, WizardError
from app.core.events import (
    AttemptEvent,
    CancelToken,
    Event,
    EventSink,
    LogEvent,
    OutputEvent,
    ProgressEvent,
    StageEvent,
)
from app.core.result import Outcome
from app.ui.context import AppContext, WizardState
from app.ui.dialogs import HostKeyDialog
from app.ui.jobs import JobFn
from app.ui.pages.base import BasePage, PageId
from app.ui.widgets import STAGE_NAMES, ErrorPanel, StageList, show_progress, wrap_label

SAFE = "Cancel (safe: the server has not been changed yet)"
LATE = "Stop waiting (too late to cancel: the server is rebooting into the installer)"


class InstallPage(BasePage):
    """Runs the engine's stages in the background and shows every step."""

    def __init__(self, ctx: AppContext, state: WizardState) -> None:
        super().__init__(ctx, state)
        self.setTitle("Install")
        self.setSubTitle("Booting the NixOS installer. Every wait has a deadline.")
        self.stages = StageList(self)
        # Honest progress: bytes where they are known (the transfer), else a busy bar with the
        # stage's own timer and deadline; no made-up percentage for waits of unknown length.
        self.now = QLabel(self)
        self.now.setAccessibleName("What is happening now")
        self.overall = QProgressBar(self)
        self.overall.setRange(0, 0)
        self.overall.setAccessibleName("Progress of the current stage")
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
        self.retry_button.clicked.connect(self._retry_clicked)
        rl.addWidget(QLabel("Look for the installer at:", self))
        rl.addWidget(self.retry_address, 1)
        rl.addWidget(self.retry_button)
        self.retry.hide()
        self.expected = wrap_label("")
        self.expected.hide()
        layout = QVBoxLayout(self)
        layout.addWidget(self.stages, 2)
        layout.addWidget(self.now)
        layout.addWidget(self.overall)
        layout.addWidget(self.log, 2)
        layout.addWidget(self.error)
        layout.addWidget(self.expected)
        layout.addWidget(self.retry)
        layout.addWidget(self.cancel_button)
        self.timer = QTimer(self)
        self.timer.setInterval(1000)
        self.timer.timeout.connect(self._tick)
        self.bytes_text = ""
        self.safe_to_cancel = True
        self.host_key_dialog: HostKeyDialog | None = None

    def initializePage(self) -> None:
        run, answers = self.state.run, self.state.answers
        if run is None or run.plan is None:
            return

        def work(emit: EventSink, cancel: CancelToken) -> Outcome:
            return run.install(answers, emit, cancel)

        self._run(work)

    def _run(self, work: JobFn) -> None:
        job = self.run(
            "install",
            work,
            self._succeeded,
            failed=self._failed,
            ended=self._ended,
            cancelled=self._cancelled,
        )
        job.message.connect(self._event)
        self.error.clear()
        self.retry.hide()
        self.expected.hide()
        self.cancel_button.setEnabled(True)
        self.cancel_button.setText(SAFE if self.safe_to_cancel else LATE)
        self.ctx.inhibitor.acquire("Booting the NixOS installer on a server")
        self.timer.start()
        self.completeChanged.emit()

    # -- progress -------------------------------------------------------------------------

    @Slot(object)
    def _event(self, e: Event) -> None:
        if isinstance(e, StageEvent):
            self.stages.set_state(e.stage, e.state, e.seconds, e.deadline)
            if e.state == "start":
                self.bytes_text = ""
                self.overall.setRange(0, 0)  # busy until bytes say more
            self._tick()
        elif isinstance(e, ProgressEvent):
            self.bytes_text = show_progress(self.overall, e)
            self.stages.detail(e.stage, self.bytes_text)
            self._tick()
        elif isinstance(e, AttemptEvent):
            self.stages.detail("up", f"attempt {e.attempts}")
        elif isinstance(e, OutputEvent):
            self.log.appendPlainText(e.message)
        elif isinstance(e, LogEvent):
            if e.safe_to_cancel is False:
                self.safe_to_cancel = False
                self.cancel_button.setText(LATE)
            prefix = "! " if e.level == "warn" else "• "
            self.log.appendPlainText(prefix + e.message)

    @Slot()
    def _tick(self) -> None:
        """The running stage, its timer and deadline (and bytes, when known)."""
        self.stages.tick()
        stage = self.stages.running()
        if stage is None:
            return
        text = f"{STAGE_NAMES[stage]}: {self.stages.elapsed(stage)}"
        self.now.setText(text + (f" · {self.bytes_text}" if self.bytes_text else ""))

    @Slot()
    def _cancel(self) -> None:
        self.cancel_button.setEnabled(False)
        self.cancel_button.setText("Cancelling…" if self.safe_to_cancel else "Stopping the wait…")
        self.cancel_job()

    # -- the end --------------------------------------------------------------------------

    def _ended(self) -> None:
        self.timer.stop()
        self.stages.tick()
        self.ctx.inhibitor.release()
        self.overall.setRange(0, 100)
        self.completeChanged.emit()

    def _succeeded(self, _outcome: Outcome) -> None:
        self.state.info = self.state.run.info if self.state.run is not None else None
        self.overall.setValue(100)
        self.now.setText("The NixOS installer is running and proved it.")
        self.cancel_button.hide()
        self.completeChanged.emit()
        self.wizard().next()

    def _failed(self, err: WizardError) -> None:
        self.overall.setValue(0)
        self.now.setText("The install stopped.")
        self.cancel_button.setEnabled(False)
        self.error.show_error(err)
        if isinstance(err, NewSystemHostKey):
            self._ask_new_key(err)
        if isinstance(err, NeverCameBack):
            self._offer_retry()

    def _cancelled(self) -> None:
        """Cancel or "stop waiting" ended the job: say what that left behind."""
        self.overall.setValue(0)
        self.cancel_button.setEnabled(False)
        run = self.state.run
        late = run is not None and run.installer is not None and run.installer.point_of_no_return
        if late:
            self.now.setText("Stopped waiting; the server may already run the installer.")
            self.error.show_error(
                WizardError(
                    "Stopped waiting for the installer.",
                    "The kexec had already started, so the server is rebooting into the "
                    "installer (or already runs it).",
                    "Wait again below, at the address the installer should have.",
                ),
                "warn",
            )
            self._offer_retry()
        else:
            self.now.setText("Cancelled.")
            self.error.show_error(
                WizardError(
                    "Cancelled. The server was left as it was.",
                    "The uploaded image and any key the app added were removed again.",
                    "Close the wizard, or go back to the start to try again.",
                ),
                "warn",
            )

    def _ask_new_key(self, error: NewSystemHostKey) -> None:
        """A kexec-bundle's system answered with a new key: ask before anything is sent."""
        dialog = HostKeyDialog(error, self)
        dialog.accepted.connect(self._new_key_accepted)
        self.host_key_dialog = dialog
        dialog.open()

    @Slot()
    def _new_key_accepted(self) -> None:
        dialog = self.host_key_dialog
        self.host_key_dialog = None
        if dialog is not None:
            self.state.answers.give(dialog.error, dialog.error.fingerprint)
            self._wait_again(answered=True)

    def _offer_retry(self) -> None:
        run = self.state.run
        if run is None or run.inspection is None:
            return
        target, pv = run.host.target, run.inspection.network
        self.retry_address.setText(target.host)
        lines = list(pv.keeps) + list(pv.loses)
        if lines:
            self.expected.setText(
                "Expected network after the kexec:\n" + "\n".join(f"• {s}" for s in lines)
            )
            self.expected.show()
        self.retry.show()

    @Slot()
    def _retry_clicked(self) -> None:
        self._wait_again()

    def _wait_again(self, *, answered: bool = False) -> None:
        """Wait for the installer again: after a bundle's new key was accepted (the run goes
        on), or at the address typed below."""
        run, answers = self.state.run, self.state.answers
        if run is None or run.installer is None:
            return
        host = self.retry_address.text().strip() or run.host.target.host

        def work(emit: EventSink, cancel: CancelToken) -> Outcome:
            if answered:
                return run.install(answers, emit, cancel)
            return run.rewait(emit, cancel, host)

        self.safe_to_cancel = False
        self._run(work)

    def isComplete(self) -> bool:
        return self.state.info is not None and not self.busy

    def nextId(self) -> int:
        return int(PageId.DONE)

"""The one way to run background work: a GUI-thread Job owning a QThread and its worker."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot

from app.core.errors import Cancelled, WizardError
from app.core.events import CancelToken, Event, EventSink

JobFn = Callable[[EventSink, CancelToken], Any]


@dataclass(frozen=True)
class JobResult:
    """How a job ended: its value, or the error it raised."""

    value: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        """True when the job returned normally."""
        return self.error is None

    @property
    def cancelled(self) -> bool:
        """True when the job was cancelled."""
        return isinstance(self.error, Cancelled)

    @property
    def wizard_error(self) -> WizardError | None:
        """The error as a WizardError (an unexpected exception becomes an internal error)."""
        if self.error is None:
            return None
        if isinstance(self.error, WizardError):
            return self.error
        return WizardError(
            f"Internal error: {type(self.error).__name__}: {self.error}",
            "This is a bug in the app, not something you did.",
            "Please report it with the run's log file (Open log).",
        )


class _Worker(QObject):
    """Lives in the job's thread; runs the function and always reports back once."""

    message = Signal(object)
    done = Signal(object)

    def __init__(self, fn: JobFn, cancel: CancelToken) -> None:
        super().__init__()
        self._fn = fn
        self._cancel = cancel

    @Slot()
    def run(self) -> None:
        try:
            result = JobResult(value=self._fn(self.message.emit, self._cancel))
        except BaseException as exc:  # every outcome goes back to the GUI
            result = JobResult(error=exc)
        self.done.emit(result)


class Job(QObject):
    """Start, cancel and wait for one background function; signals arrive in the GUI thread."""

    message = Signal(object)  # app.core.events.Event
    finished = Signal(object)  # JobResult

    def __init__(self, fn: JobFn, name: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = name
        self.cancel_token = CancelToken()
        self.result: JobResult | None = None
        self._thread = QThread()
        self._thread.setObjectName(f"job-{name}")
        self._worker = _Worker(fn, self.cancel_token)
        self._worker.moveToThread(self._thread)
        self._thread.started.connect(self._worker.run)
        # Ends the thread from the worker's side, so wait() works even while the GUI is blocked.
        self._worker.done.connect(self._thread.quit, Qt.ConnectionType.DirectConnection)
        self._started = False
        # Bound methods of this GUI-thread object: Qt queues these across threads.
        self._worker.message.connect(self._on_message)
        self._worker.done.connect(self._on_done)

    @property
    def running(self) -> bool:
        """Whether the job has yet to report: its function may have returned already, but
        until ``finished`` has been delivered nobody has seen its value (a page that acted on
        "done" in between would race its own result)."""
        return self._started and self.result is None

    def start(self) -> Job:
        """Run the function in the job's thread."""
        self._started = True
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask the function to stop (closes its SSH transport or HTTP response at once)."""
        self.cancel_token.cancel()

    def wait(self, msecs: int) -> bool:
        """Block until the thread ends (True) or ``msecs`` pass (False)."""
        return bool(self._thread.wait(msecs))

    @Slot(object)
    def _on_message(self, event: Event) -> None:
        self.message.emit(event)

    @Slot(object)
    def _on_done(self, result: JobResult) -> None:
        self.result = result
        self._thread.quit()
        self._thread.wait()
        self.finished.emit(result)

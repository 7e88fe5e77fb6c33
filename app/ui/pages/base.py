"""What every page has: the shared context, the flow, and at most one running job."""

from __future__ import annotations

from enum import IntEnum

from PySide6.QtCore import Slot
from PySide6.QtWidgets import QWizardPage

from app.core.events import Event
from app.ui.context import AppContext, Flow
from app.ui.jobs import Job, JobFn, JobResult


class PageId(IntEnum):
    """The wizard's pages in order."""

    SERVERS = 0
    CONNECT = 1
    INSPECT = 2
    IMAGE = 3
    CONFIRM = 4
    INSTALL = 5
    DONE = 6


class BasePage(QWizardPage):
    """A wizard page with the app context, the flow, and one background job at a time."""

    def __init__(self, ctx: AppContext, flow: Flow) -> None:
        super().__init__()
        self.ctx = ctx
        self.flow = flow
        self.job: Job | None = None

    def start_job(self, name: str, fn: JobFn) -> Job:
        """Run ``fn`` in the background; connect to the returned job's signals."""
        self.cancel_job()
        job = Job(fn, name, self)
        job.message.connect(self._record)
        job.finished.connect(self._job_ended)
        self.job = job
        self.ctx.note(name, f"{self.title()}: started {name}")
        return job

    @property
    def busy(self) -> bool:
        """Whether this page's job is still running."""
        return self.job is not None and self.job.running

    def cancel_job(self, wait_ms: int = 0) -> bool:
        """Cancel the running job; with ``wait_ms``, wait that long for it to end."""
        if self.job is None or not self.job.running:
            return True
        self.job.cancel()
        return self.job.wait(wait_ms) if wait_ms else False

    @Slot(object)
    def _record(self, event: Event) -> None:
        self.ctx.record(event)

    @Slot(object)
    def _job_ended(self, result: JobResult) -> None:
        err = result.wizard_error
        outcome = "done" if err is None else f"{err.kind}: {err.what}"
        self.ctx.note("job", f"{self.title()}: {outcome}")

"""What every page has: the shared context, the wizard state, and at most one running job."""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import Any

from PySide6.QtCore import Slot
from PySide6.QtWidgets import QWizardPage

from app.core.errors import WizardError
from app.core.events import Event
from app.ui.context import AppContext, WizardState
from app.ui.jobs import Job, JobFn, JobResult
from app.ui.widgets import ErrorPanel


class PageId(IntEnum):
    """The wizard's pages in order."""

    SERVERS = 0
    CONNECT = 1
    INSPECT = 2
    IMAGE = 3
    CONFIRM = 4
    INSTALL = 5
    DONE = 6
    BATCH_INSPECT = 7  # several servers at once
    BATCH_CONFIRM = 8
    BATCH_INSTALL = 9
    BATCH_DONE = 10
    DISKS = 11  # NixOS onto the disk, from the installer (after Done)
    SYSTEM = 12
    WIPE = 13
    DISK_INSTALL = 14
    INSTALLED = 15


class BasePage(QWizardPage):
    """A wizard page with the app context, the wizard state, and one background job at a time."""

    def __init__(self, ctx: AppContext, state: WizardState) -> None:
        super().__init__()
        self.ctx = ctx
        self.state = state
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

    def run(
        self,
        name: str,
        fn: JobFn,
        ok: Callable[[Any], None],
        *,
        failed: Callable[[WizardError], None] | None = None,
        ended: Callable[[], None] | None = None,
        cancelled: Callable[[], None] | None = None,
    ) -> Job:
        """The one job ladder: run ``fn`` in the background, then ``ended()`` and one of
        ``ok(value)``, ``failed(error)`` or ``cancelled()`` (by default: nothing to show)."""

        def branch(result: JobResult) -> None:
            if ended is not None:
                ended()
            error = result.wizard_error
            if error is None:
                ok(result.value)
            elif not result.cancelled:
                (failed or self.show_error)(error)
            elif cancelled is not None:
                cancelled()

        job = self.start_job(name, fn)
        job.finished.connect(branch)
        return job.start()

    def show_error(self, error: WizardError) -> None:
        """Show what went wrong on the page's error panel."""
        panel = getattr(self, "error", None)
        if isinstance(panel, ErrorPanel):
            panel.show_error(error)

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
        job = self.sender()
        if isinstance(job, Job):
            if job is self.job:
                self.job = None
            job.deleteLater()  # after every slot of this signal has run

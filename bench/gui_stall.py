"""The GUI thread's longest stall while a Job uploads 400 MiB and shows progress as the app does."""

from __future__ import annotations

import os
from typing import Any

from app.core.events import CancelToken, Event, EventSink
from app.ui.jobs import Job, JobResult, StallProbe
from app.ui.main import make_app
from app.ui.widgets import show_progress
from bench.common import Row, bench_sshd, main_for, median, need_root, random_file, workdir


def measure(size_mb: int = 400, runs: int = 3) -> list[Row]:
    """Worst event-loop gap during each upload; the median over runs, and the idle baseline."""
    need_root("bench/gui_stall.py")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("QT_LOGGING_RULES", "qt.qpa.*=false")
    from PySide6.QtWidgets import QLabel, QProgressBar, QVBoxLayout, QWidget

    app = make_app(["gui-stall"])
    window = QWidget()
    bar, label = QProgressBar(window), QLabel(window)
    layout = QVBoxLayout(window)
    layout.addWidget(bar)
    layout.addWidget(label)
    window.show()
    probe = StallProbe(5)
    with workdir() as work, bench_sshd(work) as b:
        src = random_file(work / "payload.bin", size_mb)
        dest = str(b.user.home / "dest.bin")
        worst: list[float] = []
        for _ in range(runs):
            with b.connect() as session:

                def upload(emit: EventSink, cancel: CancelToken, s: Any = session) -> None:
                    s.upload(src, dest, emit=emit, cancel=cancel)

                job = Job(upload, "upload")

                def on_message(e: Event) -> None:
                    if e.type == "progress":
                        label.setText(show_progress(bar, e.data))

                def on_done(r: JobResult) -> None:
                    if not r.ok:
                        raise SystemExit(f"upload failed: {r.error}")
                    app.quit()

                job.message.connect(on_message)
                job.finished.connect(on_done)
                probe.start()
                job.start()
                app.exec()
                worst.append(probe.stop())
                job.wait(5000)
        probe.start()
        app.processEvents()
        from PySide6.QtCore import QTimer

        QTimer.singleShot(2000, app.quit)
        app.exec()
        idle = probe.stop()
    w = median(worst)
    return [
        Row(
            f"longest GUI-thread stall while {size_mb} MiB upload (5 ms event-loop probe)",
            f"idle: {idle * 1000:.0f} ms",
            f"{w * 1000:.0f} ms median of {runs} (max {max(worst) * 1000:.0f} ms)",
            "<= 50 ms",
            w <= 0.05,
        )
    ]


if __name__ == "__main__":
    raise SystemExit(main_for(measure, __doc__, size_mb=400, runs=3))

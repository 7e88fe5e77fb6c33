"""An event-loop probe: how long the GUI thread went without running its loop."""

from __future__ import annotations

import time

from PySide6.QtCore import QObject, Qt, QTimer, Slot


class StallProbe(QObject):
    """Measures how long the GUI thread goes without running its event loop.

    A precise timer ticks every ``interval_ms``; the longest gap between two ticks, less the
    interval, is the worst stall a user could have felt (a click or repaint waiting).
    """

    def __init__(self, interval_ms: int = 5, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._interval = interval_ms / 1000
        self._timer = QTimer(self)
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)
        self._last = 0.0
        self.worst = 0.0
        self.ticks = 0

    def start(self) -> None:
        """Begin measuring (resets the figures)."""
        self.worst, self.ticks = 0.0, 0
        self._last = time.perf_counter()
        self._timer.start()

    def stop(self) -> float:
        """Stop; returns the worst stall in seconds."""
        self._tick()
        self._timer.stop()
        return self.worst

    @Slot()
    def _tick(self) -> None:
        now = time.perf_counter()
        self.worst = max(self.worst, now - self._last - self._interval)
        self._last = now
        self.ticks += 1

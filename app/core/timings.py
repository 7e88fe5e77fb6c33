"""Seconds spent per stage, each stage's start and end told as events."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from app.core.errors import Cancelled
from app.core.events import EventSink, StageEvent


@dataclass
class Timings:
    """Seconds spent per stage."""

    stages: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def measure(self, stage: str, emit: EventSink, deadline: float | None = None) -> Iterator[None]:
        """Time a stage and emit its start and end events."""
        t0 = time.monotonic()
        emit(StageEvent(stage, state="start", deadline=deadline))
        state = "failed"
        try:
            yield
            state = "done"
        except Cancelled:
            state = "cancelled"
            raise
        finally:
            took = round(time.monotonic() - t0, 3)
            self.stages[stage] = took
            emit(StageEvent(stage, state=state, seconds=took))

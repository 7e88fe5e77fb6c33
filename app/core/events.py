"""Progress and log events: the one stream both faces (CLI and Qt) consume."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    """One thing that happened: a stage starting or ending, progress, a log line."""

    type: str
    stage: str = ""
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON-lines form: ``{"event": type, "stage": ..., ...data}``."""
        out: dict[str, Any] = {"event": self.type}
        if self.stage:
            out["stage"] = self.stage
        if self.message:
            out["message"] = self.message
        out.update(self.data)
        return out


EventSink = Callable[[Event], None]


def discard(_event: Event) -> None:
    """An event sink that ignores everything."""


class CancelToken:
    """Cooperative cancel: a flag checked between chunks, plus hooks that unblock waits."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._hooks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    @property
    def cancelled(self) -> bool:
        """Whether cancel was requested."""
        return self._event.is_set()

    def cancel(self) -> None:
        """Request cancel from any thread and run the registered hooks once."""
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            hooks = list(self._hooks)
        for hook in hooks:
            with contextlib.suppress(Exception):
                hook()

    def on_cancel(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Run ``hook`` when cancelled (at once if already); returns an unregister function."""
        with self._lock:
            if not self._event.is_set():
                self._hooks.append(hook)

                def unregister() -> None:
                    with self._lock:
                        if hook in self._hooks:
                            self._hooks.remove(hook)

                return unregister
        hook()
        return lambda: None

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if cancelled meanwhile."""
        return self._event.wait(seconds)

    def check(self) -> None:
        """Raise :class:`Cancelled` if cancel was requested."""
        if self._event.is_set():
            from app.core.errors import Cancelled

            raise Cancelled()


class ProgressMeter:
    """Turns byte counts into throttled progress events with rate and ETA."""

    def __init__(
        self,
        emit: EventSink,
        stage: str,
        total: int | None,
        *,
        start: int = 0,
        interval: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._emit = emit
        self._stage = stage
        self.total = total
        self.done = start
        self._clock = clock
        self._t0 = clock()
        self._last = -1.0
        self._interval = interval
        # Rate over a sliding window so a stall shows up quickly.
        self._window: list[tuple[float, int]] = [(self._t0, start)]

    def advance(self, n: int) -> None:
        """Count ``n`` more bytes, emitting an event at most every ``interval`` seconds."""
        self.done += n
        now = self._clock()
        if now - self._last >= self._interval:
            self._send(now)

    def finish(self) -> None:
        """Emit the final figures."""
        self._send(self._clock(), final=True)

    def _send(self, now: float, final: bool = False) -> None:
        self._last = now
        self._window.append((now, self.done))
        while len(self._window) > 2 and now - self._window[0][0] > 5.0:
            self._window.pop(0)
        t_first, b_first = self._window[0]
        span = now - t_first
        rate = (self.done - b_first) / span if span > 0 else 0.0
        eta: float | None = None
        if self.total and rate > 0:
            eta = max(self.total - self.done, 0) / rate
        self._emit(
            Event(
                "progress",
                self._stage,
                data={
                    "done": self.done,
                    "total": self.total,
                    "rate": round(rate, 1),
                    "eta": None if eta is None else round(eta, 1),
                    "final": final,
                },
            )
        )

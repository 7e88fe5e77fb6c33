"""Progress and log events: the one stream both faces (CLI and Qt) consume."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, ClassVar

WAKE_SLICE = 0.2  # s: the longest a wait sleeps before the main thread may see a Ctrl-C


class EventType(StrEnum):
    """The ``event`` field of a JSON line."""

    STAGE = "stage"
    PROGRESS = "progress"
    OUTPUT = "output"
    LOG = "log"
    INFO = "info"
    PLAN = "plan"
    TIMINGS = "timings"
    RESULT = "result"
    SUMMARY = "summary"


@dataclass(frozen=True)
class Event:
    """What every event has: which stage it belongs to and a message for people."""

    type: ClassVar[EventType]
    stage: str = ""
    message: str = ""
    host: str = field(default="", kw_only=True)  # which server, when many run at once

    def fields(self) -> dict[str, Any]:
        """The event's own fields in its JSON line, in their documented order."""
        return {}

    def to_json(self) -> dict[str, Any]:
        """The JSON-lines form: ``{"event": type, "stage": ..., "message": ..., ...fields}``."""
        out: dict[str, Any] = {"event": str(self.type)}
        if self.host:
            out["host"] = self.host
        if self.stage:
            out["stage"] = self.stage
        if self.message:
            out["message"] = self.message
        out.update(self.fields())
        return out


@dataclass(frozen=True)
class StageEvent(Event):
    """A stage started (with its deadline) or ended (done, failed, cancelled, with its time)."""

    type: ClassVar[EventType] = EventType.STAGE
    state: str = "start"
    seconds: float | None = None
    deadline: float | None = None

    def fields(self) -> dict[str, Any]:
        if self.state == "start":
            return {"state": self.state, "deadline": self.deadline}
        return {"state": self.state, "seconds": self.seconds}


@dataclass(frozen=True)
class ProgressEvent(Event):
    """Bytes moved so far, with the rate and the time left when the total is known."""

    type: ClassVar[EventType] = EventType.PROGRESS
    done: int = 0
    total: int | None = None
    rate: float = 0.0
    eta: float | None = None
    final: bool = False

    def fields(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "total": self.total,
            "rate": self.rate,
            "eta": self.eta,
            "final": self.final,
        }


@dataclass(frozen=True)
class AttemptEvent(Event):
    """One more attempt of a wait (for the installer's SSH on ``port``)."""

    type: ClassVar[EventType] = EventType.PROGRESS
    attempts: int = 0
    port: int = 0

    def fields(self) -> dict[str, Any]:
        return {"attempts": self.attempts, "port": self.port}


@dataclass(frozen=True)
class OutputEvent(Event):
    """One line the server printed (``stream``: stdout or stderr)."""

    type: ClassVar[EventType] = EventType.OUTPUT
    stream: str = "stdout"

    def fields(self) -> dict[str, Any]:
        return {"message": self.message, "stream": self.stream}  # an empty line keeps its key


@dataclass(frozen=True)
class LogEvent(Event):
    """A step the engine took, worth a line in the log; ``level`` is "warn" for a warning."""

    type: ClassVar[EventType] = EventType.LOG
    level: str = ""
    safe_to_cancel: bool | None = None  # False once cancelling can no longer undo anything
    extra: dict[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.level:
            out["level"] = self.level
        if self.safe_to_cancel is not None:
            out["safe_to_cancel"] = self.safe_to_cancel
        return {**out, **self.extra}


@dataclass(frozen=True)
class InfoEvent(LogEvent):
    """A message a face says to the person (``info`` in the JSON lines)."""

    type: ClassVar[EventType] = EventType.INFO


@dataclass(frozen=True)
class PlanEvent(Event):
    """The resolved plan, before anything is changed."""

    type: ClassVar[EventType] = EventType.PLAN
    plan: dict[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        return {"plan": self.plan}


@dataclass(frozen=True)
class TimingsEvent(Event):
    """Seconds per stage, after a failed install (a successful one has them in its result)."""

    type: ClassVar[EventType] = EventType.TIMINGS
    timings: dict[str, float] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        return {"timings": self.timings}


@dataclass(frozen=True)
class ResultEvent(Event):
    """How a command ended: ``ok``, an ``outcome`` word, and what it found."""

    type: ClassVar[EventType] = EventType.RESULT
    payload: dict[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        return dict(self.payload)


@dataclass(frozen=True)
class SummaryEvent(Event):
    """The last line of a run on many servers: how each ended, and the run's exit code."""

    type: ClassVar[EventType] = EventType.SUMMARY
    ok: bool = True
    exit_code: int = 0
    hosts: list[dict[str, Any]] = field(default_factory=list)

    def fields(self) -> dict[str, Any]:
        failed = sum(1 for h in self.hosts if not h.get("ok"))
        return {
            "ok": self.ok,
            "exit_code": self.exit_code,
            "succeeded": len(self.hosts) - failed,
            "failed": failed,
            "hosts": self.hosts,
        }


EventSink = Callable[[Event], None]


def tagged(emit: EventSink, host: str) -> EventSink:
    """A sink that marks every event with the server it belongs to."""

    def sink(event: Event) -> None:
        emit(replace(event, host=host))

    return sink


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
        """Sleep up to ``seconds``; True if cancelled meanwhile.

        In slices: Linux may hand a Ctrl-C to any thread, and the main thread only acts on it
        when it wakes, so a long unsliced wait would ignore the interrupt until it ran out."""
        end = time.monotonic() + seconds
        while not self._event.wait(min(max(end - time.monotonic(), 0.0), WAKE_SLICE)):
            if time.monotonic() >= end:
                return False
        return True

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
            ProgressEvent(
                self._stage,
                done=self.done,
                total=self.total,
                rate=round(rate, 1),
                eta=None if eta is None else round(eta, 1),
                final=final,
            )
        )

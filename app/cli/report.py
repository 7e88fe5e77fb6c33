"""The command line's output: JSON lines on stdout, or readable lines and live rows on stderr."""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from app.core.errors import WizardError
from app.core.events import (
    AttemptEvent,
    Event,
    InfoEvent,
    LogEvent,
    OutputEvent,
    ProgressEvent,
    ResultEvent,
    StageEvent,
)
from app.core.fleet import servers, summary
from app.core.result import Outcome
from app.core.runlog import Redactor, RunLog
from app.core.text import printable, printable_lines


class Reporter:
    """Renders events: JSON lines on stdout, or readable lines and progress bars on stderr.

    Every text reaches the terminal through :func:`printable_lines` (JSON escapes control
    characters by itself), so nothing a server says can move the cursor or rewrite a line.
    """

    def __init__(self, json_mode: bool, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
        self.json = json_mode
        self.out = out
        self.err = err
        self.tty = err.isatty()
        self.redact = Redactor()
        self.log: RunLog | None = None
        self._bar_open = False
        self._last_pct: dict[str, int] = {}
        self._lock = threading.RLock()  # many servers' threads report at once
        self._board: dict[str, str] = {}  # a run on many: one live line per server
        self._drawn = 0
        self._paused = False

    def __call__(self, event: Event) -> None:
        with self._lock:
            if self.log is not None:
                self.log.write(event)
            if self.json:
                self.out.write(json.dumps(self.redact.scrub(event.to_json())) + "\n")
                self.out.flush()
            elif event.host:
                self._host_event(event)
            else:
                self._human(event)

    def _line(self, text: str) -> None:
        with self._lock:
            if self._bar_open:
                self.err.write("\n")
                self._bar_open = False
            board = self._drawn
            if board:  # above the live lines, which are drawn again below it
                self.err.write(f"\033[{board}A\r")
                self._drawn = 0
            # Server text (os-release, run's output, what an error quotes) is escaped here, where
            # it reaches the terminal: only the app's own sequences move the cursor.
            self.err.write(printable_lines(self.redact(text)) + ("\033[K\n" if board else "\n"))
            if board:
                self._draw()
            self.err.flush()

    # -- many servers: one live line each (on a terminal), or a line per step -------------

    def start_board(self, hosts: Sequence[str]) -> None:
        """Show one line per server from now on (a terminal only)."""
        with self._lock:
            self._board = dict.fromkeys(hosts, "waiting")
            self._draw()

    def end_board(self) -> None:
        """Stop drawing the live lines; they stay as they are."""
        with self._lock:
            self._drawn = 0
            self._board = {}

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the live lines alone while the person is asked something below them."""
        with self._lock:
            self._paused, self._drawn = True, 0
        try:
            yield
        finally:
            with self._lock:
                self._paused = False
                self._draw()

    def _draw(self) -> None:
        if self.json or not self.tty or self._paused or not self._board:
            return
        if self._drawn:
            self.err.write(f"\033[{self._drawn}A")
        width = max(len(printable(h)) for h in self._board)
        for host, status in self._board.items():
            shown = printable(self.redact(status))
            self.err.write(f"\r  {printable(self.redact(host)):<{width}}  {shown}\033[K\n")
        self._drawn = len(self._board)
        self.err.flush()

    def _host_event(self, e: Event) -> None:
        status, worth_a_line = _host_status(e)
        if status is None:
            return
        if self.tty and e.host in self._board:
            if worth_a_line and isinstance(e, LogEvent):
                self._line(f"[{e.host}] {status}")
                return
            if self._board[e.host] != status:
                self._board[e.host] = status
                self._draw()
        elif worth_a_line:
            self._line(f"[{e.host}] {status}")

    def summary(self, outcomes: Sequence[Outcome], logs: Mapping[str, Path | None]) -> None:
        """The last line of a run on many servers, or a table for the person."""
        event = summary(outcomes)
        if self.log is not None:
            self.log.write(event)
        if self.json:
            with self._lock:
                self.out.write(json.dumps(self.redact.scrub(event.to_json())) + "\n")
                self.out.flush()
            return
        ok = sum(1 for o in outcomes if o.ok)
        self._line(f"\nThe NixOS installer runs on {ok} of {servers(len(outcomes))}.")
        width = max((len(o.host) for o in outcomes), default=0)
        for o in outcomes:
            if o.ok:
                cmd = o.payload.get("ssh_command")
                self._line(f"  ok    {o.host:<{width}}  " + (shlex.join(cmd) if cmd else o.outcome))
                continue
            err = o.error
            self._line(f"  FAIL  {o.host:<{width}}  {o.outcome} (exit {o.exit_code})")
            if err is not None:
                pad = " " * (width + 8)
                self._line(f"{pad}{err.what}")
                if err.fix:
                    self._line(f"{pad}What to do: {err.fix}")
            if logs.get(o.host):
                self._line(f"{' ' * (width + 8)}Log: {logs[o.host]}")

    def _human(self, e: Event) -> None:
        if isinstance(e, ResultEvent):
            error = e.payload.get("error")
            if isinstance(error, dict):
                self._three_parts(str(error.get("what", "")), str(error.get("why", "")),
                                  str(error.get("fix", "")))  # fmt: skip
        elif isinstance(e, StageEvent):
            if e.state == "start":
                self._line(f"==> {e.stage}")
            elif e.state != "done":
                self._line(f"    {e.stage} {e.state} after {e.seconds or 0:.1f} s")
            else:
                self._line(f"    {e.stage} done in {e.seconds or 0:.1f} s")
        elif isinstance(e, ProgressEvent):
            self._bar(e)
        elif isinstance(e, AttemptEvent):
            if self.tty:
                self._line(f"    {e.message}")
        elif isinstance(e, OutputEvent):
            self._line(f"    | {e.message}")
        elif isinstance(e, LogEvent):
            prefix = "    ! " if e.level == "warn" else "    "
            self._line(prefix + e.message)

    def _bar(self, e: ProgressEvent) -> None:
        done, total = e.done, e.total
        pct = int(done * 100 / total) if total else -1
        text = f"    {_mb(done)}" + (f" / {_mb(total)} ({pct}%)" if total else "")
        text += f"  {e.rate / 1e6:.1f} MB/s"
        text += f"  ETA {int(e.eta)} s" if e.eta is not None else ""
        if self.tty:
            width = 30
            filled = int(width * pct / 100) if pct >= 0 else 0
            self.err.write(f"\r    [{'#' * filled}{'.' * (width - filled)}]{text}\033[K")
            self._bar_open = True
            if e.final:
                self.err.write("\n")
                self._bar_open = False
            self.err.flush()
        elif e.final or pct // 10 != self._last_pct.get(e.stage, -1) // 10:
            self._last_pct[e.stage] = pct
            self._line(text.strip())

    def info(self, message: str, level: str = "", **extra: Any) -> None:
        """A message for the person (or an ``info`` event in JSON mode)."""
        self(InfoEvent("", message, level=level, extra=extra))

    def result(self, ok: bool, outcome: str, **data: Any) -> None:
        """The final line: ``{"event": "result", ...}`` or a human summary."""
        event = ResultEvent(payload={"ok": ok, "outcome": outcome, **data})
        if self.log is not None:
            self.log.write(event)
        if self.json:
            self.out.write(json.dumps(self.redact.scrub(event.to_json())) + "\n")
            self.out.flush()

    def error(self, exc: WizardError) -> None:
        """A failure in three parts."""
        if self.json:
            self.result(False, exc.kind, error=exc.as_dict(), exit_code=int(exc.exit_code))
            return
        if self.log is not None:
            self.log.write(ResultEvent(payload={"ok": False, "error": exc.as_dict()}))
        self._three_parts(exc.what, exc.why, exc.fix)

    def _three_parts(self, what: str, why: str, fix: str) -> None:
        self._line("")
        self._line(f"Error: {what}")
        if why:
            self._line(why)
        if fix:
            self._line(f"What to do: {fix}")


def _host_status(e: Event) -> tuple[str | None, bool]:
    """A server's live line after this event, and whether it is worth a line of its own."""
    if isinstance(e, ResultEvent):
        if e.payload.get("ok"):
            return f"ok: {e.payload.get('outcome')}", True
        what = (e.payload.get("error") or {}).get("what", "")
        return f"FAILED ({e.payload.get('outcome')}): {what}", True
    if isinstance(e, StageEvent):
        if e.state == "start":
            return f"{e.stage}…", True
        return f"{e.stage} {e.state} ({e.seconds or 0:.1f} s)", e.state != "done"
    if isinstance(e, AttemptEvent):
        return f"{e.stage}: waiting for the installer (attempt {e.attempts})", False
    if isinstance(e, ProgressEvent) and e.total:
        return f"{e.stage} {int(e.done * 100 / e.total)}%  {e.rate / 1e6:.1f} MB/s", False
    if isinstance(e, LogEvent) and e.level == "warn":
        return f"! {e.message}", True
    return None, False


def terminal_writer(stream: TextIO) -> Callable[[str], int]:
    """A ``write`` for ``stream`` that escapes what could move the cursor (line breaks stay)."""
    return lambda text: stream.write(printable_lines(text))


def _mb(n: int | float | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f} MB"

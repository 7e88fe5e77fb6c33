"""Typed events write exactly the JSON lines the README documents."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from app.core.events import (
    AttemptEvent,
    CancelToken,
    Event,
    InfoEvent,
    LogEvent,
    OutputEvent,
    PlanEvent,
    ProgressEvent,
    ResultEvent,
    StageEvent,
    SummaryEvent,
    TimingsEvent,
    tagged,
)
from app.core.fleet import pool

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
SECTION = README[README.index("### JSON output") : README.index("### Exit codes")]
EVENTS: list[tuple[Event, dict[str, object]]] = [
    (
        StageEvent("transfer", state="start", deadline=60.0),
        {"event": "stage", "stage": "transfer", "state": "start", "deadline": 60.0},
    ),
    (
        StageEvent("transfer", state="done", seconds=1.5),
        {"event": "stage", "stage": "transfer", "state": "done", "seconds": 1.5},
    ),
    (
        ProgressEvent("transfer", done=5, total=10, rate=2.0, eta=2.5),
        {
            "event": "progress", "stage": "transfer", "done": 5, "total": 10, "rate": 2.0,
            "eta": 2.5, "final": False,
        },
    ),
    (
        AttemptEvent("up", "no banner yet", attempts=3, port=22),
        {"event": "progress", "stage": "up", "message": "no banner yet", "attempts": 3, "port": 22},
    ),
    (
        OutputEvent("run", "machine will boot into nixos", stream="stdout"),
        {"event": "output", "stage": "run", "message": "machine will boot into nixos", "stream": "stdout"},
    ),
    (  # an empty line the server printed still has its "message", as documented
        OutputEvent("run", "", stream="stderr"),
        {"event": "output", "stage": "run", "message": "", "stream": "stderr"},
    ),
    (
        LogEvent("run", "Running kexec/run", safe_to_cancel=False),
        {"event": "log", "stage": "run", "message": "Running kexec/run", "safe_to_cancel": False},
    ),
    (LogEvent("key", "careful", level="warn"), {"event": "log", "stage": "key", "message": "careful", "level": "warn"}),
    (InfoEvent("", "Saved profile"), {"event": "info", "message": "Saved profile"}),
    (PlanEvent(plan={"target": "root@h"}), {"event": "plan", "plan": {"target": "root@h"}}),
    (TimingsEvent(timings={"key": 0.5}), {"event": "timings", "timings": {"key": 0.5}}),
    (
        ResultEvent(payload={"ok": True, "outcome": "installer-ready"}),
        {"event": "result", "ok": True, "outcome": "installer-ready"},
    ),
    # A run on many servers: every line says which one, and one summary line ends it.
    (
        StageEvent("up", state="start", deadline=300.0, host="web-2"),
        {"event": "stage", "host": "web-2", "stage": "up", "state": "start", "deadline": 300.0},
    ),
    (
        ResultEvent(payload={"ok": False, "outcome": "preflight", "exit_code": 30}, host="web-2"),
        {"event": "result", "host": "web-2", "ok": False, "outcome": "preflight", "exit_code": 30},
    ),
    (
        SummaryEvent(ok=False, exit_code=30, hosts=[
            {"host": "web-1", "ok": True, "outcome": "installer-ready", "exit_code": 0},
            {"host": "web-2", "ok": False, "outcome": "preflight", "exit_code": 30, "error": "x"},
        ]),
        {
            "event": "summary", "ok": False, "exit_code": 30, "succeeded": 1, "failed": 1,
            "hosts": [
                {"host": "web-1", "ok": True, "outcome": "installer-ready", "exit_code": 0},
                {"host": "web-2", "ok": False, "outcome": "preflight", "exit_code": 30, "error": "x"},
            ],
        },
    ),
]  # fmt: skip


@pytest.mark.parametrize(("event", "line"), EVENTS, ids=lambda x: type(x).__name__)
def test_each_event_writes_its_documented_line(event: Event, line: dict[str, object]) -> None:
    assert event.to_json() == line
    assert json.loads(json.dumps(event.to_json())) == line  # plain JSON, enums as their words


@pytest.mark.parametrize(("event", "line"), EVENTS, ids=lambda x: type(x).__name__)
def test_every_field_an_event_writes_is_named_in_the_readme(
    event: Event, line: dict[str, object]
) -> None:
    """A README snippet for the event's type names each of its keys."""
    snippets = re.findall(r'\{"event": "?([a-z|"]+)"?,(.*?)\}', SECTION.replace("\n", " "), re.S)
    documented = [
        body for kinds, body in snippets if event.type in kinds.replace('"', "").split("|")
    ]
    assert documented, f"the README documents no {event.type!r} line"
    for key in line:
        if key == "event":
            continue
        assert any(f'"{key}"' in body for body in documented), (
            f"{type(event).__name__} writes {key!r}, which the README's {event.type} line omits"
        )


def test_an_event_type_is_its_own_word() -> None:
    assert StageEvent().type == "stage" and str(ResultEvent.type) == "result"


def test_a_tagged_sink_marks_every_event_with_its_server() -> None:
    seen: list[Event] = []
    tagged(seen.append, "web-3")(LogEvent("run", "Running kexec/run"))
    assert seen[0].to_json() == {
        "event": "log", "host": "web-3", "stage": "run", "message": "Running kexec/run"
    }  # fmt: skip


def test_the_summary_rows_are_documented() -> None:
    """Each field of a summary's host row is named in the README."""
    body = SECTION.replace("\n", " ")
    for key in ("host", "ok", "outcome", "exit_code", "error"):
        assert f'"{key}"' in body[body.index('"summary"') :], key


# -- Ctrl-C reaches the main thread wherever the kernel delivers it -------------------------


def _interrupt_from_another_thread(after: float) -> threading.Thread:
    """SIGINT delivered to a thread that is not the main one, as Linux may do under load."""

    def send() -> None:
        time.sleep(after)
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    return t


def test_a_ctrl_c_delivered_to_another_thread_ends_a_long_wait_at_once() -> None:
    token = CancelToken()
    sender = _interrupt_from_another_thread(0.3)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        token.wait(30)
    assert time.monotonic() - t0 < 2.0  # not the 30 s the wait asked for
    sender.join(5)


def test_a_ctrl_c_during_a_batch_cancels_every_server_at_once() -> None:
    token = CancelToken()
    seen: list[str] = []

    def work(item: str) -> str:
        if item == "a":  # both servers running, then a Ctrl-C lands on a worker thread
            time.sleep(0.3)
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)
        cancelled = token.wait(30)
        seen.append(f"{item} {'cancelled' if cancelled else 'ran on'}")
        return item

    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        pool(["a", "b"], work, 2, token)
    assert time.monotonic() - t0 < 3.0
    assert token.cancelled and sorted(seen) == ["a cancelled", "b cancelled"]

"""Typed events write exactly the JSON lines the README documents."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from app.core.events import (
    AttemptEvent,
    Event,
    InfoEvent,
    LogEvent,
    OutputEvent,
    PlanEvent,
    ProgressEvent,
    ResultEvent,
    StageEvent,
    TimingsEvent,
)

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

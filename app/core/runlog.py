"""A log file per run, fed by the event stream, with every known secret redacted."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from app.core.events import Event

REDACTED = "[redacted]"


class Redactor:
    """Replaces every registered secret (passwords, passphrases) in text."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()

    def add(self, secret: str | None) -> None:
        """Never let ``secret`` through (empty and very short strings are ignored)."""
        if secret and len(secret) >= 3:
            self._secrets.add(secret)

    def __call__(self, text: str) -> str:
        for s in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(s, REDACTED)
        return text

    def scrub(self, value: Any) -> Any:
        """Redact strings inside nested JSON-like data."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {k: self.scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.scrub(v) for v in value]
        return value


class RunLog:
    """Appends one JSON line per event to ``logs/<name>-<time>-<pid>.log`` (mode 0600)."""

    def __init__(self, logs_dir: Path, redactor: Redactor, name: str = "run") -> None:
        logs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.path = logs_dir / f"{name}-{stamp}-{os.getpid()}.log"
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        self.redact = redactor
        self._lock = threading.Lock()

    def write(self, event: Event) -> None:
        """Record one event (opened and closed each time: nothing stays open, nothing is lost)."""
        record = {"t": round(time.time(), 3), **self.redact.scrub(event.to_json())}
        line = json.dumps(record) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line)

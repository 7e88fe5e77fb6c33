"""Keyrings for tests and benchmarks: in memory (a headless machine has none), or slow."""

from __future__ import annotations

import time

import keyring.backend


class MemoryKeyring(keyring.backend.KeyringBackend):
    """A keyring that lives in memory: a headless machine has no real one."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.store: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.store.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.store[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.store.pop((service, username), None)


class SlowKeyring(MemoryKeyring):
    """A keyring that answers each read after ``delay`` seconds, as one waiting for an unlock
    prompt or a slow D-Bus does."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def get_password(self, service: str, username: str) -> str | None:
        time.sleep(self.delay)
        return super().get_password(service, username)

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


def bus_gone() -> Exception:
    """The D-Bus error jeepney (under SecretService) raises when the secrets service is gone."""
    from jeepney import DBusAddress, new_error, new_method_call
    from jeepney.wrappers import DBusErrorResponse

    secrets = DBusAddress(
        "/org/freedesktop/secrets",
        bus_name="org.freedesktop.secrets",
        interface="org.freedesktop.Secret.Service",
    )
    call = new_method_call(secrets, "OpenSession", "sv", ("plain", ("s", "")))
    reply = new_error(
        call, "org.freedesktop.DBus.Error.ServiceUnknown", "s", ("The name is not activatable",)
    )
    return DBusErrorResponse(reply)


class BrokenKeyring(MemoryKeyring):
    """A keyring whose backend fails with something that is not a ``KeyringError``, as
    SecretService does once the session bus has gone away. ``PYTHON_KEYRING_BACKEND`` can
    name a subclass, so a separate app process uses it too."""

    def error(self) -> Exception:
        return RuntimeError("Unable to initialize SecretService: the session bus went away")

    def get_password(self, service: str, username: str) -> str | None:
        raise self.error()

    def set_password(self, service: str, username: str, password: str) -> None:
        raise self.error()

    def delete_password(self, service: str, username: str) -> None:
        raise self.error()


class BusGoneKeyring(BrokenKeyring):
    """A backend failing with the D-Bus error itself."""

    def error(self) -> Exception:
        return bus_gone()


class NoSocketKeyring(BrokenKeyring):
    """A backend failing with the OSError of a bus socket that is no longer there."""

    def error(self) -> Exception:
        return ConnectionRefusedError(111, "Connection refused")

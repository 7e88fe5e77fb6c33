"""Passwords and passphrases through the system keyring only, and honest when there is none."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from app import APP_NAME
from app.core.lazy import LazyModule

if TYPE_CHECKING:
    import keyring
    import keyring.errors as keyring_errors
else:
    keyring = LazyModule("keyring")
    keyring_errors = LazyModule("keyring.errors")

SERVICE = APP_NAME


class SecretStore:
    """A thin wrapper over keyring that never crashes and can say where secrets go."""

    def __init__(self, service: str = SERVICE) -> None:
        self.service = service

    def _backend(self) -> object | None:
        try:
            kr = keyring.get_keyring()
        except Exception:
            return None
        name = type(kr).__module__ + "." + type(kr).__name__
        if name.startswith("keyring.backends.fail") or name.endswith("null.Keyring"):
            return None
        if name == "keyring.backends.chainer.ChainerBackend" and not getattr(kr, "backends", []):
            return None
        return kr

    @property
    def available(self) -> bool:
        """Whether a real keyring backend exists."""
        return self._backend() is not None

    def where(self) -> str:
        """Where secrets go, in words, for the checkbox label and the CLI."""
        kr = self._backend()
        if kr is None:
            return "nowhere: no system keyring is available, so you will be asked each time"
        label = getattr(kr, "name", type(kr).__name__)
        return f"your system keyring ({label})"

    def get(self, key: str) -> str | None:
        """The secret stored under ``key``, or None (also when the keyring is locked)."""
        if not self.available:
            return None
        try:
            value = keyring.get_password(self.service, key)
        except keyring_errors.KeyringError:
            return None
        return value

    def set(self, key: str, secret: str) -> bool:
        """Store a secret; False (nothing stored anywhere) when the keyring refuses."""
        if not self.available:
            return False
        try:
            keyring.set_password(self.service, key, secret)
        except keyring_errors.KeyringError:
            return False
        return True

    def delete(self, key: str) -> None:
        """Forget a secret (no error when there was none)."""
        if not self.available:
            return
        with contextlib.suppress(keyring_errors.KeyringError):
            keyring.delete_password(self.service, key)


def password_key(profile: str) -> str:
    """The keyring entry name of a profile's login password."""
    return f"{profile}:password"


def sudo_key(profile: str) -> str:
    """The keyring entry name of a profile's sudo password."""
    return f"{profile}:sudo-password"

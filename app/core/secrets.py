"""Passwords and passphrases through the system keyring only, and honest when there is none."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app import APP_NAME
from app.core.lazy import LazyModule
from app.core.text import printable

if TYPE_CHECKING:
    import keyring
    import keyring.errors as keyring_errors
else:
    keyring = LazyModule("keyring")
    keyring_errors = LazyModule("keyring.errors")

SERVICE = APP_NAME


class SecretStore:
    """A thin wrapper over keyring that never crashes and can say where secrets go.

    A backend that fails with anything but a ``KeyringError`` (the session bus went away, its
    socket is gone, a D-Bus error) is taken as no keyring from then on: nothing is stored and
    every password is asked each time, as with no keyring at all. A ``KeyringError`` (locked,
    the unlock prompt dismissed) stays what it is: this one read or write failed.
    """

    def __init__(self, service: str = SERVICE) -> None:
        self.service = service
        self.failure = ""  # the backend's own failure, in words, once it failed
        self.kept: list[str] = []  # entries a failing keyring could not forget

    def _failed(self, exc: Exception) -> None:
        said = printable(str(exc))[:200]
        self.failure = type(exc).__name__ + (f": {said}" if said else "")

    def _backend(self) -> object | None:
        if self.failure:
            return None
        try:
            kr = keyring.get_keyring()
        except Exception as exc:  # a backend is third-party code: any failure is no keyring
            self._failed(exc)
            return None
        name = type(kr).__module__ + "." + type(kr).__name__
        if name.startswith("keyring.backends.fail") or name.endswith("null.Keyring"):
            return None
        if name == "keyring.backends.chainer.ChainerBackend" and not getattr(kr, "backends", []):
            return None
        return kr

    @property
    def available(self) -> bool:
        """Whether a real keyring backend exists (and has not failed)."""
        return self._backend() is not None

    def where(self) -> str:
        """Where secrets go, in words, for the checkbox label and the CLI."""
        kr = self._backend()
        if kr is None and self.failure:
            return (
                f"nowhere: the system keyring failed ({self.failure}), so you will be asked "
                "each time"
            )
        if kr is None:
            return "nowhere: no system keyring is available, so you will be asked each time"
        try:
            label = str(getattr(kr, "name", type(kr).__name__))
        except Exception:
            label = type(kr).__name__
        return f"your system keyring ({printable(label)})"

    def get(self, key: str) -> str | None:
        """The secret stored under ``key``, or None (also when the keyring is locked or fails)."""
        if not self.available:
            return None
        try:
            value = keyring.get_password(self.service, key)
        except keyring_errors.KeyringError:
            return None
        except Exception as exc:
            self._failed(exc)
            return None
        return value if isinstance(value, str) else None

    def set(self, key: str, secret: str) -> bool:
        """Store a secret; False (nothing stored anywhere) when the keyring refuses or fails."""
        if not self.available:
            return False
        try:
            keyring.set_password(self.service, key, secret)
        except keyring_errors.KeyringError:
            return False
        except Exception as exc:
            self._failed(exc)
            return False
        return True

    def delete(self, key: str) -> bool:
        """Forget a secret; False (and ``key`` in :attr:`kept`) when it may still be stored."""
        if not self.available:
            if self.failure:  # it may hold the entry from before it failed
                self.kept.append(key)
                return False
            return True  # no keyring: nothing was ever stored
        try:
            keyring.delete_password(self.service, key)
        except keyring_errors.PasswordDeleteError:
            return True  # there was none
        except keyring_errors.KeyringError:
            self.kept.append(key)
            return False
        except Exception as exc:
            self._failed(exc)
            self.kept.append(key)
            return False
        return True

    def kept_note(self) -> str:
        """What a failing keyring may still hold, and how to remove it (after :meth:`delete`)."""
        entries = ", ".join(self.kept)
        why = f"failed ({self.failure})" if self.failure else "refused (it may be locked)"
        return (
            f"The system keyring {why}, so its entries {entries} (service {self.service}) may "
            "still hold passwords. The app asks for passwords each time instead; remove the "
            "entries with your keyring's own tool once it works again (for example `secret-tool "
            f"clear service {self.service} username {self.kept[0]}`)."
            if self.kept
            else ""
        )


def password_key(profile: str) -> str:
    """The keyring entry name of a profile's login password."""
    return f"{profile}:password"


def sudo_key(profile: str) -> str:
    """The keyring entry name of a profile's sudo password."""
    return f"{profile}:sudo-password"

"""Named host profiles in one versioned file: atomic writes, mode 0600, no secrets, ever."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from app.core.errors import ConfigError
from app.core.fsutil import atomic_write_text
from app.core.secrets import SecretStore, password_key, sudo_key

SCHEMA_VERSION = 1
# installed: NixOS is on the disk, the installer still runs until the server reboots.
STATES = ("original", "installer", "installed", "unknown")
NAME_RE = re.compile(r"^[^\x00-\x1f/\\]{1,64}$")
# Keys that must never appear in a profile file, whatever a caller passes in.
SECRET_KEYS = frozenset({"password", "passphrase", "sudo_password", "secret", "private_key"})
# How long a save waits for another process (the wizard, a second terminal) to finish its own.
LOCK_WAIT = 30.0


def _secret_key(value: Any) -> str | None:
    """The first secret-looking key anywhere inside ``value``."""
    if isinstance(value, dict):
        for k, v in value.items():
            if str(k).lower() in SECRET_KEYS:
                return str(k)
            if found := _secret_key(v):
                return found
    elif isinstance(value, list | tuple):
        for v in value:
            if found := _secret_key(v):
                return found
    return None


@dataclass(frozen=True)
class Profile:
    """One server the user works with."""

    name: str
    host: str
    port: int = 22
    user: str = "root"
    jump: str = ""
    auth: str = "auto"  # auto | agent | key | password
    key_path: str = ""
    host_key: str = ""  # pinned "type base64"
    state: str = "unknown"  # original | installer | installed | unknown
    facts: dict[str, Any] = field(default_factory=dict)
    image: dict[str, Any] = field(default_factory=dict)
    installer: dict[str, Any] = field(default_factory=dict)
    remember_password: bool = False
    last_contact: float | None = None
    dead_man: str = ""  # the dead-man switch last chosen: minutes, "off", or "" (the default)
    # The old system's root disk(s), seen before the kexec (app.core.disk.disks.OldRoot's
    # form): the disk an install onto the disk offers first. Kept while the server runs the
    # installer, whose own / is RAM.
    old_root: dict[str, Any] = field(default_factory=dict)
    system: str = ""  # the folder on this computer keeping the installed system's configuration

    def to_json(self) -> dict[str, Any]:
        """The on-disk form."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> Profile:
        """Read one profile, ignoring unknown keys (from newer versions).

        Raises ValueError, naming the field, for anything not of the type the app writes.
        """
        if not isinstance(data, dict):
            raise ValueError(f"an entry is a {type(data).__name__}, not a profile")
        names = {f.name for f in fields(cls)}
        clean = {k: v for k, v in data.items() if k in names}
        label = repr(clean.get("name", "?"))
        for key, want in FIELD_TYPES.items():
            if key in clean and not _is(clean[key], want):
                raise ValueError(f"profile {label}: {key} is {clean[key]!r}, not {want[1]}")
        if "name" not in clean or "host" not in clean:
            raise ValueError(f"profile {label} has no name or host")
        if not 0 < clean.get("port", 22) < 65536:
            raise ValueError(f"profile {label}: port {clean['port']} is not 1-65535")
        p = cls(**clean)
        if p.state not in STATES:
            p = replace(p, state="unknown")
        return p

    def touched(self, **changes: Any) -> Profile:
        """A copy with ``changes`` and the contact time set to now."""
        return replace(self, last_contact=time.time(), **changes)


# The type each field must have on disk, and its name in words.
FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "name": ((str,), "text"),
    "host": ((str,), "text"),
    "port": ((int,), "a number"),
    "user": ((str,), "text"),
    "jump": ((str,), "text"),
    "auth": ((str,), "text"),
    "key_path": ((str,), "text"),
    "host_key": ((str,), "text"),
    "state": ((str,), "text"),
    "facts": ((dict,), "an object"),
    "image": ((dict,), "an object"),
    "installer": ((dict,), "an object"),
    "remember_password": ((bool,), "true or false"),
    "last_contact": ((int, float, type(None)), "a time"),
    "dead_man": ((str,), "text"),
    "old_root": ((dict,), "an object"),
    "system": ((str,), "text"),
}


def _is(value: object, want: tuple[tuple[type, ...], str]) -> bool:
    if isinstance(value, bool) and bool not in want[0]:
        return False  # JSON true is no port number
    return isinstance(value, want[0])


def check_name(name: str) -> str:
    """A profile name: 1-64 printable characters, no slashes."""
    name = name.strip()
    if not NAME_RE.match(name):
        raise ConfigError(
            f"{name!r} cannot be a profile name.",
            "Profile names are 1-64 characters without slashes or control characters.",
            "Pick a short name such as the server's host name.",
        )
    return name


class ProfileStore:
    """Loads and saves every profile in one JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.notice = ""  # set when a corrupt file was put aside
        self._lock = threading.RLock()  # many servers at once update the one file
        self._held = 0  # how deep this process is inside the file lock

    @property
    def lock_path(self) -> Path:
        """The lock file beside the profiles file that every app process takes to save."""
        return self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """This thread alone in this process, and this process alone among the app's (an
        fcntl lock on :attr:`lock_path`), from the load to the save."""
        with self._lock:
            if self._held:  # a put inside a put: the file lock is ours already
                self._held += 1
                try:
                    yield
                finally:
                    self._held -= 1
                return
            fd = self._take_file_lock()
            self._held = 1
            try:
                yield
            finally:
                self._held = 0
                os.close(fd)  # closing the descriptor releases the lock

    def _take_file_lock(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"Cannot open the profiles lock file {self.lock_path}: {exc.strerror}.",
                "Without it two copies of the app could save at once and lose saved servers.",
                f"Check the permissions of {self.path.parent}.",
            ) from exc
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
                os.close(fd)
                raise ConfigError(
                    f"The profiles file {self.path} stayed locked for {LOCK_WAIT:.0f} s.",
                    "Another copy of the app is saving to it and has not finished; saving now "
                    "could lose what it saves.",
                    f"Close the other copy of the app (or whatever holds {self.lock_path}), "
                    "then try again.",
                ) from None
            except OSError as exc:
                os.close(fd)
                raise ConfigError(
                    f"Cannot lock the profiles file {self.path}: {exc.strerror}.",
                    "Without the lock two copies of the app could save at once and lose saved "
                    "servers.",
                    "Keep the app's configuration folder on a local file system.",
                ) from exc

    def load(self) -> dict[str, Profile]:
        """All profiles; a corrupt file is renamed aside (never deleted) and noted."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(
                f"Cannot read the profiles file {self.path}: {exc.strerror}.",
                "Your saved servers cannot be shown.",
                "Check the file's permissions.",
            ) from exc
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or not isinstance(data.get("profiles"), list):
                raise ValueError("not a profiles file")
            version = data.get("version")
            if not isinstance(version, int) or version > SCHEMA_VERSION:
                raise ValueError(f"unsupported version {version!r}")
        except (ValueError, TypeError) as exc:
            aside = self._aside()
            os.replace(self.path, aside)
            self.notice = (
                f"The profiles file was unreadable ({exc}); it was kept as {aside} and the app "
                "starts with no saved servers."
            )
            return {}
        profiles: dict[str, Profile] = {}
        bad: list[str] = []
        for entry in data["profiles"]:
            try:
                p = Profile.from_json(entry)
            except (ValueError, TypeError) as exc:
                bad.append(str(exc))
                continue
            profiles[p.name] = p
        if bad:
            # The others load; the whole file is copied aside first, so nothing is lost when
            # the next save leaves the unreadable entries out.
            aside = self._aside()
            shutil.copy2(self.path, aside)
            self.notice = (
                f"{len(bad)} saved server(s) could not be read ({'; '.join(bad)[:300]}); the "
                f"file was copied to {aside}, and the other servers are loaded."
            )
        return profiles

    def _aside(self) -> Path:
        return self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")

    def save_all(self, profiles: dict[str, Profile]) -> None:
        """Write every profile atomically (temp file, fsync, rename), mode 0600."""
        with self._locked():
            self._write(profiles)

    def _write(self, profiles: dict[str, Profile]) -> None:
        payload = {
            "version": SCHEMA_VERSION,
            "profiles": [p.to_json() for p in sorted(profiles.values(), key=lambda p: p.name)],
        }
        if key := _secret_key(payload):
            raise ValueError(f"refusing to write a {key} into the profiles file")
        text = json.dumps(payload, indent=2, sort_keys=True)
        atomic_write_text(self.path, text + "\n", mode=0o600)

    def get(self, name: str) -> Profile:
        """One profile by name."""
        profiles = self.load()
        if name not in profiles:
            known = ", ".join(sorted(profiles)) or "none yet"
            raise ConfigError(
                f"There is no profile named {name!r}.",
                f"Saved profiles: {known}.",
                "Check the name with `nixos-kexec-wizard profiles list`.",
            )
        return profiles[name]

    def put(self, profile: Profile) -> None:
        """Add or replace one profile (no other thread or app process saves in between)."""
        with self._locked():
            profiles = self.load()
            profiles[check_name(profile.name)] = profile
            self.save_all(profiles)

    def delete(self, name: str) -> bool:
        """Remove a profile; False when it did not exist."""
        with self._locked():
            profiles = self.load()
            if profiles.pop(name, None) is None:
                return False
            self.save_all(profiles)
            return True


def forget_profile(store: ProfileStore, secrets: SecretStore, name: str) -> bool:
    """Delete a profile and its keyring entries. The profile goes whatever the keyring does; an
    entry a failing keyring may still hold is in ``secrets.kept`` (``secrets.kept_note()``)."""
    gone = store.delete(name)
    for key in (password_key(name), sudo_key(name)):
        secrets.delete(key)  # never raises: a failing keyring is no keyring
    return gone

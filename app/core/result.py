"""The typed outcome of a run: the verified installer, what was left behind, how it ended."""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from app.core.errors import ConfigError, WizardError

# The dead-man switch's names on the installer (app/core/install/deadman.py arms it), and how to
# stop it by hand there: the mark makes its service do nothing, the stop ends its timer.
DEAD_MAN_TIMER = "nkw-dead-man.timer"
DEAD_MAN_MARK = "/run/nkw-dead-man.disarmed"
DEAD_MAN_STOP = f"touch {DEAD_MAN_MARK}; systemctl stop {DEAD_MAN_TIMER}"


@dataclass(frozen=True)
class InstallerInfo:
    """The verified installer: how to reach it and proof of what it is."""

    host: str
    port: int
    user: str
    host_key: str
    fingerprint: str
    boot_id: str
    hostname: str
    os_release: dict[str, str]
    identity_file: str | None = None
    # False when the host key is one the user accepted, not the one proven before the kexec.
    host_key_verified: bool = True
    # The old system's authorized_keys where the app's key line stays, and that line's comment.
    key_left_in: str = ""
    key_comment: str = ""
    # The dead-man switch after the proof: "disarmed", "still-armed" (a loud warning), or ""
    # when it was off.
    dead_man: str = ""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> InstallerInfo:
        """Read saved installer details (unknown keys from other versions are ignored)."""
        names = {f.name: f for f in fields(cls)}
        clean = {k: v for k, v in data.items() if k in names}
        try:
            info = cls(**clean)
        except TypeError as exc:
            raise ConfigError(
                f"The installer saved in {where} is incomplete ({exc}).",
                "Without its address and host key the app cannot reach it safely.",
                "Inspect the server again (probe), which records the installer anew.",
            ) from exc
        wrong = [
            k
            for k, t in (("host", str), ("port", int), ("host_key", str), ("fingerprint", str))
            if not isinstance(getattr(info, k), t) or isinstance(getattr(info, k), bool)
        ]
        if wrong or not isinstance(info.os_release, dict):
            raise ConfigError(
                f"The installer saved in {where} has unreadable fields: "
                f"{', '.join(wrong) or 'os_release'}.",
                "Without its address and host key the app cannot reach it safely.",
                "Inspect the server again (probe), which records the installer anew.",
            )
        return info


def leftover_command(info: InstallerInfo) -> str | None:
    """How to remove the app's key line from the old system, if one was left there."""
    if not info.key_left_in or not info.key_comment:
        return None
    return f"sed -i '/ {info.key_comment}$/d' {shlex.quote(info.key_left_in)}"


def leftover_note(info: InstallerInfo) -> str | None:
    """The sentence that tells the user about the key line left on the old system."""
    cmd = leftover_command(info)
    if cmd is None:
        return None
    return (
        f"The app's key line stays in {info.key_left_in} of the old system (on its disk). "
        "Installing NixOS replaces that system; if you boot the old system again instead, "
        f"remove the line there with: {cmd}"
    )


@dataclass(frozen=True)
class Outcome:
    """How one server's run ended: its ``result`` line, the same alone or in a batch."""

    host: str
    ok: bool
    outcome: str
    exit_code: int
    payload: dict[str, Any] = field(default_factory=dict)
    error: WizardError | None = None

    @classmethod
    def failed(cls, host: str, exc: WizardError) -> Outcome:
        """The outcome of a run that ended with ``exc``."""
        return cls(host, False, exc.kind, int(exc.exit_code), error=exc)

    def body(self) -> dict[str, Any]:
        """The ``result`` line's fields (without the server's name)."""
        body: dict[str, Any] = {"ok": self.ok, "outcome": self.outcome, **self.payload}
        if self.error is not None:
            body.update(error=self.error.as_dict(), exit_code=self.exit_code)
        return body

    def row(self) -> dict[str, Any]:
        """The server's entry in a batch's summary line."""
        out: dict[str, Any] = {
            "host": self.host,
            "ok": self.ok,
            "outcome": self.outcome,
            "exit_code": self.exit_code,
        }
        if self.error is not None:
            out["error"] = self.error.what
        return out

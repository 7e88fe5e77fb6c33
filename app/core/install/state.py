"""What the install stages share: the fixed setup, what they learned, one call's sink and token."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core.events import CancelToken, EventSink, LogEvent
from app.core.kinds import ServerHash, Transfer
from app.core.plan import DEFAULT_STAGING, InstallPlan
from app.core.probe import Facts
from app.core.settings import Settings
from app.core.ssh import CommandResult, Credentials, KnownHosts, Session


@dataclass(frozen=True)
class Setup:
    """What one install works with, fixed for its whole life."""

    plan: InstallPlan
    session: Session  # the login to the old system, connected, probed and acting as root
    facts: Facts
    creds: Credentials  # how that login was made
    known_hosts: KnownHosts
    settings: Settings
    keys_dir: Path  # where the app's own keys are kept

    @property
    def staging(self) -> str:
        """The staging folder on the server, as the probe expanded it."""
        return self.facts.staging.path or DEFAULT_STAGING


@dataclass
class State:
    """What the stages learned and left on the server so far; each stage reads and adds to it."""

    host: str  # where the installer is looked for: the old system's address unless moved
    accepted_keys: set[str]  # fingerprints of new host keys the user accepted (a bundle's)
    installer_creds: Credentials | None = None  # how to log in to the installer, once known
    identity_file: str | None = None  # the key file OpenSSH needs for it, if any
    added_key: tuple[str, str] | None = None  # (file, line) we appended to authorized_keys
    mode: Transfer = Transfer.UPLOAD  # how the image travels, once chosen
    staging: str = ""  # the staging folder's real path, once its owners and mode were checked
    streamed_sha: str | None = None  # the server's sha256 of the upload it received
    server_hash: ServerHash = ServerHash.NONE  # how the server hashed the upload
    point_of_no_return: bool = False  # `run` started: cancelling is too late
    launcher: str = "run"  # what runs in the image's kexec/ folder: upstream's, or the app's copy
    dead_man_minutes: float | None = None  # the switch as armed in the launcher (None: not)
    dead_man_units: bool = False  # its timer too, not only the panic restart
    kexec_at: float | None = None  # time.monotonic() when `run` said the kexec comes in 6 s

    @classmethod
    def start(cls, setup: Setup) -> State:
        """The state before any stage ran."""
        return cls(host=setup.session.target.host, accepted_keys=set(setup.plan.accept_host_keys))


@dataclass(frozen=True)
class Step:
    """One call into the install: its setup and state, where its events go, what cancels it."""

    setup: Setup
    state: State
    emit: EventSink
    cancel: CancelToken

    @property
    def staging(self) -> str:
        """The staging folder: the real path its owner check judged, once it has (so a link
        re-pointed after the check changes nothing that runs); before, the probe's path."""
        return self.state.staging or self.setup.staging

    @property
    def remote_tarball(self) -> str:
        """Where the tarball lands on the server."""
        return f"{self.staging.rstrip('/')}/{self.setup.plan.file_name}"

    def log(self, stage: str, message: str, level: str = "", **extra: Any) -> None:
        """Tell the user something about a stage."""
        self.emit(LogEvent(stage, message, level=level, extra=extra))

    def run(
        self, cmd: str, *, privileged: bool = False, timeout: float | None = None, what: str = ""
    ) -> CommandResult:
        """Run a command on the old system under the command deadline (or ``timeout``)."""
        return self.setup.session.run(
            cmd,
            privileged=privileged,
            timeout=timeout or self.setup.settings.command_timeout,
            cancel=self.cancel,
            what=what or cmd,
        )

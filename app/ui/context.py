"""What the wizard's pages share: the app's stores and settings, and the flow's choices so far."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from app.core.catalog import Asset, Catalog
from app.core.download import CachedImage, ImageCache
from app.core.events import Event, LogEvent
from app.core.fleet import Fleet, Host, Inspected, Outcome
from app.core.inhibit import SleepInhibitor
from app.core.install import Installer
from app.core.kinds import Transfer
from app.core.paths import AppPaths
from app.core.plan import ImageChoice, InstallPlan
from app.core.preflight import Verdict
from app.core.probe import Facts
from app.core.profiles import Profile, ProfileStore
from app.core.result import InstallerInfo
from app.core.runlog import Redactor, RunLog
from app.core.secrets import SecretStore
from app.core.settings import Settings
from app.core.ssh import Credentials, KnownHosts, Session, Target


class AppContext:
    """Paths, settings and stores for one run of the app, and its log file."""

    def __init__(self, paths: AppPaths, settings: Settings | None = None) -> None:
        self.paths = paths
        paths.ensure()
        self.settings = settings or Settings.from_env(paths.settings_file)
        self.profiles = ProfileStore(paths.profiles_file)
        self.secrets = SecretStore()
        self.known_hosts = KnownHosts(paths.known_hosts)
        self.redact = Redactor()
        self.log = RunLog(paths.logs, self.redact, "wizard")
        self.inhibitor = SleepInhibitor()

    @property
    def image_cache(self) -> ImageCache:
        """The image cache, where the settings put it."""
        return ImageCache(self.paths.images_dir_for(self.settings.cache_dir))

    def reload_settings(self) -> None:
        """Read settings.json again after the settings dialog saved it."""
        self.settings = Settings.from_env(self.paths.settings_file)

    def record(self, event: Event) -> None:
        """Append an event to this run's log (secrets redacted)."""
        self.log.write(event)

    def note(self, stage: str, message: str) -> None:
        """Append a plain message to this run's log."""
        self.log.write(LogEvent(stage, message))


@dataclass
class Batch:
    """A run on several servers: what the user picked, the engine's Fleet, how far each got."""

    profiles: list[Profile] = field(default_factory=list)
    specs: list[str] = field(default_factory=list)  # pasted targets or ~/.ssh/config aliases
    hosts: list[Host] = field(default_factory=list)
    fleet: Fleet | None = None
    sessions: dict[str, Session] = field(default_factory=dict)
    inspected: list[Inspected] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def size(self) -> int:
        """How many servers were picked."""
        return len(self.profiles) + len(self.specs)

    def close(self) -> None:
        """Close every session still open (safe from any thread's point of view)."""
        for session in self.sessions.values():
            session.close()
        self.sessions.clear()
        if self.fleet is not None:
            self.fleet.cancel.cancel()


@dataclass
class Flow:
    """The user's choices and what the engine found, page by page."""

    profile: Profile | None = None
    profile_name: str = ""
    remember_password: bool = False
    target: Target | None = None
    creds: Credentials = field(default_factory=Credentials)
    session: Session | None = None
    facts: Facts | None = None
    verdicts: list[Verdict] = field(default_factory=list)
    privileged: bool = False
    catalog: Catalog | None = None
    choice: ImageChoice | None = None  # the image as the engine resolved it
    asset: Asset | None = None
    image_meta: dict[str, str] = field(default_factory=dict)
    image: CachedImage | None = None
    local_file: Path | None = None
    transfer: Transfer = Transfer.UPLOAD  # as the engine resolved it
    plan: InstallPlan | None = None
    installer: Installer | None = None
    info: InstallerInfo | None = None
    batch: Batch | None = None  # several servers at once (the Batch pages)

    @property
    def image_kind(self) -> str:
        """``bundle`` or ``tarball``: the checked image's own kind, else the chosen one's."""
        if self.image is not None:
            return self.image.info.kind
        return (self.choice or ImageChoice(self.asset, self.image_meta)).kind

    def drop_session(self) -> None:
        """Close the SSH session (any thread may still hold it: close() is safe)."""
        if self.session is not None:
            self.session.close()
        self.session = None
        self.facts = None
        self.verdicts = []
        self.privileged = False

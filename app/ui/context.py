"""What the wizard's pages share: the app's stores and settings, the server's run, the answers."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.core.catalog import Catalog
from app.core.disk.run import DiskRequest
from app.core.download import CachedImage, ImageCache
from app.core.events import Event, LogEvent
from app.core.fleet import Fleet, SharedImages
from app.core.inhibit import SleepInhibitor
from app.core.kinds import Transfer
from app.core.paths import AppPaths
from app.core.plan import ImageChoice, ImageRequest
from app.core.preflight import Verdict
from app.core.probe import Facts
from app.core.profiles import Profile, ProfileStore
from app.core.questions import Answers
from app.core.result import InstallerInfo, Outcome
from app.core.run import HostRun, RunEnv, RunRequest
from app.core.runlog import Redactor, RunLog
from app.core.secrets import SecretStore
from app.core.settings import Settings
from app.core.ssh import KnownHosts, Target


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
        self.images = SharedImages(self.image_cache, self.settings)

    @property
    def image_cache(self) -> ImageCache:
        """The image cache, where the settings put it."""
        return ImageCache(self.paths.images_dir_for(self.settings.cache_dir))

    def reload_settings(self) -> None:
        """Read settings.json again after the settings dialog saved it."""
        self.settings = Settings.from_env(self.paths.settings_file)
        self.images = SharedImages(self.image_cache, self.settings)

    def run_env(self) -> RunEnv:
        """What every run the wizard starts shares (the settings as they are now)."""
        return RunEnv(
            settings=self.settings,
            known_hosts=self.known_hosts,
            profiles=self.profiles,
            secrets=self.secrets,
            keys_dir=self.paths.keys_dir,
            images=self.images,
            systems_dir=self.paths.config / "systems",
        )

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
    fleet: Fleet | None = None
    answers: Answers = field(default_factory=Answers)
    request: RunRequest | None = None  # chosen on the Confirm page
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def size(self) -> int:
        """How many servers were picked."""
        return len(self.profiles) + len(self.specs)

    @property
    def inspected(self) -> list[HostRun]:
        """The runs that were inspected and may go on (no stop; warnings: the face asks)."""
        if self.fleet is None:
            return []
        return [r for r in self.fleet.going if r.inspection is not None]

    def close(self) -> None:
        """Cancel every run and close its session (safe from any thread's point of view)."""
        if self.fleet is not None:
            self.fleet.cancel.cancel()
            for run in self.fleet.runs:
                run.close()


@dataclass
class WizardState:
    """The server's run and what the pages chose and answered so far."""

    profile: Profile | None = None  # picked on the Servers page
    run: HostRun | None = None  # one server's run, from the Connect page on
    answers: Answers = field(default_factory=Answers)
    catalog: Catalog | None = None
    image_request: ImageRequest | None = None  # the Image page's answers
    choice: ImageChoice | None = None  # the image as the engine resolved it
    transfer: Transfer = Transfer.UPLOAD  # as the engine resolved it
    image: CachedImage | None = None  # the verified file, when it is uploaded
    info: InstallerInfo | None = None  # the verified installer, once a page was told of it
    batch: Batch | None = None  # several servers at once (the Batch pages)
    disk_run: HostRun | None = None  # the installer's run, installing NixOS onto its disk
    disk_request: DiskRequest = field(default_factory=DiskRequest)  # the System page's choices

    @property
    def target(self) -> Target | None:
        """Where the run connects."""
        return self.run.host.target if self.run is not None else None

    @property
    def facts(self) -> Facts | None:
        """What the probe found."""
        found = self.run.inspection if self.run is not None else None
        return found.facts if found is not None else None

    @property
    def verdicts(self) -> list[Verdict]:
        """What the checks said."""
        found = self.run.inspection if self.run is not None else None
        return found.verdicts if found is not None else []

    @property
    def profile_name(self) -> str:
        """The profile the run keeps up to date."""
        return (self.run.host.profile or "") if self.run is not None else ""

    @property
    def image_kind(self) -> str:
        """``bundle`` or ``tarball``: the checked image's own kind, else the chosen one's."""
        if self.image is not None:
            return self.image.info.kind
        return self.choice.kind if self.choice is not None else "tarball"

    def drop_session(self) -> None:
        """Close the run's connection and forget what it found (any thread may still hold the
        session: close() is safe)."""
        if self.run is not None:
            self.run.close()
        if self.disk_run is not None:
            self.disk_run.close()
        self.run = self.disk_run = None
        self.info = None

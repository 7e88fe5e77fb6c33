"""What the command line's subcommands share: stores, settings, and one builder of requests."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from app.core.catalog import DEFAULT_VARIANT, Catalog, CatalogClient
from app.core.disk.config import KEY_TYPES as KEY_TYPE_NAMES
from app.core.disk.config import NetworkMode, key_parts
from app.core.disk.reach import cache_url
from app.core.disk.run import DiskRequest
from app.core.download import ImageCache
from app.core.errors import ConfigError, UsageError
from app.core.events import CancelToken
from app.core.fleet import SharedImages, targets_of_text
from app.core.kinds import AuthMethod, Transfer
from app.core.paths import AppPaths
from app.core.plan import (
    BUNDLE_VARIANT,
    DEFAULT_STAGING,
    ImageRequest,
    InstallRequest,
    dead_man_choice,
)
from app.core.profiles import Profile, ProfileStore
from app.core.questions import Answers
from app.core.result import InstallerInfo
from app.core.run import Host, RunEnv, RunRequest
from app.core.runlog import RunLog
from app.core.secrets import SecretStore, password_key, sudo_key
from app.core.settings import Settings
from app.core.ssh import Credentials, KnownHosts, Target, load_ssh_config, parse_target

from .report import Reporter


class Context:
    """Paths, settings, stores and the reporter for one invocation."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.paths = AppPaths.resolve(args.home)
        self.paths.ensure()
        self.settings = Settings.from_env(
            self.paths.settings_file,
            api_url=args.api_url,
            download_url=args.download_url,
            allow_http=True if args.allow_http else None,
            connect_timeout=getattr(args, "connect_timeout", None),
            up_timeout=getattr(args, "timeout", None),
            down_timeout=getattr(args, "down_timeout", None),
        )
        self.report = Reporter(args.json)
        self.profiles = ProfileStore(self.paths.profiles_file)
        self.secrets = SecretStore()
        self.cancel = CancelToken()
        known = Path(args.known_hosts) if getattr(args, "known_hosts", None) else None
        self.known_hosts = KnownHosts(known or self.paths.known_hosts)
        self.interactive = sys.stdin.isatty() and not args.json

    def start_log(self, name: str) -> None:
        """Record this run's events in a log file."""
        self.report.log = RunLog(self.paths.logs, self.report.redact, name)

    @property
    def image_cache(self) -> ImageCache:
        """The image cache, where the settings put it."""
        return ImageCache(self.paths.images_dir_for(self.settings.cache_dir))

    def run_env(self, images: SharedImages) -> RunEnv:
        """What every server's run of this invocation shares."""
        return RunEnv(
            settings=self.settings,
            known_hosts=self.known_hosts,
            profiles=self.profiles,
            secrets=self.secrets,
            keys_dir=self.paths.keys_dir,
            images=images,
            accept_new_host_key=bool(getattr(self.args, "accept_new_host_key", False)),
            staging=getattr(self.args, "staging_dir", None) or DEFAULT_STAGING,
            systems_dir=Path(saved).expanduser()
            if (saved := getattr(self.args, "save_config", None))
            else self.paths.config / "systems",
        )

    # -- the image ------------------------------------------------------------------------------

    def image_request(self, arch: str | None = None) -> ImageRequest:
        """--channel/--arch/--variant/--bundle or --image, as one request."""
        a = self.args
        bundle = getattr(a, "bundle", False) and not a.image
        return ImageRequest(
            channel=a.channel,
            arch=a.arch or arch,
            variant=BUNDLE_VARIANT if bundle else (a.variant or DEFAULT_VARIANT),
            source=a.image or "",
        )

    def catalog(self, request: ImageRequest | None = None) -> Catalog | None:
        """The releases list, when the image is a channel's (None for a file or URL)."""
        if request is not None and request.source:
            return None
        catalog = CatalogClient(self.settings, self.paths.catalog_cache).load(
            offline=self.args.offline
        )
        if catalog.note:
            self.report.info(f"Image list: {catalog.note}", level="warn")
        return catalog

    def run_request(self) -> RunRequest:
        """Everything `install` was told about the image and the install."""
        a = self.args
        image = self.image_request()
        # Not given: the choice the profile kept (never "asked for by name" then).
        profile = self.profile() if a.dead_man is None else None
        kept = (profile.dead_man or None) if profile else None
        try:
            minutes, required = dead_man_choice(a.dead_man if a.dead_man is not None else kept)
        except UsageError as exc:
            if a.dead_man is not None or profile is None:
                raise
            raise ConfigError(
                f"The profile {profile.name!r} keeps dead_man = {kept!r}, which is neither "
                "minutes nor off.",
                "The app cannot tell which dead-man switch you chose for this server.",
                "Give --dead-man MINUTES or --dead-man off (the install saves it), or correct "
                "the field in profiles.json.",
            ) from exc
        required = required and a.dead_man is not None
        if profile is not None and kept == "off":
            self.report.info(f"Dead-man switch off, as the profile {profile.name!r} keeps it "
                             "(--dead-man 10 turns it on).")  # fmt: skip
        install = InstallRequest(
            transfer=Transfer(a.transfer),
            installer_port=a.installer_port,
            kexec_extra_flags=a.kexec_extra_flags or "",
            accept_host_keys=tuple(a.accept_host_key or ()),
            dead_man_minutes=minutes,
            dead_man_required=required,
        )
        return RunRequest(image, install, self.catalog(image))

    def disk_request(self) -> RunRequest:
        """Everything `install-nixos` was told about the disk and the installed system."""
        a = self.args
        request = DiskRequest(
            disk=a.disk or "",
            yes_wipe=a.yes_wipe or "",
            swap_mib=_swap_size(a.swap_size),
            hostname=a.hostname or "",
            timezone=a.timezone,
            admin_user=a.admin_user or "",
            keys=tuple(read_key_args(a.authorized_key or [])),
            network=NetworkMode(a.network),
            nixpkgs_url=self.settings.check_url(a.nixpkgs_url, "nixpkgs URL (--nixpkgs-url)")
            if a.nixpkgs_url
            else "",
            nixpkgs_archive=self.settings.check_url(
                (a.nixpkgs_archive or self.settings.nixpkgs_archive).rstrip("/"),
                "nixpkgs archive URL (--nixpkgs-archive)",
            ),
            binary_cache=self.settings.check_url(
                cache_url(a.binary_cache or self.settings.binary_cache),
                "binary cache URL (--binary-cache)",
            ),
        )
        return RunRequest(ImageRequest(), InstallRequest(), disk=request)

    # -- the servers ----------------------------------------------------------------------------

    def hosts(self) -> list[Host]:
        """The servers named: one target (or --profile), several, --targets or --from-profiles."""
        a = self.args
        specs = list(a.target) if isinstance(a.target, list) else [a.target] if a.target else []
        if getattr(a, "targets", None):
            specs += read_targets(a.targets)
        names = list(getattr(a, "from_profiles", None) or [])
        if len(specs) <= 1 and not names and not getattr(a, "targets", None):
            profile = self.profile()
            name = a.save_profile or (profile.name if profile else None)
            given = specs[0] if specs else None
            target = self.target(profile, given)
            remember = bool(a.remember_password) or bool(profile and profile.remember_password)
            return [Host(target.label, target, self.credentials(profile), name, remember)]
        if a.profile or a.save_profile:
            raise UsageError(
                "--profile and --save-profile name one server; this run has several.",
                "Each server of a run on many is saved under its own profile.",
                "Use --from-profiles NAME... for saved servers; new targets are not saved (probe "
                "or install them once with --save-profile to make a profile each).",
            )
        hosts = []
        for name in names:
            profile = self.profiles.get(name)
            remember = bool(a.remember_password) or profile.remember_password
            hosts.append(
                Host(name, self.target(profile), self.credentials(profile), name, remember)
            )
        hosts += [Host(s, self.target(None, s), self.credentials(None)) for s in specs]
        if not hosts:
            raise UsageError(
                f"{a.targets} names no server.",
                "Every line is empty or a comment, so there is nothing to install on.",
                "Put one [user@]host[:port] per line.",
            )
        return hosts

    def profile(self) -> Profile | None:
        """The profile named by --profile, if any."""
        name = getattr(self.args, "profile", None)
        if not name:
            return None
        p = self.profiles.get(name)
        if self.profiles.notice:
            self.report.info(self.profiles.notice, level="warn")
        return p

    def target(self, profile: Profile | None, given: str | None = None) -> Target:
        """Where to connect: the target given, else the profile's, with the ssh options."""
        a = self.args
        spec = given or (profile.host if profile else None)
        if not spec:
            raise UsageError(
                "No server given.",
                "The command needs to know which server to connect to.",
                "Name it as [user@]host[:port] or an ~/.ssh/config alias, or use --profile NAME.",
            )
        identity = list(a.identity or ([profile.key_path] if profile and profile.key_path else []))
        if profile is not None and not given and a.command == "install-nixos" and profile.installer:
            # The installer the app booted and proved: root, with the key it proved it with.
            info = InstallerInfo.from_json(profile.installer, f"profile {profile.name!r}")
            key = [info.identity_file] if info.identity_file else identity
            return parse_target(
                info.host, port=a.port or info.port, user=a.user or info.user,
                identity=list(a.identity or key), jump=a.jump or profile.jump or None,
                config=load_ssh_config(),
            )  # fmt: skip
        return parse_target(
            spec,
            port=a.port or (profile.port if profile and not given else None),
            user=a.user or (profile.user if profile and not given else None),
            identity=identity,
            jump=a.jump or (profile.jump if profile and profile.jump else None),
            config=load_ssh_config(),
        )

    def credentials(self, profile: Profile | None) -> Credentials:
        """The login: --auth, passwords from the environment, or the profile's remembered ones."""
        a = self.args
        password = env_secret(a.password_env, "login password")
        sudo_password = env_secret(a.sudo_password_env, "sudo password")
        if profile is not None and profile.remember_password:
            password = password or self.secrets.get(password_key(profile.name))
            sudo_password = sudo_password or self.secrets.get(sudo_key(profile.name))
        method = AuthMethod(a.auth or (profile.auth if profile else AuthMethod.AUTO))
        self.report.redact.add(password)
        self.report.redact.add(sudo_password)
        return Credentials(method=method, password=password, sudo_password=sudo_password)

    def answers(self, hosts: list[Host]) -> Answers:
        """What the command line answered ahead: --accept-host-key (for every server and each
        of its jump hosts), and --yes, which also covers the warnings shown with it."""
        fps = getattr(self.args, "accept_host_key", None) or []
        keys: list[tuple[str, int, str]] = []
        for h in hosts:
            t: Target | None = h.target
            while t is not None:
                keys += [(t.host, t.port, fp) for fp in fps]
                t = t.jump
        # The confirmation (typed, or --yes) is the go-ahead for the warnings printed with it.
        yes = bool(getattr(self.args, "yes", False))
        return Answers(host_keys=tuple(keys), go_ahead=True, confirmed=yes)


def _swap_size(mib: int) -> int:
    if not 0 <= mib <= 1 << 20:
        raise UsageError(
            f"--swap-size {mib} is not a size in MiB from 0 to 1048576.",
            "It is the swap partition's size; 0 makes none.",
            "Give --swap-size in MiB, e.g. --swap-size 2048.",
        )
    return mib


def read_key_args(values: list[str]) -> list[str]:
    """--authorized-key values: a key line as it is, or a file of key lines ('#' comments)."""
    keys: list[str] = []
    for value in values:
        if value.split(" ", 1)[0] in KEY_TYPE_NAMES or not value.strip():
            keys.append(value)
            continue
        path = Path(value).expanduser()
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(
                f"--authorized-key {value}: not a key line, and the file cannot be read ({exc}).",
                "Each --authorized-key is a public key line or a .pub file.",
                "Give the path of a .pub file, or the key line in quotes.",
            ) from exc
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        keys += lines
    for key in keys:
        key_parts(key)  # ConfigError naming --authorized-key for anything else
    return keys


def env_secret(var: str | None, what: str) -> str | None:
    """A secret from the environment variable the user named (never from the command line)."""
    if not var:
        return None
    if var not in os.environ:
        raise UsageError(
            f"The environment variable {var} (given for the {what}) is not set.",
            "The secret is read from the environment so it never shows in the process list.",
            f"Export {var} before running the command.",
        )
    return os.environ[var]


def read_targets(path: str) -> list[str]:
    """One target per line of ``path`` (``-``: stdin); ``#`` starts a comment."""
    try:
        text = sys.stdin.read(1 << 20) if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"Cannot read the targets file {path}: {exc}.",
            "It lists the servers to install on.",
            "Check the path; it holds one [user@]host[:port] per line.",
        ) from exc
    return targets_of_text(text)

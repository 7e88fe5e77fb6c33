"""The install flow both faces call, in this order: choose the image, fetch it, plan, install."""

# Connecting, inspecting and becoming root come before (ssh.connect, install.run_probe,
# install.establish_privilege with install.known_sudo_password); the faces only collect
# answers into an ImageRequest and an InstallRequest, call these steps and show their events.
# Neither face builds an InstallPlan itself (tests/test_structure.py checks it).

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from app.core.catalog import DEFAULT_VARIANT, Asset, Catalog, environ_arch
from app.core.download import CachedImage, Downloader, ImageCache, local_image
from app.core.errors import WizardError
from app.core.events import CancelToken, EventSink, discard
from app.core.install import DEFAULT_STAGING, Installer, InstallPlan, choose_transfer
from app.core.preflight import evaluate, raise_first_stop
from app.core.probe import Facts
from app.core.settings import Settings
from app.core.ssh import Credentials, KnownHosts, Session, Target
from app.core.workflow import bundle_asset, channel_asset, image_kind, url_asset

BUNDLE_VARIANT = "kexec-bundle"
STILL_LOADING = "The list of releases is still loading."


@dataclass(frozen=True)
class ImageRequest:
    """Which image the user chose: a channel's variant for an arch, or a file or URL."""

    channel: str | None = None  # None: the newest stable
    arch: str | None = None  # None: the server's own
    variant: str = DEFAULT_VARIANT  # or "kexec-bundle" for a legacy release's bundle
    source: str = ""  # a local path or an https URL instead of a channel


@dataclass(frozen=True)
class ImageChoice:
    """The image resolved: a release asset (or URL), or a file on this computer."""

    asset: Asset | None
    meta: dict[str, str] = field(default_factory=dict)  # channel, arch, variant
    local: Path | None = None

    @property
    def kind(self) -> str:
        """``bundle`` for a legacy kexec-bundle, else ``tarball`` (a local file: by content)."""
        return image_kind(self.asset, self.meta)


@dataclass(frozen=True)
class InstallRequest:
    """The install's own choices, the same in both faces."""

    transfer: str = "auto"  # auto | upload | remote
    installer_port: int | None = None
    kexec_extra_flags: str = ""
    key_name: str = "default"  # names the app's generated key (the profile's name)
    accept_host_keys: tuple[str, ...] = ()  # fingerprints accepted ahead (a bundle's new key)


def choose_image(
    request: ImageRequest, facts: Facts | None, settings: Settings, catalog: Catalog | None
) -> ImageChoice:
    """Resolve the request; an image for another arch than the server's is refused here."""
    arch = request.arch or (facts.arch if facts else None) or environ_arch()
    if facts is not None and facts.arch:
        raise_first_stop([v for v in evaluate(facts, arch) if v.check == "arch"])
    source = request.source.strip()
    if source and not source.startswith(("https://", "http://")):
        return ImageChoice(None, {"arch": arch}, Path(source).expanduser())
    if source:
        meta = {"channel": "", "arch": arch, "variant": request.variant}
        return ImageChoice(url_asset(source, settings), meta)
    if catalog is None:
        raise WizardError(STILL_LOADING)
    if request.variant == BUNDLE_VARIANT:
        return ImageChoice(*bundle_asset(catalog, request.channel, arch))
    return ImageChoice(*channel_asset(catalog, request.channel, request.variant, arch))


def transfer_for(request: InstallRequest, facts: Facts, choice: ImageChoice) -> tuple[str, str]:
    """``upload`` or ``remote`` for this image on this server, with the reason in words."""
    return choose_transfer(request.transfer, facts, choice.asset)


def fetch_image(
    choice: ImageChoice,
    cache: ImageCache,
    settings: Settings,
    *,
    emit: EventSink = discard,
    cancel: CancelToken | None = None,
) -> CachedImage:
    """The verified image on this computer: a checked local file, or downloaded and cached."""
    if choice.asset is None:
        assert choice.local is not None
        return local_image(choice.local, cache)
    meta = choice.meta
    return Downloader(settings, cache).fetch(
        choice.asset, emit=emit, cancel=cancel or CancelToken(), kind=choice.kind,
        channel=meta.get("channel", ""), arch=meta.get("arch", ""),
        variant=meta.get("variant", ""),
    )  # fmt: skip


def make_plan(
    target: Target,
    facts: Facts,
    choice: ImageChoice,
    mode: str,
    image: CachedImage | None,
    request: InstallRequest,
) -> InstallPlan:
    """The one place an :class:`InstallPlan` is built."""
    return InstallPlan(
        target=target,
        image=image,
        asset=choice.asset,
        transfer=mode,
        staging_dir=facts.staging.path or DEFAULT_STAGING,
        installer_port=request.installer_port,
        kexec_extra_flags=request.kexec_extra_flags,
        key_name=request.key_name,
        kind=image.info.kind if image is not None else choice.kind,
        accept_host_keys=request.accept_host_keys,
    )


def installer_for(
    plan: InstallPlan,
    session: Session,
    facts: Facts,
    creds: Credentials,
    known_hosts: KnownHosts,
    settings: Settings,
    keys_dir: Path,
    *,
    emit: EventSink = discard,
    cancel: CancelToken | None = None,
) -> Installer:
    """The installer that runs the plan's stages in order (``run()``, then ``wait_for_installer``
    again after an answer or a new address)."""
    return Installer(
        plan, session, facts, creds, known_hosts, settings, keys_dir, emit=emit, cancel=cancel
    )

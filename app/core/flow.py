"""The steps a run calls: inspect, choose and fetch the image, plan, record the profile."""

# The library of steps; app.core.run calls them in order and holds the policy between them.
# Neither face calls them (tests/test_structure.py checks it).

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from app.core.catalog import (
    STILL_LOADING,
    Catalog,
    bundle_asset,
    channel_asset,
    environ_arch,
    url_asset,
)
from app.core.download import CachedImage, Downloader, ImageCache, local_image
from app.core.errors import Cancelled, PreflightStop, WizardError
from app.core.events import CancelToken, EventSink, discard
from app.core.inspect import run_probe
from app.core.kinds import Transfer
from app.core.netpreview import NetPreview, preview
from app.core.plan import (
    BUNDLE_VARIANT,
    DEFAULT_STAGING,
    ImageChoice,
    ImageRequest,
    InstallPlan,
    InstallRequest,
    systemd_takes_units,
)
from app.core.preflight import Level, Verdict, evaluate, raise_first_stop, worst
from app.core.probe import Facts
from app.core.profiles import Profile, ProfileStore, check_name
from app.core.result import InstallerInfo
from app.core.secrets import SecretStore, password_key, sudo_key
from app.core.settings import Settings
from app.core.ssh import (
    Credentials,
    Session,
    Target,
    jump_spec,
)
from app.core.timings import Timings

# ---------------------------------------------------------------------------------------------
# Inspect: the facts in one round trip, the verdicts, the network preview


@dataclass(frozen=True)
class Inspection:
    """What the probe found and what it means for the kexec."""

    facts: Facts
    verdicts: list[Verdict]
    network: NetPreview

    @property
    def level(self) -> Level:
        """The worst verdict."""
        return worst(self.verdicts)

    def raise_first_stop(self) -> None:
        """Raise the first stopping verdict as an error (nothing was changed)."""
        raise_first_stop(self.verdicts)


def inspect(
    session: Session,
    settings: Settings,
    staging: str = DEFAULT_STAGING,
    *,
    emit: EventSink = discard,
    cancel: CancelToken | None = None,
    reach: bool = True,
) -> Inspection:
    """Probe the server (its output proven to be the probe's own) and judge it; ``reach``
    also asks whether it reaches the download server (see ``reach_matters``)."""
    with Timings().measure("probe", emit):
        facts = run_probe(session, settings, staging, cancel, reach=reach)
    return Inspection(facts, evaluate(facts), preview(facts))


def reach_matters(transfer: Transfer, source: str) -> bool:
    """Whether the server reaching the download server can change the plan: not when the
    user chose an upload or a file on this computer (a reachability check would only cost
    the probe its wait). Before the image is chosen (the wizard's Inspect page) it may."""
    return Transfer(transfer) != Transfer.UPLOAD and not is_local_source(source)


def is_local_source(source: str) -> bool:
    """Whether an image source names a file on this computer (not a URL, not empty)."""
    s = source.strip()
    return bool(s) and not s.startswith(("https://", "http://"))


# ---------------------------------------------------------------------------------------------
# Choose and fetch the image


def choose_image(
    request: ImageRequest, facts: Facts | None, settings: Settings, catalog: Catalog | None
) -> ImageChoice:
    """Resolve the request; an image for another arch than the server's, or too big for its
    memory, is refused here."""
    arch = request.arch or (facts.arch if facts else None) or environ_arch()
    choice = _resolve(request, arch, settings, catalog)
    if facts is not None and facts.arch:
        size = choice.asset.size if choice.asset else None
        raise_first_stop(evaluate(facts, arch, size))
    return choice


def _resolve(
    request: ImageRequest, arch: str, settings: Settings, catalog: Catalog | None
) -> ImageChoice:
    source = request.source.strip()
    if is_local_source(source):
        return ImageChoice(None, {"arch": arch}, Path(source).expanduser())
    if source:
        meta = {"channel": "", "arch": arch, "variant": request.variant}
        return ImageChoice(url_asset(source, settings), meta)
    if catalog is None:
        raise WizardError(STILL_LOADING)
    if request.variant == BUNDLE_VARIANT:
        return ImageChoice(*bundle_asset(catalog, request.channel, arch))
    return ImageChoice(*channel_asset(catalog, request.channel, request.variant, arch))


class EarlyCheck:
    """A local image's check (it reads the whole file: seconds for a real image), started
    before the server is even connected so that it runs beside the connection and the
    probe; ``fetch_image`` takes its result when that file is the one chosen."""

    def __init__(self, path: Path, cache: ImageCache) -> None:
        self.path = path.expanduser().absolute()
        self._done = threading.Event()
        self._image: CachedImage | None = None
        self._error: Exception | None = None
        threading.Thread(target=self._run, args=(cache,), name="image-check", daemon=True).start()

    def _run(self, cache: ImageCache) -> None:
        try:
            self._image = local_image(self.path, cache)
        except Exception as exc:  # raised where the flow asks for the image, as before
            self._error = exc
        finally:
            self._done.set()

    def result(self, cancel: CancelToken | None = None) -> CachedImage:
        """The checked image, once the check is done (its error raised here)."""
        while not self._done.wait(0.2):
            if cancel is not None and cancel.cancelled:
                raise Cancelled("Stopped while the image file was being checked.")
        if self._error is not None:
            raise self._error
        assert self._image is not None
        return self._image


def check_early(source: str, cache: ImageCache) -> EarlyCheck | None:
    """Start checking the image now when it is a file on this computer (else None)."""
    return EarlyCheck(Path(source.strip()), cache) if is_local_source(source) else None


def fetch_image(
    choice: ImageChoice,
    cache: ImageCache,
    settings: Settings,
    *,
    emit: EventSink = discard,
    cancel: CancelToken | None = None,
    early: EarlyCheck | None = None,
) -> CachedImage:
    """The verified image on this computer: a checked local file (checked ``early`` when that
    check was started for it), or downloaded and cached.

    A local file whose kernel is for another arch than the server's is refused here, before
    anything is sent (a release's file is checked against its name by the Downloader)."""
    if choice.asset is None:
        assert choice.local is not None
        mine = early is not None and early.path == choice.local.expanduser().absolute()
        image = (
            early.result(cancel) if early is not None and mine else local_image(choice.local, cache)
        )
        arch, found = choice.meta.get("arch", ""), image.info.kernel_arch
        if arch and found and found != arch:
            raise PreflightStop(
                f"Preflight stop: {image.info.name} holds a kernel for {found}; the server is "
                f"{arch}.",
                "kexec cannot start a kernel built for another architecture: the upload "
                "would be wasted and run would fail on the server.",
                f"Choose the {arch} image (nixos-kexec-installer-noninteractive-{arch}-linux"
                ".tar.gz), or leave the image to the app: it picks the server's arch itself.",
            )
        return image
    meta = choice.meta
    return Downloader(settings, cache).fetch(
        choice.asset, emit=emit, cancel=cancel or CancelToken(), kind=choice.kind,
        channel=meta.get("channel", ""), arch=meta.get("arch", ""),
        variant=meta.get("variant", ""),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Plan: the one place an InstallPlan is built


def make_plan(
    target: Target,
    facts: Facts,
    choice: ImageChoice,
    mode: Transfer,
    image: CachedImage | None,
    request: InstallRequest,
) -> InstallPlan:
    """The frozen plan for this server, image and request."""
    return InstallPlan(
        target=target,
        image=image,
        asset=choice.asset,
        transfer=mode,
        installer_port=request.installer_port,
        kexec_extra_flags=request.kexec_extra_flags,
        key_name=request.key_name,
        kind=image.info.kind if image is not None else choice.kind,
        accept_host_keys=request.accept_host_keys,
        dead_man_minutes=request.dead_man_minutes,
        dead_man_required=request.dead_man_required,
        dead_man_units=systemd_takes_units(choice.meta.get("channel", "")),
    )


# ---------------------------------------------------------------------------------------------
# Record the server in its profile


def already_installer(session: Session, facts: Facts) -> InstallerInfo:
    """The installer's details when the server inspected already runs it (nothing to install)."""
    ids = session.target.identity_files
    return InstallerInfo(
        host=session.target.host,
        port=session.target.port,
        user=session.target.user,
        host_key=session.host_key_line,
        fingerprint=session.host_key_fingerprint,
        boot_id=facts.boot_id,
        hostname=facts.hostname,
        os_release=facts.os_release,
        identity_file=ids[0] if ids else None,
    )


def _old_root(facts: Facts | None, existing: Profile | None) -> dict[str, Any]:
    """The old system's root disk as last seen on it: a probe of the old system replaces it,
    the installer's (whose / is RAM) keeps it."""
    if facts is not None and not facts.is_installer and facts.old_root is not None:
        return facts.old_root.to_json()
    return existing.old_root if existing else {}


def record(
    store: ProfileStore,
    secrets: SecretStore,
    name: str,
    *,
    target: Target,
    creds: Credentials,
    host_key: str,
    facts: Facts | None,
    image: dict[str, str] | None = None,
    installer: InstallerInfo | None = None,
    state: str | None = None,
    remember: bool = False,
    dead_man: str | None = None,
    system: str | None = None,
    keep_login: bool = False,
) -> tuple[Profile, str | None]:
    """Save (or update) a profile; secrets go to the keyring only. Returns a warning, if any.
    ``keep_login``: the run logged in somewhere else for now (the installer, to install onto
    its disk), so an existing profile keeps how the server is reached."""
    name = check_name(name)
    existing = store.load().get(name)
    remember = remember or bool(existing and existing.remember_password)
    is_installer = installer is not None or bool(facts and facts.is_installer)
    profile = Profile(
        name=name,
        host=target.alias or target.host,
        port=target.port,
        user=target.user,
        jump=jump_spec(target),
        auth=creds.method,
        key_path=target.identity_files[0] if target.identity_files else "",
        host_key=host_key,
        state=state or ("installer" if is_installer else "original"),
        facts=facts.summary() if facts else (existing.facts if existing else {}),
        image=image or (existing.image if existing else {}),
        installer=installer.to_json() if installer else (existing.installer if existing else {}),
        remember_password=remember,
        dead_man=dead_man if dead_man is not None else (existing.dead_man if existing else ""),
        old_root=_old_root(facts, existing),
        system=system if system is not None else (existing.system if existing else ""),
    ).touched()
    if keep_login and existing is not None:
        profile = replace(
            profile, host=existing.host, port=existing.port, user=existing.user,
            jump=existing.jump, auth=existing.auth, key_path=existing.key_path,
            host_key=existing.host_key,
        )  # fmt: skip
    store.put(profile)
    warning = None
    if remember:
        stored = True
        if creds.password:
            stored = secrets.set(password_key(name), creds.password) and stored
        if creds.sudo_password:
            stored = secrets.set(sudo_key(name), creds.sudo_password) and stored
        if not stored and secrets.available:
            warning = (
                f"The password was not remembered: {secrets.where()} refused it (it may be "
                "locked), so you will be asked each time."
            )
        elif not stored:
            warning = f"The password was not remembered: {secrets.where()}."
    return profile, warning

"""What the user chose, typed (the requests), and the frozen plan the engine runs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core.catalog import BUNDLE_RE, DEFAULT_VARIANT, Asset
from app.core.download import CachedImage
from app.core.errors import UsageError
from app.core.imagecheck import image_kind
from app.core.kinds import ImageKind, Transfer
from app.core.ssh import Target, jump_spec

DEFAULT_STAGING = "~/nixos-kexec-wizard"
BUNDLE_VARIANT = "kexec-bundle"
KEXEC_FLAGS_RE = re.compile(r"^[A-Za-z0-9 ._=,:/+-]*$")
DEFAULT_DEAD_MAN_MINUTES = 10.0  # the dead-man switch's deadline unless told otherwise
DEAD_MAN_MIN, DEAD_MAN_MAX = 1.0, 240.0  # the deadlines allowed, in minutes


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
    def kind(self) -> ImageKind:
        """A legacy kexec-bundle (a local file: by its content), else the kexec tarball."""
        if self.local is not None:
            bundle = image_kind(self.local) == ImageKind.BUNDLE
        else:
            named = self.asset is not None and BUNDLE_RE.match(self.asset.name)
            bundle = self.meta.get("variant") == BUNDLE_VARIANT or bool(named)
        return ImageKind.BUNDLE if bundle else ImageKind.TARBALL


@dataclass(frozen=True)
class InstallRequest:
    """The install's own choices, the same in both faces."""

    transfer: Transfer = Transfer.AUTO
    installer_port: int | None = None
    kexec_extra_flags: str = ""
    key_name: str = "default"  # names the app's generated key (the profile's name)
    accept_host_keys: tuple[str, ...] = ()  # fingerprints accepted ahead (a bundle's new key)
    dead_man_minutes: float | None = DEFAULT_DEAD_MAN_MINUTES  # None: the switch is off
    dead_man_required: bool = False  # asked for by name: no kexec without it


@dataclass(frozen=True)
class InstallPlan:
    """Everything the user chose; the engine reads nothing else."""

    target: Target
    image: CachedImage | None = None  # the tarball on this computer (needed to upload)
    asset: Asset | None = None  # the release asset (needed for the server to download)
    transfer: Transfer = Transfer.UPLOAD  # resolved: upload or remote
    installer_port: int | None = None
    kexec_extra_flags: str = ""
    key_name: str = "default"  # names the generated key, usually the profile name
    kind: ImageKind = ImageKind.TARBALL  # or a legacy self-extracting kexec-bundle
    # Host key fingerprints the user accepted ahead (--accept-host-key), for a bundle's system.
    accept_host_keys: tuple[str, ...] = ()
    # The dead-man switch: minutes from the installer's boot (None: off), and whether the
    # image's systemd takes units from the kernel command line (else a panic restart only).
    dead_man_minutes: float | None = None
    dead_man_units: bool = True
    dead_man_required: bool = False  # the user asked for it: stop rather than go without

    def __post_init__(self) -> None:
        object.__setattr__(self, "transfer", Transfer(self.transfer))
        object.__setattr__(self, "kind", ImageKind(self.kind))
        check_kexec_flags(self.kexec_extra_flags)

    @property
    def bundle(self) -> bool:
        """True for a legacy kexec-bundle, which is executed instead of unpacked."""
        return self.kind == ImageKind.BUNDLE

    def summary(self) -> dict[str, Any]:
        """What the plan will do, in plain values (the JSON ``plan`` event; equal plans match)."""
        return {
            "target": self.target.label,
            "jump": jump_spec(self.target),
            "identity_files": list(self.target.identity_files),
            "file": self.file_name,
            "sha256": self.sha256,
            "url": self.asset.url if self.asset else None,
            "local_image": str(self.image.path) if self.image else None,
            "transfer": self.transfer,
            "installer_port": self.installer_port,
            "kexec_extra_flags": self.kexec_extra_flags,
            "key_name": self.key_name,
            "kind": self.kind,
            "accept_host_keys": list(self.accept_host_keys),
            "dead_man_minutes": None if self.bundle else self.dead_man_minutes,
        }

    @property
    def sha256(self) -> str | None:
        """The checksum the file on the server must have, if one is known."""
        if self.image is not None:
            return self.image.info.sha256
        return self.asset.digest if self.asset else None

    @property
    def file_name(self) -> str:
        """The tarball's name on the server."""
        if self.asset is not None:
            return self.asset.name
        if self.image is not None:
            return self.image.info.name
        return "nixos-kexec-installer.tar.gz"


def check_kexec_flags(flags: str) -> str:
    """``flags`` if they look like kexec options; upstream's ``run`` pastes them unquoted
    into the kexec command it runs as root, so a quote, ``;``, ``$`` or glob is refused."""
    if not KEXEC_FLAGS_RE.match(flags) or (flags.strip() and not flags.strip().startswith("-")):
        raise UsageError(
            f"{flags!r} does not look like kexec options.",
            "kexec/run inserts them unquoted into the command it runs as root, so only "
            "letters, digits, spaces and - _ = . , : / + are allowed, starting with '-'.",
            "Give plain kexec flags, for example -c or --no-sync.",
        )
    return flags


def systemd_takes_units(channel: str) -> bool:
    """Whether a channel's installer has systemd 256 or later (NixOS 24.11 on), which reads
    units from the kernel command line; an unnamed or unstable channel is taken to."""
    m = re.search(r"(\d{2})\.(\d{2})", channel)
    return m is None or (int(m.group(1)), int(m.group(2))) >= (24, 11)


def dead_man_choice(value: str | None) -> tuple[float | None, bool]:
    """``--dead-man``: (minutes or None for off, whether it was asked for by name)."""
    if value is None:
        return DEFAULT_DEAD_MAN_MINUTES, False
    if value.strip().lower() == "off":
        return None, False
    try:
        minutes = float(value)
    except ValueError:
        minutes = -1.0
    if not DEAD_MAN_MIN <= minutes <= DEAD_MAN_MAX:
        raise UsageError(
            f"--dead-man {value!r} is neither a number of minutes from {DEAD_MAN_MIN:g} to "
            f"{DEAD_MAN_MAX:g} nor off.",
            "It is how long after the installer's boot the server waits for the app before "
            "it restarts into its old system.",
            f"Give --dead-man {DEFAULT_DEAD_MAN_MINUTES:g} (the default, fits a slow boot), "
            "another number of minutes, or --dead-man off.",
        )
    return minutes, True

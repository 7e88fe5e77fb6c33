"""Settings that tests and mirrors change: URLs of the releases API and downloads, timeouts."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from app.core.errors import ConfigError
from app.core.fsutil import atomic_write_text

DEFAULT_API_URL = "https://api.github.com/repos/nix-community/nixos-images"
DEFAULT_DOWNLOAD_URL = "https://github.com/nix-community/nixos-images/releases/download"

# Where the installed system comes from: nixos-install's binary cache, and the folder of nixpkgs
# tarballs by commit (GitHub's archive), both asked for by the server, never by this computer.
DEFAULT_BINARY_CACHE = "https://cache.nixos.org"
DEFAULT_NIXPKGS_ARCHIVE = "https://github.com/NixOS/nixpkgs/archive"

API_URL_ENV = "NIXOS_KEXEC_WIZARD_API_URL"
BINARY_CACHE_ENV = "NIXOS_KEXEC_WIZARD_BINARY_CACHE"
NIXPKGS_ARCHIVE_ENV = "NIXOS_KEXEC_WIZARD_NIXPKGS_ARCHIVE"
DOWNLOAD_URL_ENV = "NIXOS_KEXEC_WIZARD_DOWNLOAD_URL"
ALLOW_HTTP_ENV = "NIXOS_KEXEC_WIZARD_ALLOW_HTTP"


@dataclass(frozen=True)
class Settings:
    """URLs and deadlines; every wait in the engine takes its deadline from here."""

    api_url: str = DEFAULT_API_URL
    download_url: str = DEFAULT_DOWNLOAD_URL
    # Plain http only for a local test server or a mirror the user named explicitly.
    allow_http: bool = False
    connect_timeout: float = 10.0
    command_timeout: float = 60.0
    http_timeout: float = 30.0
    run_timeout: float = 300.0
    down_timeout: float = 60.0
    up_timeout: float = 300.0
    poll_interval: float = 0.5
    catalog_max_age: float = 600.0
    cache_dir: str = ""  # "" = the platform's cache folder
    binary_cache: str = DEFAULT_BINARY_CACHE
    nixpkgs_archive: str = DEFAULT_NIXPKGS_ARCHIVE

    # Settings a person may change in the settings dialog (and settings.json).
    USER_KEYS = (
        "api_url",
        "download_url",
        "allow_http",
        "cache_dir",
        "connect_timeout",
        "up_timeout",
    )

    @classmethod
    def from_env(cls, file: Path | None = None, **overrides: object) -> Settings:
        """Defaults, then ``file`` (settings.json), then environment variables, then overrides."""
        s = cls(**load_user_settings(file)) if file is not None else cls()
        env: dict[str, Any] = {}
        if API_URL_ENV in os.environ:
            env["api_url"] = os.environ[API_URL_ENV]
        if DOWNLOAD_URL_ENV in os.environ:
            env["download_url"] = os.environ[DOWNLOAD_URL_ENV]
        if BINARY_CACHE_ENV in os.environ:
            env["binary_cache"] = os.environ[BINARY_CACHE_ENV]
        if NIXPKGS_ARCHIVE_ENV in os.environ:
            env["nixpkgs_archive"] = os.environ[NIXPKGS_ARCHIVE_ENV]
        if ALLOW_HTTP_ENV in os.environ:
            env["allow_http"] = os.environ[ALLOW_HTTP_ENV] not in ("", "0", "false", "no")
        s = replace(s, **env)
        given = {k: v for k, v in overrides.items() if v is not None}
        s = replace(s, **given)  # type: ignore[arg-type]
        s.check_url(s.api_url, "releases API URL")
        s.check_url(s.download_url, "download URL")
        s.check_url(s.binary_cache, "binary cache URL")
        s.check_url(s.nixpkgs_archive, "nixpkgs archive URL")
        return s

    def check_url(self, url: str, what: str) -> str:
        """Refuse anything but https (or http when explicitly allowed)."""
        parts = urlsplit(url)
        if parts.scheme == "https" and parts.netloc:
            return url
        if parts.scheme == "http" and parts.netloc and self.allow_http:
            return url
        if parts.scheme == "http":
            raise ConfigError(
                f"The {what} {url!r} uses plain http.",
                "Without TLS anyone on the path could swap the image you boot.",
                f"Use https, or for a local mirror or test server set {ALLOW_HTTP_ENV}=1 "
                "(or pass --allow-http).",
            )
        raise ConfigError(
            f"The {what} {url!r} is not a web address.",
            "The app only downloads over https.",
            "Give a URL that starts with https://.",
        )


def load_user_settings(path: Path | None) -> dict[str, Any]:
    """The user's saved settings (unknown keys and wrong types are ignored)."""
    if path is None:
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    types = {f.name: f.type for f in fields(Settings)}
    out: dict[str, Any] = {}
    for key in Settings.USER_KEYS:
        value = raw.get(key)
        kind = types[key]
        if kind == "bool" and isinstance(value, bool):
            out[key] = value
        elif kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
            if value > 0:
                out[key] = float(value)
        elif kind == "str" and isinstance(value, str):
            out[key] = value
    return out


def save_user_settings(path: Path, settings: Settings) -> None:
    """Write the user-changeable settings to ``path`` (atomically)."""
    data = {k: v for k, v in asdict(settings).items() if k in Settings.USER_KEYS}
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")

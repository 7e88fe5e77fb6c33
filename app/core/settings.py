"""Settings that tests and mirrors change: URLs of the releases API and downloads, timeouts."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from app.core.errors import ConfigError

DEFAULT_API_URL = "https://api.github.com/repos/nix-community/nixos-images"
DEFAULT_DOWNLOAD_URL = "https://github.com/nix-community/nixos-images/releases/download"

API_URL_ENV = "NIXOS_KEXEC_WIZARD_API_URL"
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

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Defaults, then environment variables, then explicit overrides (None ignored)."""
        s = cls(
            api_url=os.environ.get(API_URL_ENV, DEFAULT_API_URL),
            download_url=os.environ.get(DOWNLOAD_URL_ENV, DEFAULT_DOWNLOAD_URL),
            allow_http=os.environ.get(ALLOW_HTTP_ENV, "") not in ("", "0", "false", "no"),
        )
        given = {k: v for k, v in overrides.items() if v is not None}
        s = replace(s, **given)  # type: ignore[arg-type]
        s.check_url(s.api_url, "releases API URL")
        s.check_url(s.download_url, "download URL")
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

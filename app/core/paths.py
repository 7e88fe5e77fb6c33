"""Where the app keeps its files: platformdirs, overridden by ``--home`` or an env variable."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from app import APP_NAME

HOME_ENV = "NIXOS_KEXEC_WIZARD_HOME"


@dataclass(frozen=True)
class AppPaths:
    """The app's directories: config (profiles, keys, known_hosts), cache (images), logs."""

    config: Path
    cache: Path
    logs: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike[str] | None = None) -> AppPaths:
        """``home`` (or $NIXOS_KEXEC_WIZARD_HOME) puts everything under one folder."""
        root = home or os.environ.get(HOME_ENV)
        if root:
            base = Path(root).expanduser().absolute()
            return cls(config=base / "config", cache=base / "cache", logs=base / "logs")
        return cls(
            config=Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)),
            cache=Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False)),
            logs=Path(platformdirs.user_log_dir(APP_NAME, appauthor=False)),
        )

    @property
    def profiles_file(self) -> Path:
        """The one versioned file holding every host profile."""
        return self.config / "profiles.json"

    @property
    def settings_file(self) -> Path:
        """The user's settings (URLs, cache folder, timeouts)."""
        return self.config / "settings.json"

    def images_dir_for(self, cache_dir: str) -> Path:
        """The image cache, in ``cache_dir`` when the user chose one."""
        return Path(cache_dir).expanduser() / "images" if cache_dir else self.images_dir

    @property
    def known_hosts(self) -> Path:
        """The app's own known_hosts (the user's ~/.ssh/known_hosts is read too)."""
        return self.config / "known_hosts"

    @property
    def keys_dir(self) -> Path:
        """Per-profile SSH keys the app generated."""
        return self.config / "keys"

    @property
    def images_dir(self) -> Path:
        """The content-addressed image cache."""
        return self.cache / "images"

    @property
    def netboot_dir(self) -> Path:
        """Kernels and initrds unpacked from kexec tarballs for netboot."""
        return self.cache / "netboot"

    @property
    def catalog_cache(self) -> Path:
        """The last releases-API answer."""
        return self.cache / "releases.json"

    def ensure(self) -> None:
        """Create the directories, private to the user."""
        for d in (self.config, self.cache, self.logs):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)

"""Per-profile ed25519 keys the app generates when the user's own key would not be carried."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from app.core.errors import ConfigError
from app.core.fsutil import atomic_write_bytes
from app.core.lazy import LazyModule

if TYPE_CHECKING:
    import paramiko
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
else:
    paramiko = LazyModule("paramiko")
    serialization = LazyModule("cryptography.hazmat.primitives.serialization")
    ed25519 = LazyModule("cryptography.hazmat.primitives.asymmetric.ed25519")


def slug(name: str) -> str:
    """A file-name-safe form of a profile or host name."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return s[:64] or "default"


def key_path(keys_dir: Path, name: str) -> Path:
    """Where the generated key for ``name`` lives."""
    return keys_dir / f"{slug(name)}_ed25519"


def load_or_create(path: Path, comment: str) -> tuple[paramiko.PKey, str]:
    """The key at ``path`` (created, mode 0600, if missing) and its ``authorized_keys`` line."""
    if not path.exists():
        priv = ed25519.Ed25519PrivateKey.generate()
        pem = priv.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        pub = priv.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:  # several servers (or two runs) may make the same key at once: the first wins
            atomic_write_bytes(path, pem, mode=0o600, create=True)
        except FileExistsError:
            pass
        else:
            atomic_write_bytes(
                path.with_name(path.name + ".pub"), pub + f" {comment}\n".encode(), 0o644
            )
    try:
        key = paramiko.Ed25519Key.from_private_key_file(str(path))
    except (paramiko.SSHException, ValueError, OSError) as exc:
        raise ConfigError(
            f"The app's key file {path} cannot be read ({exc or type(exc).__name__}).",
            "It is the key an installer booted by this app accepts; the app will not overwrite it.",
            "Restore it from a backup, or move it aside so the app makes a new one (an "
            "installer already running with the old key will not accept the new one).",
        ) from exc
    os.chmod(path, 0o600)
    return key, f"{key.get_name()} {key.get_base64()} {comment}"

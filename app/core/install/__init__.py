"""The install: the Installer that boots the NixOS installer on one connected, probed server."""

from __future__ import annotations

from app.core.install.installer import Installer

__all__ = ["Installer"]

"""The flow's fixed words as enums: transfer mode, server hashing, privilege, login, image kind."""

# StrEnums: each member is its own string, so JSON lines, profiles and the CLI's arguments
# read and write exactly the words they always had.

from __future__ import annotations

from enum import StrEnum


class Transfer(StrEnum):
    """How the image reaches the server."""

    AUTO = "auto"  # the engine picks (the server downloads when it can check the image)
    UPLOAD = "upload"  # this computer sends it
    REMOTE = "remote"  # the server downloads it itself


class ServerHash(StrEnum):
    """Whether and when the server hashes an upload (it then needs no separate read of it)."""

    NONE = "none"  # the server has no tool for it: the checksum stage decides
    WHILE_RECEIVING = "while-receiving"  # beside the transfer: overlaps it where CPUs are spare
    AFTER_STORING = "after-storing"  # in the same command, once stored: cheaper on one CPU
    # Unpacked into a private folder as it arrives, the same bytes hashed beside it (two or
    # more CPUs): nothing of the unpack is used until the digest matched.
    WHILE_UNPACKING = "while-unpacking"


class PrivilegeKind(StrEnum):
    """How the login becomes root on the server, as the probe found."""

    ROOT = "root"
    SUDO = "sudo"  # without a password
    SUDO_PASSWORD = "sudo-password"
    DOAS = "doas"  # without a password
    NONE = "none"


class AuthMethod(StrEnum):
    """Which ways of logging in are tried."""

    AUTO = "auto"  # agent and key files, then a password
    AGENT = "agent"
    KEY = "key"
    PASSWORD = "password"


class ImageKind(StrEnum):
    """What an image is."""

    TARBALL = "tarball"  # the kexec installer tarball (unpacked, then kexec/run)
    BUNDLE = "bundle"  # a legacy self-extracting kexec-bundle (executed)
    FILE = "file"  # a netboot part (kernel, initrd, script)
    UNKNOWN = "unknown"  # a local file that looks like neither

"""The content checks of an image: a tarball's layout, a bundle's header, a kernel's arch."""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from app.core.catalog import BUNDLE_DROPPED
from app.core.errors import IntegrityError
from app.core.kinds import ImageKind

REQUIRED_MEMBERS = ("kexec/run", "kexec/bzImage", "kexec/initrd", "kexec/kexec", "kexec/ip")
TAR_BUFFER = 1024 * 1024  # the gzip stream is read in steps this large (see check_tarball)
GZIP_MAGIC = b"\x1f\x8b"
BUNDLE_HINT = b"kexec"  # every self-extracting kexec-bundle names the tool it runs
BUNDLE_MAX_HEADER = 64 * 1024
KERNEL_HEAD = 8192  # enough for a bzImage's setup header and an EFI stub's PE header
PE_MACHINES = {0x8664: "x86_64", 0xAA64: "aarch64"}
# The characters a member's name, link target and owner may hold: tar -tv prints them as they
# are (GNU tar escapes others, busybox prints them raw), and without spaces its listing has one
# reading only, so the check on the server's listing sees every member as the local one does.
PLAIN = re.compile(r"[A-Za-z0-9._+@,:=%~/-]*")


def kernel_arch(head: bytes) -> str:
    """The arch a kernel image is built for, from its first bytes; "" when they do not say.

    Both x86_64's bzImage and arm64's Image carry an EFI stub, whose PE header names the
    machine; without one, a bzImage has "HdrS" at 0x202 and an arm64 Image "ARM\\x64" at 0x38.
    """
    if head[:2] == b"MZ" and len(head) >= 0x40:
        pe = int.from_bytes(head[0x3C:0x40], "little")
        if head[pe : pe + 4] == b"PE\0\0" and len(head) >= pe + 6:
            machine = PE_MACHINES.get(int.from_bytes(head[pe + 4 : pe + 6], "little"))
            if machine:
                return machine
    if head[0x202:0x206] == b"HdrS":
        return "x86_64"
    if head[0x38:0x3C] == b"ARM\x64":
        return "aarch64"
    return ""


def image_kind(path: Path) -> ImageKind:
    """What a file the user picked looks like: a tarball, a bundle, or unknown."""
    try:
        with path.open("rb") as f:
            head = f.read(BUNDLE_MAX_HEADER)
    except OSError:
        return ImageKind.UNKNOWN
    if head.startswith(GZIP_MAGIC):
        return ImageKind.TARBALL
    if head.startswith(b"#!") and BUNDLE_HINT in head:
        return ImageKind.BUNDLE
    return ImageKind.UNKNOWN


def check_bundle(path: Path) -> None:
    """Refuse a file that is not a self-extracting kexec-bundle (a shell script naming kexec)."""
    if image_kind(path) != "bundle":
        raise IntegrityError(
            f"{path.name} is not a kexec-bundle: it does not start as a shell script that runs "
            "kexec.",
            "A legacy kexec-bundle is a self-extracting script; anything else would be run as "
            "root on the server without being what you chose.",
            "Choose the kexec-bundle file of a release frozen before 2023, or a kexec tarball.",
        )


def bundle_note() -> str:
    """Why a kexec-bundle is the second choice, in words for the user."""
    return (
        f"This is the legacy kexec-bundle, which nixos-images dropped in {BUNDLE_DROPPED} in "
        "favour of the kexec tarball. It boots NixOS by kexec too, but it cannot carry the "
        "server's SSH host keys or network settings: the booted system has a new host key, "
        "takes its address by DHCP, and only accepts the SSH keys the bundle was built with."
    )


class TarLayout:
    """Checks a tarball's members, one at a time in archive order, against upstream's layout.

    Every member must live under ``kexec/``, with no absolute path, no ``..``, no device, no
    hard link, only plain characters in its name, link target and owner (``PLAIN``), no
    member beneath a link, and no link that leads out of the folder once the links before it
    are followed (``kexec/s -> .`` then ``kexec/up -> s/..`` is refused); the five files
    ``run``, ``bzImage``, ``initrd``, ``kexec`` and ``ip`` must be present as regular files.
    The same check serves a file here (tarfile) and one on the server (``tar -tv``'s list).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: set[str] = set()
        self.links: dict[tuple[str, ...], str] = {}
        self.kernel_arch = ""  # from kexec/bzImage's header, when the caller could read it

    def _bad(self, reason: str) -> IntegrityError:
        return _bad_tar_named(self.name, reason)

    def add(self, name: str, kind: str, linkname: str = "", owner: str = "") -> None:
        """One member: ``kind`` is file, dir, symlink, hardlink (refused) or other (device,
        pipe...); ``owner`` its ``user/group`` names, as the listing shows them."""
        for what, text in (("name", name), ("link target", linkname), ("owner", owner)):
            if not PLAIN.fullmatch(text):
                raise self._bad(
                    f"a member's {what} holds a space or another character a listing could "
                    f"misread ({text!r})"
                )
        pure = PurePosixPath(name)
        if name.startswith("/") or pure.is_absolute():
            raise self._bad(f"it contains an absolute path ({name!r})")
        if ".." in pure.parts:
            raise self._bad(f"it contains a path with '..' ({name!r})")
        parts = tuple(p for p in pure.parts if p != ".")
        if not parts or parts[0] != "kexec":
            raise self._bad(f"it contains {name!r}, outside the kexec/ folder")
        if kind == "other":
            raise self._bad(f"it contains a device or pipe ({name!r})")
        if any(parts[:i] in self.links for i in range(1, len(parts))):
            raise self._bad(f"{name!r} lies beneath a link, which tar would follow")
        if kind in ("symlink", "hardlink"):
            if linkname.startswith("/"):
                raise self._bad(f"{name!r} links outside the kexec/ folder")
            base = list(parts[:-1]) if kind == "symlink" else []
            resolved = self._resolve([*base, *linkname.split("/")])
            if resolved is None or resolved[:1] != ["kexec"]:
                raise self._bad(f"{name!r} links outside the kexec/ folder")
            if kind == "hardlink":
                # Busybox lists one as a file "name -> target": a listing could not tell it
                # from a file named so, and the upstream tarball has none.
                raise self._bad(f"it contains a hard link ({name!r})")
            self.links[parts] = linkname
            return
        else:
            self.links.pop(parts, None)
        if kind == "file":
            self.seen.add("/".join(parts))

    def _resolve(self, parts: list[str], depth: int = 0) -> list[str] | None:
        """Where a path leads once the links seen so far are followed; None if it escapes."""
        out: list[str] = []
        for part in parts:
            if part in ("", "."):
                continue
            if part == "..":
                if not out:
                    return None
                out.pop()
                continue
            out.append(part)
            target = self.links.get(tuple(out))
            if target is not None:
                if depth > 16 or target.startswith("/"):
                    return None
                followed = self._resolve([*out[:-1], *target.split("/")], depth + 1)
                if followed is None:
                    return None
                out = followed
        return out

    def finish(self) -> None:
        """Refuse the tarball if a required file was missing."""
        missing = [m for m in REQUIRED_MEMBERS if m not in self.seen]
        if missing:
            raise self._bad("it lacks " + ", ".join(missing))


def _member_kind(m: tarfile.TarInfo) -> str:
    if m.issym():
        return "symlink"
    if m.islnk():
        return "hardlink"
    if m.isdir():
        return "dir"
    if m.isfile():
        return "file"
    return "other"


def check_tarball(path: Path) -> str:
    """Refuse a tarball that is not exactly the upstream layout (see :class:`TarLayout`);
    return the arch its kernel's header names ("" when it names none)."""
    layout = TarLayout(path.name)
    try:
        # Stream mode with a large buffer: random access into a gzip file reads it in 8 KiB
        # steps, which makes this check 2.5x slower on a 1 GiB tarball.
        with tarfile.open(path, mode="r|*", bufsize=TAR_BUFFER) as tar:
            for m in tar:
                layout.add(m.name, _member_kind(m), m.linkname, f"{m.uname}/{m.gname}")
                if m.isfile() and PurePosixPath(m.name).parts[-2:] == ("kexec", "bzImage"):
                    f = tar.extractfile(m)
                    layout.kernel_arch = kernel_arch(f.read(KERNEL_HEAD)) if f else ""
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise IntegrityError(
            f"{path.name} is not a readable tar.gz archive ({exc}).",
            "A damaged or truncated tarball would fail on the server.",
            "Delete it and download it again, or choose another file.",
        ) from exc
    layout.finish()
    return layout.kernel_arch


TAR_KINDS = {"-": "file", "d": "dir", "l": "symlink", "h": "hardlink"}


def check_tar_listing(name: str, listing: str) -> None:
    """The same check on ``LC_ALL=C tar -tvzf`` output (GNU tar or busybox) from the server.

    Each line is ``mode owner size date time member``, then `` -> target`` for a link
    (busybox shows a hard link so, as a file) or `` link to target`` for GNU tar's hard link
    (both refused, as the local check refuses every hard link).
    Names, targets and owners hold no spaces (see ``PLAIN``), so a line that splits any other
    way is refused, never guessed at: both checks judge the same members."""
    layout = TarLayout(name)
    for line in listing.splitlines():
        if not line.strip():
            continue
        fields = line.split(None, 5)
        if len(fields) < 6:
            raise _bad_tar_named(name, f"the server's tar listed a line it cannot read: {line!r}")
        kind = TAR_KINDS.get(fields[0][:1], "other")
        words = fields[5].split(" ")
        linkname = ""
        if kind == "symlink" or (kind == "file" and "->" in words):
            shape = len(words) == 3 and words[1] == "->"
            kind = "symlink" if kind == "symlink" else "hardlink"
            member, linkname = words[0], words[-1]
        elif kind == "hardlink":
            shape = len(words) == 4 and words[1:3] == ["link", "to"]
            member, linkname = words[0], words[-1]
        else:
            shape, member = len(words) == 1, words[0]
        if not shape:
            raise _bad_tar_named(
                name,
                f"a member's name or link holds a space, which the listing cannot tell "
                f"apart ({fields[5]!r})",
            )
        layout.add(member, kind, linkname, fields[1])
    layout.finish()


def _bad_tar_named(name: str, reason: str) -> IntegrityError:
    return IntegrityError(
        f"{name} is not a kexec installer tarball: {reason}.",
        "Unpacking it on the server could overwrite files outside the staging folder, or "
        "fail half-way through the install.",
        "Use an image from the nixos-images releases, or rebuild your custom image.",
    )


# Each returns the arch the image's kernel names ("" = it names none, None = not read: a
# bundle keeps its kernel inside its own archive, a netboot file has no tar around it).
CONTENT_CHECKS: dict[str, Callable[[Path], str | None]] = {
    "tarball": check_tarball,
    "bundle": check_bundle,
    "file": lambda _path: None,
}


def check_release_arch(name: str, arch: str, found: str | None) -> None:
    """Refuse a release's image whose kernel is for another arch than its name says."""
    if arch and found and found != arch:
        raise IntegrityError(
            f"{name} is published as the {arch} image, but its kernel is built for {found}.",
            "The release (or a mirror on the way) serves the wrong file: kexec on an "
            f"{arch} server would refuse it, after the whole upload.",
            "Report it to whoever publishes the release; pick another channel meanwhile.",
        )


def check_picked(path: Path) -> tuple[ImageKind, str | None]:
    """A file the user picked, checked as the bundle it looks like or else as a tarball;
    its kind and the arch its kernel names (as :data:`CONTENT_CHECKS` tell it)."""
    kind = ImageKind.BUNDLE if image_kind(path) == ImageKind.BUNDLE else ImageKind.TARBALL
    return kind, CONTENT_CHECKS[kind](path)

"""Resumable, verified, content-addressed downloads of release images, and their content checks."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import queue
import re
import tarfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

from app import __version__
from app.core.catalog import BUNDLE_DROPPED, Asset
from app.core.errors import Cancelled, DownloadError, IntegrityError
from app.core.events import CancelToken, EventSink, LogEvent, ProgressMeter, discard
from app.core.fsutil import atomic_write_text
from app.core.kinds import ImageKind
from app.core.lazy import LazyModule
from app.core.settings import Settings

if TYPE_CHECKING:
    import requests
    import urllib3.exceptions as urllib3_exceptions
else:
    requests = LazyModule("requests")
    urllib3_exceptions = LazyModule("urllib3.exceptions")

CHUNK = 1024 * 1024
# Network reads: a cut connection loses the chunk being read, so keep them small.
NET_CHUNK = 1024 * 1024
REQUIRED_MEMBERS = ("kexec/run", "kexec/bzImage", "kexec/initrd", "kexec/kexec", "kexec/ip")
INDEX_VERSION = 1


@dataclass(frozen=True)
class ImageInfo:
    """What the cache index records about one image."""

    sha256: str
    size: int
    name: str
    url: str = ""
    channel: str = ""
    arch: str = ""
    variant: str = ""
    updated_at: str = ""
    digest: str = ""  # the API digest it was checked against ("" = none was available)
    verification: str = "digest"  # "digest", "size", "none" or "local"
    tarball_checked: bool = False  # its content check passed (the tar layout, for a tarball)
    kind: ImageKind = ImageKind.TARBALL
    # The arch its kernel is built for, read from the kernel's own header ("" = not told by
    # the header; None = not looked at yet, as in an index written before this was read).
    kernel_arch: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ImageKind(self.kind))  # the index holds the word


@dataclass(frozen=True)
class CachedImage:
    """A tarball on this computer, checked and ready to send."""

    path: Path
    info: ImageInfo
    downloaded: bool  # False when it came straight from the cache

    @property
    def verification_note(self) -> str:
        """How far this image can be trusted, in words."""
        return {
            "digest": "sha256 matches the releases API",
            "size": "NOT VERIFIED: no checksum was published, only the size matched",
            "none": "NOT VERIFIED: no checksum or size was published",
            "local": "a local file you chose: its integrity is up to you",
        }[self.info.verification]


GZIP_MAGIC = b"\x1f\x8b"
BUNDLE_HINT = b"kexec"  # every self-extracting kexec-bundle names the tool it runs
BUNDLE_MAX_HEADER = 64 * 1024
KERNEL_HEAD = 8192  # enough for a bzImage's setup header and an EFI stub's PE header
PE_MACHINES = {0x8664: "x86_64", 0xAA64: "aarch64"}


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

    def add(self, name: str, kind: str, linkname: str = "") -> None:
        """One member: ``kind`` is file, dir, symlink, hardlink or other (device, pipe...)."""
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
            if kind == "symlink":
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
        with tarfile.open(path, mode="r|*", bufsize=CHUNK) as tar:
            for m in tar:
                layout.add(m.name, _member_kind(m), m.linkname)
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
    """The same check on ``LC_ALL=C tar -tvzf`` output (GNU tar or busybox) from the server."""
    layout = TarLayout(name)
    for line in listing.splitlines():
        if not line.strip():
            continue
        fields = line.split(None, 5)
        if len(fields) < 6:
            raise _bad_tar_named(name, f"the server's tar listed a line it cannot read: {line!r}")
        kind = TAR_KINDS.get(fields[0][:1], "other")
        member, linkname = fields[5], ""
        if kind == "symlink":
            member, _, linkname = member.partition(" -> ")
        elif kind == "hardlink" or " link to " in member:
            member, _, linkname = member.partition(" link to ")
            kind = "hardlink"
        if kind == "file" and " -> " in member:
            raise _bad_tar_named(name, f"a member name holds ' -> ' ({member!r})")
        layout.add(member, kind, linkname)
    layout.finish()


def _bad_tar(path: Path, reason: str) -> IntegrityError:
    return _bad_tar_named(path.name, reason)


def _bad_tar_named(name: str, reason: str) -> IntegrityError:
    return IntegrityError(
        f"{name} is not a kexec installer tarball: {reason}.",
        "Unpacking it on the server could overwrite files outside the staging folder, or "
        "fail half-way through the install.",
        "Use an image from the nixos-images releases, or rebuild your custom image.",
    )


def sha256_file(path: Path, cancel: CancelToken | None = None) -> str:
    """The hex sha256 of a file, read in large chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK * 4):
            if cancel is not None:
                cancel.check()
            h.update(chunk)
    return h.hexdigest()


class ImageCache:
    """Blobs named by their sha256, an index of what each blob is, and partial downloads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.index_file = root / "index.json"
        self.partial_dir = root / "partial"

    def blob_path(self, sha256: str) -> Path:
        """Where the blob with this hash lives."""
        return self.root / "sha256" / f"{sha256}.tar.gz"

    def entries(self) -> list[ImageInfo]:
        """Every indexed image whose blob still exists."""
        try:
            raw = json.loads(self.index_file.read_text())
        except (OSError, ValueError):
            return []
        out = []
        for e in raw.get("entries", []) if isinstance(raw, dict) else []:
            try:
                info = ImageInfo(**e)
            except (TypeError, ValueError):
                continue  # an entry this version cannot read is skipped, never trusted
            if self.blob_path(info.sha256).is_file():
                out.append(info)
        return out

    def find(self, asset: Asset) -> ImageInfo | None:
        """The cached copy of ``asset`` (same URL, build time and digest), if any."""
        for info in self.entries():
            if info.url != asset.url or info.updated_at != (asset.updated_at or ""):
                continue
            if asset.digest and info.sha256 != asset.digest:
                continue
            if asset.size and info.size != asset.size:
                continue
            if self.blob_path(info.sha256).stat().st_size != info.size:
                continue
            return info
        return None

    def add(self, info: ImageInfo) -> None:
        """Record ``info`` in the index, replacing an entry for the same URL and build."""
        keep = [
            e
            for e in self.entries()
            if not (e.url == info.url and e.updated_at == info.updated_at and e.url)
            and not (e.sha256 == info.sha256 and e.url == info.url)
        ]
        keep.append(info)
        payload = {"version": INDEX_VERSION, "entries": [asdict(e) for e in keep]}
        atomic_write_text(self.index_file, json.dumps(payload, indent=1), mode=0o644)

    def store(self, src: Path, info: ImageInfo) -> Path:
        """Move a finished file into place under its hash and index it."""
        dest = self.blob_path(info.sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
        self.add(info)
        return dest


class Downloader:
    """Streams an asset into the cache: resume, sha256 on the fly, cancel, retries."""

    def __init__(
        self,
        settings: Settings,
        cache: ImageCache,
        session: requests.Session | None = None,
        *,
        retries: int = 2,
        backoff: float = 1.0,
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.session = session or requests.Session()
        self.session.headers.setdefault("User-Agent", f"nixos-kexec-wizard/{__version__}")
        self.retries = retries
        self.backoff = backoff

    def fetch(
        self,
        asset: Asset,
        *,
        channel: str = "",
        arch: str = "",
        variant: str = "",
        emit: EventSink = discard,
        cancel: CancelToken | None = None,
        kind: ImageKind = ImageKind.TARBALL,
    ) -> CachedImage:
        """Return the asset from the cache, downloading (or resuming) it if needed.

        ``kind`` picks the content check: the tar layout for a "tarball", the script header
        for a "bundle", none for a "file" (netboot kernels and initrds: size and sha256 only).
        """
        cancel = cancel or CancelToken()
        check = CONTENT_CHECKS[kind]
        self.settings.check_url(asset.url, "image URL")
        hit = self.cache.find(asset)
        if hit is not None:
            emit(LogEvent("download", f"{asset.name} is already cached; nothing to download"))
            path = self.cache.blob_path(hit.sha256)
            unread = kind == ImageKind.TARBALL and hit.kernel_arch is None
            if not hit.tarball_checked or hit.kind != kind or unread:
                found = check(path)
                _same_arch(asset.name, arch, found)
                hit = ImageInfo(
                    **{**asdict(hit), "tarball_checked": True, "kind": kind, "kernel_arch": found}
                )
                self.cache.add(hit)
            _same_arch(asset.name, arch, hit.kernel_arch)
            return CachedImage(path, hit, downloaded=False)

        part, info = self.download(
            asset, channel=channel, arch=arch, variant=variant, emit=emit, cancel=cancel
        )
        try:
            found = check(part)
            _same_arch(asset.name, arch, found)
        except IntegrityError:
            part.unlink(missing_ok=True)
            raise
        info = ImageInfo(
            **{**asdict(info), "tarball_checked": True, "kind": kind, "kernel_arch": found}
        )
        path = self.cache.store(part, info)
        self._meta_path(part).unlink(missing_ok=True)
        return CachedImage(path, info, downloaded=True)

    def download(
        self,
        asset: Asset,
        *,
        channel: str = "",
        arch: str = "",
        variant: str = "",
        emit: EventSink = discard,
        cancel: CancelToken | None = None,
    ) -> tuple[Path, ImageInfo]:
        """Download (or resume) into the partial folder, verifying size and sha256 on the fly.

        The tarball's members are not checked yet: :meth:`fetch` does that before storing.
        """
        cancel = cancel or CancelToken()
        attempt = 0
        while True:
            try:
                part, sha, size = self._download(asset, emit, cancel)
                break
            except _Retryable as exc:
                attempt += 1
                if attempt > self.retries:
                    raise exc.error from exc
                delay = self.backoff * 2 ** (attempt - 1)
                emit(LogEvent("download", f"{exc.error.what} Retrying in {delay:g} s."))
                if cancel.wait(delay):
                    raise Cancelled("Download cancelled; the partial file is kept.") from exc

        verification = self._verify(asset, part, sha, size)
        info = ImageInfo(
            sha256=sha,
            size=size,
            name=asset.name,
            url=asset.url,
            channel=channel,
            arch=arch,
            variant=variant,
            updated_at=asset.updated_at or "",
            digest=asset.digest or "",
            verification=verification,
        )
        return part, info

    def _part_path(self, asset: Asset) -> Path:
        key = hashlib.sha256(f"{asset.url}\n{asset.updated_at}".encode()).hexdigest()[:32]
        return self.cache.partial_dir / f"{key}.part"

    @staticmethod
    def _meta_path(part: Path) -> Path:
        return part.with_suffix(".json")

    def _download(
        self, asset: Asset, emit: EventSink, cancel: CancelToken
    ) -> tuple[Path, str, int]:
        part = self._part_path(asset)
        part.parent.mkdir(parents=True, exist_ok=True)
        meta_path = self._meta_path(part)
        have = part.stat().st_size if part.exists() else 0
        validator = _read_validator(meta_path) if have else None
        if have and asset.size and have > asset.size:
            part.unlink()
            have, validator = 0, None
        # identity: the bytes counted and hashed are the file's own, not a proxy's gzip of it.
        headers = {"Accept-Encoding": "identity"}
        if have and validator:
            headers["Range"] = f"bytes={have}-"
            headers["If-Range"] = validator

        try:
            resp = self.session.get(
                asset.url,
                headers=headers,
                stream=True,
                timeout=(self.settings.connect_timeout, self.settings.http_timeout),
                allow_redirects=True,
            )
        except requests.RequestException as exc:
            raise _Retryable(_net_error(asset, exc)) from exc
        unhook = cancel.on_cancel(resp.close)
        try:
            return self._stream(asset, resp, part, meta_path, have, emit, cancel)
        finally:
            unhook()
            resp.close()

    def _stream(
        self,
        asset: Asset,
        resp: requests.Response,
        part: Path,
        meta_path: Path,
        have: int,
        emit: EventSink,
        cancel: CancelToken,
    ) -> tuple[Path, str, int]:
        if resp.url != asset.url:
            self.settings.check_url(resp.url, "redirected image URL")
        if resp.status_code == 206 and have:
            start = _range_start(resp)
            if start != have:
                # Appending bytes from another offset would corrupt the file: start over.
                part.unlink(missing_ok=True)
                meta_path.unlink(missing_ok=True)
                raise _Retryable(
                    DownloadError(
                        f"The server resumed {asset.name} at byte {start}, not at {have} "
                        "where the partial file ends; starting over.",
                        "A resumed download must continue exactly where it stopped.",
                        "Nothing to do: the download starts again from the beginning.",
                    )
                )
            mode = "ab"
            emit(LogEvent("download", f"Resuming {asset.name} at {have} bytes"))
        elif resp.status_code == 200:
            mode, have = "wb", 0
        elif resp.status_code == 416 and have:
            # Our partial file does not fit the server's file: start again.
            part.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
            raise _Retryable(
                DownloadError(f"The server refused to resume {asset.name}; starting over.")
            )
        elif resp.status_code >= 500 or resp.status_code == 429:
            raise _Retryable(_http_error(asset, resp.status_code))
        else:
            raise _http_error(asset, resp.status_code)

        validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
        if validator:
            atomic_write_text(meta_path, json.dumps({"validator": validator}), mode=0o644)
        else:
            meta_path.unlink(missing_ok=True)

        total = _total_size(resp, have) or asset.size
        h = hashlib.sha256()
        if have:
            with part.open("rb") as f:
                while chunk := f.read(CHUNK * 4):
                    h.update(chunk)
        meter = ProgressMeter(emit, "download", total, start=have)
        size = have
        try:
            with part.open(mode) as out, BackgroundHash(h) as bh:
                size = self._copy(resp, out, bh, meter, cancel, size, asset.size)
        except Cancelled:
            raise Cancelled(
                "Download cancelled; the partial file is kept to resume later."
            ) from None
        except IntegrityError:
            part.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
            raise
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DownloadError(
                    f"The disk holding {part.parent} is full.",
                    f"{asset.name} needs {_mb(total)} and the download stopped at {_mb(size)}.",
                    "Free some space (or choose another cache folder in the settings) and "
                    "try again; the download resumes where it stopped.",
                ) from exc
            raise
        meter.finish()
        if total is not None and size < total:
            raise _Retryable(
                DownloadError(
                    f"The download of {asset.name} stopped at {_mb(size)} of {_mb(total)}.",
                    "The connection was cut before the end.",
                    "Try again: the download resumes from the partial file.",
                )
            )
        return part, h.hexdigest(), size

    def _copy(
        self,
        resp: requests.Response,
        out: IO[bytes],
        h: BackgroundHash,
        meter: ProgressMeter,
        cancel: CancelToken,
        size: int,
        limit: int | None,
    ) -> int:
        try:
            # read1: whatever has arrived, up to NET_CHUNK, so a cut connection keeps every
            # byte received (iter_content drops the chunk it was filling).
            while chunk := resp.raw.read1(NET_CHUNK, decode_content=True):
                if cancel.cancelled:
                    raise Cancelled()
                if limit is not None and size + len(chunk) > limit:
                    raise IntegrityError(
                        f"The server sent more than the {limit} bytes the releases API gives "
                        f"for this file; the download was stopped there.",
                        "The file is not the one that was published (or the mirror is broken). "
                        "Nothing of it is kept.",
                        "Try again later or another mirror; if it keeps happening, report the "
                        "mirror.",
                    )
                out.write(chunk)
                h.update(chunk)
                size += len(chunk)
                meter.advance(len(chunk))
        except (requests.RequestException, urllib3_exceptions.HTTPError) as exc:
            out.flush()
            if cancel.cancelled:
                raise Cancelled() from exc
            raise _Retryable(
                DownloadError(
                    f"The connection broke after {_mb(size)} ({_short(exc)}).",
                    "The server stopped sending or the network dropped.",
                    "Try again: the download resumes from the partial file.",
                )
            ) from exc
        except (AttributeError, ValueError) as exc:
            # resp.close() from another thread while reading surfaces as one of these.
            if cancel.cancelled:
                raise Cancelled() from exc
            raise
        return size

    def _verify(self, asset: Asset, part: Path, sha: str, size: int) -> str:
        if asset.size is not None and size != asset.size:
            part.unlink(missing_ok=True)
            self._meta_path(part).unlink(missing_ok=True)
            raise IntegrityError(
                f"{asset.name} has {size} bytes; the releases API says {asset.size}.",
                "The file is not the one that was published. It was deleted.",
                "Download it again; if it keeps happening, the mirror or a proxy is broken.",
            )
        if asset.digest:
            if sha != asset.digest:
                part.unlink(missing_ok=True)
                self._meta_path(part).unlink(missing_ok=True)
                raise IntegrityError(
                    f"The sha256 of {asset.name} is {sha}, but the releases API says "
                    f"{asset.digest}.",
                    "The file is not the one that was published, so it must not be booted. "
                    "It was deleted.",
                    "Download it again; if it keeps happening, the mirror or a proxy is broken.",
                )
            return "digest"
        return "size" if asset.size else "none"


def local_image(path: Path, cache: ImageCache) -> CachedImage:
    """A tarball or kexec-bundle the user picked: checked and hashed, never moved or copied."""
    p = path.expanduser().absolute()
    if not p.is_file():
        raise IntegrityError(
            f"{p} does not exist or is not a file.",
            "The image to boot must be a kexec installer tarball (or a legacy kexec-bundle) "
            "on this computer.",
            "Check the path, or pick a channel instead.",
        )
    kind = ImageKind.BUNDLE if image_kind(p) == ImageKind.BUNDLE else ImageKind.TARBALL
    found = CONTENT_CHECKS[kind](p)
    st = p.stat()
    info = ImageInfo(
        sha256=sha256_file(p),
        size=st.st_size,
        name=p.name,
        url=p.as_uri(),
        verification="local",
        tarball_checked=True,
        kind=kind,
        kernel_arch=found,
    )
    return CachedImage(p, info, downloaded=False)


# Each returns the arch the image's kernel names ("" = it names none, None = not read: a
# bundle keeps its kernel inside its own archive, a netboot file has no tar around it).
CONTENT_CHECKS: dict[str, Callable[[Path], str | None]] = {
    "tarball": check_tarball,
    "bundle": check_bundle,
    "file": lambda _path: None,
}


def _same_arch(name: str, arch: str, found: str | None) -> None:
    """Refuse a release's image whose kernel is for another arch than its name says."""
    if arch and found and found != arch:
        raise IntegrityError(
            f"{name} is published as the {arch} image, but its kernel is built for {found}.",
            "The release (or a mirror on the way) serves the wrong file: kexec on an "
            f"{arch} server would refuse it, after the whole upload.",
            "Report it to whoever publishes the release; pick another channel meanwhile.",
        )


class BackgroundHash:
    """Feeds a hash on its own thread, so hashing overlaps network reads and disk writes.

    hashlib releases the GIL for large updates, so on two cores a download runs at the speed
    of the slower of the two instead of their sum. ``update`` keeps the chunk (bytes, never a
    reused buffer); leaving the ``with`` block waits for the hash to catch up.
    """

    def __init__(self, h: Any, depth: int = 16) -> None:
        self._h = h
        self._q: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._work, name="sha256", daemon=True)

    def __enter__(self) -> BackgroundHash:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._q.put(None)
        self._thread.join()

    def update(self, chunk: bytes) -> None:
        """Queue ``chunk`` for hashing (blocks while the hash is ``depth`` chunks behind)."""
        self._q.put(chunk)

    def _work(self) -> None:
        while (chunk := self._q.get()) is not None:
            self._h.update(chunk)


class _Retryable(Exception):
    def __init__(self, error: DownloadError) -> None:
        super().__init__(error.what)
        self.error = error


def _read_validator(meta: Path) -> str | None:
    try:
        v = json.loads(meta.read_text()).get("validator")
    except (OSError, ValueError, AttributeError):
        return None
    return v if isinstance(v, str) else None


def _range_start(resp: requests.Response) -> int | None:
    """The first byte of a 206 answer, from ``Content-Range: bytes START-END/TOTAL``."""
    m = re.match(r"^bytes (\d+)-\d+/(?:\d+|\*)$", resp.headers.get("Content-Range", "").strip())
    return int(m.group(1)) if m else None


def _total_size(resp: requests.Response, have: int) -> int | None:
    if resp.status_code == 206:
        cr = resp.headers.get("Content-Range", "")
        if "/" in cr and cr.rsplit("/", 1)[1].isdigit():
            return int(cr.rsplit("/", 1)[1])
    cl = resp.headers.get("Content-Length")
    if cl and cl.isdigit():
        return int(cl) + (have if resp.status_code == 206 else 0)
    return None


def _http_error(asset: Asset, status: int) -> DownloadError:
    if status == 404:
        return DownloadError(
            f"{asset.url} does not exist (HTTP 404).",
            "This channel or architecture has no such image, or it was renamed.",
            "Refresh the image list, or choose another channel or variant.",
        )
    return DownloadError(
        f"The server answered HTTP {status} for {asset.url}.",
        "The download server had a problem." if status >= 500 else "The request was refused.",
        "Wait a moment and try again.",
    )


def _net_error(asset: Asset, exc: requests.RequestException) -> DownloadError:
    return DownloadError(
        f"Cannot download {asset.name}: {_short(exc)}.",
        "This computer could not reach the download server.",
        "Check your network connection (and proxy settings), then try again.",
    )


def _short(exc: BaseException) -> str:
    if isinstance(exc, requests.ConnectionError):
        return "connection failed"
    if isinstance(exc, requests.Timeout):
        return "no data for too long"
    return type(exc).__name__


def _mb(n: int | None) -> str:
    return "an unknown size" if n is None else f"{n / 1e6:.1f} MB"

"""Resumable, verified, content-addressed downloads of release images, and their cache."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import queue
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from app import __version__
from app.core.catalog import Asset
from app.core.errors import Cancelled, DownloadError, IntegrityError
from app.core.events import CancelToken, EventSink, LogEvent, ProgressMeter, discard
from app.core.fsutil import atomic_write_text
from app.core.imagecheck import CONTENT_CHECKS, check_picked, check_release_arch
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
                hit = ImageInfo(
                    **{**asdict(hit), "tarball_checked": True, "kind": kind, "kernel_arch": found}
                )
                self.cache.add(hit)
            check_release_arch(asset.name, arch, hit.kernel_arch)
            return CachedImage(path, hit, downloaded=False)

        part, info = self.download(
            asset, channel=channel, arch=arch, variant=variant, emit=emit, cancel=cancel
        )
        try:
            found = check(part)
            check_release_arch(asset.name, arch, found)
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
    kind, found = check_picked(p)
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

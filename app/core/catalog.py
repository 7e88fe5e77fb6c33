"""Channels, architectures and variants of the kexec installer, from the releases API or offline."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app import __version__
from app.core.errors import DownloadError, UsageError
from app.core.fsutil import atomic_write_text
from app.core.lazy import LazyModule
from app.core.settings import Settings

if TYPE_CHECKING:
    import requests
else:
    requests = LazyModule("requests")

ARCHES = ("x86_64", "aarch64")
VARIANTS = ("noninteractive", "full")
DEFAULT_VARIANT = "noninteractive"
STILL_LOADING = "The list of releases is still loading."
# Sizes above this are not a kexec tarball but a broken or hostile API answer.
MAX_ASSET_SIZE = 8 * 1024**3
CHANNEL_RE = re.compile(r"^nixos-(unstable|(\d{2})\.(\d{2}))$")
DIGEST_RE = re.compile(r"^sha256:([0-9a-f]{64})$")
ASSET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
# The self-extracting kexec-bundle of releases frozen before 2023 (nixos-generators' format).
BUNDLE_RE = re.compile(r"^kexec-bundle-(x86_64|aarch64)(?:-linux)?$")
BUNDLE_DROPPED = "December 2022"
# Stable channels known when this version was released, for offline use.
BUILTIN_STABLE = ("nixos-24.05", "nixos-24.11", "nixos-25.05", "nixos-25.11", "nixos-26.05")


def machine_to_arch(machine: str) -> str | None:
    """Map ``uname -m`` output to an image arch, or None when no image exists for it."""
    m = machine.strip().lower()
    if m in ("x86_64", "amd64"):
        return "x86_64"
    if m in ("aarch64", "arm64", "armv8l", "aarch64_be"):
        return "aarch64" if m != "aarch64_be" else None
    return None


def asset_name(variant: str, arch: str) -> str:
    """The release asset holding the kexec tarball for ``variant`` and ``arch``."""
    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}")
    if variant == "noninteractive":
        return f"nixos-kexec-installer-noninteractive-{arch}-linux.tar.gz"
    if variant == "full":
        return f"nixos-kexec-installer-{arch}-linux.tar.gz"
    raise ValueError(f"unknown variant {variant!r}")


@dataclass(frozen=True)
class NetbootNames:
    """The three release assets of the netboot image for one arch."""

    kernel: str
    initrd: str
    script: str


def netboot_names(arch: str) -> NetbootNames:
    """Asset names of the netboot image (the aarch64 kernel name is inferred upstream's way)."""
    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}")
    kernel = "bzImage-x86_64-linux" if arch == "x86_64" else f"Image-{arch}-linux"
    return NetbootNames(kernel, f"initrd-{arch}-linux", f"netboot-{arch}-linux.ipxe")


def bundle_names(arch: str) -> tuple[str, ...]:
    """Names the legacy kexec-bundle was published under, newest spelling first."""
    return (f"kexec-bundle-{arch}-linux", f"kexec-bundle-{arch}")


def channel_sort_key(channel: str) -> tuple[int, int]:
    """Order channels oldest first, with unstable after every stable release."""
    m = CHANNEL_RE.match(channel)
    if not m:
        return (-1, -1)
    if m.group(1) == "unstable":
        return (100, 0)
    return (int(m.group(2)), int(m.group(3)))


@dataclass(frozen=True)
class Asset:
    """One downloadable file of a release."""

    name: str
    url: str
    size: int | None = None
    updated_at: str | None = None
    digest: str | None = None  # lowercase hex sha256, when the API gave one

    @property
    def checksum_note(self) -> str:
        """How this asset can be verified, in words."""
        if self.digest:
            return "sha256 from the releases API"
        if self.size:
            return "NO CHECKSUM: only the size can be checked"
        return "NO CHECKSUM and no size: nothing can be checked"


@dataclass(frozen=True)
class Release:
    """One channel's release: its tag and its assets."""

    channel: str
    rebuilt: bool
    published_at: str | None = None
    assets: dict[str, Asset] = field(default_factory=dict)

    @property
    def stable(self) -> bool:
        """True for ``nixos-YY.MM`` tags."""
        return self.channel != "nixos-unstable"

    @property
    def last_build(self) -> str | None:
        """The newest asset update time, which is when the release was last rebuilt."""
        times = [a.updated_at for a in self.assets.values() if a.updated_at]
        return max(times) if times else self.published_at

    def kexec_asset(self, variant: str, arch: str) -> Asset | None:
        """The kexec tarball for ``variant``/``arch``, if this release has one."""
        return self.assets.get(asset_name(variant, arch))

    def netboot(self, arch: str) -> tuple[Asset, Asset, Asset] | None:
        """Kernel, initrd and iPXE script of the netboot image, if this release has all three."""
        n = netboot_names(arch)
        found = [self.assets.get(name) for name in (n.kernel, n.initrd, n.script)]
        if any(a is None for a in found):
            return None
        kernel, initrd, script = found
        assert kernel and initrd and script
        return kernel, initrd, script

    def bundle_asset(self, arch: str) -> Asset | None:
        """The legacy self-extracting kexec-bundle, on releases frozen before 2023."""
        return next((self.assets[n] for n in bundle_names(arch) if n in self.assets), None)


@dataclass(frozen=True)
class Catalog:
    """Every channel the app can offer, and where this knowledge came from."""

    releases: tuple[Release, ...]
    source: str  # "api", "cache" or "builtin"
    note: str = ""

    @property
    def has_checksums(self) -> bool:
        """Whether any asset carries a digest (never true for the built-in list)."""
        return any(a.digest for r in self.releases for a in r.assets.values())

    def channels(self) -> list[str]:
        """Channel names, newest first (unstable first)."""
        return [r.channel for r in self.releases]

    def release(self, channel: str) -> Release | None:
        """The release of ``channel``, if known."""
        return next((r for r in self.releases if r.channel == channel), None)

    def default_channel(self) -> str:
        """The newest stable channel."""
        stable = [r.channel for r in self.releases if r.stable]
        if not stable:
            return "nixos-unstable"
        return max(stable, key=channel_sort_key)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form for ``images --json``."""
        return {
            "source": self.source,
            "note": self.note,
            "default_channel": self.default_channel(),
            "releases": [
                {**asdict(r), "assets": [asdict(a) for a in r.assets.values()]}
                for r in self.releases
            ],
        }


def _mark_rebuilt(channels: list[str]) -> set[str]:
    """Upstream rebuilds nixos-unstable and the newest stable channel; the rest are frozen."""
    out = {c for c in channels if c == "nixos-unstable"}
    stable = [c for c in channels if c != "nixos-unstable"]
    if stable:
        out.add(max(stable, key=channel_sort_key))
    return out


def _asset_url(settings: Settings, channel: str, name: str) -> str:
    return f"{settings.download_url.rstrip('/')}/{channel}/{name}"


def parse_releases(data: object, settings: Settings) -> list[Release]:
    """Turn a releases-API answer into releases, skipping anything malformed or hostile.

    Only ``nixos-unstable`` and ``nixos-YY.MM`` tags are channels (``assets`` is not). Asset
    URLs are built from the configured download base, so a mirror setting always applies.
    """
    if not isinstance(data, list):
        raise ValueError("the releases API did not answer with a list")
    found: dict[str, tuple[str | None, dict[str, Asset]]] = {}
    for rel in data:
        if not isinstance(rel, dict):
            continue
        tag = rel.get("tag_name")
        if not isinstance(tag, str) or not CHANNEL_RE.match(tag) or tag in found:
            continue
        assets: dict[str, Asset] = {}
        raw_assets = rel.get("assets")
        for a in raw_assets if isinstance(raw_assets, list) else []:
            asset = _parse_asset(a, tag, settings)
            if asset is not None:
                assets[asset.name] = asset
        published = rel.get("published_at")
        found[tag] = (published if isinstance(published, str) else None, assets)
    rebuilt = _mark_rebuilt(list(found))
    ordered = sorted(found, key=channel_sort_key, reverse=True)
    return [Release(c, c in rebuilt, found[c][0], found[c][1]) for c in ordered]


def _parse_asset(a: object, tag: str, settings: Settings) -> Asset | None:
    if not isinstance(a, dict):
        return None
    name = a.get("name")
    if not isinstance(name, str) or not ASSET_NAME_RE.match(name) or ".." in name:
        return None
    size = a.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_ASSET_SIZE:
        size = None
    updated = a.get("updated_at")
    digest_raw = a.get("digest")
    digest = None
    if isinstance(digest_raw, str) and (m := DIGEST_RE.match(digest_raw.strip().lower())):
        digest = m.group(1)
    return Asset(
        name=name,
        url=_asset_url(settings, tag, name),
        size=size,
        updated_at=updated if isinstance(updated, str) else None,
        digest=digest,
    )


def builtin_catalog(settings: Settings, note: str) -> Catalog:
    """The offline fallback: known channels with constructed URLs and no checksums."""
    channels = ["nixos-unstable", *sorted(BUILTIN_STABLE, key=channel_sort_key, reverse=True)]
    rebuilt = _mark_rebuilt(channels)
    releases = []
    for ch in channels:
        assets = {}
        for arch in ARCHES:
            for variant in VARIANTS:
                name = asset_name(variant, arch)
                assets[name] = Asset(name=name, url=_asset_url(settings, ch, name))
            n = netboot_names(arch)
            for name in (n.kernel, n.initrd, n.script):
                assets[name] = Asset(name=name, url=_asset_url(settings, ch, name))
        releases.append(Release(ch, ch in rebuilt, None, assets))
    return Catalog(tuple(releases), "builtin", note)


class CatalogClient:
    """Reads the releases API with an on-disk cache (ETag-aware: a 304 costs no rate limit)."""

    def __init__(
        self, settings: Settings, cache_file: Path, session: requests.Session | None = None
    ) -> None:
        self.settings = settings
        self.cache_file = cache_file
        self.session = session or requests.Session()
        self.session.headers.setdefault("User-Agent", f"nixos-kexec-wizard/{__version__}")

    def _read_cache(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.cache_file.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("api_url") != self.settings.api_url:
            return None
        fetched = data.get("fetched_at")
        if isinstance(fetched, bool) or not isinstance(fetched, int | float) or fetched != fetched:
            data["fetched_at"] = 0.0  # unreadable: treated as stale, asked for again
        if not isinstance(data.get("etag"), str | None):
            data["etag"] = None
        return data

    def _write_cache(self, body: object, etag: str | None) -> None:
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "api_url": self.settings.api_url,
            "fetched_at": time.time(),
            "etag": etag,
            "body": body,
        }
        atomic_write_text(self.cache_file, json.dumps(payload))

    def load(self, *, offline: bool = False, refresh: bool = False) -> Catalog:
        """The catalog: fresh cache, else the API, else stale cache, else the built-in list."""
        cached = self._read_cache()
        age = time.time() - float(cached.get("fetched_at", 0)) if cached else None
        if cached and not refresh and age is not None and age < self.settings.catalog_max_age:
            return self._from_cached(cached, "cache", "")
        if offline:
            if cached:
                return self._from_cached(cached, "cache", "offline: using the saved answer")
            return builtin_catalog(self.settings, "offline: checksums are unavailable")
        try:
            return self._fetch(cached)
        except (requests.RequestException, ValueError, DownloadError) as exc:
            reason = _short_reason(exc)
            if cached:
                return self._from_cached(
                    cached, "cache", f"the releases API failed ({reason}); using the saved answer"
                )
            return builtin_catalog(
                self.settings,
                f"the releases API failed ({reason}); using the built-in channel list, "
                "so checksums are unavailable and only sizes can be checked once downloaded",
            )

    def _fetch(self, cached: dict[str, Any] | None) -> Catalog:
        url = f"{self.settings.api_url.rstrip('/')}/releases?per_page=100"
        headers = {"Accept": "application/vnd.github+json"}
        if cached and cached.get("etag"):
            headers["If-None-Match"] = str(cached["etag"])
        resp = self.session.get(url, headers=headers, timeout=self.settings.http_timeout)
        if resp.status_code == 304 and cached:
            self._write_cache(cached["body"], cached.get("etag"))
            return self._from_cached(cached, "api", "")
        if resp.status_code in (403, 429) and resp.headers.get("X-RateLimit-Remaining") == "0":
            raise DownloadError("the GitHub API rate limit (60 an hour) is used up")
        if resp.status_code != 200:
            raise DownloadError(f"HTTP {resp.status_code} from {url}")
        body = resp.json()
        releases = parse_releases(body, self.settings)
        if not releases:
            raise ValueError("the answer lists no nixos-* channel")
        self._write_cache(body, resp.headers.get("ETag"))
        return Catalog(tuple(releases), "api", "")

    def _from_cached(self, cached: dict[str, Any], source: str, note: str) -> Catalog:
        try:
            releases = parse_releases(cached.get("body"), self.settings)
        except ValueError:
            releases = []
        if not releases:
            return builtin_catalog(
                self.settings, "the saved answer is unusable; checksums are unavailable"
            )
        return Catalog(tuple(releases), source, note)


def _short_reason(exc: BaseException) -> str:
    if isinstance(exc, requests.ConnectionError):
        return "cannot connect"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    text = str(exc) if not isinstance(exc, DownloadError) else exc.what
    return text.splitlines()[0][:160] if text else type(exc).__name__


def environ_arch() -> str:
    """This computer's arch as an image arch (a guess for when no server is known yet)."""
    return machine_to_arch(os.uname().machine) or "x86_64"


# ---------------------------------------------------------------------------------------------
# Picking from the catalog


def release_of(catalog: Catalog, channel: str | None) -> Release:
    """The release of ``channel`` (default: the newest stable), or a clear error."""
    chosen = channel or catalog.default_channel()
    release = catalog.release(chosen)
    if release is None:
        raise UsageError(
            f"There is no channel {chosen!r}.",
            "Known channels: " + ", ".join(catalog.channels()) + ".",
            "Pick one of them.",
        )
    return release


def channel_asset(
    catalog: Catalog, channel: str | None, variant: str, arch: str
) -> tuple[Asset, dict[str, str]]:
    """The kexec tarball of ``channel`` (default: newest stable) for ``variant``/``arch``."""
    release = release_of(catalog, channel)
    chosen = release.channel
    found = release.kexec_asset(variant, arch)
    if found is None:
        raise UsageError(
            f"{chosen} has no {variant} image for {arch} ({asset_name(variant, arch)}).",
            "Not every release carries every variant.",
            "Choose another channel, variant or arch.",
        )
    return found, {"channel": chosen, "arch": arch, "variant": variant}


def bundle_asset(catalog: Catalog, channel: str | None, arch: str) -> tuple[Asset, dict[str, str]]:
    """The legacy kexec-bundle of ``channel`` (only releases frozen before 2023 have one)."""
    release = release_of(catalog, channel)
    chosen = release.channel
    found = release.bundle_asset(arch)
    if found is None:
        having = [r.channel for r in catalog.releases if r.bundle_asset(arch)]
        raise UsageError(
            f"{chosen} has no kexec-bundle for {arch}.",
            f"nixos-images dropped the kexec-bundle in {BUNDLE_DROPPED} in favour of the kexec "
            "tarball; only releases frozen before then may still carry it"
            + (f" (here: {', '.join(having)})." if having else "."),
            "Use the kexec tarball (leave out --bundle), or one of those channels.",
        )
    return found, {"channel": chosen, "arch": arch, "variant": "kexec-bundle"}


def url_asset(url: str, settings: Settings) -> Asset:
    """An image at a URL the user typed (checked for https)."""
    settings.check_url(url, "image URL")
    name = url.rstrip("/").rsplit("/", 1)[-1] or "image.tar.gz"
    return Asset(name=name, url=url)

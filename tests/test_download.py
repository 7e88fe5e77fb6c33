"""Downloads from the local HTTP server: verify, cache, resume, retry, cancel; tarball checks."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from app.core.catalog import Asset
from app.core.download import Downloader, ImageCache, local_image
from app.core.errors import Cancelled, ConfigError, DownloadError, IntegrityError
from app.core.events import CancelToken, Event, ProgressEvent
from app.core.imagecheck import check_tarball
from app.core.settings import Settings
from tests.support.releases import ASSET, Fault, ReleasesServer
from tests.support.tarballs import standin_tarball

TAG = "nixos-26.05"


def _asset(releases: ReleasesServer, *, digest: bool = True, url: str | None = None) -> Asset:
    data = releases.files[f"{TAG}/{ASSET}"]
    return Asset(
        ASSET,
        url or releases.url(TAG, ASSET),
        size=len(data),
        updated_at=releases.updated_at[f"{TAG}/{ASSET}"],
        digest=hashlib.sha256(data).hexdigest() if digest else None,
    )


def _dl(settings: Settings, tmp_path: Path, **kw: object) -> Downloader:
    return Downloader(settings, ImageCache(tmp_path / "images"), backoff=0.05, **kw)  # type: ignore[arg-type]


def test_download_verifies_indexes_and_is_never_repeated(
    releases: ReleasesServer, settings: Settings, tmp_path: Path
) -> None:
    events: list[Event] = []
    asset = _asset(releases)
    img = _dl(settings, tmp_path).fetch(
        asset, channel=TAG, arch="x86_64", variant="noninteractive", emit=events.append
    )
    assert img.downloaded and img.info.verification == "digest" and img.info.tarball_checked
    assert img.path.name == f"{asset.digest}.tar.gz"
    assert img.path.read_bytes() == releases.files[f"{TAG}/{ASSET}"]
    index = json.loads((tmp_path / "images" / "index.json").read_text())
    entry = index["entries"][0]
    assert (entry["channel"], entry["arch"], entry["variant"], entry["updated_at"], entry["digest"]) == (
        TAG, "x86_64", "noninteractive", asset.updated_at, asset.digest,
    )  # fmt: skip
    final = [e for e in events if isinstance(e, ProgressEvent) and e.final][-1]
    assert final.done == final.total == asset.size
    again = _dl(settings, tmp_path).fetch(asset)
    assert not again.downloaded and again.path == img.path
    assert len(releases.downloads(ASSET)) == 1


def test_a_rebuilt_asset_is_downloaded_again(
    releases: ReleasesServer, settings: Settings, tmp_path: Path
) -> None:
    _dl(settings, tmp_path).fetch(_asset(releases))
    releases.updated_at[f"{TAG}/{ASSET}"] = "2026-11-27T10:00:00Z"
    _dl(settings, tmp_path).fetch(_asset(releases))
    assert len(releases.downloads(ASSET)) == 2


@pytest.mark.fault
def test_a_cut_connection_is_resumed_with_a_range_request(
    releases: ReleasesServer, settings: Settings, tmp_path: Path
) -> None:
    releases.faults[f"{TAG}/{ASSET}"] = Fault(cut_after=[100_000])
    img = _dl(settings, tmp_path).fetch(_asset(releases))
    assert img.path.read_bytes() == releases.files[f"{TAG}/{ASSET}"]
    first, second = releases.downloads(ASSET)
    assert "Range" not in first.headers
    # Everything before the chunk being read when the connection broke is kept.
    offset = int(second.headers["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < offset <= 100_000 and second.headers["If-Range"].startswith('"')


@pytest.mark.fault
def test_a_partial_file_survives_a_failed_run_and_is_resumed_by_the_next(
    releases: ReleasesServer, settings: Settings, tmp_path: Path
) -> None:
    releases.faults[f"{TAG}/{ASSET}"] = Fault(cut_after=[100_000])
    with pytest.raises(DownloadError) as ei:
        _dl(settings, tmp_path, retries=0).fetch(_asset(releases))
    assert "resumes" in ei.value.fix
    parts = list((tmp_path / "images" / "partial").glob("*.part"))
    kept = parts[0].stat().st_size if parts else 0
    assert len(parts) == 1 and 0 < kept <= 100_000
    img = _dl(settings, tmp_path).fetch(_asset(releases))
    assert hashlib.sha256(img.path.read_bytes()).hexdigest() == img.info.sha256
    assert releases.downloads(ASSET)[-1].headers["Range"] == f"bytes={kept}-"
    assert not list((tmp_path / "images" / "partial").glob("*.part"))


@pytest.mark.fault
def test_a_wrong_digest_deletes_the_file_and_caches_nothing(
    releases: ReleasesServer, settings: Settings, tmp_path: Path
) -> None:
    asset = replace(_asset(releases), digest="f" * 64)
    with pytest.raises(IntegrityError) as ei:
        _dl(settings, tmp_path).fetch(asset)
    assert "f" * 64 in ei.value.what and "deleted" in ei.value.why
    assert not list((tmp_path / "images").rglob("*.part"))
    assert ImageCache(tmp_path / "images").entries() == []


def test_without_a_digest_only_the_size_is_checked_and_said_so(
    releases: ReleasesServer, settings: Settings, tmp_path: Path
) -> None:
    img = _dl(settings, tmp_path).fetch(_asset(releases, digest=False))
    assert img.info.verification == "size" and "NOT VERIFIED" in img.verification_note
    wrong_size = replace(_asset(releases, digest=False), size=12345, updated_at="other")
    with pytest.raises(IntegrityError):
        _dl(settings, tmp_path).fetch(wrong_size)


@pytest.mark.fault
def test_404_is_a_clear_error(releases: ReleasesServer, settings: Settings, tmp_path: Path) -> None:
    asset = Asset("nope.tar.gz", releases.url(TAG, "nope.tar.gz"))
    with pytest.raises(DownloadError) as ei:
        _dl(settings, tmp_path).fetch(asset)
    assert "404" in ei.value.what and "another channel" in ei.value.fix
    assert len(releases.downloads("nope.tar.gz")) == 1  # a 404 is not retried


@pytest.mark.fault
def test_server_errors_are_retried_with_backoff(
    releases: ReleasesServer, settings: Settings, tmp_path: Path
) -> None:
    releases.faults[f"{TAG}/{ASSET}"] = Fault(statuses=[500, 503])
    events: list[Event] = []
    img = _dl(settings, tmp_path).fetch(_asset(releases), emit=events.append)
    assert img.downloaded and len(releases.downloads(ASSET)) == 3
    assert sum("Retrying" in e.message for e in events) == 2
    releases.faults[f"{TAG}/{ASSET}"] = Fault(statuses=[500, 500, 500])
    with pytest.raises(DownloadError) as ei:
        _dl(settings, tmp_path / "other").fetch(_asset(releases))
    assert "HTTP 500" in ei.value.what


@pytest.mark.fault
def test_a_stalled_server_trips_the_read_timeout_and_is_retried(
    releases: ReleasesServer, settings: Settings, tmp_path: Path
) -> None:
    releases.faults[f"{TAG}/{ASSET}"] = Fault(stall=3.0)
    s = replace(settings, http_timeout=1.0)
    img = _dl(s, tmp_path).fetch(_asset(releases))
    assert img.downloaded and len(releases.downloads(ASSET)) == 2


def test_redirects_are_followed(
    releases: ReleasesServer, settings: Settings, tmp_path: Path
) -> None:
    asset = _asset(releases, url=f"{releases.base}/redirect/{TAG}/{ASSET}")
    img = _dl(settings, tmp_path).fetch(asset)
    assert img.path.read_bytes() == releases.files[f"{TAG}/{ASSET}"]


@pytest.mark.fault
def test_plain_http_is_refused_unless_allowed(
    releases: ReleasesServer, settings: Settings, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError):
        _dl(replace(settings, allow_http=False), tmp_path).fetch(_asset(releases))
    assert releases.downloads(ASSET) == []


@pytest.mark.fault
def test_cancel_keeps_the_partial_file(
    releases: ReleasesServer, settings: Settings, tmp_path: Path
) -> None:
    big = standin_tarball(tmp_path / "big.tar.gz", size=48 * 1024 * 1024).read_bytes()
    releases.add(TAG, ASSET, big)
    cancel = CancelToken()

    def on_event(e: Event) -> None:
        if isinstance(e, ProgressEvent) and not cancel.cancelled:
            # Cancel from another thread, as a face does, before the next chunk arrives.
            t = threading.Thread(target=cancel.cancel)
            t.start()
            t.join()

    with pytest.raises(Cancelled) as ei:
        _dl(settings, tmp_path).fetch(_asset(releases), emit=on_event, cancel=cancel)
    assert "partial file is kept" in ei.value.what
    part = next((tmp_path / "images" / "partial").glob("*.part"))
    assert 0 < part.stat().st_size < len(big)


# -- tarball layout ---------------------------------------------------------------------


def _tar(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for m in members:
            tar.addfile(m, io.BytesIO(b"x" * m.size) if m.isfile() else None)
    return path


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 1
    return info


def _link(name: str, target: str, sym: bool = True) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE if sym else tarfile.LNKTYPE
    info.linkname = target
    return info


GOOD = ["kexec/run", "kexec/bzImage", "kexec/initrd", "kexec/kexec", "kexec/ip"]


def test_the_standin_tarball_passes(tmp_path: Path) -> None:
    check_tarball(standin_tarball(tmp_path / "ok.tar.gz"))


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (_file("/etc/cron.d/evil"), "absolute path"),
        (_file("kexec/../../root/.ssh/authorized_keys"), "'..'"),
        (_file("other/file"), "outside the kexec/ folder"),
        (_link("kexec/escape", "/etc/shadow"), "links outside"),
        (_link("kexec/escape", "../../etc/shadow"), "links outside"),
        (_link("kexec/hard", "etc/passwd", sym=False), "links outside"),
    ],
)
@pytest.mark.fault
def test_hostile_members_are_refused(tmp_path: Path, extra: tarfile.TarInfo, reason: str) -> None:
    path = _tar(tmp_path / "bad.tar.gz", [*map(_file, GOOD), extra])
    with pytest.raises(IntegrityError) as ei:
        check_tarball(path)
    assert reason in ei.value.what


@pytest.mark.fault
def test_a_device_member_is_refused(tmp_path: Path) -> None:
    dev = tarfile.TarInfo("kexec/null")
    dev.type = tarfile.CHRTYPE
    with pytest.raises(IntegrityError, match="device"):
        check_tarball(_tar(tmp_path / "dev.tar.gz", [*map(_file, GOOD), dev]))


def test_links_inside_the_folder_are_fine(tmp_path: Path) -> None:
    check_tarball(
        _tar(tmp_path / "ok.tar.gz", [*map(_file, GOOD), _link("kexec/bzImage-link", "bzImage")])
    )


@pytest.mark.fault
def test_missing_members_are_named(tmp_path: Path) -> None:
    with pytest.raises(IntegrityError) as ei:
        check_tarball(
            _tar(tmp_path / "partial.tar.gz", [_file(n) for n in GOOD if n != "kexec/run"])
        )
    assert "lacks kexec/run" in ei.value.what


@pytest.mark.fault
def test_garbage_is_not_a_tarball(tmp_path: Path) -> None:
    p = tmp_path / "junk.tar.gz"
    p.write_bytes(b"\x1f\x8b" + b"junk" * 100)
    with pytest.raises(IntegrityError, match="not a readable"):
        check_tarball(p)


def test_a_local_file_is_checked_and_hashed_in_place(tmp_path: Path) -> None:
    path = standin_tarball(tmp_path / "mine.tar.gz")
    img = local_image(path, ImageCache(tmp_path / "images"))
    assert img.path == path and img.info.verification == "local"
    assert img.info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(IntegrityError, match="does not exist"):
        local_image(tmp_path / "missing.tar.gz", ImageCache(tmp_path / "images"))


def test_a_local_file_checked_early_is_what_the_flow_takes_and_its_error_comes_there(
    tmp_path: Path, settings: Settings
) -> None:
    """The check of a chosen file starts before the server is connected (beside the
    connection and the probe); the flow takes its result only for that very file."""
    from app.core import flow
    from app.core.plan import ImageChoice

    cache = ImageCache(tmp_path / "images")
    mine = standin_tarball(tmp_path / "mine.tar.gz")
    early = flow.check_early(f" {mine} ", cache)
    assert early is not None
    got = flow.fetch_image(ImageChoice(None, {}, mine), cache, settings, early=early)
    assert got.path == mine and got.info == local_image(mine, cache).info
    # Another file than the one checked early is checked on its own.
    other = tmp_path / "other.tar.gz"
    other.write_bytes(standin_tarball(tmp_path / "o.tar.gz").read_bytes())
    got = flow.fetch_image(ImageChoice(None, {}, other), cache, settings, early=early)
    assert got.path == other
    # A missing file fails where the image is asked for, as it did before the early start.
    gone = flow.check_early(str(tmp_path / "gone.tar.gz"), cache)
    assert gone is not None
    with pytest.raises(IntegrityError, match="does not exist"):
        flow.fetch_image(ImageChoice(None, {}, tmp_path / "gone.tar.gz"), cache, settings,
                         early=gone)  # fmt: skip
    # Nothing to check early for a release or a URL.
    assert flow.check_early("", cache) is None
    assert flow.check_early("https://mirror.example/x.tar.gz", cache) is None

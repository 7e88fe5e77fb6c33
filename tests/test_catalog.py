"""The catalog: parsing the releases API, caching it, and the offline fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.core.catalog import CatalogClient, asset_name, machine_to_arch, parse_releases
from app.core.errors import ConfigError
from app.core.settings import Settings
from tests.support.releases import ASSET, ReleasesServer
from tests.support.sshd import free_port

S = Settings(download_url="https://mirror.example/dl")


def test_only_channel_tags_are_channels_and_two_are_rebuilt() -> None:
    data = [
        {"tag_name": "assets", "assets": [{"name": "screenshot.png", "size": 1}]},
        {"tag_name": "nixos-25.11", "assets": []},
        {"tag_name": "nixos-unstable", "assets": []},
        {"tag_name": "nixos-26.05", "assets": []},
        {"tag_name": "nixos-20.09", "assets": []},
        {"tag_name": "v1.0", "assets": []},
    ]
    releases = parse_releases(data, S)
    assert [r.channel for r in releases] == [
        "nixos-unstable",
        "nixos-26.05",
        "nixos-25.11",
        "nixos-20.09",
    ]
    assert {r.channel for r in releases if r.rebuilt} == {"nixos-unstable", "nixos-26.05"}


def test_assets_keep_size_date_and_digest_and_urls_follow_the_download_setting() -> None:
    digest = "ab" * 32
    data = [
        {
            "tag_name": "nixos-26.05",
            "assets": [
                {"name": ASSET, "size": 440_000_000, "updated_at": "2026-11-20T10:00:00Z",
                 "digest": f"sha256:{digest}", "browser_download_url": "https://evil.example/x"},
            ],
        }
    ]  # fmt: skip
    a = parse_releases(data, S)[0].kexec_asset("noninteractive", "x86_64")
    assert a is not None
    assert (a.size, a.updated_at, a.digest) == (440_000_000, "2026-11-20T10:00:00Z", digest)
    assert a.url == f"https://mirror.example/dl/nixos-26.05/{ASSET}"


@pytest.mark.parametrize(
    "asset",
    [
        {"name": "../etc/passwd", "size": 10},
        {"name": "a/b.tar.gz", "size": 10},
        {"name": "..", "size": 10},
        {"name": 42, "size": 10},
        "not a dict",
    ],
)
@pytest.mark.fault
def test_hostile_asset_names_are_dropped(asset: object) -> None:
    rel = parse_releases([{"tag_name": "nixos-26.05", "assets": [asset]}], S)[0]
    assert rel.assets == {}


@pytest.mark.parametrize("size", [0, -5, 10**13, "100", True, None])
@pytest.mark.fault
def test_absurd_sizes_become_unknown(size: object) -> None:
    rel = parse_releases(
        [{"tag_name": "nixos-26.05", "assets": [{"name": ASSET, "size": size}]}], S
    )[0]
    assert rel.assets[ASSET].size is None


@pytest.mark.parametrize("digest", ["md5:abc", "sha256:xyz", "sha256:" + "a" * 63, 7, None])
@pytest.mark.fault
def test_bad_digests_are_ignored(digest: object) -> None:
    rel = parse_releases(
        [{"tag_name": "nixos-26.05", "assets": [{"name": ASSET, "size": 5, "digest": digest}]}], S
    )[0]
    assert rel.assets[ASSET].digest is None
    assert "NO CHECKSUM" in rel.assets[ASSET].checksum_note


@pytest.mark.fault
def test_malformed_answers_raise_value_error() -> None:
    with pytest.raises(ValueError):
        parse_releases({"message": "Not Found"}, S)


def test_asset_names_and_arches() -> None:
    assert (
        asset_name("noninteractive", "aarch64")
        == "nixos-kexec-installer-noninteractive-aarch64-linux.tar.gz"
    )
    assert asset_name("full", "x86_64") == "nixos-kexec-installer-x86_64-linux.tar.gz"
    assert [machine_to_arch(m) for m in ("x86_64", "arm64", "aarch64", "i686", "riscv64")] == [
        "x86_64", "aarch64", "aarch64", None, None,
    ]  # fmt: skip


def _client(settings: Settings, tmp_path: Path) -> CatalogClient:
    return CatalogClient(settings, tmp_path / "releases.json")


def test_the_api_answer_is_cached_and_reused(
    releases: ReleasesServer, settings: Settings, tmp_path: Path
) -> None:
    cat = _client(settings, tmp_path).load()
    assert cat.source == "api" and cat.has_checksums
    assert cat.default_channel() == "nixos-26.05"
    assert cat.release("nixos-25.11") is not None and not cat.release("nixos-25.11").rebuilt  # type: ignore[union-attr]
    again = _client(settings, tmp_path).load()
    assert again.source == "cache" and again.channels() == cat.channels()
    api_calls = [r for r in releases.requests if "/releases" in r.path]
    assert len(api_calls) == 1


def test_a_stale_cache_is_revalidated_with_its_etag(
    releases: ReleasesServer, settings: Settings, tmp_path: Path
) -> None:
    from dataclasses import replace

    s = replace(settings, catalog_max_age=0)
    _client(s, tmp_path).load()
    cat = _client(s, tmp_path).load()
    assert cat.source == "api"
    second = [r for r in releases.requests if "/releases" in r.path][1]
    assert second.headers.get("If-None-Match", "").startswith('"')


@pytest.mark.fault
def test_rate_limit_falls_back_to_the_saved_answer(
    releases: ReleasesServer, settings: Settings, tmp_path: Path
) -> None:
    from dataclasses import replace

    s = replace(settings, catalog_max_age=0)
    _client(s, tmp_path).load()
    releases.api_status = [403]
    cat = _client(s, tmp_path).load()
    assert cat.source == "cache" and "rate limit" in cat.note and cat.has_checksums


@pytest.mark.fault
def test_malformed_json_without_a_cache_falls_back_to_the_builtin_list(
    releases: ReleasesServer, settings: Settings, tmp_path: Path
) -> None:
    releases.api_body = b"{not json"
    cat = _client(settings, tmp_path).load()
    assert cat.source == "builtin" and not cat.has_checksums
    assert "checksums are unavailable" in cat.note


def test_offline_builds_urls_from_the_download_base(tmp_path: Path) -> None:
    s = Settings(
        api_url=f"http://127.0.0.1:{free_port()}/api",
        download_url="http://127.0.0.1:1/dl",
        allow_http=True,
        http_timeout=2,
    )
    cat = _client(s, tmp_path).load()
    assert cat.source == "builtin" and "cannot connect" in cat.note
    rel = cat.release("nixos-unstable")
    assert rel is not None and rel.rebuilt
    a = rel.kexec_asset("noninteractive", "aarch64")
    assert a is not None and a.url == "http://127.0.0.1:1/dl/nixos-unstable/" + asset_name(
        "noninteractive", "aarch64"
    )
    assert a.digest is None and a.size is None
    assert cat.default_channel() == max(
        (c for c in cat.channels() if c != "nixos-unstable"), key=lambda c: c
    )
    offline = _client(s, tmp_path).load(offline=True)
    assert offline.source == "builtin" and "offline" in offline.note


def test_cache_from_another_api_url_is_not_used(
    releases: ReleasesServer, settings: Settings, tmp_path: Path
) -> None:
    _client(settings, tmp_path).load()
    raw = json.loads((tmp_path / "releases.json").read_text())
    assert raw["api_url"] == settings.api_url
    from dataclasses import replace

    other = replace(settings, api_url=f"http://127.0.0.1:{free_port()}/x", http_timeout=2)
    assert _client(other, tmp_path).load().source == "builtin"


@pytest.mark.parametrize(
    "url", ["http://example.org/x", "ftp://x/y", "file:///etc/passwd", "example.org", ""]
)
def test_plain_http_and_other_schemes_need_an_explicit_setting(url: str) -> None:
    with pytest.raises(ConfigError) as ei:
        Settings.from_env(api_url=url)
    assert ei.value.fix


def test_environment_variables_set_the_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIXOS_KEXEC_WIZARD_API_URL", "http://127.0.0.1:5/api")
    monkeypatch.setenv("NIXOS_KEXEC_WIZARD_DOWNLOAD_URL", "https://mirror.example/dl")
    monkeypatch.setenv("NIXOS_KEXEC_WIZARD_ALLOW_HTTP", "1")
    s = Settings.from_env()
    assert (s.api_url, s.download_url, s.allow_http) == (
        "http://127.0.0.1:5/api",
        "https://mirror.example/dl",
        True,
    )
    assert (
        Settings.from_env(download_url="https://other.example").download_url
        == "https://other.example"
    )

"""The reach check before the wipe, run here with the real curl against loopback servers."""

from __future__ import annotations

import socket
import subprocess

import pytest

from app.core.disk.install import install_command
from app.core.disk.reach import cache_url, reach_command, unreachable
from app.core.errors import ConfigError
from tests.support.cache_server import CacheServer

REV = "4f3c2a1e9b7d6c5a4f3e2d1c0b9a8f7e6d5c4b3a"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # free again once closed: nothing listens there


def _here(command: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=60,
                         env=env, check=True)  # fmt: skip
    return out.stdout


def test_what_answers_passes_and_what_does_not_is_named_with_why() -> None:
    with CacheServer() as srv:
        base = f"http://127.0.0.1:{srv.port}"
        urls = [f"{base}/cache/nix-cache-info", f"{base}/nixpkgs/{REV}.tar.gz",
                f"{base}/elsewhere", f"http://127.0.0.1:{_closed_port()}/x"]  # fmt: skip
        missing = unreachable(urls, _here(reach_command(urls)))
        assert ("HEAD", "/cache/nix-cache-info") in srv.asked  # a HEAD: nothing downloaded
    assert missing == [f"{urls[2]} (HTTP 404)", f"{urls[3]} (no answer)"]


def test_no_curl_is_said_and_a_lying_line_cannot_pass_an_address() -> None:
    urls = ["http://127.0.0.1:9/cache/nix-cache-info"]
    assert unreachable(urls, _here(reach_command(urls), env={"PATH": "/nonexistent"})) is None
    # Only the check's own numbered lines count; a missing line is no answer.
    assert unreachable(urls, "@@nkw reach 1 200 0\n@@nkw reach x 200 0\n") == [
        f"{urls[0]} (no answer)"
    ]


def test_a_cache_url_is_checked_and_a_mirror_reaches_nixos_install() -> None:
    assert cache_url("https://cache.example.org/") == "https://cache.example.org"
    with pytest.raises(ConfigError) as err:
        cache_url("https://cache.example.org/ x")
    assert "--binary-cache" in err.value.fix
    url = f"https://github.com/NixOS/nixpkgs/archive/{REV}.tar.gz"
    assert "--option" not in install_command(url)
    assert install_command(url, "https://mirror.example.org").endswith(
        "--option substituters https://mirror.example.org </dev/null"
    )

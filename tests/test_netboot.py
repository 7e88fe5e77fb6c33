"""Netboot sources, the generated iPXE script and the HTTP server; the kexec-bundle's recognition."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from app.core.catalog import CatalogClient, netboot_names
from app.core.download import Downloader, ImageCache, local_image
from app.core.errors import ConfigError, IntegrityError, UsageError
from app.core.imagecheck import image_kind
from app.core.netboot import (
    KEYS_NAME,
    NetbootServer,
    kernel_args_from_ipxe,
    kexec_source,
    keys_initrd,
    parse_bind,
    release_source,
)
from app.core.settings import Settings
from tests.support.cpio import read_newc
from tests.support.releases import ReleasesServer
from tests.support.tarballs import standin_tarball
from tests.test_cli import ROOT, cli

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDw8kLqA1kq0lJ3Sn6mW5v3F3vQhQ8c1dC0QGmMZkq9J me@laptop"
INIT = "init=/nix/store/0000000000000000000000000000000-nixos-system-nixos-installer/init"
KEY_PART = " ".join(KEY.split()[:2])  # what `run` keeps of a line: no options, no comment
BUNDLE = b"#!/bin/sh\n# self-extracting kexec-bundle\nexec kexec-boot\n__ARCHIVE_BELOW__\n\x1f\x8b"


def publish_netboot(srv: ReleasesServer, tag: str = "nixos-26.05") -> dict[str, bytes]:
    """A netboot image as upstream publishes it: script with absolute release URLs."""
    n = netboot_names("x86_64")
    files = {n.kernel: os.urandom(300_000), n.initrd: os.urandom(700_000)}
    files[n.script] = (
        "#!ipxe\n# Use the cmdline variable to allow the user to specify custom kernel params\n"
        f"kernel {srv.url(tag, n.kernel)} {INIT} initrd={n.initrd} loglevel=4 ${{cmdline}}\n"
        f"initrd {srv.url(tag, n.initrd)}\nboot\n"
    ).encode()
    for name, data in files.items():
        srv.add(tag, name, data)
    return files


def test_the_release_netboot_image_is_downloaded_verified_and_served(
    releases: ReleasesServer, settings: Settings, tmp_path: Path
) -> None:
    files = publish_netboot(releases)
    n = netboot_names("x86_64")
    cat = CatalogClient(settings, tmp_path / "releases.json").load()
    release = cat.release("nixos-26.05")
    assert release is not None and release.netboot("x86_64") is not None
    assert release.netboot("aarch64") is None
    downloader = Downloader(settings, ImageCache(tmp_path / "images"))
    source = release_source(downloader, release, "x86_64")
    seen: list[str] = []
    server = NetbootServer(source, "127.0.0.1", 0, "console=ttyS0", lambda r: seen.append(r.line()))
    server.start()
    try:
        script = requests.get(server.chain_url, timeout=5).text
        assert script.startswith("#!ipxe\n")
        # Relative names: the machine fetches the parts from wherever it fetched the script.
        assert f"kernel {n.kernel} initrd={n.initrd} {INIT} loglevel=4 console=ttyS0" in script
        assert f"\ninitrd {n.initrd}\nboot\n" in script and "github" not in script
        assert requests.get(f"{server.url}/{n.kernel}", timeout=5).content == files[n.kernel]
        assert requests.get(f"{server.url}/{n.initrd}", timeout=5).content == files[n.initrd]
        head = requests.head(f"{server.url}/{n.initrd}", timeout=5)
        assert head.headers["Content-Length"] == str(len(files[n.initrd]))
        assert requests.get(f"{server.url}/etc/passwd", timeout=5).status_code == 404
        assert requests.get(f"{server.url}/", timeout=5).status_code == 404
    finally:
        server.stop()
    assert [(r.path, r.status) for r in server.requests] == [
        ("/netboot.ipxe", 200), (f"/{n.kernel}", 200), (f"/{n.initrd}", 200),
        (f"/{n.initrd}", 200), ("/etc/passwd", 404), ("/", 404),
    ]  # fmt: skip
    assert len(seen) == 6 and "GET /netboot.ipxe 200" in seen[0]
    # The port is free again, and a second time everything comes from the cache.
    before = len(releases.requests)
    release_source(downloader, release, "x86_64")
    assert len(releases.requests) == before


@pytest.mark.fault
def test_a_netboot_part_with_the_wrong_digest_is_refused(
    releases: ReleasesServer, settings: Settings, tmp_path: Path
) -> None:
    publish_netboot(releases)
    n = netboot_names("x86_64")
    releases.digest_override[f"nixos-26.05/{n.initrd}"] = "sha256:" + "0" * 64
    release = CatalogClient(settings, tmp_path / "r.json").load().release("nixos-26.05")
    assert release is not None
    downloader = Downloader(settings, ImageCache(tmp_path / "images"), retries=0)
    with pytest.raises(IntegrityError) as err:
        release_source(downloader, release, "x86_64")
    assert "sha256" in err.value.explain()
    assert n.initrd not in {i.name for i in downloader.cache.entries()}


@pytest.mark.fault
def test_a_release_without_netboot_is_a_clear_message(
    releases: ReleasesServer, settings: Settings, tmp_path: Path
) -> None:
    release = CatalogClient(settings, tmp_path / "r.json").load().release("nixos-25.11")
    assert release is not None
    with pytest.raises(UsageError) as err:
        release_source(Downloader(settings, ImageCache(tmp_path / "i")), release, "x86_64")
    assert "has no netboot image" in err.value.what and "--from-kexec" in err.value.fix


@pytest.mark.parametrize(
    ("script", "args"),
    [
        (f"#!ipxe\nkernel bzImage {INIT} initrd=initrd loglevel=4\n", f"{INIT} loglevel=4"),
        (f"#!ipxe\nkernel --name k --autofree http://x/k {INIT} ${{cmdline}}\n", INIT),
        (
            f"#!ipxe\n# kernel commented\nchain --autofree http://x/k {INIT} quiet\n",
            f"{INIT} quiet",
        ),
    ],
)
def test_kernel_arguments_are_read_from_an_ipxe_script(script: str, args: str) -> None:
    assert kernel_args_from_ipxe(script) == args


@pytest.mark.fault
def test_an_ipxe_script_without_init_is_refused() -> None:
    with pytest.raises(IntegrityError) as err:
        kernel_args_from_ipxe("#!ipxe\nkernel bzImage quiet\nboot\n")
    assert "init=" in err.value.what


def test_the_kexec_installer_is_served_with_a_second_initrd_of_our_keys(tmp_path: Path) -> None:
    tar = standin_tarball(tmp_path / "nixos-kexec-installer-noninteractive-x86_64-linux.tar.gz")
    image = local_image(tar, ImageCache(tmp_path / "images"))
    keys = [f'command="echo hi",no-pty {KEY}', "# a comment", "", KEY]
    source = kexec_source(image, tmp_path / "netboot", keys)
    assert source.args == "init=/init console=ttyS0"  # from the tarball's run script
    script = source.script()
    assert "kernel bzImage initrd=initrd initrd=keys.cpio.gz init=/init console=ttyS0" in script
    assert "\ninitrd initrd\ninitrd keys.cpio.gz\nboot\n" in script
    served = dict(source.initrds)[KEYS_NAME]
    assert isinstance(served, bytes)
    raw = gzip.decompress(served)
    # As `run` appends it: ssh/authorized_keys, key only (options dropped, once), and the
    # directory entry first (the kernel does not create missing parents).
    assert read_newc(raw) == {"ssh/authorized_keys": (0o600, (KEY_PART + "\n").encode())}
    assert raw.index(b"%08X" % 0o40700) < raw.index(b"ssh\0") < raw.index(b"ssh/authorized_keys")
    # Unpacked once: a second source reuses the files.
    kernel = source.kernel[1]
    mtime = kernel.stat().st_mtime_ns
    assert kexec_source(image, tmp_path / "netboot", [KEY]).kernel[1].stat().st_mtime_ns == mtime


@pytest.mark.fault
def test_no_key_means_no_netboot_of_the_kexec_installer() -> None:
    with pytest.raises(UsageError) as err:
        keys_initrd(["not a key", "# ssh-ed25519"])
    assert "No SSH public key" in err.value.what and "--authorized-keys" in err.value.fix


@pytest.mark.parametrize(
    ("text", "bind"),
    [
        ("8080", ("127.0.0.1", 8080)),
        ("192.168.1.10:8080", ("192.168.1.10", 8080)),
        ("[::1]:9000", ("::1", 9000)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
    ],
)
def test_serve_addresses_are_parsed(text: str, bind: tuple[str, int]) -> None:
    assert parse_bind(text) == bind


@pytest.mark.fault
@pytest.mark.parametrize("text", ["", "host:", ":80", "::1:80", "127.0.0.1:99999", "a:b"])
def test_bad_serve_addresses_say_how_to_write_them(text: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_bind(text)
    assert "ADDR:PORT" in err.value.explain() or "[ADDR]:PORT" in err.value.explain()


@pytest.mark.fault
def test_an_address_in_use_or_not_ours_is_a_clear_error(tmp_path: Path) -> None:
    tar = standin_tarball(tmp_path / "t.tar.gz")
    source = kexec_source(local_image(tar, ImageCache(tmp_path / "i")), tmp_path / "n", [KEY])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError) as err:
            NetbootServer(source, "127.0.0.1", port).start()
        assert f"port {port} is already in use" in err.value.what
    with pytest.raises(ConfigError) as err:
        NetbootServer(source, "192.0.2.1", 0).start()  # TEST-NET-1: never on this machine
    assert "is not an address of this computer" in err.value.what


def test_a_wildcard_address_is_not_offered_as_something_to_type(tmp_path: Path) -> None:
    tar = standin_tarball(tmp_path / "t.tar.gz")
    source = kexec_source(local_image(tar, ImageCache(tmp_path / "i")), tmp_path / "n", [KEY])
    wild = NetbootServer(source, "0.0.0.0", 8080)  # never started: nothing is bound
    assert wild.chain_command == "chain http://<this computer's address>:8080/netboot.ipxe"
    lan = NetbootServer(source, "192.168.1.10", 8080)
    assert lan.chain_command == "chain http://192.168.1.10:8080/netboot.ipxe"


def test_a_served_ipv6_loopback_works(tmp_path: Path) -> None:
    tar = standin_tarball(tmp_path / "t.tar.gz")
    source = kexec_source(local_image(tar, ImageCache(tmp_path / "i")), tmp_path / "n", [KEY])
    try:
        server = NetbootServer(source, "::1", 0).start()
    except ConfigError:
        pytest.skip("no IPv6 loopback on this machine")
    try:
        assert server.chain_url.startswith("http://[::1]:")
        assert requests.get(server.chain_url, timeout=5).text.startswith("#!ipxe")
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# The command line


def test_netboot_prints_the_chain_url_and_why_the_console_is_needed(
    urls: dict[str, str], releases: ReleasesServer
) -> None:
    publish_netboot(releases)
    r = cli("netboot", "--channel", "nixos-26.05", "--json", env=urls)
    assert r.code == 0, r.stderr
    url = releases.url("nixos-26.05", "netboot-x86_64-linux.ipxe")
    assert r.result["url"] == url and r.result["command"] == f"chain {url}"
    human = cli("netboot", "--channel", "nixos-26.05", env=urls)
    assert f"chain {url}" in human.stderr and "root has no password" in human.stderr
    assert "console" in human.stderr


def test_netboot_warns_when_the_channel_has_no_netboot_image(urls: dict[str, str]) -> None:
    r = cli("netboot", "--channel", "nixos-25.11", env=urls)
    assert r.code == 0 and "lists no netboot image for x86_64" in r.stderr


@pytest.mark.fault
def test_an_unknown_channel_is_named_with_the_known_ones(urls: dict[str, str]) -> None:
    r = cli("netboot", "--channel", "nixos-19.03", env=urls)
    assert r.code == 2 and "There is no channel 'nixos-19.03'" in r.stderr
    assert "nixos-26.05" in r.stderr


@pytest.mark.fault
def test_from_kexec_without_serve_says_what_to_add(urls: dict[str, str]) -> None:
    r = cli("netboot", "--from-kexec", env=urls)
    assert r.code == 2 and "--from-kexec needs --serve" in r.stderr


def test_the_cli_serves_until_interrupted_and_logs_each_request(
    tmp_path: Path, urls: dict[str, str]
) -> None:
    tar = standin_tarball(tmp_path / "nixos-kexec-installer-noninteractive-x86_64-linux.tar.gz")
    pub = tmp_path / "id.pub"
    pub.write_text(KEY + "\n")
    p = subprocess.Popen(
        [sys.executable, "-m", "app", "netboot", "--json", "--serve", "127.0.0.1:0",
         "--from-kexec", "--image", str(tar), "--authorized-keys", str(pub), "--serve-for", "60"],
        cwd=ROOT, env={**os.environ, **urls}, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert p.stdout is not None
        chain = ""
        deadline = time.monotonic() + 30
        while not chain and time.monotonic() < deadline:
            chain = json.loads(p.stdout.readline()).get("chain_url", "")
        assert requests.get(chain, timeout=5).text.startswith("#!ipxe")
        keys = requests.get(chain.replace("netboot.ipxe", KEYS_NAME), timeout=5).content
        assert KEY_PART.encode() in gzip.decompress(keys)
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
    events = [json.loads(ln) for ln in out.splitlines()]
    assert [e["request"] for e in events if e.get("request")] == ["/netboot.ipxe", f"/{KEYS_NAME}"]
    assert events[-1]["outcome"] == "stopped" and events[-1]["requests"] == 2
    assert p.returncode == 0


# ---------------------------------------------------------------------------------------------
# The legacy kexec-bundle


@pytest.mark.fault
def test_a_kexec_bundle_is_recognised_and_checked(tmp_path: Path) -> None:
    bundle = tmp_path / "kexec-bundle-x86_64"
    bundle.write_bytes(BUNDLE)
    assert image_kind(bundle) == "bundle"
    img = local_image(bundle, ImageCache(tmp_path / "images"))
    assert img.info.kind == "bundle" and img.info.size == len(BUNDLE)
    tar = standin_tarball(tmp_path / "t.tar.gz")
    assert image_kind(tar) == "tarball"
    script = tmp_path / "not-a-bundle.sh"
    script.write_text("#!/bin/sh\nrm -rf /\n")
    assert image_kind(script) == "unknown"
    with pytest.raises(IntegrityError):
        local_image(script, ImageCache(tmp_path / "images"))  # neither a tarball nor a bundle


def test_the_release_bundle_is_listed_and_chosen_with_its_explanation(
    releases: ReleasesServer, urls: dict[str, str]
) -> None:
    releases.add("nixos-22.05", "kexec-bundle-x86_64", BUNDLE, digest=False)
    publish_netboot(releases)
    r = cli("images", env=urls)
    assert r.code == 0
    section = r.stdout.split("nixos-22.05")[1]
    assert "kexec-bundle" in section and "(legacy)" in section
    assert "netboot" in r.stdout.split("nixos-26.05")[1].split("nixos-25.11")[0]
    got = cli("download", "--channel", "nixos-22.05", "--bundle", "--json", env=urls)
    assert got.code == 0, got.stderr
    assert Path(got.result["path"]).read_bytes() == BUNDLE
    missing = cli("download", "--channel", "nixos-26.05", "--bundle", env=urls)
    assert missing.code == 2
    assert "dropped the kexec-bundle in December 2022" in missing.stderr
    assert "nixos-22.05" in missing.stderr  # where one can still be found

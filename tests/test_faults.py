"""Faults injected for real: full disks, dropped links, silent servers, hostile paths, locked keyrings."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import keyring.backend
import keyring.errors
import pytest

from app.core.catalog import Asset
from app.core.download import Downloader, ImageCache
from app.core.errors import DownloadError, PrivilegeError, RemoteCommandError, SSHConnectError
from app.core.flow import record
from app.core.inspect import run_probe
from app.core.install.place import cleanup
from app.core.kinds import ServerHash
from app.core.privilege import establish_privilege
from app.core.profiles import ProfileStore
from app.core.remote_sh import UNPACKING
from app.core.secrets import SecretStore, password_key
from app.core.settings import Settings
from app.core.ssh import ConnectOptions, Credentials, KnownHosts, Target, connect, parse_target
from tests.support.releases import ASSET, ReleasesServer
from tests.support.sshd import SSHEnv
from tests.support.tarballs import standin_tarball
from tests.test_install import _kh, make_rig

pytestmark = pytest.mark.fault


@contextlib.contextmanager
def tmpfs(path: Path, size: str, owner: str | None = None) -> Iterator[Path]:
    """A small real filesystem at ``path`` that fills up (needs root, as the suite has)."""
    path.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True
    )
    try:
        if owner:
            subprocess.run(["chown", f"{owner}:", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)
        path.rmdir()  # the next test finds the folder as it was: absent


def _publish(releases: ReleasesServer, tmp_path: Path, name: str, size: int) -> Asset:
    data = standin_tarball(tmp_path / name, size=size).read_bytes()
    sha = releases.add("nixos-26.05", name, data)
    return Asset(name, releases.url("nixos-26.05", name), size=len(data), digest=sha)


# -- this computer's disk ------------------------------------------------------------------


def test_a_full_local_disk_stops_the_download_clearly_and_the_cache_stays_intact(
    releases: ReleasesServer, settings: Settings, tmp_path: Path
) -> None:
    small = _publish(releases, tmp_path, "small.tar.gz", 64 * 1024)
    big = _publish(releases, tmp_path, "big.tar.gz", 6 << 20)
    with tmpfs(tmp_path / "cache", "3m") as root:
        cache = ImageCache(root)
        kept = Downloader(settings, cache).fetch(small)
        before = kept.path.read_bytes()
        with pytest.raises(DownloadError) as ei:
            Downloader(settings, cache, retries=0).fetch(big)
        err = ei.value
        assert "is full" in err.what and "big.tar.gz needs" in err.why
        assert "Free some space" in err.fix and "resumes" in err.fix
        # What was cached before is untouched and still found; nothing half-written is indexed.
        assert cache.find(small) is not None and kept.path.read_bytes() == before
        assert cache.find(big) is None
        assert [e.name for e in cache.entries()] == ["small.tar.gz"]


# -- the server -----------------------------------------------------------------------------


def test_a_full_disk_on_the_server_stops_the_transfer_and_leaves_nothing_behind(
    ssh_env: SSHEnv, trusted: Path, settings: Settings, releases: ReleasesServer, tmp_path: Path
) -> None:
    staging = ssh_env.nopw.home / "nixos-kexec-wizard"
    with tmpfs(staging, "64k", owner="nkw-nopw"):
        rig = make_rig(ssh_env, trusted, settings, releases, tmp_path)
        with pytest.raises(RemoteCommandError) as ei:
            rig.installer.prepare(rig.events.append, rig.cancel)
        assert "failed" in ei.value.what and "full disk" in ei.value.why
        assert "Free space" in ei.value.fix
        assert sorted(p.name for p in staging.iterdir()) == []  # the partial upload is gone
        rig.session.close()


@pytest.mark.parametrize("cpus", [1, 2])
def test_a_link_dropped_mid_upload_then_a_retry_delivers_an_intact_image(
    cpus: int,
    ssh_env: SSHEnv, trusted: Path, settings: Settings, releases: ReleasesServer, tmp_path: Path,
) -> None:  # fmt: skip
    """Stored then unpacked (one CPU) or unpacked as it arrives (two): a cut upload leaves
    nothing where run starts, and a second try places the image whole."""
    asset = _publish(releases, tmp_path, ASSET, 64 << 20)
    rig = make_rig(ssh_env, trusted, settings, releases, tmp_path, asset=asset)
    setup = rig.installer.setup
    rig.installer.setup = replace(setup, facts=replace(setup.facts, cpus=cpus))
    part = (
        rig.staging / f"{ASSET}.part" if cpus == 1 else rig.staging / UNPACKING / "kexec" / "initrd"
    )
    stop = threading.Event()

    def cut_when_half_way() -> None:
        """Watch the server's side: once a few MB have arrived, the network goes away."""
        while not stop.is_set():
            with contextlib.suppress(OSError):
                if part.stat().st_size > 4 << 20:
                    rig.session.transport.sock.shutdown(socket.SHUT_RDWR)
                    return
            time.sleep(0.002)

    watcher = threading.Thread(target=cut_when_half_way, daemon=True)
    watcher.start()
    with pytest.raises(RemoteCommandError) as ei:
        rig.installer.prepare(rig.events.append, rig.cancel)
    stop.set()
    assert "broke after" in ei.value.what and "nothing is run" in ei.value.fix
    assert not (rig.staging / ASSET).exists()  # only ever a .part, never the real name
    assert not (rig.staging / "kexec").exists()  # nothing where run starts
    rig.session.close()
    again = make_rig(ssh_env, trusted, settings, releases, tmp_path / "again", asset=asset)
    setup = again.installer.setup
    again.installer.setup = replace(setup, facts=replace(setup.facts, cpus=cpus))
    again.installer.prepare(again.events.append, again.cancel)
    if cpus == 1:
        got = (again.staging / ASSET).read_bytes()
        assert hashlib.sha256(got).hexdigest() == asset.digest
    else:
        said = [e.message for e in again.events if e.stage == "checksum"]
        assert any(asset.digest in m and "unpacked" in m for m in said), said  # type: ignore[operator]
    assert (again.staging / "kexec" / "run").exists()
    cleanup(again.step())
    again.session.close()


def test_a_wrong_sudo_password_is_refused_and_never_repeated(
    ssh_env: SSHEnv, trusted: Path, settings: Settings
) -> None:
    target = Target("127.0.0.1", ssh_env.port, "nkw-pw", identity_files=(str(ssh_env.key),))
    with connect(target, Credentials(method="key"), _kh(trusted)) as s:
        facts = run_probe(s, settings)
        wrong = "not-the-Pw-secret-9"
        with pytest.raises(PrivilegeError) as ei:
            establish_privilege(s, facts, wrong, settings)
        assert ei.value.what == "sudo refused the password."
        assert "login password of nkw-pw" in ei.value.fix
        assert wrong not in str(ei.value) and s.privilege is None


def test_a_server_that_accepts_but_never_speaks_times_out_the_handshake(tmp_path: Path) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        kh = KnownHosts(tmp_path / "kh", tmp_path / "none")
        t0 = time.monotonic()
        with pytest.raises(SSHConnectError) as ei:
            connect(Target("127.0.0.1", port, "root"), Credentials(), kh, ConnectOptions(timeout=2))
        assert time.monotonic() - t0 < 6
        assert f"port {port}" in ei.value.what and "Check the port" in ei.value.fix


def test_a_jump_host_that_refuses_is_named_as_the_failure(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # bound, never listening: connections are refused
        target = parse_target("root@10.0.0.7", jump=f"admin@127.0.0.1:{dead}")
        kh = KnownHosts(tmp_path / "kh", tmp_path / "none")
        with pytest.raises(SSHConnectError) as ei:
            connect(target, Credentials(), kh, ConnectOptions(timeout=3))
        assert ei.value.what.startswith(f"The jump host admin@127.0.0.1:{dead} failed: ")
        assert f"port {dead}" in ei.value.what
        assert "10.0.0.7" not in ei.value.what  # the target itself was never tried


# -- hostile input never reaches a shell unquoted --------------------------------------------


def test_a_hostile_staging_path_is_quoted_and_never_executed(
    ssh_env: SSHEnv, trusted: Path, settings: Settings, releases: ReleasesServer, tmp_path: Path
) -> None:
    canary = Path("/tmp") / f"nkw-pwned-{os.getpid()}"
    name = f"st a'ge\";$(touch {canary});`touch {canary}` ü"
    rig = make_rig(ssh_env, trusted, settings, releases, tmp_path, staging=f"~/{name}")
    rig.installer.prepare(rig.events.append, rig.cancel)
    staged = ssh_env.nopw.home / name
    # Two CPUs here: unpacked as it arrived, under the hostile name too; no tarball stored.
    assert rig.installer.state.server_hash is ServerHash.WHILE_UNPACKING
    assert (staged / "kexec" / "run").exists() and not (staged / ASSET).exists()
    assert not canary.exists()
    cleanup(rig.step())
    assert not staged.exists()
    rig.session.close()


# -- secrets ---------------------------------------------------------------------------------


class LockedKeyring(keyring.backend.KeyringBackend):
    """A keyring that exists but stays locked (the user dismissed the unlock prompt)."""

    priority = 1  # type: ignore[assignment]

    def get_password(self, service: str, username: str) -> str | None:
        raise keyring.errors.KeyringLocked("locked")

    def set_password(self, service: str, username: str, password: str) -> None:
        raise keyring.errors.KeyringLocked("locked")

    def delete_password(self, service: str, username: str) -> None:
        raise keyring.errors.KeyringLocked("locked")


def test_a_locked_keyring_means_asking_each_time_never_plain_text(tmp_path: Path) -> None:
    previous = keyring.get_keyring()
    keyring.set_keyring(LockedKeyring())
    try:
        secrets = SecretStore()
        store = ProfileStore(tmp_path / "profiles.json")
        target = Target("203.0.113.9", 22, "root")
        creds = Credentials(method="password", password="Hunter2-locked-pass")
        _profile, warning = record(
            store, secrets, "web-1", target=target, creds=creds, host_key="", facts=None,
            remember=True,
        )  # fmt: skip
        assert warning is not None and "asked" in warning.lower()
        assert secrets.get(password_key("web-1")) is None
        assert "Hunter2-locked-pass" not in (tmp_path / "profiles.json").read_text()
    finally:
        keyring.set_keyring(previous)

"""Shared fixtures: isolated homes, an in-memory keyring, a real sshd and a real HTTP server."""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import keyring
import pytest
from hypothesis.configuration import set_hypothesis_home_dir

from app.core.settings import Settings
from tests.support.keyrings import MemoryKeyring
from tests.support.machine import Machine
from tests.support.releases import ASSET, ReleasesServer
from tests.support.secret_checks import GIVEN_SECRETS, PASSPHRASE, assert_no_secret
from tests.support.sshd import (
    SUDOERS,
    SSHEnv,
    SSHServer,
    TestUser,
    ensure_user,
    free_port,
    keygen,
    remove_user,
)
from tests.support.tarballs import standin_tarball

os.environ["QT_QPA_PLATFORM"] = "offscreen"
# Hypothesis keeps nothing in the clone and replays nothing from an earlier run: its Unicode
# tables go to a private folder of this run, and there is no example database.
HYPOTHESIS_HOME = Path(tempfile.mkdtemp(prefix="nkw-hypothesis-"))
set_hypothesis_home_dir(HYPOTHESIS_HOME)
atexit.register(shutil.rmtree, HYPOTHESIS_HOME, ignore_errors=True)
hypothesis.settings.register_profile("nkw", database=None)
hypothesis.settings.load_profile("nkw")

TESTS = Path(__file__).resolve().parent
# Marks that follow from the fixtures a test uses (its whole fixture closure), or its folder.
MARKS_BY_FIXTURE = {"ssh_env": "sshd", "qtbot": "gui", "bed": "vm", "make_vm": "vm"}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by mark
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test sshd, gui or vm by the fixtures it needs (directly or through others)."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        marks = {mark for fixture, mark in MARKS_BY_FIXTURE.items() if fixture in names}
        if item.path.is_relative_to(TESTS / "vm"):
            marks.add("vm")
        for mark in sorted(marks):
            item.add_marker(mark)


@pytest.fixture(autouse=True)
def no_secret_on_disk(tmp_path: Path) -> Iterator[None]:
    """After each test, every file it left (profiles, logs, keys, settings) is free of secrets."""
    GIVEN_SECRETS.clear()
    yield
    for f in tmp_path.rglob("*"):
        if f.is_file() and not f.is_symlink() and f.stat().st_size < 20 << 20:
            assert_no_secret(f.read_bytes(), str(f.relative_to(tmp_path)))


@pytest.fixture(autouse=True)
def memory_keyring() -> Iterator[MemoryKeyring]:
    """Every test gets a fresh in-memory keyring."""
    kr = MemoryKeyring()
    previous = keyring.get_keyring()
    keyring.set_keyring(kr)
    yield kr
    keyring.set_keyring(previous)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private $HOME and app home per test; no agent, no inherited URLs."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NIXOS_KEXEC_WIZARD_HOME", str(tmp_path / "app"))
    for var in ("SSH_AUTH_SOCK", "NIXOS_KEXEC_WIZARD_API_URL", "NIXOS_KEXEC_WIZARD_DOWNLOAD_URL"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture(scope="session")
def ssh_env() -> Iterator[SSHEnv]:
    """A real OpenSSH sshd on 127.0.0.1 with three test users (needs root, as CI has)."""
    if os.geteuid() != 0:
        pytest.skip(
            "needs root: the sshd fixture creates users and runs sshd (CI runs as root; "
            '-m "not sshd" leaves these tests out)'
        )
    # The test users and the sudoers file are machine-wide: a second test run at the same time
    # (two terminals, a benchmark) waits here instead of removing the users under this one.
    lock = os.open("/var/tmp/nkw-tests.lock", os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)  # held until the session ends
    work = Path(f"/var/tmp/nkw-tests-{os.getpid()}")
    work.mkdir(mode=0o755)
    try:
        keys = work / "keys"
        keys.mkdir()
        host = [keygen(keys / "ssh_host_ed25519_key"), keygen(keys / "ssh_host_rsa_key", "rsa")]
        client = keygen(keys / "client")
        enc = keygen(keys / "client_enc", passphrase=PASSPHRASE)
        stranger = keygen(keys / "stranger")
        users = [
            TestUser("nkw-nopw", "Nopw-pass-4711", work / "h-nopw", "nopasswd"),
            TestUser("nkw-pw", "Pw-secret-0815!", work / "h-pw", "password"),
            TestUser("nkw-plain", "Plain-pass-42", work / "h-plain", "none"),
        ]
        for u in users:
            ensure_user(u, [client, enc])
        SUDOERS.write_text("nkw-nopw ALL=(ALL) NOPASSWD: ALL\nnkw-pw ALL=(ALL) ALL\n")
        os.chmod(SUDOERS, 0o440)
        server = SSHServer(free_port(), work, host)
        server.start()
        try:
            yield SSHEnv(server, client, enc, stranger, *users)
        finally:
            server.stop()
    finally:
        SUDOERS.unlink(missing_ok=True)
        for name in ("nkw-nopw", "nkw-pw", "nkw-plain"):
            remove_user(name)
        shutil.rmtree(work, ignore_errors=True)
        os.close(lock)


@pytest.fixture
def trusted(ssh_env: SSHEnv, isolated_env: Path, tmp_path: Path) -> Path:
    """The app's known_hosts already trusting the fixture's host keys."""
    kh = tmp_path / "app" / "config" / "known_hosts"
    kh.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"[127.0.0.1]:{ssh_env.port} {k.with_suffix('.pub').read_text().split()[0]} "
        f"{k.with_suffix('.pub').read_text().split()[1]}\n"
        for k in ssh_env.server.host_keys
    ]
    kh.write_text("".join(lines))
    return kh


@pytest.fixture
def releases(tmp_path: Path) -> Iterator[ReleasesServer]:
    """A local stand-in for GitHub with a stand-in tarball in three channels."""
    srv = ReleasesServer()
    tar = standin_tarball(tmp_path / ASSET)
    data = tar.read_bytes()
    srv.add("nixos-unstable", ASSET, data)
    srv.add("nixos-26.05", ASSET, data, updated_at="2026-11-21T10:00:00Z")
    srv.add("nixos-25.11", ASSET, data, updated_at="2026-05-30T10:00:00Z")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def urls(releases: ReleasesServer) -> dict[str, str]:
    """Environment pointing the CLI at the local releases server."""
    return {
        "NIXOS_KEXEC_WIZARD_API_URL": releases.api_url,
        "NIXOS_KEXEC_WIZARD_DOWNLOAD_URL": releases.download_url,
        "NIXOS_KEXEC_WIZARD_ALLOW_HTTP": "1",
    }


@pytest.fixture
def settings(releases: ReleasesServer) -> Settings:
    """Settings pointing at the local releases server, with short deadlines."""
    return Settings(
        api_url=releases.api_url,
        download_url=releases.download_url,
        allow_http=True,
        connect_timeout=5,
        command_timeout=30,
        http_timeout=5,
        run_timeout=60,
        down_timeout=3,
        up_timeout=5,
        poll_interval=0.2,
    )


@pytest.fixture
def machine(ssh_env: SSHEnv) -> Iterator[Machine]:
    """A loopback server in its own namespaces whose kexec really 'reboots' into an installer."""
    work = Path(tempfile.mkdtemp(prefix="nkw-machine-", dir="/var/tmp"))
    os.chmod(work, 0o755)
    m = Machine(work, free_port(), ssh_env.server.host_keys, [ssh_env.key.with_suffix(".pub")])
    m.start()
    try:
        yield m
    finally:
        m.stop()
        shutil.rmtree(work, ignore_errors=True)

"""A keyring backend that fails with what is not a KeyringError means no keyring: ask each time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keyring
import paramiko
import pytest

from app.core.fleet import host_of_profile
from app.core.profiles import Profile, ProfileStore, forget_profile
from app.core.secrets import SecretStore, password_key, sudo_key
from tests.support.keyrings import BrokenKeyring, BusGoneKeyring, MemoryKeyring, NoSocketKeyring
from tests.support.secret_checks import GIVEN_SECRETS, assert_no_secret
from tests.support.sshd import SSHEnv

ROOT = Path(__file__).resolve().parent.parent
BROKEN = [BrokenKeyring, BusGoneKeyring, NoSocketKeyring]
SAID = {
    BrokenKeyring: "RuntimeError: Unable to initialize SecretService",
    BusGoneKeyring: "org.freedesktop.DBus.Error.ServiceUnknown",
    NoSocketKeyring: "ConnectionRefusedError",
}


@pytest.mark.fault
@pytest.mark.parametrize("backend", BROKEN)
def test_a_failing_backend_is_no_keyring_from_then_on(backend: type[BrokenKeyring]) -> None:
    keyring.set_keyring(backend())
    s = SecretStore()
    assert s.get(password_key("web")) is None  # the bus is gone: nothing to offer, no crash
    assert not s.available
    where = s.where()
    assert "asked each time" in where and SAID[backend] in where
    assert s.set(password_key("web"), "Pw-secret-0815!") is False
    assert s.delete(password_key("web")) is False  # it may still be there: said, not hidden
    assert s.kept == [password_key("web")]


@pytest.mark.fault
def test_a_failure_on_the_first_write_is_said_where_the_password_was_not_remembered() -> None:
    keyring.set_keyring(BusGoneKeyring())
    s = SecretStore()
    assert s.available  # nothing has failed yet
    assert s.set(sudo_key("web"), "Pw-secret-0815!") is False
    assert not s.available and "ServiceUnknown" in s.where()


@pytest.mark.fault
@pytest.mark.parametrize("backend", BROKEN)
def test_forgetting_a_profile_with_a_failing_keyring_removes_it_and_says_what_stays(
    tmp_path: Path, backend: type[BrokenKeyring]
) -> None:
    store = ProfileStore(tmp_path / "profiles.json")
    store.put(Profile("web", "h", remember_password=True))
    keyring.set_keyring(backend())
    secrets = SecretStore()
    assert forget_profile(store, secrets, "web") is True
    assert store.load() == {}
    assert secrets.kept == [password_key("web"), sudo_key("web")]
    assert "web:password" in secrets.kept_note() and "web:sudo-password" in secrets.kept_note()


@pytest.mark.fault
def test_a_remembered_profile_with_a_failing_keyring_asks_for_its_passwords() -> None:
    keyring.set_keyring(BusGoneKeyring())
    profile = Profile("web", "127.0.0.1", auth="password", remember_password=True)
    host = host_of_profile(profile, SecretStore(), paramiko.SSHConfig())
    assert host.creds.password is None and host.creds.sudo_password is None


def test_a_working_keyring_forgets_both_entries(memory_keyring: MemoryKeyring) -> None:
    s = SecretStore()
    s.set(password_key("web"), "Pw-secret-0815!")
    s.set(sudo_key("web"), "Pw-secret-0815!")
    assert s.delete(password_key("web")) and s.delete(sudo_key("web"))
    assert s.delete(sudo_key("web"))  # nothing there: nothing left either
    assert memory_keyring.store == {} and s.kept == []


def cli(*args: str, backend: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The app as a separate process whose keyring is ``backend`` (a real keyring setting)."""
    full = {**os.environ, **(env or {}), "PYTHON_KEYRING_BACKEND": backend}
    p = subprocess.run(
        [sys.executable, "-m", "app", *args], cwd=ROOT, env=full, capture_output=True,
        text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert_no_secret(p.stdout + p.stderr, f"the output of `{' '.join(args[:2])}`")
    assert "Internal error" not in p.stderr and '"internal' not in p.stdout, p.stderr
    return p


@pytest.mark.fault
@pytest.mark.parametrize("backend", ["BusGoneKeyring", "NoSocketKeyring", "BrokenKeyring"])
def test_profiles_delete_with_the_bus_gone(tmp_path: Path, backend: str) -> None:
    store = ProfileStore(tmp_path / "app" / "config" / "profiles.json")
    store.put(Profile("web", "h", remember_password=True))
    p = cli("profiles", "delete", "web", backend=f"tests.support.keyrings.{backend}")
    assert p.returncode == 0, p.stderr
    assert "Deleted profile 'web'." in p.stdout
    assert "web:password" in p.stderr and "asks for passwords each time" in p.stderr
    assert store.load() == {}


@pytest.mark.fault
def test_install_remember_password_with_the_bus_gone(
    ssh_env: SSHEnv, urls: dict[str, str], trusted: Path, tmp_path: Path
) -> None:
    pw = ssh_env.pw.password
    GIVEN_SECRETS.append(pw)
    env = {**urls, "PW": pw}
    backend = "tests.support.keyrings.BusGoneKeyring"
    login = ["nkw-pw@127.0.0.1", "-p", str(ssh_env.port), "--auth", "password"]
    r = cli(
        "install", *login, "--password-env", "PW", "--save-profile", "box",
        "--remember-password", backend=backend, env=env,
    )  # fmt: skip
    # Not confirmed (no terminal, no --yes), or this machine judged unfit: never an internal error.
    assert r.returncode in (2, 30), r.stderr
    assert "The password was not remembered" in r.stderr and "asked each time" in r.stderr
    profiles = json.loads((tmp_path / "app" / "config" / "profiles.json").read_text())
    assert [p["name"] for p in profiles["profiles"]] == ["box"]
    # Next time the keyring is still gone: the password is asked for (here: named as missing).
    again = cli("probe", "--json", "--profile", "box", backend=backend, env=urls)
    assert again.returncode != 0
    error = [json.loads(ln) for ln in again.stdout.splitlines() if ln.startswith("{")][-1]
    assert error["error"]["error"] == "password-required", again.stdout

"""Profiles on disk and secrets in the keyring: atomic, private, versioned, never a secret."""

from __future__ import annotations

import fcntl
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import keyring
import keyring.backends.fail
import pytest

import app.core.profiles as profiles_module
from app.core.errors import ConfigError
from app.core.events import LogEvent
from app.core.profiles import Profile, ProfileStore, check_name
from app.core.runlog import Redactor, RunLog
from app.core.secrets import SecretStore, password_key
from tests.support.keyrings import MemoryKeyring


def test_profiles_round_trip_with_mode_0600(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "cfg" / "profiles.json")
    p = Profile("web 1", "203.0.113.10", 2222, "admin", state="original", facts={"os": "Debian"})
    store.put(p)
    assert (tmp_path / "cfg" / "profiles.json").stat().st_mode & 0o777 == 0o600
    loaded = ProfileStore(store.path).load()
    assert loaded == {"web 1": p}
    data = json.loads(store.path.read_text())
    assert data["version"] == 1 and data["profiles"][0]["host"] == "203.0.113.10"
    assert store.delete("web 1") and not store.delete("web 1")
    with pytest.raises(ConfigError, match="no profile named"):
        store.get("web 1")


@pytest.mark.fault
def test_a_corrupt_file_is_kept_aside_not_lost(tmp_path: Path) -> None:
    path = tmp_path / "profiles.json"
    path.write_text('{"version": 1, "profiles": [ {broken')
    store = ProfileStore(path)
    assert store.load() == {}
    aside = list(tmp_path.glob("profiles.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text().endswith("{broken")
    assert "kept as" in store.notice and not path.exists()


@pytest.mark.fault
def test_a_file_from_a_newer_version_is_not_misread(tmp_path: Path) -> None:
    path = tmp_path / "profiles.json"
    path.write_text('{"version": 99, "profiles": []}')
    store = ProfileStore(path)
    assert store.load() == {} and "unsupported version" in store.notice


def test_unknown_fields_and_states_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "profiles.json"
    path.write_text(
        json.dumps(
            {"version": 1, "profiles": [{"name": "a", "host": "h", "state": "weird", "future": 1}]}
        )
    )
    assert ProfileStore(path).load()["a"].state == "unknown"


@pytest.mark.fault
def test_secret_fields_are_refused(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "profiles.json")
    with pytest.raises(ValueError, match="password"):
        store.put(Profile("a", "h", facts={"password": "hunter2"}))
    assert not store.path.exists()


@pytest.mark.parametrize("name", ["", "a/b", "x" * 65, "tab\there"])
def test_bad_names(name: str) -> None:
    with pytest.raises(ConfigError):
        check_name(name)


KILLER = r"""
import sys, time
from pathlib import Path
from app.core.profiles import Profile, ProfileStore
store = ProfileStore(Path(sys.argv[1]))
i = 0
while True:
    i += 1
    store.save_all({f"p{j}": Profile(f"p{j}", f"host-{i}-{j}", facts={"pad": "x" * 2000}) for j in range(50)})
"""


@pytest.mark.fault
def test_kill_9_during_saves_always_leaves_a_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "profiles.json"
    ProfileStore(path).save_all({"seed": Profile("seed", "h")})
    root = Path(__file__).resolve().parent.parent
    hosts_seen: set[str] = set()
    for round_ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", KILLER, str(path)], cwd=root)
        time.sleep(0.25 + round_ * 0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = ProfileStore(path)
        profiles = store.load()
        assert store.notice == "" and profiles, f"round {round_}: {store.notice}"
        hosts_seen.add(next(iter(profiles.values())).host)
    assert len(hosts_seen) > 2  # the writer really was killed mid-way through many saves
    assert not list(tmp_path.glob("*.corrupt-*"))
    assert path.stat().st_mode & 0o777 == 0o600


def test_secrets_go_to_the_keyring(memory_keyring: MemoryKeyring) -> None:
    s = SecretStore()
    assert s.available and "system keyring" in s.where()
    assert s.set(password_key("web"), "hunter2")
    assert s.get(password_key("web")) == "hunter2"
    s.delete(password_key("web"))
    assert s.get(password_key("web")) is None


@pytest.mark.fault
def test_no_keyring_is_said_honestly_and_nothing_is_stored() -> None:
    keyring.set_keyring(keyring.backends.fail.Keyring())
    s = SecretStore()
    assert not s.available and "asked each time" in s.where()
    assert s.set("k", "secret") is False and s.get("k") is None
    s.delete("k")  # no error


@pytest.mark.fault
def test_run_logs_redact_secrets(tmp_path: Path) -> None:
    r = Redactor()
    r.add("Pw-secret-0815!")
    log = RunLog(tmp_path / "logs", r)
    log.write(
        LogEvent("run", "sudo said Pw-secret-0815! oops", extra={"nested": ["Pw-secret-0815!"]})
    )
    text = log.path.read_text()
    assert "Pw-secret-0815!" not in text and text.count("[redacted]") == 2
    assert log.path.stat().st_mode & 0o777 == 0o600


SAVER = r"""
import sys, time
from pathlib import Path
from app.core.profiles import Profile, ProfileStore
path, who, count, go = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
store = ProfileStore(path)
go.with_name(f"ready-{who}").touch()
while not go.exists():  # every saver starts at the same moment
    time.sleep(0.001)
for i in range(count):
    store.put(Profile(f"{who}-{i}", f"host-{who}-{i}", facts={"pad": "x" * 4000}))
"""


@pytest.mark.fault
def test_two_processes_saving_at_once_lose_no_profile(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "profiles.json"
    go = tmp_path / "go"
    root = Path(__file__).resolve().parent.parent
    savers = [
        subprocess.Popen([sys.executable, "-c", SAVER, str(path), who, "25", str(go)], cwd=root)
        for who in ("cli", "wizard")
    ]
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("ready-*"))) < 2:  # both have imported the app
        assert time.monotonic() < deadline, "the savers did not start"
        time.sleep(0.01)
    go.touch()
    assert [p.wait(timeout=60) for p in savers] == [0, 0]
    store = ProfileStore(path)
    profiles = store.load()
    assert store.notice == ""
    assert len(profiles) == 50, f"{50 - len(profiles)} of 50 saved profiles were lost"
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.fault
def test_a_save_waits_for_the_lock_only_until_its_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ProfileStore(tmp_path / "profiles.json")
    store.put(Profile("a", "h"))
    monkeypatch.setattr(profiles_module, "LOCK_WAIT", 0.3)
    with store.lock_path.open("r+") as other:  # another process's lock, as the kernel sees it
        fcntl.flock(other, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(ConfigError, match="stayed locked") as caught:
            store.put(Profile("b", "h"))
        assert 0.3 <= time.monotonic() - started < 3
        assert str(store.lock_path) in caught.value.fix
    store.put(Profile("b", "h"))  # the lock is free again once its holder lets go
    assert set(store.load()) == {"a", "b"}

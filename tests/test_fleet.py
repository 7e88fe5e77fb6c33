"""Many servers at once: the shared parts are safe from threads, the pool keeps hosts apart."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core import keys
from app.core.profiles import Profile, ProfileStore
from app.core.settings import Settings
from tests.support.machine import Machine
from tests.support.releases import ASSET, ReleasesServer
from tests.support.sshd import SSHEnv, free_port
from tests.test_cli import cli


def _together(n: int, fn: object) -> list[object]:
    """Run ``fn(i)`` in ``n`` threads released at the same instant; their results in order."""
    assert callable(fn)
    barrier = threading.Barrier(n)
    out: list[object] = [None] * n

    def one(i: int) -> None:
        barrier.wait()
        out[i] = fn(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_hosts_that_share_a_key_name_get_one_key_never_a_replaced_one(tmp_path: Path) -> None:
    """Three hosts named alike make the app's key at once: each installer is handed the key
    that stays on disk (a second writer replacing the file would lock the first host out)."""
    for round_ in range(6):  # a race: several rounds make the old code's loss near certain
        path = keys.key_path(tmp_path / "keys", f"127.0.0.{round_}")
        lines = _together(16, lambda _i, p=path: keys.load_or_create(p, "nkw")[1])
        on_disk = keys.load_or_create(path, "nkw")[1]
        assert set(lines) == {on_disk}
        assert path.with_name(path.name + ".pub").read_text().split()[:2] == on_disk.split()[:2]


def test_profiles_recorded_from_many_threads_are_all_kept(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "profiles.json")
    _together(12, lambda i: store.put(Profile(f"web-{i}", f"10.0.0.{i}")))
    assert sorted(store.load()) == sorted(f"web-{i}" for i in range(12))


# ---------------------------------------------------------------------------------------------
# The command line on three loopback servers at once


@contextlib.contextmanager
def more_machines(ssh_env: SSHEnv, *modes: str) -> Iterator[list[Machine]]:
    """Loopback servers beside the ``machine`` fixture's, one per installer mode."""
    made: list[tuple[Machine, Path]] = []
    try:
        for mode in modes:
            work = Path(tempfile.mkdtemp(prefix="nkw-machine-", dir="/var/tmp"))
            os.chmod(work, 0o755)
            m = Machine(work, free_port(), ssh_env.server.host_keys,
                        [ssh_env.key.with_suffix(".pub")], installer_mode=mode)  # fmt: skip
            made.append((m, work))
            m.start()
        yield [m for m, _ in made]
    finally:
        for m, work in made:
            m.stop()
            shutil.rmtree(work, ignore_errors=True)


def test_three_servers_at_once_end_each_with_its_own_result_and_one_summary(
    ssh_env: SSHEnv, machine: Machine, releases: ReleasesServer, urls: dict[str, str],
    tmp_path: Path,
) -> None:  # fmt: skip
    """One installs, one is stopped by preflight (a user who cannot become root), one's
    installer never answers: neither failure stops the others, the image is fetched once."""
    with more_machines(ssh_env, "silent") as (silent,):
        ok = f"root@127.0.0.1:{machine.port}"
        stop = f"nkw-plain@127.0.0.1:{ssh_env.port}"
        never = f"root@127.0.0.1:{silent.port}"
        targets = tmp_path / "servers.txt"
        targets.write_text(f"# the batch\n{stop}\n\n{never}   # this one stays silent\n")
        started = time.monotonic()
        r = cli(
            "install", "--json", "--yes", "--accept-new-host-key", ok, "--targets",
            str(targets), "-i", str(ssh_env.key), "--transfer", "upload", "--down-timeout",
            "20", "--timeout", "8", env=urls,
        )  # fmt: skip
        took = time.monotonic() - started
        assert machine.state == "installer" and silent.state == "down"
    events = r.events
    results = {e["host"]: e for e in events if e["event"] == "result"}
    assert set(results) == {ok, stop, never}, r.stdout[-3000:] + r.stderr[-2000:]
    assert results[ok]["ok"] and results[ok]["outcome"] == "installer-ready"
    assert set(results[ok]) >= {"installer", "timings", "ssh_command", "leftovers"}
    assert results[stop]["outcome"] == "preflight" and results[stop]["exit_code"] == 30
    assert results[never]["outcome"] == "never-came-back" and results[never]["exit_code"] == 43
    # Every event says which server it is about; the summary is the last line.
    assert all(e.get("host") for e in events[:-1] if e["event"] != "info"), events
    summary = events[-1]
    assert summary["event"] == "summary" and summary["ok"] is False
    assert summary["exit_code"] == 43 == r.code
    assert summary["succeeded"] == 1 and summary["failed"] == 2
    assert [h["host"] for h in summary["hosts"]] == [ok, stop, never]
    assert summary["hosts"][1]["error"].startswith("Preflight stop")
    # The two that got as far as the image share one download.
    assert len(releases.downloads(ASSET)) == 1
    # An upload was chosen: no probe waited for the servers to reach the download server.
    assert not [q for q in releases.requests if q.headers.get("User-Agent", "").startswith("curl")]
    # At once, not one after another: the silent one's wait overlaps the good one's install.
    stages = [(e["host"], e["stage"], e["state"]) for e in events if e["event"] == "stage"]
    assert (never, "up", "start") in stages and (ok, "verify", "done") in stages
    assert took < 60, f"{took:.0f} s"
    # Each server has its own run log.
    logs = sorted(p.name for p in (tmp_path / "app" / "logs").glob("install-*.log"))
    assert any("127.0.0.1" in name for name in logs) and len(logs) >= 3, logs


def _run_in_terminal(args: list[str], env: dict[str, str], answers: list[tuple[str, str]],
                     timeout: float = 120) -> tuple[int, str]:  # fmt: skip
    """Run the command line on a pseudo-terminal, answering each prompt (a text it waits
    for, then the line typed); its exit code and everything it showed."""
    import pty
    import select
    import subprocess
    import sys

    from tests.test_cli import ROOT

    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "app", *args], cwd=ROOT, env={**os.environ, **env},
                         stdin=slave, stdout=slave, stderr=slave, close_fds=True)  # fmt: skip
    os.close(slave)
    seen, todo = b"", list(answers)
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            if todo and todo[0][0].encode() in seen.split(b"\x00")[-1]:
                os.write(master, todo.pop(0)[1].encode() + b"\n")
                seen += b"\x00"  # each prompt answered once
            if p.poll() is not None and not ready:
                break
        return p.wait(10), seen.replace(b"\x00", b"").decode(errors="replace")
    finally:
        if p.poll() is None:
            p.kill()
        os.close(master)


def test_new_host_keys_of_a_batch_are_asked_together_then_one_confirmation(
    ssh_env: SSHEnv, machine: Machine, urls: dict[str, str]
) -> None:
    with more_machines(ssh_env, "ok") as (second,):
        a, b = (f"root@127.0.0.1:{m.port}" for m in (machine, second))
        code, shown = _run_in_terminal(
            ["install", a, b, "-i", str(ssh_env.key), "--transfer", "upload",
             "--down-timeout", "20", "--timeout", "20"],
            urls,
            [("Trust these 2 key(s) and go on? [y/N]", "y"),
             ("Type the number of servers (2) to boot the installer:", "2")],
        )  # fmt: skip
        assert code == 0, shown[-3000:]
        assert machine.state == second.state == "installer"
    # One question lists both servers with their fingerprints; each installer is in the table.
    question = shown[: shown.index("Trust these 2 key(s)")]
    assert question.count("SHA256:") >= 2 and a in question and b in question
    assert shown.count("Trust these") == 1
    assert "The NixOS installer runs on 2 of 2 servers." in shown
    assert shown.count("  ok    root@127.0.0.1:") == 2


def test_a_batch_without_a_terminal_never_trusts_a_key_silently(
    ssh_env: SSHEnv, machine: Machine, urls: dict[str, str]
) -> None:
    a, b = f"root@127.0.0.1:{machine.port}", f"nkw-nopw@127.0.0.1:{ssh_env.port}"
    r = cli("install", "--json", "--yes", a, b, "-i", str(ssh_env.key), env=urls)
    results = {e["host"]: e for e in r.events if e["event"] == "result"}
    assert {h: e["outcome"] for h, e in results.items()} == {
        a: "host-key-unknown", b: "host-key-unknown"
    }  # fmt: skip
    assert all("--accept-new-host-key" in e["error"]["fix"] for e in results.values())
    assert r.code == 22 and r.events[-1]["event"] == "summary"
    assert machine.state == "original"


def test_saved_profiles_as_a_batch_each_keep_their_own_record(
    ssh_env: SSHEnv, machine: Machine, urls: dict[str, str], tmp_path: Path
) -> None:
    store = ProfileStore(tmp_path / "app" / "config" / "profiles.json")
    store.put(Profile("web-a", "127.0.0.1", port=machine.port, key_path=str(ssh_env.key)))
    unreachable = Profile("web-b", "127.0.0.1", port=free_port(), key_path=str(ssh_env.key))
    store.put(unreachable)
    r = cli(
        "install", "--json", "--yes", "--accept-new-host-key", "--from-profiles", "web-a",
        "web-b", "--transfer", "upload", "--down-timeout", "20", "--timeout", "20", env=urls,
    )  # fmt: skip
    summary = r.events[-1]
    assert [(h["host"], h["outcome"]) for h in summary["hosts"]] == [
        ("web-a", "installer-ready"), ("web-b", "ssh-connect")
    ], r.stdout[-3000:]  # fmt: skip
    assert r.code == 20
    saved = store.load()
    assert saved["web-a"].state == "installer" and saved["web-a"].installer["port"] == machine.port
    assert saved["web-b"] == unreachable  # never reached: its record is as it was


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["a.example", "b.example", "--parallel", "0"], "--parallel 0 is out of range"),
        (["a.example", "b.example", "--save-profile", "x"], "name one server"),
        (["root@a.example", "a.example:22"], "are the same server"),
    ],
)
def test_a_batch_that_makes_no_sense_is_refused_before_any_connection(
    args: list[str], says: str
) -> None:
    r = cli("install", "--json", "--yes", *args)
    assert r.code == 2 and says in r.result["error"]["what"], r.stdout


def test_a_mixed_batch_fetches_each_arch_s_image_once(
    releases: ReleasesServer, settings: Settings, tmp_path: Path
) -> None:
    """Four servers, two per arch, ask at once: each tarball is downloaded and checked once,
    and each server gets its own arch's."""
    from app.core.catalog import CatalogClient
    from app.core.download import ImageCache
    from app.core.events import CancelToken, discard
    from app.core.fleet import SharedImages
    from app.core.flow import choose_image
    from app.core.plan import ImageRequest
    from tests.support.tarballs import standin_tarball

    arm = ASSET.replace("x86_64", "aarch64")
    releases.add("nixos-26.05", arm, standin_tarball(tmp_path / arm).read_bytes())
    catalog = CatalogClient(settings, tmp_path / "catalog.json").load()
    choices = {
        a: choose_image(ImageRequest("nixos-26.05", a), None, settings, catalog)
        for a in ("x86_64", "aarch64")
    }
    shared = SharedImages(ImageCache(tmp_path / "images"), settings)
    arches = ["x86_64", "aarch64", "x86_64", "aarch64"]
    got = _together(4, lambda i: shared.get(choices[arches[i]], discard, CancelToken()))
    names = [img.info.name for img in got]  # type: ignore[attr-defined]
    assert names == [ASSET, arm, ASSET, arm]
    assert len(releases.downloads(ASSET)) == 1 and len(releases.downloads(arm)) == 1

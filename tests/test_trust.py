"""Holes closed: what the app once trusted unchecked, destroyed, or waited for past a deadline."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest

from app.core import keys as appkeys
from app.core.catalog import Asset
from app.core.download import Downloader, ImageCache
from app.core.errors import (
    AuthError,
    Cancelled,
    ConfigError,
    HostKeyChanged,
    HostKeyOtherType,
    HostKeyRevoked,
    HostKeyUnknown,
    IntegrityError,
    KnownHostsUnreadable,
    NewSystemHostKey,
    RemoteCommandError,
    TransferError,
    UsageError,
)
from app.core.events import CancelToken
from app.core.flow import record
from app.core.handoff import installer_ssh_command, profile_installer
from app.core.imagecheck import check_tar_listing, check_tarball
from app.core.inspect import run_probe
from app.core.install.place import cleanup
from app.core.install.wait import connect_installer
from app.core.netboot import NetbootServer, NetbootSource
from app.core.plan import InstallPlan
from app.core.profiles import ProfileStore
from app.core.result import InstallerInfo, leftover_command, leftover_note
from app.core.secrets import SecretStore
from app.core.settings import Settings
from app.core.ssh import (
    LINE_LIMIT,
    OUTPUT_LIMIT,
    ConnectOptions,
    Credentials,
    KnownHosts,
    Session,
    Target,
    connect,
)
from app.core.transfer import choose_transfer
from tests.support.hostile_ssh import Behaviour, HostileSSH
from tests.support.releases import ASSET, ReleasesServer
from tests.support.sshd import SSHEnv, SSHServer, fingerprint, free_port, keygen
from tests.support.tarballs import standin_tarball
from tests.test_cli import cli
from tests.test_install import make_rig

pytestmark = pytest.mark.fault


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """A host key for hostile servers and a client key."""
    d = tmp_path / "hostile-keys"
    d.mkdir()
    return {"host": keygen(d / "host"), "client": keygen(d / "client")}


@pytest.fixture
def hostile(keys: dict[str, Path]) -> Callable[[Behaviour | None], HostileSSH]:
    servers: list[HostileSSH] = []

    def make(behaviour: Behaviour | None = None) -> HostileSSH:
        srv = HostileSSH(keys["host"], behaviour).__enter__()
        servers.append(srv)
        return srv

    yield make  # type: ignore[misc]
    for srv in servers:
        srv.__exit__()


def _login(srv: HostileSSH, keys: dict[str, Path], tmp_path: Path) -> Session:
    kh = tmp_path / "kh-hostile"
    kh.write_text(srv.known_hosts_line())
    key = paramiko.Ed25519Key.from_private_key_file(str(keys["client"]))
    return connect(
        Target("127.0.0.1", srv.port, "root"),
        Credentials(method="key", extra_keys=(key,), use_agent=False),
        KnownHosts(kh, user_file=tmp_path / "none"),
        ConnectOptions(timeout=5),
    )


def _within(seconds: float, fn: Callable[[], Any]) -> tuple[float, BaseException | None]:
    """Run ``fn`` on a thread; fail the test if it is still running after ``seconds``."""
    box: dict[str, BaseException] = {}

    def body() -> None:
        try:
            fn()
        except BaseException as exc:
            box["exc"] = exc

    t0 = time.monotonic()
    th = threading.Thread(target=body, daemon=True)
    th.start()
    th.join(seconds)
    assert not th.is_alive(), f"still blocked after {seconds} s"
    return time.monotonic() - t0, box.get("exc")


# -- 11: every remote call ends by its deadline --------------------------------------------


@pytest.mark.parametrize("freeze", ["channel open", "exec request"])
def test_run_ends_by_its_deadline_against_a_frozen_server(
    hostile: Callable[..., HostileSSH], keys: dict[str, Path], tmp_path: Path, freeze: str
) -> None:
    srv = hostile()
    with _login(srv, keys, tmp_path) as s:
        (srv.freeze_channels if freeze == "channel open" else srv.freeze_exec).set()
        took, exc = _within(8, lambda: s.run("true", timeout=2, what="the test command"))
    assert isinstance(exc, RemoteCommandError), exc
    assert "the test command ran past its 2 s deadline" in exc.what
    assert "stopped answering" in exc.why and exc.fix
    assert took < 3.5


def test_cancel_is_heard_while_the_channel_is_still_opening(
    hostile: Callable[..., HostileSSH], keys: dict[str, Path], tmp_path: Path
) -> None:
    srv = hostile()
    cancel = CancelToken()
    with _login(srv, keys, tmp_path) as s:
        srv.freeze_channels.set()
        threading.Timer(0.5, cancel.cancel).start()
        took, exc = _within(8, lambda: s.run("true", timeout=60, cancel=cancel))
    assert isinstance(exc, Cancelled)
    assert took < 2


# -- 12: what a flooding server sends is bounded ---------------------------------------------


def _flood(total: int, newline_every: int | None = None) -> Behaviour:
    def behave(chan: paramiko.Channel, cmd: str) -> None:
        block = b"x" * 65536
        if newline_every:
            block = (b"y" * (newline_every - 1) + b"\n") * (65536 // newline_every)
        sent = 0
        while sent < total:
            chan.sendall(block)
            chan.sendall_stderr(block[:1024])
            sent += len(block)

    return behave


def test_a_server_flooding_stdout_is_cut_to_its_tail(
    hostile: Callable[..., HostileSSH], keys: dict[str, Path], tmp_path: Path
) -> None:
    total = 3 * OUTPUT_LIMIT
    srv = hostile(_flood(total))
    lines: list[str] = []
    with _login(srv, keys, tmp_path) as s:
        res = s.run("flood", timeout=60, on_line=lambda _stream, ln: lines.append(ln))
    assert res.ok
    assert len(res.stdout) == OUTPUT_LIMIT and set(res.stdout) == {"x"}
    assert res.stdout_dropped == total - OUTPUT_LIMIT
    # A "line" with no newline at all reaches the sink in bounded pieces, never whole.
    assert lines and max(len(ln) for ln in lines) <= LINE_LIMIT


def test_output_under_the_bound_is_kept_whole_with_its_lines(
    hostile: Callable[..., HostileSSH], keys: dict[str, Path], tmp_path: Path
) -> None:
    srv = hostile(_flood(256 * 1024, newline_every=64))
    lines: list[str] = []
    with _login(srv, keys, tmp_path) as s:
        res = s.run("some", timeout=30, on_line=lambda stream, ln: lines.append(stream + ln))
    assert res.stdout_dropped == 0 and len(res.stdout) == 256 * 1024
    assert sum(1 for ln in lines if ln.startswith("stdout")) == 256 * 1024 // 64
    assert all(ln == "stdout" + "y" * 63 for ln in lines if ln.startswith("stdout"))


def test_output_after_the_exit_status_is_read_until_the_end_of_the_stream(
    hostile: Callable[..., HostileSSH], keys: dict[str, Path], tmp_path: Path
) -> None:
    """RFC 4254 lets a server send the exit status before the last of the output (OpenSSH
    does when the channel's window is full): the command ends at the end of its stream."""

    def late_tail(chan: paramiko.Channel, _cmd: str) -> None:
        chan.sendall(b"begin\n")
        chan.send_exit_status(0)
        time.sleep(0.6)
        chan.sendall(b"end\n")

    with _login(hostile(late_tail), keys, tmp_path) as s:
        res = s.run("framed", timeout=30)
    assert res.ok and res.stdout == "begin\nend\n"


# -- 2, 3: known_hosts read as OpenSSH reads it; other key types are never "new" ------------


def _pub(path: Path) -> str:
    """``type base64`` of a public key file."""
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


@pytest.fixture
def other_server(tmp_path: Path) -> Iterator[SSHServer]:
    """A second real sshd (the same users) with host keys of its own: ed25519 and RSA."""
    d = tmp_path / "other-sshd"
    d.mkdir()
    srv = SSHServer(
        free_port(), d, [keygen(d / "ssh_host_ed25519_key"), keygen(d / "ssh_host_rsa_key", "rsa")]
    )
    srv.start()
    yield srv
    srv.stop()


def _user(env: SSHEnv, port: int, jump: Target | None = None) -> Target:
    return Target("127.0.0.1", port, "nkw-nopw", identity_files=(str(env.key),), jump=jump)


def test_a_bad_line_hides_no_key_after_it(ssh_env: SSHEnv, tmp_path: Path) -> None:
    kh = tmp_path / "kh"
    key = _pub(ssh_env.server.host_key_pub.with_suffix(""))
    # A damaged line for another host (base64 cut short) before the server's own.
    kh.write_text(f"old.example.org ssh-ed25519 AAAAC3Nza!!\n[127.0.0.1]:{ssh_env.port} {key}\n")
    with connect(
        _user(ssh_env, ssh_env.port), Credentials(method="key"), KnownHosts(kh, tmp_path / "u")
    ):
        pass  # known: no question, nothing added
    assert kh.read_text().count(f"[127.0.0.1]:{ssh_env.port}") == 1


def test_a_changed_key_behind_a_bad_line_is_still_a_changed_key(
    ssh_env: SSHEnv, tmp_path: Path
) -> None:
    kh = tmp_path / "kh"
    other = _pub(keygen(tmp_path / "not-the-server"))
    kh.write_text(f"old.example.org ssh-ed25519 AAAAC3Nza!!\n[127.0.0.1]:{ssh_env.port} {other}\n")
    before = kh.read_text()
    with pytest.raises(HostKeyChanged):
        connect(
            _user(ssh_env, ssh_env.port),
            Credentials(method="key"),
            KnownHosts(kh, tmp_path / "u"),
            ConnectOptions(accept_new_host_key=True),
        )
    assert kh.read_text() == before


def test_a_revoked_key_is_refused_and_marker_lines_do_not_crash(
    ssh_env: SSHEnv, tmp_path: Path
) -> None:
    kh = tmp_path / "kh"
    server_key = _pub(ssh_env.server.host_key_pub.with_suffix(""))
    rsa = _pub(next(k for k in ssh_env.server.host_keys if "rsa" in k.name))
    kh.write_text(
        f"@cert-authority *.example.org {server_key}\n"
        f"[127.0.0.1]:{ssh_env.port} ssh-unknown-type AAAAB3NzaC1yc2EAAAADAQAB\n"
        f"@revoked [127.0.0.1]:{ssh_env.port} {server_key}\n"
        f"[127.0.0.1]:1 {rsa}\n"
    )
    known = KnownHosts(kh, tmp_path / "u")
    with pytest.raises(HostKeyRevoked) as ei:
        connect(_user(ssh_env, ssh_env.port), Credentials(method="key"), known)
    assert ei.value.exit_code == 23 and "@revoked" in ei.value.what
    state = known.lookup("127.0.0.1", ssh_env.port)
    assert state.keys == [] and state.revoked == {server_key}
    assert state.unreadable == [f"{kh}:2"]
    assert known.lookup("127.0.0.1", 1).keys == [rsa]
    # A CA line for other names is ignored (and says so where it matches).
    assert known.lookup("ca.example.org", 22).notes[0].endswith("certificates are not used)")


def test_an_unreadable_line_for_the_host_means_it_is_never_called_new(
    ssh_env: SSHEnv, tmp_path: Path
) -> None:
    kh = tmp_path / "kh"
    kh.write_text(f"[127.0.0.1]:{ssh_env.port} ssh-ed25519 AAAA!!notbase64\n")
    with pytest.raises(KnownHostsUnreadable) as ei:
        connect(
            _user(ssh_env, ssh_env.port),
            Credentials(method="key"),
            KnownHosts(kh, tmp_path / "u"),
            ConnectOptions(accept_new_host_key=True),
        )
    assert f"{kh}:1" in ei.value.what and "ssh-keygen -R" in ei.value.fix


def test_hashed_host_names_are_matched(ssh_env: SSHEnv, tmp_path: Path) -> None:
    kh = tmp_path / "kh"
    key = _pub(ssh_env.server.host_key_pub.with_suffix(""))
    kh.write_text(f"[127.0.0.1]:{ssh_env.port} {key}\n")
    subprocess.run(["ssh-keygen", "-H", "-f", str(kh)], check=True, capture_output=True)
    assert "|1|" in kh.read_text()
    with connect(
        _user(ssh_env, ssh_env.port), Credentials(method="key"), KnownHosts(kh, tmp_path / "u")
    ):
        pass


def test_a_key_of_another_type_is_not_new_and_needs_its_own_acceptance(
    ssh_env: SSHEnv, other_server: SSHServer, tmp_path: Path
) -> None:
    kh = tmp_path / "kh"
    ed_pub = other_server.host_key_pub
    ed = _pub(ed_pub.with_suffix(""))
    rsa_file = next(k for k in other_server.host_keys if "rsa" in k.name)
    # Known: the ed25519 key. The client is made to meet the RSA key first, as a server
    # offering only RSA (or someone in the middle) would present it.
    kh.write_text(f"[127.0.0.1]:{other_server.port} {ed}\n")
    other_server.stop()
    other_server.host_keys = [rsa_file]
    other_server.start()
    before = kh.read_text()
    known = KnownHosts(kh, tmp_path / "u")
    target = _user(ssh_env, other_server.port)
    with pytest.raises(HostKeyOtherType) as ei:
        connect(target, Credentials(method="key"), known, ConnectOptions(accept_new_host_key=True))
    err = ei.value
    assert err.key_type == "ssh-rsa" and err.fingerprint == fingerprint(
        rsa_file.with_suffix(".pub")
    )
    assert err.known_keys == [("ssh-ed25519", fingerprint(ed_pub))]
    assert "--accept-new-host-key does not apply" in err.why
    assert kh.read_text() == before
    # Accepting exactly that fingerprint adds it beside the other one.
    opts = ConnectOptions().trusting("127.0.0.1", other_server.port, err.fingerprint)
    connect(target, Credentials(method="key"), known, opts).close()
    assert kh.read_text().startswith(before) and _pub(rsa_file) in kh.read_text()


# -- 4: every jump hop has its own host-key check, answers and login ------------------------


def test_a_jump_hop_never_inherits_an_accept_any_and_its_answer_sticks(
    ssh_env: SSHEnv, other_server: SSHServer, trusted: Path, tmp_path: Path
) -> None:
    jump = _user(ssh_env, other_server.port)
    target = _user(ssh_env, ssh_env.port, jump=jump)
    known = KnownHosts(trusted, tmp_path / "u")
    # Even where the target's own key may be replaced (a bundle's new system), the hop is
    # checked as any host: unknown, so asked about.
    replaced = ConnectOptions(
        expect_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA", replaced_system=True
    )
    with pytest.raises(HostKeyUnknown) as ei:
        connect(target, Credentials(method="key"), known, replaced)
    assert (ei.value.host, ei.value.port) == ("127.0.0.1", other_server.port)
    # The answer for the hop is kept for the hop: the next attempt goes through.
    opts = ConnectOptions().trusting("127.0.0.1", other_server.port, ei.value.fingerprint)
    with connect(target, Credentials(method="key"), known, opts) as s:
        assert s.run("echo through", timeout=10).stdout.strip() == "through"
    assert f"[127.0.0.1]:{other_server.port} ssh-ed25519" in trusted.read_text()


def test_the_targets_password_is_never_offered_to_a_jump_host(
    ssh_env: SSHEnv, other_server: SSHServer, trusted: Path, tmp_path: Path
) -> None:
    # The hop takes the user's own key file (as OpenSSH would); the target takes the password.
    ssh_dir = Path.home() / ".ssh"
    shutil.copy(ssh_env.key, ssh_dir / "id_ed25519")
    shutil.copy(ssh_env.key.with_suffix(".pub"), ssh_dir / "id_ed25519.pub")
    known = KnownHosts(trusted, tmp_path / "u")
    jump = Target("127.0.0.1", other_server.port, "nkw-plain")
    target = Target("127.0.0.1", ssh_env.port, "nkw-plain", jump=jump)
    creds = Credentials(method="password", password=ssh_env.plain.password)
    opts = ConnectOptions().trusting(
        "127.0.0.1", other_server.port, fingerprint(other_server.host_key_pub)
    )
    with connect(target, creds, known, opts) as s:
        assert s.auth_kind == "password"
    time.sleep(0.3)
    hop_log = other_server.log.read_text()
    assert "Accepted publickey for nkw-plain" in hop_log
    assert "password" not in hop_log.lower().replace("passwordauthentication", "")


# -- 1: a kexec-bundle's new host key is never taken unseen --------------------------------


def test_a_bundles_new_host_key_is_asked_about_and_nothing_is_sent_before(
    ssh_env: SSHEnv,
    other_server: SSHServer,
    trusted: Path,
    settings: Settings,
    releases: ReleasesServer,
    tmp_path: Path,
) -> None:
    rig = make_rig(ssh_env, trusted, settings, releases, tmp_path)
    inst = rig.installer
    inst.setup = dataclasses.replace(
        inst.setup, plan=dataclasses.replace(inst.setup.plan, kind="bundle")
    )
    inst.state.installer_creds = Credentials(method="key")
    # After the "kexec", something else answers at the address: the other sshd stands in.
    with pytest.raises(NewSystemHostKey) as ei:
        connect_installer(rig.step(), other_server.port)
    err = ei.value
    assert err.fingerprint == fingerprint(other_server.host_key_pub)
    assert "NOT verified" in err.what and "old key is still the one trusted" in err.why
    assert err.exit_code == 22
    time.sleep(0.3)
    log = other_server.log.read_text()
    assert "Accepted" not in log and "Failed" not in log and "nkw-" not in log
    assert f"[127.0.0.1]:{other_server.port}" not in trusted.read_text()
    # Only after the user accepts exactly that fingerprint does a login go to it.
    inst.state.accepted_keys.add(err.fingerprint)
    with pytest.raises(AuthError):  # root has no key there: but the key check passed
        connect_installer(rig.step(), other_server.port)
    time.sleep(0.3)
    assert "root" in other_server.log.read_text()


# -- 5: cleanup never empties authorized_keys --------------------------------------------


@contextlib.contextmanager
def full_tmpfs_over(path: Path, owner: str) -> Iterator[Path]:
    """A 64 KiB tmpfs mounted over an existing folder, owned by ``owner`` (needs root)."""
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(path)], check=True
    )
    try:
        subprocess.run(["chown", f"{owner}:", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with contextlib.suppress(OSError), filler.open("wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 4096)
    return filler


def test_cleanup_on_a_full_disk_leaves_authorized_keys_whole(
    ssh_env: SSHEnv, trusted: Path, settings: Settings, releases: ReleasesServer, tmp_path: Path
) -> None:
    rig = make_rig(ssh_env, trusted, settings, releases, tmp_path)
    inst = rig.installer
    ssh_dir = ssh_env.nopw.home / ".ssh"
    users_keys = (ssh_dir / "authorized_keys").read_text()
    app_line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHRoZWFwcHNrZXlsaW5lMDEyMzQ1Njc4OTAx nixos-kexec-wizard:test"
    with full_tmpfs_over(ssh_dir, "nkw-nopw"):
        auth = ssh_dir / "authorized_keys"
        auth.write_text(users_keys + app_line + "\n")
        shutil.chown(auth, "nkw-nopw")
        inst.state.added_key = (str(auth), app_line)
        filler = _fill(ssh_dir)
        rig.events.clear()
        cleanup(rig.step())
        # The filter could not be written: the file is exactly as it was, the user not locked out.
        assert auth.read_text() == users_keys + app_line + "\n"
        assert any("could not be removed" in e.message for e in rig.events)
        assert sorted(p.name for p in ssh_dir.iterdir()) == ["authorized_keys", "filler"]
        filler.unlink()
        cleanup(rig.step())
        assert auth.read_text() == users_keys
        assert sorted(p.name for p in ssh_dir.iterdir()) == ["authorized_keys"]
    rig.session.close()


# -- 7: a staging folder someone else controls is refused -------------------------------


@pytest.mark.parametrize("how", ["owned by another user", "writable by everyone"])
def test_a_staging_folder_someone_else_controls_is_refused(
    ssh_env: SSHEnv,
    trusted: Path,
    settings: Settings,
    releases: ReleasesServer,
    tmp_path: Path,
    how: str,
) -> None:
    foreign = Path(tempfile.mkdtemp(prefix="nkw-foreign-", dir="/var/tmp"))
    try:
        if how == "owned by another user":
            shutil.chown(foreign, "nkw-plain")
            os.chmod(foreign, 0o777)  # nkw-nopw could write, but does not own it
            staging = str(foreign)
        else:
            os.chmod(foreign, 0o777)  # root's, but anyone may swap what is inside
            staging = str(foreign / "stage")
        rig = make_rig(ssh_env, trusted, settings, releases, tmp_path, staging=staging)
        with pytest.raises(TransferError) as ei:
            rig.installer.prepare(rig.events.append, rig.cancel)
        err = ei.value
        assert "is not safe" in err.what and "runs as root" in err.why
        assert ("belongs to user id" in err.what) == (how == "owned by another user")
        assert "--staging-dir" in err.fix
        # Nothing was put there: no marker, no image.
        left = [p.name for p in Path(staging).rglob("*")] if Path(staging).exists() else []
        assert left == []
        rig.session.close()
    finally:
        shutil.rmtree(foreign, ignore_errors=True)


@pytest.mark.fault
def test_an_empty_staging_folder_a_loose_umask_left_is_made_private_and_used(
    ssh_env: SSHEnv, trusted: Path, settings: Settings, releases: ReleasesServer, tmp_path: Path
) -> None:
    """Debian 13 logs users in with umask 002: a folder made then is group-writable. The app
    makes its folder private whatever the umask, and an empty one left so is made private."""
    parent = Path(tempfile.mkdtemp(prefix="nkw-umask-", dir="/var/tmp"))
    try:
        os.chmod(parent, 0o755)
        loose = parent / "left-by-umask-002"
        loose.mkdir(mode=0o775)
        os.chmod(loose, 0o775)
        shutil.chown(loose, ssh_env.nopw.name)
        fresh = parent / "new" / "stage"
        shutil.chown(parent, ssh_env.nopw.name)
        for staging in (loose, fresh):
            rig = make_rig(ssh_env, trusted, settings, releases, tmp_path, staging=str(staging))
            rig.installer.prepare(
                rig.events.append, rig.cancel
            )  # refused as "may be written by others" before
            assert staging.stat().st_mode & 0o777 == 0o700
            rig.session.close()
        assert (fresh.parent.stat().st_mode & 0o077) == 0  # the parents it made, too
    finally:
        shutil.rmtree(parent, ignore_errors=True)


# -- 8: kexec's extra flags reach a root shell: only what flags look like ------------------


@pytest.mark.parametrize("flags", ["-c; touch /tmp/nkw-owned", "$(id)", "-c `id`", "-s'", "c"])
def test_kexec_extra_flags_that_are_not_flags_are_refused(flags: str) -> None:
    with pytest.raises(UsageError) as ei:
        InstallPlan(target=Target("192.0.2.1"), kexec_extra_flags=flags)
    assert "unquoted" in ei.value.why


def test_plain_kexec_flags_pass() -> None:
    plan = InstallPlan(target=Target("192.0.2.1"), kexec_extra_flags="-c --no-sync -s")
    assert plan.kexec_extra_flags == "-c --no-sync -s"


def test_the_cli_refuses_bad_kexec_flags_before_it_connects(tmp_path: Path) -> None:
    r = cli("install", "--yes", "root@127.0.0.1:1", "--kexec-extra-flags=-c;reboot")
    assert r.code == 2, r.stderr  # a usage error, not "connection refused" (20)
    assert "does not look like kexec options" in r.stderr


# -- 9: the probe's placeholders are filled once -----------------------------------------


def test_a_staging_path_naming_another_placeholder_stays_literal(
    ssh_env: SSHEnv, trusted: Path, settings: Settings
) -> None:
    target = Target("127.0.0.1", ssh_env.port, "nkw-nopw", identity_files=(str(ssh_env.key),))
    with connect(target, Credentials(method="key"), KnownHosts(trusted, trusted.parent / "u")) as s:
        facts = run_probe(s, settings, "~/odd __URL__ dir")
    assert facts.staging.path == f"{ssh_env.nopw.home}/odd __URL__ dir"
    assert facts.arch == "x86_64"


# -- 10: the key line left on the old system is named, with its remover -------------------


def test_the_key_left_on_the_old_system_is_named_and_its_command_removes_only_it(
    ssh_env: SSHEnv, trusted: Path, tmp_path: Path
) -> None:
    auth = ssh_env.plain.home / ".ssh" / "authorized_keys"
    before = auth.read_text()
    comment = "nixos-kexec-wizard:web-1"
    line = f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFRoaXNJc1RoZUFwcHNLZXlMaW5lMTIzNDU2Nzg {comment}"
    auth.write_text(before + line + "\n")
    info = InstallerInfo(
        "192.0.2.1", 22, "root", "ssh-ed25519 AAAA", "SHA256:x", "b", "nixos-installer", {},
        key_left_in=str(auth), key_comment=comment,
    )  # fmt: skip
    note = leftover_note(info)
    assert note is not None and str(auth) in note and "boot the old system again" in note
    cmd = leftover_command(info)
    assert cmd is not None and cmd in note
    target = Target("127.0.0.1", ssh_env.port, "nkw-plain", identity_files=(str(ssh_env.key),))
    with connect(target, Credentials(method="key"), KnownHosts(trusted, trusted.parent / "u")) as s:
        assert s.run(cmd, timeout=10).ok
    assert auth.read_text() == before
    assert leftover_note(dataclasses.replace(info, key_left_in="")) is None


# -- 6: the server downloads only what it can check, and only over https -----------------


def _hostile_asset(releases: ReleasesServer, tmp_path: Path, **kw: Any) -> Asset:
    data = standin_tarball(tmp_path / "hostile.tar.gz", **kw).read_bytes()
    sha = releases.add("nixos-hostile", ASSET, data)
    return Asset(ASSET, releases.url("nixos-hostile", ASSET), size=len(data), digest=sha)


def test_the_server_never_downloads_an_image_without_a_published_digest(
    ssh_env: SSHEnv, trusted: Path, settings: Settings, releases: ReleasesServer, tmp_path: Path
) -> None:
    rig = make_rig(ssh_env, trusted, settings, releases, tmp_path, transfer="upload")
    asset = rig.installer.setup.plan.asset
    assert asset is not None and asset.digest
    bare = dataclasses.replace(asset, digest=None)
    with pytest.raises(TransferError) as ei:
        choose_transfer("remote", rig.installer.setup.facts, bare)
    assert "no sha256 was published" in ei.value.what and "--transfer upload" in ei.value.fix
    mode, why = choose_transfer("auto", rig.installer.setup.facts, bare)
    assert mode == "upload" and "only images with a published sha256" in why
    assert choose_transfer("remote", rig.installer.setup.facts, asset)[0] == "remote"
    rig.session.close()


def test_the_servers_own_download_gets_the_same_member_check(
    ssh_env: SSHEnv, trusted: Path, settings: Settings, releases: ReleasesServer, tmp_path: Path
) -> None:
    asset = _hostile_asset(releases, tmp_path, links={"kexec/s": ".", "kexec/up": "s/.."})
    rig = make_rig(ssh_env, trusted, settings, releases, tmp_path, transfer="remote", asset=asset)
    with pytest.raises(IntegrityError) as ei:
        rig.installer.prepare(rig.events.append, rig.cancel)
    assert "'kexec/up' links outside the kexec/ folder" in ei.value.what
    assert any("sha256 matches on the server" in e.message for e in rig.events)
    # Nothing of it is left on the server, and nothing was unpacked.
    assert not rig.staging.exists() or not any(rig.staging.iterdir())
    rig.session.close()


class _Redirector(http.server.BaseHTTPRequestHandler):
    """Answers every GET with a redirect to ``location`` (set on the server)."""

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.server.location)  # type: ignore[attr-defined]
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_the_servers_curl_does_not_follow_a_redirect_off_http(
    ssh_env: SSHEnv, trusted: Path, settings: Settings, releases: ReleasesServer, tmp_path: Path
) -> None:
    # Something listening where a redirect to ftp:// would lead; it must never be contacted.
    trap = socket.socket()
    trap.bind(("127.0.0.1", 0))
    trap.listen(4)
    trap.settimeout(0.5)
    redirector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirector)
    redirector.location = f"ftp://127.0.0.1:{trap.getsockname()[1]}/image"  # type: ignore[attr-defined]
    threading.Thread(target=redirector.serve_forever, daemon=True).start()
    try:
        good = releases.files[f"nixos-26.05/{ASSET}"]
        asset = Asset(
            ASSET,
            f"http://127.0.0.1:{redirector.server_address[1]}/{ASSET}",
            size=len(good),
            digest=hashlib.sha256(good).hexdigest(),
        )
        rig = make_rig(
            ssh_env, trusted, settings, releases, tmp_path, transfer="remote", asset=asset
        )
        with pytest.raises(TransferError) as ei:
            rig.installer.prepare(rig.events.append, rig.cancel)
        assert "could not download" in ei.value.what
        with pytest.raises(TimeoutError):
            trap.accept()  # curl stayed on http(s): the ftp address was never contacted
        rig.session.close()
    finally:
        redirector.shutdown()
        redirector.server_close()
        trap.close()


# -- 13: downloads read no more than the asset, as sent, from where they stopped ----------


class _Mirror(http.server.BaseHTTPRequestHandler):
    """A lying mirror: ``body`` for every GET, with ``status`` and ``extra`` headers."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        srv: Any = self.server
        srv.seen.append(dict(self.headers))
        body = srv.body
        self.send_response(srv.status)
        for k, v in srv.extra.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"v1"')
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def mirror() -> Iterator[Any]:
    srv: Any = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Mirror)
    srv.body, srv.status, srv.extra, srv.seen = b"", 200, {}, []
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/{ASSET}"
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_a_mirror_sending_far_more_than_the_asset_is_an_integrity_error(
    mirror: Any, settings: Settings, tmp_path: Path
) -> None:
    mirror.body = b"x" * (40 << 20)
    asset = Asset(ASSET, mirror.url, size=178, digest="0" * 64)
    cache_dir = tmp_path / "small-cache"
    cache_dir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(cache_dir)], check=True)
    try:
        with pytest.raises(IntegrityError) as ei:
            Downloader(settings, ImageCache(cache_dir), retries=0).fetch(asset)
        assert "more than the 178 bytes" in ei.value.what
        assert not [p for p in cache_dir.rglob("*") if p.is_file() and p.stat().st_size]
    finally:
        subprocess.run(["umount", str(cache_dir)], check=True)
    # The file's own bytes were asked for, not a compressed form of them.
    assert mirror.seen[0].get("Accept-Encoding") == "identity"


def test_a_resume_answered_from_another_offset_starts_over_instead_of_corrupting(
    mirror: Any, settings: Settings, tmp_path: Path
) -> None:
    good = standin_tarball(tmp_path / "good.tar.gz").read_bytes()
    asset = Asset(ASSET, mirror.url, size=len(good), digest=hashlib.sha256(good).hexdigest())
    dl = Downloader(settings, ImageCache(tmp_path / "images"), retries=2, backoff=0.05)
    # A partial download of the first 1000 bytes, with the validator the mirror sends.
    part = dl._part_path(asset)
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(good[:1000])
    dl._meta_path(part).write_text(json.dumps({"validator": '"v1"'}))
    # The mirror says 206 but sends the whole file from byte 0.
    mirror.status, mirror.body = 206, good
    mirror.extra = {"Content-Range": f"bytes 0-{len(good) - 1}/{len(good)}"}

    def honest_after_first() -> None:
        while len(mirror.seen) < 1:
            time.sleep(0.01)
        mirror.status, mirror.extra = 200, {}

    threading.Thread(target=honest_after_first, daemon=True).start()
    img = dl.fetch(asset)
    assert img.path.read_bytes() == good
    assert mirror.seen[0].get("Range") == "bytes=1000-" and "Range" not in mirror.seen[-1]


# -- 14: links are followed as tar would follow them ---------------------------------------


@pytest.mark.parametrize(
    ("links", "why"),
    [
        ({"kexec/s": ".", "kexec/up": "s/.."}, "'kexec/up' links outside"),
        ({"kexec/a": "b", "kexec/b": "../.."}, "'kexec/b' links outside"),
        ({"kexec/etc": "sub", "kexec/etc/passwd": "x"}, "lies beneath a link"),
    ],
)
def test_tarball_links_are_resolved_against_the_members_before_them(
    tmp_path: Path, links: dict[str, str], why: str
) -> None:
    tar = standin_tarball(tmp_path / ASSET, links=links)
    with pytest.raises(IntegrityError) as ei:
        check_tarball(tar)
    assert why in ei.value.what
    # The listing the server's own tar prints is judged the same way.
    listing = subprocess.run(
        ["tar", "-tvzf", str(tar)], capture_output=True, text=True, env={"LC_ALL": "C"}
    )
    with pytest.raises(IntegrityError) as ei:
        check_tar_listing(ASSET, listing.stdout)
    assert why in ei.value.what


def test_links_that_stay_inside_pass_in_both_checks(tmp_path: Path) -> None:
    tar = standin_tarball(tmp_path / ASSET, links={"kexec/s": ".", "kexec/here": "s/run"})
    check_tarball(tar)
    listing = subprocess.run(
        ["tar", "-tvzf", str(tar)], capture_output=True, text=True, env={"LC_ALL": "C"}
    )
    check_tar_listing(ASSET, listing.stdout)


# -- 15: bad local files end in a clear message, and no profile is lost ------------------


def _app(tmp_path: Path) -> Path:
    return tmp_path / "app"


def _write_profiles(tmp_path: Path, profiles: list[Any]) -> Path:
    path = _app(tmp_path) / "config" / "profiles.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "profiles": profiles}))
    return path


@pytest.mark.parametrize(
    ("bad", "said"),
    [
        (["a", "list", "not a profile"], "an entry is a list"),
        ({"name": "s", "host": "h", "port": "22"}, "port is '22', not a number"),
        ({"name": "t", "host": "h", "port": True}, "port is True, not a number"),
        ({"name": "u", "host": "h", "facts": []}, "facts is [], not an object"),
    ],
)
def test_an_unreadable_profile_is_named_the_others_load_and_the_file_is_kept(
    tmp_path: Path, bad: Any, said: str
) -> None:
    path = _write_profiles(tmp_path, [bad, {"name": "ok", "host": "h.example.org"}])
    original = path.read_text()
    r = cli("profiles", "list")
    assert r.code == 0, r.stderr
    assert "ok" in r.stdout and "Internal error" not in r.stdout + r.stderr
    assert said in r.stdout + r.stderr and "copied to" in r.stdout + r.stderr
    kept = list(path.parent.glob("profiles.json.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_text() == original


def test_unknown_keys_in_saved_installer_details_are_ignored(tmp_path: Path) -> None:
    installer = {
        "host": "192.0.2.7", "port": 22, "user": "root", "host_key": "ssh-ed25519 AAAA",
        "fingerprint": "SHA256:x", "boot_id": "b", "hostname": "nixos-installer",
        "os_release": {}, "identity_file": None, "from_a_newer_version": 1,
    }  # fmt: skip
    _write_profiles(tmp_path, [{"name": "web", "host": "192.0.2.7", "installer": installer}])
    r = cli("reconnect", "web", "--print")
    assert r.code == 0, r.stderr
    assert r.stdout.strip().endswith("root@192.0.2.7")
    del installer["host_key"]
    _write_profiles(tmp_path, [{"name": "web", "host": "192.0.2.7", "installer": installer}])
    r = cli("reconnect", "web", "--print")
    assert r.code == 3 and "is incomplete" in r.stderr and "Internal error" not in r.stderr


def test_an_unreadable_time_in_the_saved_releases_answer_is_only_stale(tmp_path: Path) -> None:
    cache = _app(tmp_path) / "cache" / "releases.json"
    cache.parent.mkdir(parents=True)
    body = [{"tag_name": "nixos-26.05", "assets": [{"name": ASSET, "size": 5,
             "browser_download_url": f"https://github.com/x/{ASSET}"}]}]  # fmt: skip
    cache.write_text(
        json.dumps(
            {"api_url": Settings().api_url, "fetched_at": "yesterday", "etag": 7, "body": body}
        )
    )
    r = cli("images", "--offline", "--json")
    assert r.code == 0, r.stdout + r.stderr
    assert "nixos-26.05" in r.stdout and "Internal error" not in r.stdout


def test_a_corrupt_app_key_is_a_clear_error_and_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "web_ed25519"
    path.parent.mkdir()
    path.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot a key\n")
    with pytest.raises(ConfigError) as ei:
        appkeys.load_or_create(path, "nixos-kexec-wizard:web")
    assert str(path) in ei.value.what and "will not overwrite" in ei.value.why
    assert "move it aside" in ei.value.fix
    assert path.read_text().endswith("not a key\n")


# -- 16: the netboot server's log is safe to print, and every request has a deadline -------


@pytest.fixture
def netboot(tmp_path: Path) -> Iterator[NetbootServer]:
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"k" * 1000)
    source = NetbootSource((kernel.name, kernel), (("initrd", b"i" * 10),), "init=/x/init", "t")
    srv = NetbootServer(source, "127.0.0.1", 0, request_deadline=1.0, stall_timeout=2.0).start()
    yield srv
    srv.stop()


def test_control_characters_in_a_request_path_are_escaped(netboot: NetbootServer) -> None:
    with socket.create_connection(("127.0.0.1", netboot.port), timeout=5) as s:
        s.sendall(b"GET /\x1b[2J\x1b]0;owned\x07\xe2\x80\xae HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 404")
        s.shutdown(socket.SHUT_WR)
        while s.recv(4096):  # the whole answer, so the server's write never meets a reset
            pass
    deadline = time.monotonic() + 5
    while not netboot.requests and time.monotonic() < deadline:
        time.sleep(0.02)  # recorded just after the answer went out
    req = netboot.requests[-1]
    assert req.status == 404
    assert all(c.isprintable() for c in req.line())
    assert "\\x1b[2J\\x1b]0;owned\\x07" in req.path and "\\x80" in req.path


def test_a_client_that_sends_nothing_is_cut_off_at_the_request_deadline(
    netboot: NetbootServer,
) -> None:
    with socket.create_connection(("127.0.0.1", netboot.port), timeout=6) as s:
        s.sendall(b"GET /netboot.ipxe HT")  # and then nothing
        t0 = time.monotonic()
        assert s.recv(100) == b""
        assert time.monotonic() - t0 < 3
    # Serving goes on for the next client.
    with socket.create_connection(("127.0.0.1", netboot.port), timeout=5) as s:
        s.sendall(b"HEAD /bzImage HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200")


# -- 17: reconnect's command keeps every hop and a known_hosts path with spaces -------------


def test_a_profile_keeps_every_jump_hop_with_ipv6_brackets(tmp_path: Path) -> None:
    first = Target("bastion.example.org", 22, "ops")
    second = Target("2001:db8::7", 2222, "jump", jump=first)
    target = Target("192.0.2.9", 22, "root", jump=second)
    store = ProfileStore(tmp_path / "profiles.json")
    profile, _ = record(
        store, SecretStore(), "web", target=target, creds=Credentials(), host_key="", facts=None
    )
    assert profile.jump == "ops@bastion.example.org:22,jump@[2001:db8::7]:2222"
    info = InstallerInfo("192.0.2.9", 22, "root", "ssh-ed25519 AAAA", "SHA256:x", "b", "n", {})
    saved = dataclasses.replace(profile, installer=info.to_json())
    _info, jump = profile_installer(saved)
    assert jump is not None and jump.label == "jump@[2001:db8::7]:2222"
    assert jump.jump is not None and jump.jump.label == "ops@bastion.example.org"
    cmd = installer_ssh_command(info, jump, tmp_path / "kh")
    assert cmd[cmd.index("-J") + 1] == "ops@bastion.example.org:22,jump@[2001:db8::7]:2222"


def test_openssh_reads_a_known_hosts_path_with_spaces_from_the_command(
    ssh_env: SSHEnv, trusted: Path, tmp_path: Path
) -> None:
    kh = tmp_path / "my config" / "known hosts"
    kh.parent.mkdir()
    shutil.copy(trusted, kh)  # the only file that knows the server's key
    key = _pub(ssh_env.server.host_key_pub.with_suffix(""))
    info = InstallerInfo(
        "127.0.0.1", ssh_env.port, "root", key, "SHA256:x", "b", "n", {},
        identity_file=str(ssh_env.key),
    )  # fmt: skip
    cmd = installer_ssh_command(info, None, kh)
    # OpenSSH itself runs the command (as a test user rather than root), checking the key.
    strict = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
    run = subprocess.run(
        [*cmd[:-1], *strict, "nkw-nopw@127.0.0.1", "echo", "reached"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "reached"


def test_a_client_that_resets_its_connection_prints_no_traceback(
    netboot: NetbootServer, capfd: pytest.CaptureFixture[str]
) -> None:
    import struct

    with socket.create_connection(("127.0.0.1", netboot.port), timeout=5) as s:
        s.sendall(b"HEAD /bzImage HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200")
        # Close with a reset (SO_LINGER 0) while the server waits for the next request.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    time.sleep(0.5)
    assert "Traceback" not in capfd.readouterr().err
    with socket.create_connection(("127.0.0.1", netboot.port), timeout=5) as s:
        s.sendall(b"HEAD /bzImage HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200")


def test_a_member_listing_cut_by_the_output_bound_is_refused_not_half_checked(
    ssh_env: SSHEnv, trusted: Path, settings: Settings, releases: ReleasesServer, tmp_path: Path
) -> None:
    import io
    import tarfile

    # The escaping links come first; hundreds of harmless members after them push them out of
    # the listing's kept tail, where only the good members would have been checked.
    buf = io.BytesIO()
    with (
        tarfile.open(standin_tarball(tmp_path / "good.tar.gz")) as good,
        tarfile.open(fileobj=buf, mode="w:gz") as out,
    ):
        for name, target in (("kexec/s", "."), ("kexec/up", "s/..")):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, target
            out.addfile(link)
        for i in range(400):
            out.addfile(tarfile.TarInfo(f"kexec/pad/{i:04d}-" + "x" * 40), io.BytesIO(b""))
        for m in good.getmembers():
            out.addfile(m, good.extractfile(m) if m.isfile() else None)
    data = buf.getvalue()
    sha = releases.add("nixos-hostile", ASSET, data)
    asset = Asset(ASSET, releases.url("nixos-hostile", ASSET), size=len(data), digest=sha)
    rig = make_rig(ssh_env, trusted, settings, releases, tmp_path, transfer="remote", asset=asset)
    rig.session.output_limit = 16 * 1024  # the listing is about 40 KiB
    with pytest.raises(IntegrityError) as ei:
        rig.installer.prepare(rig.events.append, rig.cancel)
    assert "too long to check" in ei.value.what
    assert not rig.staging.exists() or not any(rig.staging.iterdir())
    rig.session.close()


def test_a_probe_cut_by_the_output_bound_says_so(
    ssh_env: SSHEnv, trusted: Path, settings: Settings
) -> None:
    target = Target("127.0.0.1", ssh_env.port, "nkw-nopw", identity_files=(str(ssh_env.key),))
    with connect(target, Credentials(method="key"), KnownHosts(trusted, trusted.parent / "u")) as s:
        s.output_limit = 2048  # far less than a probe prints
        with pytest.raises(RemoteCommandError) as ei:
            run_probe(s, settings)
    assert "more output than" in ei.value.what and "not misread" in ei.value.why

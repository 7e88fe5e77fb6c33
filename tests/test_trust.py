"""Holes closed: what the app once trusted unchecked, destroyed, or waited for past a deadline."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest

from app.core.errors import (
    AuthError,
    Cancelled,
    HostKeyChanged,
    HostKeyOtherType,
    HostKeyRevoked,
    HostKeyUnknown,
    KnownHostsUnreadable,
    NewSystemHostKey,
    RemoteCommandError,
)
from app.core.events import CancelToken
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
from tests.conftest import SSHEnv
from tests.support.hostile_ssh import Behaviour, HostileSSH
from tests.support.releases import ReleasesServer
from tests.support.sshd import SSHServer, fingerprint, free_port, keygen
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
    inst.plan = dataclasses.replace(inst.plan, kind="bundle")
    inst.installer_creds = Credentials(method="key")
    # After the "kexec", something else answers at the address: the other sshd stands in.
    with pytest.raises(NewSystemHostKey) as ei:
        inst._connect_installer(other_server.port)
    err = ei.value
    assert err.fingerprint == fingerprint(other_server.host_key_pub)
    assert "NOT verified" in err.what and "old key is still the one trusted" in err.why
    assert err.exit_code == 22
    time.sleep(0.3)
    log = other_server.log.read_text()
    assert "Accepted" not in log and "Failed" not in log and "nkw-" not in log
    assert f"[127.0.0.1]:{other_server.port}" not in trusted.read_text()
    # Only after the user accepts exactly that fingerprint does a login go to it.
    inst.accept_host_key(err.fingerprint)
    with pytest.raises(AuthError):  # root has no key there: but the key check passed
        inst._connect_installer(other_server.port)
    time.sleep(0.3)
    assert "root" in other_server.log.read_text()

"""SSH against the real sshd: auth, host keys, commands, streaming, upload, cancel, sudo, jump."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from app.core.errors import (
    AuthError,
    Cancelled,
    HostKeyChanged,
    HostKeyUnknown,
    PrivilegeError,
    RemoteCommandError,
    SSHConnectError,
    UsageError,
)
from app.core.events import CancelToken, Event, ProgressEvent
from app.core.inspect import run_probe
from app.core.kinds import ServerHash
from app.core.privilege import establish_privilege
from app.core.settings import Settings
from app.core.ssh import (
    ConnectOptions,
    Credentials,
    KnownHosts,
    PassphraseRequired,
    PasswordRequired,
    Session,
    Target,
    connect,
    load_ssh_config,
    parse_target,
)
from tests.support.secret_checks import PASSPHRASE
from tests.support.sshd import SSHEnv, SSHServer, fingerprint, free_port, keygen

pytestmark = pytest.mark.sshd


def _target(env: SSHEnv, user: str = "nkw-nopw", key: Path | None = None) -> Target:
    ids = (str(key),) if key else (str(env.key),)
    return Target("127.0.0.1", env.port, user, identity_files=ids)


def _kh(trusted: Path) -> KnownHosts:
    return KnownHosts(trusted, user_file=trusted.parent / "no-user-known-hosts")


def _connect(env: SSHEnv, trusted: Path, **kw: object) -> Session:
    return connect(
        _target(env), Credentials(method="key"), _kh(trusted), ConnectOptions(timeout=5), **kw
    )  # type: ignore[arg-type]


def test_key_login_runs_a_command_with_status_and_both_streams(
    ssh_env: SSHEnv, trusted: Path
) -> None:
    with _connect(ssh_env, trusted) as s:
        r = s.run("id -un; echo problem >&2; exit 3", timeout=10)
        assert (r.status, r.stdout.strip(), r.stderr.strip()) == (3, "nkw-nopw", "problem")
        assert s.auth_kind == "key"
        assert s.host_key_fingerprint == fingerprint(ssh_env.server.host_key_pub)


@pytest.mark.fault
def test_unknown_host_key_is_reported_with_its_fingerprint_and_trusted_only_on_request(
    ssh_env: SSHEnv, tmp_path: Path
) -> None:
    kh = KnownHosts(tmp_path / "kh", user_file=tmp_path / "none")
    creds = Credentials(method="key")
    with pytest.raises(HostKeyUnknown) as ei:
        connect(_target(ssh_env), creds, kh)
    err = ei.value
    assert err.key_type == "ssh-ed25519"
    assert err.fingerprint == fingerprint(ssh_env.server.host_key_pub)
    assert not (tmp_path / "kh").exists()
    # Accepting another fingerprint than the one presented is no acceptance at all.
    with pytest.raises(HostKeyUnknown):
        connect(
            _target(ssh_env), creds, kh, ConnectOptions().trusting(err.host, err.port, "SHA256:AA")
        )
    # ... and so is accepting it for another host or port.
    with pytest.raises(HostKeyUnknown):
        connect(
            _target(ssh_env), creds, kh, ConnectOptions().trusting(err.host, 1, err.fingerprint)
        )
    accepted = ConnectOptions().trusting(err.host, err.port, err.fingerprint)
    connect(_target(ssh_env), creds, kh, accepted).close()
    assert (tmp_path / "kh").read_text().startswith(f"[127.0.0.1]:{ssh_env.port} ssh-ed25519 ")
    connect(_target(ssh_env), creds, kh).close()  # known now: no question


def test_user_known_hosts_is_read_but_never_written(ssh_env: SSHEnv, tmp_path: Path) -> None:
    user_file = tmp_path / "user_known_hosts"
    pub = ssh_env.server.host_key_pub.read_text().split()
    user_file.write_text(f"[127.0.0.1]:{ssh_env.port} {pub[0]} {pub[1]}\n")
    before = user_file.read_text()
    kh = KnownHosts(tmp_path / "app_kh", user_file=user_file)
    connect(_target(ssh_env), Credentials(method="key"), kh).close()
    assert user_file.read_text() == before
    assert not (tmp_path / "app_kh").exists()


def test_replacing_a_host_key_keeps_every_other_entry_and_the_old_one_as_a_comment(
    tmp_path: Path,
) -> None:
    import paramiko

    app_file = tmp_path / "kh"
    new = paramiko.Ed25519Key.from_private_key_file(str(keygen(tmp_path / "new")))
    others = "[10.0.0.1]:22 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA1\nhost.example ssh-rsa AAAAB3\n"
    app_file.write_text(others + "[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOld")
    kh = KnownHosts(app_file, user_file=tmp_path / "none")
    old = kh.replace("127.0.0.1", 2222, new, "a test")
    assert old == ["[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOld"]
    text = app_file.read_text()
    assert text.startswith(others + "# replaced ")
    assert "(a test): [127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOld\n" in text
    assert text.endswith(f"\n[127.0.0.1]:2222 ssh-ed25519 {new.get_base64()}\n")
    assert oct(app_file.stat().st_mode & 0o777) == "0o600"


@pytest.mark.fault
def test_changed_host_key_stops_before_any_credential_is_sent(
    ssh_env: SSHEnv, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    impostor = SSHServer(free_port(), other, [keygen(other / "ssh_host_ed25519_key")])
    impostor.start()
    try:
        pub = ssh_env.server.host_key_pub.read_text().split()
        kh_file = tmp_path / "kh"
        kh_file.write_text(f"[127.0.0.1]:{impostor.port} {pub[0]} {pub[1]}\n")
        kh = KnownHosts(kh_file, user_file=tmp_path / "none")
        target = Target("127.0.0.1", impostor.port, "nkw-nopw", identity_files=(str(ssh_env.key),))
        with pytest.raises(HostKeyChanged) as ei:
            connect(target, Credentials(method="password", password="Nopw-pass-4711"), kh)
        assert ei.value.fingerprint == fingerprint(other / "ssh_host_ed25519_key.pub")
        assert "CHANGED" in ei.value.what
        # Even with --accept-new-host-key a changed key is never accepted.
        with pytest.raises(HostKeyChanged):
            connect(target, Credentials(method="key"), kh, ConnectOptions(accept_new_host_key=True))
        time.sleep(0.3)
        log = impostor.log.read_text()
        assert "nkw-nopw" not in log and "Accepted" not in log and "Failed" not in log
    finally:
        impostor.stop()


def test_login_through_a_real_ssh_agent(
    ssh_env: SSHEnv, trusted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(
            ["ssh-add", "-q", str(ssh_env.key)], env=env, check=True, capture_output=True
        )
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        target = Target("127.0.0.1", ssh_env.port, "nkw-plain")  # no key file named
        with connect(target, Credentials(method="agent"), _kh(trusted)) as s:
            assert s.auth_kind == "agent"
            assert (
                s.auth_key is not None
                and s.auth_key.get_base64()
                == ssh_env.key.with_suffix(".pub").read_text().split()[1]
            )
    finally:
        agent.terminate()
        agent.wait(5)


@pytest.mark.fault
def test_password_login_and_wrong_password(ssh_env: SSHEnv, trusted: Path) -> None:
    target = Target("127.0.0.1", ssh_env.port, "nkw-plain")
    creds = Credentials(method="password", password=ssh_env.plain.password)
    with connect(target, creds, _kh(trusted)) as s:
        assert s.auth_kind == "password" and s.auth_key is None
        assert s.run("id -un", timeout=10).stdout.strip() == "nkw-plain"
    with pytest.raises(AuthError) as ei:
        connect(target, Credentials(method="password", password="wrong"), _kh(trusted))
    assert "refused the password" in ei.value.what
    assert not isinstance(ei.value, PasswordRequired)


def test_no_usable_key_asks_for_a_password(ssh_env: SSHEnv, trusted: Path) -> None:
    target = Target("127.0.0.1", ssh_env.port, "nkw-plain")
    with pytest.raises(PasswordRequired):
        connect(target, Credentials(method="auto"), _kh(trusted))


@pytest.mark.fault
def test_encrypted_key_needs_the_right_passphrase(ssh_env: SSHEnv, trusted: Path) -> None:
    target = _target(ssh_env, key=ssh_env.enc_key)
    path = str(ssh_env.enc_key)
    with pytest.raises(PassphraseRequired) as ei:
        connect(target, Credentials(method="key"), _kh(trusted))
    assert ei.value.path == path and not ei.value.wrong
    with pytest.raises(PassphraseRequired) as ei:
        connect(target, Credentials(method="key", passphrases={path: "nope"}), _kh(trusted))
    assert ei.value.wrong
    with connect(
        target, Credentials(method="key", passphrases={path: PASSPHRASE}), _kh(trusted)
    ) as s:
        assert s.run("true", timeout=5).ok


@pytest.mark.fault
def test_a_key_the_server_does_not_know_is_refused(ssh_env: SSHEnv, trusted: Path) -> None:
    with pytest.raises(AuthError) as ei:
        connect(_target(ssh_env, key=ssh_env.stranger_key), Credentials(method="key"), _kh(trusted))
    assert "none of the keys" in ei.value.what


@pytest.mark.fault
def test_refused_port_is_a_clear_connect_error(tmp_path: Path) -> None:
    kh = KnownHosts(tmp_path / "kh", user_file=tmp_path / "none")
    t0 = time.monotonic()
    with pytest.raises(SSHConnectError) as ei:
        connect(Target("127.0.0.1", free_port(), "x"), Credentials(), kh, ConnectOptions(timeout=2))
    assert "refused" in ei.value.what and time.monotonic() - t0 < 3


def test_output_is_streamed_line_by_line_while_the_command_runs(
    ssh_env: SSHEnv, trusted: Path
) -> None:
    seen: list[tuple[float, str, str]] = []
    with _connect(ssh_env, trusted) as s:
        t0 = time.monotonic()
        r = s.run(
            "for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.3; done",
            timeout=10,
            on_line=lambda stream, line: seen.append((time.monotonic() - t0, stream, line)),
        )
    assert r.ok
    assert [x[2] for x in seen if x[1] == "stdout"] == ["out1", "out2", "out3"]
    assert [x[2] for x in seen if x[1] == "stderr"] == ["err1", "err2", "err3"]
    first = next(t for t, _, line in seen if line == "out1")
    last = next(t for t, _, line in seen if line == "out3")
    assert last - first > 0.4  # the first line arrived long before the end


@pytest.mark.fault
def test_every_command_has_a_deadline(ssh_env: SSHEnv, trusted: Path) -> None:
    with _connect(ssh_env, trusted) as s:
        t0 = time.monotonic()
        with pytest.raises(RemoteCommandError) as ei:
            s.run("sleep 30", timeout=1, what="a slow command")
        assert time.monotonic() - t0 < 3
        assert "deadline" in ei.value.what
        assert s.run("echo still usable", timeout=5).stdout.strip() == "still usable"


def test_upload_streams_the_file_and_returns_its_sha256(
    ssh_env: SSHEnv, trusted: Path, tmp_path: Path
) -> None:
    src = tmp_path / "blob"
    src.write_bytes(os.urandom(12 * 1024 * 1024 + 123))
    events: list[Event] = []
    dest = ssh_env.nopw.home / "upload.bin"
    with _connect(ssh_env, trusted) as s:
        sha = s.upload(src, str(dest), emit=events.append, server_hash=ServerHash.WHILE_RECEIVING)
        remote = s.run(f"sha256sum {dest}", timeout=10).stdout.split()[0]
    assert sha == hashlib.sha256(src.read_bytes()).hexdigest() == remote
    assert dest.stat().st_mode & 0o777 == 0o600
    final = [e for e in events if isinstance(e, ProgressEvent) and e.final]
    assert final and final[-1].done == src.stat().st_size
    dest.unlink()


@pytest.mark.parametrize("mode", [ServerHash.WHILE_RECEIVING, ServerHash.AFTER_STORING])
def test_the_server_hashes_the_upload_it_received(
    ssh_env: SSHEnv, trusted: Path, tmp_path: Path, mode: ServerHash
) -> None:
    src = tmp_path / "blob"
    src.write_bytes(os.urandom(5 * 1024 * 1024 + 7))
    dest = ssh_env.nopw.home / "hashed.bin"
    with _connect(ssh_env, trusted) as s:
        sha = s.upload(src, str(dest), server_hash=mode)
        assert s.upload(src, str(dest)) is None  # no hash asked, none returned
    assert sha == hashlib.sha256(src.read_bytes()).hexdigest()
    assert dest.read_bytes() == src.read_bytes() and dest.stat().st_mode & 0o777 == 0o600
    dest.unlink()


@pytest.mark.fault
def test_cancel_stops_an_upload_promptly_and_keeps_the_session(
    ssh_env: SSHEnv, trusted: Path, tmp_path: Path
) -> None:
    src = tmp_path / "sparse"
    with src.open("wb") as f:
        f.truncate(2 * 1024**3)  # 2 GiB of zeros, no disk used here
    cancel = CancelToken()
    cancelled_at: list[float] = []

    def on_event(e: Event) -> None:
        if isinstance(e, ProgressEvent) and e.done > 8 * 1024 * 1024 and not cancel.cancelled:
            cancelled_at.append(time.monotonic())
            threading.Thread(target=cancel.cancel).start()

    dest = ssh_env.nopw.home / "cancelled.bin"
    with _connect(ssh_env, trusted) as s:
        with pytest.raises(Cancelled):
            s.upload(src, str(dest), emit=on_event, cancel=cancel)
        assert time.monotonic() - cancelled_at[0] < 2
        assert s.run("echo ok", timeout=5).stdout.strip() == "ok"
    assert dest.stat().st_size < 2 * 1024**3
    dest.unlink()


@pytest.mark.fault
def test_close_from_another_thread_unblocks_a_running_command(
    ssh_env: SSHEnv, trusted: Path
) -> None:
    s = _connect(ssh_env, trusted)
    result: list[BaseException] = []

    def runner() -> None:
        try:
            s.run("sleep 30", timeout=60)
        except BaseException as exc:
            result.append(exc)

    th = threading.Thread(target=runner)
    th.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    s.close()
    th.join(5)
    assert not th.is_alive() and time.monotonic() - t0 < 3
    assert isinstance(result[0], RemoteCommandError)


def _probe_as(
    env: SSHEnv, trusted: Path, user: str, settings: Settings, password: str | None = None
) -> tuple[Session, object]:
    creds = Credentials(method="key")
    s = connect(_target(env, user), creds, _kh(trusted))
    facts = run_probe(s, settings)
    return s, facts


@pytest.fixture
def ssettings() -> Settings:
    return Settings(connect_timeout=5, command_timeout=20, download_url="http://127.0.0.1:9/")


def test_sudo_without_password(ssh_env: SSHEnv, trusted: Path, ssettings: Settings) -> None:
    s, facts = _probe_as(ssh_env, trusted, "nkw-nopw", ssettings)
    with s:
        assert facts.privilege == "sudo"  # type: ignore[attr-defined]
        establish_privilege(s, facts, None, ssettings)  # type: ignore[arg-type]
        assert s.run("id -u", privileged=True, timeout=10).stdout.strip() == "0"


def test_sudo_with_password_fed_on_stdin(
    ssh_env: SSHEnv, trusted: Path, ssettings: Settings
) -> None:
    s, facts = _probe_as(ssh_env, trusted, "nkw-pw", ssettings)
    with s:
        assert facts.privilege == "sudo-password"  # type: ignore[attr-defined]
        with pytest.raises(PrivilegeError) as ei:
            establish_privilege(s, facts, "wrong-password", ssettings)  # type: ignore[arg-type]
        assert "refused the password" in ei.value.what
        establish_privilege(s, facts, ssh_env.pw.password, ssettings)  # type: ignore[arg-type]
        r = s.run("id -u; cat", privileged=True, stdin=b"payload", timeout=10)
        # The password went to sudo, not to the command's stdin.
        assert r.stdout.split() == ["0", "payload"]
        assert ssh_env.pw.password not in r.stdout + r.stderr


@pytest.mark.fault
def test_user_without_sudo_rights_gets_a_privilege_error(
    ssh_env: SSHEnv, trusted: Path, ssettings: Settings
) -> None:
    s, facts = _probe_as(ssh_env, trusted, "nkw-plain", ssettings)
    with s, pytest.raises(PrivilegeError):
        establish_privilege(s, facts, ssh_env.plain.password, ssettings)  # type: ignore[arg-type]


def test_probe_reads_the_real_server(ssh_env: SSHEnv, trusted: Path, ssettings: Settings) -> None:
    s, facts = _probe_as(ssh_env, trusted, "nkw-nopw", ssettings)
    s.close()
    f = facts
    assert f.machine == os.uname().machine  # type: ignore[attr-defined]
    assert f.kernel == os.uname().release  # type: ignore[attr-defined]
    assert f.boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()  # type: ignore[attr-defined]
    assert f.mem_total and f.mem_total > 512 * 1024**2  # type: ignore[attr-defined]
    assert {"tar", "gzip", "cpio", "sha256sum"} <= set(f.tools)  # type: ignore[attr-defined]
    assert f.user == "nkw-nopw" and f.uid and f.uid > 0  # type: ignore[attr-defined]
    assert f.staging.path == f"{ssh_env.nopw.home}/nixos-kexec-wizard"  # type: ignore[attr-defined]
    assert f.staging.writable and f.staging.free_bytes  # type: ignore[attr-defined]
    assert f.net_format == "json" and any(i.name == "lo" for i in f.interfaces)  # type: ignore[attr-defined]
    assert f.reach_v4 is False  # port 9 on loopback refuses  # type: ignore[attr-defined]
    assert not f.notes  # type: ignore[attr-defined]


def test_jump_host_reaches_the_target_through_a_forwarded_channel(
    ssh_env: SSHEnv, trusted: Path
) -> None:
    jump = _target(ssh_env)
    target = Target(
        "127.0.0.1", ssh_env.port, "nkw-plain", identity_files=(str(ssh_env.key),), jump=jump
    )
    with connect(target, Credentials(method="key"), _kh(trusted)) as s:
        assert s.run("id -un", timeout=10).stdout.strip() == "nkw-plain"
    bad = Target("127.0.0.1", free_port(), "nkw-plain", jump=jump)
    with pytest.raises(SSHConnectError) as ei:
        connect(bad, Credentials(method="key"), _kh(trusted))
    assert "jump host" in ei.value.what


def test_ssh_config_alias_is_honoured(isolated_env: Path) -> None:
    (isolated_env / ".ssh" / "config").write_text(
        "Host box\n  HostName 192.0.2.7\n  User admin\n  Port 2222\n  IdentityFile ~/.ssh/box_key\n"
        "  ProxyJump hop@bastion:2200\n"
        "Host bastion\n  HostName 198.51.100.1\n"
    )
    t = parse_target("box", config=load_ssh_config())
    assert (t.host, t.user, t.port, t.alias) == ("192.0.2.7", "admin", 2222, "box")
    assert t.identity_files == (str(isolated_env / ".ssh" / "box_key"),)
    assert t.jump is not None and (t.jump.host, t.jump.user, t.jump.port) == (
        "198.51.100.1",
        "hop",
        2200,
    )
    # Command-line values win over the config.
    t2 = parse_target("root@box:22", identity=["/k"], config=load_ssh_config())
    assert (t2.user, t2.port, t2.identity_files) == ("root", 22, ("/k",))
    v6 = parse_target("[2001:db8::1]:2022", config=load_ssh_config())
    assert (v6.host, v6.port, v6.user) == ("2001:db8::1", 2022, "root")


@pytest.mark.parametrize(
    "spec",
    [
        "a b",
        "host;rm -rf /",
        "user@",
        "[::1",
        "h:99999",
        "$(reboot)",
        "-oProxyCommand=x",
        "u'x@h",
        "h\nx",
    ],
)
@pytest.mark.fault
def test_hostile_targets_are_refused(spec: str, isolated_env: Path) -> None:
    with pytest.raises(UsageError):
        parse_target(spec, config=load_ssh_config())

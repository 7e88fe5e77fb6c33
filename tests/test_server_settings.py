"""Real-world server settings a new user meets: sudo with `requiretty`, sshd with `MaxSessions 1`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.errors import ExitCode, PrivilegeError, RemoteCommandError
from app.core.events import LogEvent, OutputEvent
from app.core.install.place import cleanup
from app.core.privilege import establish_privilege
from app.core.settings import Settings
from app.core.ssh.streams import END_OF_INPUT, SUDO_PROMPT, PromptReplies
from tests.support.releases import ReleasesServer
from tests.support.sshd import SSHEnv, SSHServer, free_port, sudoers_line
from tests.test_install import make_rig


def _trust(trusted: Path, ssh_env: SSHEnv, port: int) -> None:
    with trusted.open("a") as f:
        for k in ssh_env.server.host_keys:
            kind, b64 = k.with_suffix(".pub").read_text().split()[:2]
            f.write(f"[127.0.0.1]:{port} {kind} {b64}\n")


@pytest.fixture
def one_session_sshd(ssh_env: SSHEnv, tmp_path: Path) -> Iterator[SSHServer]:
    """An sshd that allows one session channel per connection (some hardening guides)."""
    srv = SSHServer(free_port(), tmp_path, ssh_env.server.host_keys)
    srv.start("MaxSessions 1")
    yield srv
    srv.stop()


@pytest.fixture
def no_tty_sshd(ssh_env: SSHEnv, tmp_path: Path) -> Iterator[SSHServer]:
    """An sshd that refuses every terminal."""
    srv = SSHServer(free_port(), tmp_path, ssh_env.server.host_keys)
    srv.start("PermitTTY no")
    yield srv
    srv.stop()


# -- sudo with `Defaults requiretty` -------------------------------------------------------


@pytest.mark.fault
def test_sudo_without_a_password_that_requires_a_tty_runs_the_kexec_as_root(
    ssh_env: SSHEnv, trusted: Path, settings: Settings, releases: ReleasesServer, tmp_path: Path
) -> None:
    with sudoers_line("Defaults:nkw-nopw requiretty"):
        rig = make_rig(ssh_env, trusted, settings, releases, tmp_path)
        assert rig.installer.setup.facts.privilege == "sudo"  # no password asked for
        rig.installer.prepare(rig.events.append, rig.cancel)
        rig.installer.kexec(rig.events.append, rig.cancel)
        log = (rig.staging / "kexec" / "kexec.log").read_text()
        assert log.startswith("uid=0 --load "), log
        output = [e.message for e in rig.events if isinstance(e, OutputEvent)]
        assert any("machine will boot into nixos" in line for line in output)
        assert not any("\r" in line for line in output)
        rig.session.close()


@pytest.mark.fault
def test_sudo_with_a_password_that_requires_a_tty_takes_it_and_never_shows_it(
    ssh_env: SSHEnv, trusted: Path, settings: Settings, releases: ReleasesServer, tmp_path: Path
) -> None:
    pw = ssh_env.pw.password
    with sudoers_line("Defaults:nkw-pw requiretty"):
        rig = make_rig(ssh_env, trusted, settings, releases, tmp_path, user="nkw-pw", password=pw)
        res = rig.session.run("id -u; echo done >&2", privileged=True, timeout=10)
        assert res.ok and res.stdout.split()[0] == "0", res
        assert pw not in res.stdout + res.stderr  # the terminal does not echo it
        # A wrong password ends at once with sudo's refusal, not at the command's deadline.
        t0 = time.monotonic()
        with pytest.raises(PrivilegeError) as ei:
            establish_privilege(rig.session, rig.installer.setup.facts, "wrong", settings)
        assert time.monotonic() - t0 < 10
        assert "refused the password" in ei.value.what, ei.value.what
        rig.session.close()


@pytest.mark.fault
def test_a_tty_that_sudo_requires_and_sshd_refuses_is_named_as_the_cause(
    ssh_env: SSHEnv,
    no_tty_sshd: SSHServer,
    trusted: Path,
    settings: Settings,
    releases: ReleasesServer,
    tmp_path: Path,
) -> None:
    _trust(trusted, ssh_env, no_tty_sshd.port)
    with sudoers_line("Defaults:nkw-nopw requiretty"), pytest.raises(PrivilegeError) as ei:
        make_rig(ssh_env, trusted, settings, releases, tmp_path, port=no_tty_sshd.port)
    err = ei.value
    assert err.exit_code == ExitCode.PRIVILEGE
    assert "password" not in err.what, err.what
    assert "requiretty" in err.why and "PermitTTY" in err.why, err.why
    assert "!requiretty" in err.fix, err.fix


# -- sshd with `MaxSessions 1` ---------------------------------------------------------------


@pytest.mark.fault
def test_an_sshd_allowing_one_session_runs_every_stage(
    ssh_env: SSHEnv,
    one_session_sshd: SSHServer,
    trusted: Path,
    settings: Settings,
    releases: ReleasesServer,
    tmp_path: Path,
) -> None:
    _trust(trusted, ssh_env, one_session_sshd.port)
    rig = make_rig(ssh_env, trusted, settings, releases, tmp_path, port=one_session_sshd.port)
    rig.installer.prepare(rig.events.append, rig.cancel)
    rig.installer.kexec(rig.events.append, rig.cancel)
    assert (rig.staging / "kexec" / "kexec.log").read_text().startswith("uid=0 --load ")
    rig.session.close()


@pytest.mark.fault
def test_a_refused_channel_for_run_is_named_and_run_never_counted_as_started(
    ssh_env: SSHEnv,
    one_session_sshd: SSHServer,
    trusted: Path,
    settings: Settings,
    releases: ReleasesServer,
    tmp_path: Path,
) -> None:
    """The one session the server allows is taken (here by the test) when `run` should
    start: the refusal is named, cancelling was never said to be unsafe, and the server is
    cleaned up as before any kexec."""
    _trust(trusted, ssh_env, one_session_sshd.port)
    rig = make_rig(ssh_env, trusted, settings, releases, tmp_path, port=one_session_sshd.port)
    rig.installer.prepare(rig.events.append, rig.cancel)
    (rig.staging / "kexec" / "kexec.log").unlink(missing_ok=True)  # an earlier test's
    held = rig.session.transport.open_session(timeout=5)
    held.exec_command("sleep 8")  # sshd frees the session only once its command ended
    try:
        with pytest.raises(RemoteCommandError) as ei:
            rig.installer.kexec(rig.events.append, rig.cancel)
        held.recv_exit_status()
    finally:
        held.close()
    err = ei.value
    assert "refused" in err.what and "closed" not in err.what, err.what
    assert "MaxSessions" in err.why, err.why
    assert not rig.installer.point_of_no_return
    unsafe = [e for e in rig.events if isinstance(e, LogEvent) and e.safe_to_cancel is False]
    assert unsafe == [], unsafe
    kexec_log = rig.staging / "kexec" / "kexec.log"  # (an earlier test's `kexec -e` may come)
    assert not kexec_log.exists() or "--load" not in kexec_log.read_text()
    # The cleanup met the same refusal and says so; once the session is free it works.
    said = [e.message for e in rig.events if isinstance(e, LogEvent) and e.stage == "cleanup"]
    assert any("Could not clean up" in m and "refused" in m for m in said), said
    cleanup(rig.step())
    assert not rig.staging.exists(), [e.message for e in rig.events if e.stage == "cleanup"]
    rig.session.close()


@pytest.mark.fault
def test_commands_one_after_another_never_need_two_sessions(
    ssh_env: SSHEnv,
    one_session_sshd: SSHServer,
    trusted: Path,
    settings: Settings,
    releases: ReleasesServer,
    tmp_path: Path,
) -> None:
    """Each command's session is over on the server before the next one opens: sshd frees
    it only after the close arrived, and refuses a new one that comes in the same read."""
    _trust(trusted, ssh_env, one_session_sshd.port)
    rig = make_rig(ssh_env, trusted, settings, releases, tmp_path, port=one_session_sshd.port)
    for i in range(100):
        res = rig.session.run(f"echo {i}", privileged=i % 2 == 0, timeout=10)
        assert res.stdout.strip() == str(i)
    rig.session.close()


def test_sudo_password_is_sent_only_when_its_prompt_shows_even_split_between_reads() -> None:
    replies = PromptReplies(SUDO_PROMPT, [b"pw\n", END_OF_INPUT])
    assert replies.feed(b"sudo: a password is required\r\n") == b"" and replies.waiting
    half = len(SUDO_PROMPT) // 2
    assert replies.feed(SUDO_PROMPT[:half].encode()) == b""
    assert replies.feed(SUDO_PROMPT[half:].encode()) == b"pw\n" and not replies.waiting
    assert replies.feed(b"\nSorry, try again.\r\n" + SUDO_PROMPT.encode()) == END_OF_INPUT
    assert replies.feed(SUDO_PROMPT.encode()) == b""  # nothing more to say
    assert replies.clean(f"{SUDO_PROMPT}\n0\n") == "\n0\n"
    assert replies.clean_bytes(f"{SUDO_PROMPT}\nnkw-exit 0\n".encode()) == b"\nnkw-exit 0\n"
    assert "PAM module" in replies.unanswered("the root check").why

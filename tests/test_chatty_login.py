"""A login shell that prints its own lines around every command: the install reads only its own."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from app.core import remote_sh as sh
from app.core.kinds import AuthMethod
from app.core.ssh import ConnectOptions, Credentials, KnownHosts, Target, connect
from tests.support.machine import Machine
from tests.support.releases import ReleasesServer
from tests.support.sshd import SSHEnv
from tests.test_cli import cli

# One word, three words and a blank line, before each command's output (as a hosting image's
# welcome does) and after it (an EXIT trap), on stdout.
CHATTY = (
    "echo Welcome\necho to the server\necho\ntrap 'echo Goodbye; echo see you soon; echo' EXIT\n"
)


@pytest.mark.fault
@pytest.mark.parametrize("transfer", ["upload", "remote"])
def test_the_cli_install_through_a_chatty_login_reads_only_its_own_output(
    ssh_env: SSHEnv,
    machine: Machine,
    releases: ReleasesServer,
    tmp_path: Path,
    transfer: str,
) -> None:
    """Root's ~/.bashrc greets every command and says goodbye after it, on the old system
    and on the installer: every stage reads only its own output, the down stage never takes
    a welcome for a new boot, and the installer is verified."""
    bashrc = machine.workdir / "root" / ".bashrc"
    bashrc.write_text(CHATTY)
    kh = tmp_path / "known_hosts"
    pub = [k.with_suffix(".pub").read_text().split()[:2] for k in machine.host_keys]
    kh.write_text("".join(f"[127.0.0.1]:{machine.port} {t} {b}\n" for t, b in pub))
    known = KnownHosts(kh, user_file=tmp_path / "none")
    target = Target("127.0.0.1", machine.port, "root", identity_files=(str(ssh_env.key),))
    with connect(target, Credentials(method=AuthMethod.KEY), known, ConnectOptions(timeout=5)) as s:
        check = s.run("true", timeout=10)
    assert "Welcome" in check.stdout and "see you soon" in check.stdout  # it does chat
    old_boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    stop = threading.Event()
    watcher = threading.Thread(target=_chatty_installer, args=(machine, stop), daemon=True)
    watcher.start()
    env = {
        "NIXOS_KEXEC_WIZARD_API_URL": releases.api_url,
        "NIXOS_KEXEC_WIZARD_DOWNLOAD_URL": releases.download_url,
        "NIXOS_KEXEC_WIZARD_ALLOW_HTTP": "1",
    }
    try:
        r = cli(
            "install", "--json", "--yes", "--accept-new-host-key",
            f"root@127.0.0.1:{machine.port}", "-i", str(ssh_env.key), "--transfer", transfer,
            "--down-timeout", "30", "--timeout", "30", env=env,
        )  # fmt: skip
    finally:
        stop.set()
        watcher.join(5)
    assert r.code == 0, r.stdout[-3000:] + r.stderr[-2000:]
    logs = [(e.get("stage"), e.get("message", "")) for e in r.events if e["event"] == "log"]
    down = [m for stage, m in logs if stage == "down"]
    assert any("went down" in m for m in down) and not any("already" in m for m in down), down
    if transfer == "remote":
        assert any("The image's members have the upstream layout." in m for _s, m in logs), logs
    inst = r.result["installer"]
    assert machine.state == "installer" and bashrc.read_text() == CHATTY  # it chats there too
    assert inst["hostname"] == "nixos-installer" and inst["boot_id"] != old_boot
    assert inst["os_release"]["VARIANT_ID"] == "installer"


def _chatty_installer(machine: Machine, stop: threading.Event) -> None:
    """Give the installer's root the same chatty ~/.bashrc, as soon as its files are laid
    out and before its sshd listens."""
    osr = machine.workdir / "os-release"
    while not stop.wait(0.002):
        if "VARIANT_ID=installer" in osr.read_text():
            (machine.workdir / "root" / ".bashrc").write_text(CHATTY)
            return


@pytest.mark.parametrize(
    "said",
    [
        "",
        "Welcome\n",
        "Welcome\nto the server\n\n",
        "Welcome",  # no newline: the frame still starts a line of its own
    ],
)
@pytest.mark.parametrize("own", ["", "1000 700 /home/x\n", "two\nlines", "\n"])
def test_a_framed_output_is_read_whatever_the_login_prints_around_it(said: str, own: str) -> None:
    token = "0123abcd"
    begin, end = "\n@@nkw begin 0123abcd\n", "\n@@nkw end 0123abcd\n"
    assert sh.unframe(said + begin + own + end + said, token) == own
    assert sh.unframe(said + own + end, token) is None  # the command never started
    assert sh.unframe(said + begin + own, token) is None  # it never finished


def test_a_login_that_prints_is_named_with_how_to_quiet_it(tmp_path: Path) -> None:
    from app.core.install.place import login_noise

    err = login_noise("checking the staging folder", "Welcome\nto the server\n")
    assert "prints text of its own" in err.why and "Welcome / to the server" in err.why
    assert "~/.bashrc" in err.fix and "interactive" in err.fix

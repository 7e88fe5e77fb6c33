"""A login shell that prints its own lines around every command: the install reads only its own."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app.core import remote_sh as sh
from app.core.catalog import CatalogClient
from app.core.download import Downloader, ImageCache
from app.core.events import CancelToken, Event, LogEvent
from app.core.inspect import run_probe
from app.core.install import Installer
from app.core.kinds import AuthMethod, Transfer
from app.core.plan import InstallPlan
from app.core.privilege import establish_privilege
from app.core.settings import Settings
from app.core.ssh import ConnectOptions, Credentials, KnownHosts, Target, connect
from tests.support.machine import Machine
from tests.support.releases import ReleasesServer
from tests.support.sshd import SSHEnv

# One word, three words and a blank line, before each command's output (as a hosting image's
# welcome does) and after it (an EXIT trap), on stdout.
CHATTY = (
    "echo Welcome\necho to the server\necho\ntrap 'echo Goodbye; echo see you soon; echo' EXIT\n"
)


@pytest.mark.fault
@pytest.mark.parametrize("transfer", ["upload", "remote"])
def test_the_install_through_a_chatty_login_reads_only_its_own_output(
    ssh_env: SSHEnv,
    machine: Machine,
    releases: ReleasesServer,
    settings: Settings,
    tmp_path: Path,
    transfer: str,
) -> None:
    """Root's ~/.bashrc on the loopback machine greets every command and says goodbye after
    it: every stage up to ``run`` reads only its own output, and the machine kexecs."""
    (machine.workdir / "root" / ".bashrc").write_text(CHATTY)
    kh = tmp_path / "known_hosts"
    pub = [k.with_suffix(".pub").read_text().split()[:2] for k in machine.host_keys]
    kh.write_text("".join(f"[127.0.0.1]:{machine.port} {t} {b}\n" for t, b in pub))
    known = KnownHosts(kh, user_file=tmp_path / "none")
    target = Target("127.0.0.1", machine.port, "root", identity_files=(str(ssh_env.key),))
    creds = Credentials(method=AuthMethod.KEY)
    with connect(target, creds, known, ConnectOptions(timeout=5)) as session:
        check = session.run("true", timeout=10)
        assert "Welcome" in check.stdout and "see you soon" in check.stdout  # it does chat
        facts = run_probe(session, settings)
        establish_privilege(session, facts, None, settings)
        catalog = CatalogClient(settings, tmp_path / "releases.json").load()
        asset = catalog.release("nixos-26.05").kexec_asset("noninteractive", "x86_64")  # type: ignore[union-attr]
        assert asset is not None
        image = None
        if transfer == "upload":
            image = Downloader(settings, ImageCache(tmp_path / "images")).fetch(asset)
        plan = InstallPlan(target=target, image=image, asset=asset, transfer=Transfer(transfer))
        inst = Installer(plan, session, facts, creds, known, settings, tmp_path / "keys")
        events: list[Event] = []
        inst.prepare(events.append, CancelToken())
        said = [e.message for e in events if isinstance(e, LogEvent)]
        if transfer == "remote":
            assert "The image's members have the upstream layout." in said
        inst.kexec(events.append, CancelToken())
    deadline = time.monotonic() + 20
    while machine.state != "installer" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert machine.state == "installer"


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

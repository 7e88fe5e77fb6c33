"""Logins that "work" but run something else: cloud-image forced commands, nologin, a MOTD."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from app.core.errors import LoginRestricted
from app.core.inspect import run_probe
from app.core.settings import Settings
from app.core.ssh import ConnectOptions, Credentials, KnownHosts, Target, connect
from app.ui.pages.base import PageId
from app.ui.pages.connect import ConnectPage
from app.ui.pages.inspect import InspectPage
from app.ui.wizard import KexecWizard
from tests.support.sshd import SSHEnv, SSHServer, free_port, keygen
from tests.test_cli import cli
from tests.test_gui import click, connect_and_trust, fill_connect, next_page
from tests.test_gui import ctx as ctx
from tests.test_gui import wizard as wizard

pytestmark = pytest.mark.fault

# What Debian's, Ubuntu's and most cloud images put before root's key (sleep shortened).
CLOUD = (
    'echo \'Please login as the user \\"nkw-nopw\\" rather than the user \\"root\\".\';'
    "echo;sleep 1;exit 142"
)


class ForcedSSHD:
    """A real sshd whose authorized_keys (one file per user) the test writes, options and all."""

    def __init__(self, work: Path, env: SSHEnv) -> None:
        self.keys = work / "authorized"
        self.keys.mkdir()
        self.pub = env.key.with_suffix(".pub").read_text().strip()
        self.server = SSHServer(free_port(), work, [keygen(work / "ssh_host_ed25519_key")])
        # A Match block overrides the global AuthorizedKeysFile (the first global one wins).
        self.server.start(f"Match User *\n  AuthorizedKeysFile {self.keys}/%u")
        for user in ("root", "nkw-nopw", "nkw-plain"):
            self.allow(user)

    @property
    def port(self) -> int:
        return self.server.port

    def allow(self, user: str, options: str = "") -> None:
        """``user`` may log in with the test key, behind ``options`` (e.g. command="...")."""
        path = self.keys / user
        path.write_text(f"{options} {self.pub}\n".lstrip())
        path.chmod(0o644)  # sshd reads it as that user

    def known_hosts(self, path: Path) -> Path:
        key = " ".join(self.server.host_key_pub.read_text().split()[:2])
        path.write_text(f"[127.0.0.1]:{self.port} {key}\n")
        return path


@pytest.fixture
def forced(ssh_env: SSHEnv) -> Iterator[ForcedSSHD]:
    # Under /var/tmp: the test users must be able to reach their key files.
    work = Path(tempfile.mkdtemp(prefix="nkw-forced-", dir="/var/tmp"))
    work.chmod(0o755)
    try:
        srv = ForcedSSHD(work, ssh_env)
        yield srv
        srv.server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _probe(
    forced: ForcedSSHD, env: SSHEnv, user: str, settings: Settings, tmp_path: Path
) -> object:
    kh = KnownHosts(forced.known_hosts(tmp_path / "kh"), tmp_path / "none")
    target = Target("127.0.0.1", forced.port, user, identity_files=(str(env.key),))
    with connect(target, Credentials(method="key"), kh, ConnectOptions(timeout=5)) as s:
        return run_probe(s, settings)


def test_a_cloud_images_root_login_names_the_user_to_log_in_as(
    forced: ForcedSSHD, ssh_env: SSHEnv, settings: Settings, tmp_path: Path
) -> None:
    forced.allow("root", f'command="{CLOUD}"')
    with pytest.raises(LoginRestricted) as ei:
        _probe(forced, ssh_env, "root", settings, tmp_path)
    err = ei.value
    assert err.suggested_user == "nkw-nopw" and err.exit_code == 26
    assert 'Please login as the user "nkw-nopw"' in err.what
    assert (
        err.fix
        == f"Log in as nkw-nopw: nixos-kexec-wizard install nkw-nopw@127.0.0.1:{forced.port}"
    )
    assert "architecture" not in err.explain()


def test_a_nologin_shell_is_said_to_run_no_commands(
    forced: ForcedSSHD, ssh_env: SSHEnv, settings: Settings, tmp_path: Path
) -> None:
    forced.allow("nkw-plain", 'command="/usr/sbin/nologin"')
    with pytest.raises(LoginRestricted) as ei:
        _probe(forced, ssh_env, "nkw-plain", settings, tmp_path)
    err = ei.value
    assert err.suggested_user is None
    assert "runs none of the app's commands" in err.what
    assert "This account is currently not available" in err.what
    assert "forced command" in err.why and "sudo" in err.fix


def test_a_banner_printed_before_the_probe_is_not_read_as_facts(
    forced: ForcedSSHD, ssh_env: SSHEnv, settings: Settings, tmp_path: Path
) -> None:
    # A login that greets first (as a shell's rc file or a MOTD script may), then runs ours.
    greet = 'echo Welcome to the box; echo @@nkw uname; echo fake-arch; eval \\"$SSH_ORIGINAL_COMMAND\\"'
    forced.allow("nkw-plain", f'command="{greet}"')
    facts = _probe(forced, ssh_env, "nkw-plain", settings, tmp_path)
    assert facts.arch == "x86_64" and facts.user == "nkw-plain"


def test_the_cli_says_which_user_to_install_as(
    forced: ForcedSSHD, ssh_env: SSHEnv, urls: dict[str, str]
) -> None:
    forced.allow("root", f'command="{CLOUD}"')
    r = cli(
        "install", "--json", "--yes", "--accept-new-host-key", f"root@127.0.0.1:{forced.port}",
        "-i", str(ssh_env.key), env=urls,
    )  # fmt: skip
    assert r.code == 26, r.stdout + r.stderr
    res = r.result
    assert res["outcome"] == "login-restricted" and res["error"]["suggested_user"] == "nkw-nopw"
    assert f"install nkw-nopw@127.0.0.1:{forced.port}" in res["error"]["fix"]
    assert "unknown architecture" not in r.stdout


def test_the_wizard_offers_the_user_the_server_asks_for_and_goes_on_with_it(
    qtbot: QtBot, wizard: KexecWizard, forced: ForcedSSHD, ssh_env: SSHEnv
) -> None:
    forced.allow("root", f'command="{CLOUD}"')
    next_page(qtbot, wizard)  # Servers -> Connect
    page = wizard.page_of(PageId.CONNECT)
    assert isinstance(page, ConnectPage)
    fill_connect(qtbot, page, forced.port, "root", key=ssh_env.key)
    connect_and_trust(qtbot, wizard, _fp(forced))
    next_page(qtbot, wizard)  # -> Inspect: the probe fails
    inspect = wizard.page_of(PageId.INSPECT)
    assert isinstance(inspect, InspectPage)
    qtbot.waitUntil(lambda: inspect.switch_user.isVisible(), timeout=20_000)
    assert inspect.switch_user.text() == "Log in as nkw-nopw &instead"
    assert "Please login as the user" in inspect.banner.text.text()
    click(qtbot, inspect.switch_user)
    # Back on Connect with the user filled in, connected again; Inspect then works.
    qtbot.waitUntil(lambda: wizard.currentId() == int(PageId.CONNECT), timeout=5_000)
    assert page.user.text() == "nkw-nopw"
    qtbot.waitUntil(lambda: page.isComplete(), timeout=10_000)
    next_page(qtbot, wizard)
    qtbot.waitUntil(
        lambda: wizard.state.facts is not None and not wizard.currentPage().busy, timeout=20_000
    )
    assert wizard.state.facts is not None and wizard.state.facts.user == "nkw-nopw"


def _fp(forced: ForcedSSHD) -> str:
    from tests.support.sshd import fingerprint

    return fingerprint(forced.server.host_key_pub)

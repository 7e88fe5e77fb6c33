"""The wizard on several servers at once: one installs, one is stopped, one never answers."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from pytestqt.qtbot import QtBot

from app.core.profiles import Profile
from app.ui.context import AppContext
from app.ui.pages.base import PageId
from app.ui.pages.batch import BatchConfirmPage, BatchDonePage, BatchInspectPage, BatchInstallPage
from app.ui.pages.servers import ServersPage
from app.ui.wizard import KexecWizard
from tests.support.machine import Machine
from tests.support.releases import ReleasesServer
from tests.support.sshd import SSHEnv
from tests.test_fleet import more_machines
from tests.test_gui import COMMIT, click, ctx, next_page, wizard  # noqa: F401  (fixtures)

pytestmark = pytest.mark.sshd


def test_three_servers_at_once_in_the_wizard(
    qtbot: QtBot, wizard: KexecWizard, ctx: AppContext, ssh_env: SSHEnv, machine: Machine,  # noqa: F811
    releases: ReleasesServer,
) -> None:  # fmt: skip
    w = wizard
    key = str(ssh_env.key)
    with more_machines(ssh_env, "silent") as (silent,):
        for p in (
            Profile("web-ok", "127.0.0.1", port=machine.port, auth="key", key_path=key),
            Profile("web-stop", "127.0.0.1", port=ssh_env.port, user="nkw-plain", auth="key",
                    key_path=key),
            Profile("web-silent", "127.0.0.1", port=silent.port, auth="key", key_path=key),
        ):  # fmt: skip
            ctx.profiles.put(p)
        servers = w.page_of(PageId.SERVERS)
        assert isinstance(servers, ServersPage)
        servers.reload()
        servers.tree.selectAll()
        assert "3 servers selected" in servers.batch_note.text()
        next_page(qtbot, w)
        inspect = w.currentPage()
        assert isinstance(inspect, BatchInspectPage)
        # The three new host keys come in one question, each with its fingerprint.
        qtbot.waitUntil(lambda: inspect.keys_dialog is not None, timeout=20_000)
        dialog = inspect.keys_dialog
        assert dialog is not None and dialog.table.topLevelItemCount() == 3
        rows = [dialog.table.topLevelItem(i) for i in range(3)]
        assert all(r is not None and r.text(3).startswith("SHA256:") for r in rows)
        # Each row names the server as the user knows it and, apart, the machine whose key it is.
        assert {r.text(0) for r in rows if r} == {"web-ok", "web-stop", "web-silent"}
        assert f"127.0.0.1:{machine.port}" in {r.text(1) for r in rows if r}
        click(qtbot, dialog.trust)
        qtbot.waitUntil(lambda: bool(w.state.batch and w.state.batch.inspected), timeout=30_000)
        qtbot.waitUntil(lambda: not inspect.busy, timeout=30_000)
        stopped = inspect.rows["web-stop"]
        assert stopped.text(1) == "left out" and "Preflight stop" in stopped.text(2)
        assert {i.host.label for i in w.state.batch.inspected} == {"web-ok", "web-silent"}  # type: ignore[union-attr]
        if inspect.override.isVisible():  # warnings need the same go-ahead as for one server
            assert not w.button(w.WizardButton.NextButton).isEnabled(), (
                inspect.isComplete(),
                inspect.override.isChecked(),
                inspect.busy,
            )
            inspect.override.setChecked(True)
        next_page(qtbot, w)
        confirm = w.currentPage()
        assert isinstance(confirm, BatchConfirmPage)
        qtbot.waitUntil(lambda: w.state.catalog is not None, timeout=20_000)
        assert "x86_64</b> (2 servers)" in confirm.images.text()
        confirm.transfer.setCurrentIndex(confirm.transfer.findData("upload"))
        qtbot.keyClicks(confirm.typed, "3")
        assert not confirm.isComplete()  # the number of servers that go on is 2
        confirm.typed.setText("2")
        assert confirm.isComplete()
        confirm.kexec_flags.setText("-c; reboot")  # checked as for one server, and said why
        assert not confirm.isComplete() and "kexec options" in confirm.flags_error.text()
        confirm.kexec_flags.setText("")
        assert confirm.isComplete()
        ctx.settings = replace(ctx.settings, up_timeout=8)  # the silent one gives up sooner
        click(qtbot, w.button(COMMIT))
        install = w.currentPage()
        assert isinstance(install, BatchInstallPage)
        assert set(install.rows) == {"web-ok", "web-silent"}
        qtbot.waitUntil(lambda: install.isComplete(), timeout=120_000)
        assert install.rows["web-ok"].item.text(4) == "installer ready"
        assert "did not" in install.rows["web-silent"].item.text(4).lower() or (
            "never" in install.rows["web-silent"].item.text(4).lower()
        ), install.rows["web-silent"].item.text(4)
        assert "The NixOS installer runs on 1 of 2 servers" in install.status.text()
        assert machine.state == "installer" and silent.state == "down"
        next_page(qtbot, w)
        done = w.currentPage()
        assert isinstance(done, BatchDonePage)
        assert done.table.topLevelItemCount() == 3 and len(done.installers) == 1
        click(qtbot, done.copy_all)
        snippet = QGuiApplication.clipboard().text()
        assert snippet.startswith("Host web-ok-installer\n") and f"Port {machine.port}" in snippet
    saved = ctx.profiles.load()
    assert saved["web-ok"].state == "installer" and saved["web-stop"].state == "original"
    assert saved["web-silent"].state == "unknown"


def test_the_copied_ssh_config_is_read_by_openssh_as_meant(tmp_path: Path) -> None:
    """`ssh -G` resolves each Host entry to the installer's address, key, known_hosts, hops."""
    from app.core.handoff import ssh_config_snippet
    from app.core.result import InstallerInfo
    from app.core.ssh import Target

    info = InstallerInfo(host="2001:db8::5", port=2222, user="root", host_key="k", fingerprint="f",
                         boot_id="b", hostname="nixos-installer", os_release={},
                         identity_file=str(tmp_path / "my keys" / "id_ed25519"))  # fmt: skip
    jump = Target("bastion.example", 2200, "ops")
    known = tmp_path / "app dir" / "known_hosts"
    config = tmp_path / "config"
    config.write_text(ssh_config_snippet([("web 1", info, jump)], known))
    out = subprocess.run(["ssh", "-G", "-F", str(config), "web-1-installer"],
                         capture_output=True, text=True, timeout=10, check=True).stdout  # fmt: skip
    got = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    assert got["hostname"] == "2001:db8::5" and got["port"] == "2222" and got["user"] == "root"
    assert got["identityfile"] == str(tmp_path / "my keys" / "id_ed25519")
    assert str(known) in got["userknownhostsfile"]
    assert got["proxyjump"] == "ops@bastion.example:2200"
    assert got["stricthostkeychecking"] in ("true", "yes")


def test_one_row_is_cancelled_while_the_other_server_goes_on(
    qtbot: QtBot, wizard: KexecWizard, ctx: AppContext, ssh_env: SSHEnv, machine: Machine,  # noqa: F811
    releases: ReleasesServer,
) -> None:  # fmt: skip
    w, key = wizard, str(ssh_env.key)
    with more_machines(ssh_env, "silent") as (silent,):
        ctx.profiles.put(Profile("web-ok", "127.0.0.1", port=machine.port, key_path=key))
        ctx.profiles.put(Profile("web-silent", "127.0.0.1", port=silent.port, key_path=key))
        servers = w.page_of(PageId.SERVERS)
        assert isinstance(servers, ServersPage)
        servers.reload()
        servers.tree.selectAll()
        next_page(qtbot, w)
        inspect = w.currentPage()
        assert isinstance(inspect, BatchInspectPage)
        qtbot.waitUntil(lambda: inspect.keys_dialog is not None, timeout=20_000)
        click(qtbot, inspect.keys_dialog.trust)  # type: ignore[union-attr]
        qtbot.waitUntil(lambda: not inspect.busy and bool(inspect.found), timeout=30_000)
        inspect.override.setChecked(True)
        next_page(qtbot, w)
        confirm = w.currentPage()
        assert isinstance(confirm, BatchConfirmPage)
        qtbot.waitUntil(lambda: w.state.catalog is not None, timeout=20_000)
        confirm.transfer.setCurrentIndex(confirm.transfer.findData("upload"))
        confirm.typed.setText("2")
        click(qtbot, w.button(COMMIT))
        install = w.currentPage()
        assert isinstance(install, BatchInstallPage)
        row = install.rows["web-silent"]
        qtbot.waitUntil(lambda: row.stage == "up", timeout=60_000)
        # Past the kexec: the row says it can only stop waiting, not undo anything.
        assert not row.safe and row.cancel.text() == "Stop waiting"
        click(qtbot, row.cancel)
        qtbot.waitUntil(lambda: row.done, timeout=15_000)
        assert row.item.text(4).startswith("Stopped waiting")  # the engine says what it left
        qtbot.waitUntil(lambda: install.isComplete(), timeout=60_000)
        assert install.rows["web-ok"].item.text(4) == "installer ready"
        assert machine.state == "installer"


def test_several_new_servers_pasted_and_picked_from_ssh_config(
    qtbot: QtBot, wizard: KexecWizard, ssh_env: SSHEnv, machine: Machine, tmp_path: Path  # noqa: F811
) -> None:  # fmt: skip
    """Add several…: one pasted target and one ~/.ssh/config host, inspected together."""
    config = Path.home() / ".ssh" / "config"
    config.write_text(
        f"Host sudo-box\n  HostName 127.0.0.1\n  Port {ssh_env.port}\n  User nkw-nopw\n"
        f"  IdentityFile {ssh_env.key}\n"
    )
    (Path.home() / ".ssh" / "id_ed25519").write_bytes(ssh_env.key.read_bytes())
    (Path.home() / ".ssh" / "id_ed25519").chmod(0o600)
    w = wizard
    servers = w.page_of(PageId.SERVERS)
    assert isinstance(servers, ServersPage)
    click(qtbot, servers.several_button)
    qtbot.waitUntil(lambda: servers.several_dialog is not None, timeout=10_000)
    dialog = servers.several_dialog
    assert dialog is not None and dialog.aliases.count() == 1
    dialog.text.setPlainText(f"# the new one\nroot@127.0.0.1:{machine.port}\n")
    dialog.aliases.item(0).setCheckState(Qt.CheckState.Checked)
    assert dialog.targets() == [f"root@127.0.0.1:{machine.port}", "sudo-box"]
    dialog.accept()
    inspect = w.currentPage()
    assert isinstance(inspect, BatchInspectPage)
    qtbot.waitUntil(lambda: inspect.keys_dialog is not None, timeout=20_000)
    click(qtbot, inspect.keys_dialog.trust)  # type: ignore[union-attr]
    qtbot.waitUntil(
        lambda: not inspect.busy and bool(inspect.found or inspect.ended), timeout=30_000
    )
    qtbot.waitUntil(lambda: len(inspect.found) + len(inspect.ended) == 2, timeout=30_000)
    assert set(inspect.rows) == {f"root@127.0.0.1:{machine.port}", "sudo-box"}
    # Reached and probed through the alias's HostName, Port, User and key: it goes on, or a
    # check stops it (this sshd runs in a container), never a failed login.
    assert "sudo-box" in inspect.found or inspect.ended["sudo-box"].outcome == "preflight"
    assert f"root@127.0.0.1:{machine.port}" in inspect.found


def test_the_wizards_batch_and_the_command_line_build_the_same_plans(
    qtbot: QtBot, wizard: KexecWizard, ctx: AppContext, ssh_env: SSHEnv, machine: Machine,  # noqa: F811
    releases: ReleasesServer, urls: dict[str, str],
) -> None:  # fmt: skip
    """The same servers and choices in both faces' batches give the same plan per server."""
    from tests.test_cli import cli

    w, key = wizard, str(ssh_env.key)
    with more_machines(ssh_env, "ok") as (second,):
        for name, m in (("web-1", machine), ("web-2", second)):
            ctx.profiles.put(Profile(name, "127.0.0.1", port=m.port, auth="key", key_path=key))
        # The command line first: without --yes it stops at the confirmation, nothing changed.
        r = cli("install", "--json", "--accept-new-host-key", "--from-profiles", "web-1",
                "web-2", "--transfer", "upload", env=urls)  # fmt: skip
        assert r.code == 2, r.stdout[-3000:]
        cli_plans = {e["host"]: e["plan"] for e in r.events if e["event"] == "plan"}
        assert set(cli_plans) == {"web-1", "web-2"}
        servers = w.page_of(PageId.SERVERS)
        assert isinstance(servers, ServersPage)
        servers.reload()
        servers.tree.selectAll()
        next_page(qtbot, w)
        inspect = w.currentPage()
        assert isinstance(inspect, BatchInspectPage)  # the keys are known now: nothing asked
        qtbot.waitUntil(
            lambda: inspect.isComplete() or inspect.override.isVisible(), timeout=30_000
        )
        if inspect.override.isVisible():
            inspect.override.setChecked(True)
        next_page(qtbot, w)
        confirm = w.currentPage()
        assert isinstance(confirm, BatchConfirmPage)
        qtbot.waitUntil(lambda: w.state.catalog is not None, timeout=20_000)
        confirm.transfer.setCurrentIndex(confirm.transfer.findData("upload"))
        confirm.typed.setText("2")
        click(qtbot, w.button(COMMIT))
        install = w.currentPage()
        assert isinstance(install, BatchInstallPage)
        qtbot.waitUntil(lambda: install.isComplete(), timeout=120_000)
        fleet = w.state.batch.fleet if w.state.batch else None
        assert fleet is not None
        gui_plans = {r.label: r.plan.summary() for r in fleet.runs if r.plan is not None}
        assert machine.state == second.state == "installer"
    assert gui_plans == cli_plans


@pytest.mark.fault
def test_server_text_in_a_batch_tooltip_is_shown_as_text_never_as_markup(
    qtbot: QtBot,
    wizard: KexecWizard,  # noqa: F811
) -> None:
    """Qt renders a tooltip that looks like markup as rich text: what a server said (here in
    an error) is escaped, so it shows as the characters it is."""
    from PySide6.QtWidgets import QTreeWidgetItem

    from app.core.errors import WizardError
    from app.core.result import Outcome

    page = wizard.page_of(PageId.BATCH_INSPECT)
    assert isinstance(page, BatchInspectPage)
    item = QTreeWidgetItem(["web", "", ""])
    page.table.addTopLevelItem(item)
    page.rows["web"] = item
    said = WizardError("<img src='http://192.0.2.1/x'>It failed", "<b>loud</b>", "Look.")
    page._left_out("web", Outcome.failed("web", said))
    tip = item.toolTip(2)
    assert "<img" not in tip and "<b>" not in tip
    assert (
        "&lt;img src=&#x27;http://192.0.2.1/x&#x27;&gt;It failed" in tip and "&lt;b&gt;loud" in tip
    )

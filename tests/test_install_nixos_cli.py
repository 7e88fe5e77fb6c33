"""`install-nixos` without a VM: its options checked, and a server that is not the installer."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.disk.disks import Choice, Disk
from app.core.disk.run import DiskChoiceRequired, DiskRequest, DiskRun, WipeConfirmationRequired
from app.core.flow import record
from app.core.profiles import ProfileStore
from app.core.questions import Answers, is_question, unanswered
from app.core.run import Host, folder_name
from app.core.secrets import SecretStore
from app.core.ssh import Credentials, Target
from tests.support.sshd import SSHEnv
from tests.test_cli import _ssh_args, cli

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAbcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ you@laptop"
VDB = Disk(
    "vdb", "/dev/vdb", 12 << 30, serial="nkw-disk-1", by_id="/dev/disk/by-id/virtio-nkw-disk-1"
)


def test_the_old_system_is_refused_and_told_to_boot_the_installer_first(
    ssh_env: SSHEnv, urls: dict[str, str]
) -> None:
    r = cli("install-nixos", "--json", "--accept-new-host-key", "--yes-wipe", "vda",
            *_ssh_args(ssh_env), env=urls)  # fmt: skip
    assert r.code == 1, r.stdout + r.stderr
    error = r.result["error"]
    assert "not the NixOS installer" in error["what"]
    assert f"nixos-kexec-wizard install nkw-nopw@127.0.0.1:{ssh_env.port}" in error["fix"]
    assert not [e for e in r.events if e["event"] == "stage" and e["stage"] != "probe"]


def test_bad_disk_options_are_refused_before_any_connection(tmp_path: Path) -> None:
    for args, words in (
        (("--swap-size", "-1"), "--swap-size"),
        (("--authorized-key", str(tmp_path / "none.pub")), "--authorized-key"),
        (("--authorized-key", "ssh-ed25519 not-base64!"), "--authorized-key"),
        (("--network", "static"), "invalid choice"),
    ):
        r = cli("install-nixos", "--json", "127.0.0.1:9", *args)
        assert r.code in (2, 3), (args, r.stdout, r.stderr)  # usage, or a key refused (config)
        assert words in r.stdout + r.stderr
        assert "connect" not in r.stdout  # refused before the connection


def test_a_key_file_gives_its_key_lines(tmp_path: Path, ssh_env: SSHEnv) -> None:
    f = tmp_path / "keys.pub"
    f.write_text(f"# mine\n{KEY}\n\n")
    r = cli("install-nixos", "--json", "--authorized-key", str(f), "127.0.0.1:9",
            "--connect-timeout", "2")  # fmt: skip
    assert r.code == 20, r.stdout + r.stderr  # the options were taken: only the connection failed


def test_the_disk_questions_are_answered_per_server_and_name_their_options() -> None:
    choice = Choice((VDB, Disk("vdc", "/dev/vdc", 12 << 30)), why_no_default="two disks fit")
    pick = DiskChoiceRequired("web-1", choice)
    wipe = WipeConfirmationRequired("web-1", VDB, "an empty disk")
    assert is_question(pick) and is_question(wipe)
    assert "--disk NAME (one of: vdb, vdc" in unanswered(pick).fix
    assert "--yes-wipe vdb" in unanswered(wipe).fix and "--yes alone" in wipe.fix
    answers = Answers()
    answers.give(pick, "vdc", run="web-1")
    answers.give(wipe, "vdc", run="web-1")
    assert answers.disks == {"web-1": "vdc"} and answers.wipes == {"web-1": "vdc"}
    assert not answers.confirmed  # the kexec's confirmation is another question
    none = DiskChoiceRequired("web-1", Choice((), refused=((VDB, "the installer is using it"),)))
    assert "no disk that can take the system" in none.what and "--disk" not in none.fix
    assert "vdb: the installer is using it" in none.why


def test_each_server_keeps_its_configuration_in_a_folder_of_its_own(tmp_path: Path) -> None:
    web = Host("web", Target("10.0.0.2", 2201), Credentials())
    other = Host("web", Target("10.0.0.2", 2202), Credentials())
    assert folder_name(web) != folder_name(other)  # port apart, same address
    assert folder_name(Host("x", Target("h"), Credentials(), profile="..")) == "server"
    disk = DiskRun("web", DiskRequest(), configuration="{ }\n", disko="{ }\n")
    first, second = disk.save(tmp_path / "web" / "t"), disk.save(tmp_path / "web" / "t")
    assert first != second and second.name == "t-2"  # the same second: never overwritten
    assert (first / "configuration.nix").read_text() == "{ }\n"


def test_a_run_on_the_installer_keeps_the_profile_s_own_login(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "profiles.json")
    secrets = SecretStore()
    old = Target("web-1.example.org", 22, "deploy", identity_files=("/home/me/.ssh/id",))
    record(store, secrets, "web", target=old, creds=Credentials(), host_key="ssh-ed25519 AAAA",
           facts=None)  # fmt: skip
    installer = Target("203.0.113.7", 22, "root", identity_files=("/keys/web",))
    saved, _ = record(store, secrets, "web", target=installer, creds=Credentials(),
                      host_key="ssh-ed25519 AAAA", facts=None, state="installed",
                      system="/x", keep_login=True)  # fmt: skip
    assert (saved.host, saved.user, saved.key_path) == ("web-1.example.org", "deploy",
                                                        "/home/me/.ssh/id")  # fmt: skip
    assert (saved.state, saved.system) == ("installed", "/x")


def test_a_wipe_is_confirmed_for_what_was_shown_and_nothing_else() -> None:
    disk = DiskRun("web", DiskRequest(), disk=VDB, configuration="{ a }\n", disko="{ }\n")
    shown = disk.digest()
    disk.confirm("vdb", None, shown)  # the name typed, for the files the page showed
    disk.configuration = "{ b }\n"  # laid out again after it was shown
    with pytest.raises(WipeConfirmationRequired) as err:
        disk.confirm("vdb", None, shown)
    assert "changed after it was shown" in err.value.what and "--yes-wipe vdb" in err.value.fix
    disk.confirm("vdb", None)  # the command line shows nothing: its name alone confirms
    with pytest.raises(WipeConfirmationRequired):
        disk.confirm("vdc", None)

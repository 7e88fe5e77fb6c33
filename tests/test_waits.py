"""The waits around the kexec: names with several addresses, slow banners, an old system still up."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from app.core.errors import NeverWentDown
from app.core.events import Event, LogEvent
from app.core.install.wait import wait_down
from app.core.settings import Settings
from tests.support.blackhole import DroppingAddress, Names
from tests.support.machine import Machine
from tests.support.releases import ReleasesServer
from tests.support.slow_banner import SlowBanner
from tests.support.sshd import SSHEnv, SSHServer, free_port
from tests.test_install import Rig, make_rig

NAME = "dual.test"  # resolves (here) to an address that drops packets, then 127.0.0.1
DROPS = "127.0.0.2"


@pytest.fixture
def own_sshd(ssh_env: SSHEnv, tmp_path: Path) -> Iterator[SSHServer]:
    """A second sshd with the fixture's host keys, never going down."""
    srv = SSHServer(free_port(), tmp_path, ssh_env.server.host_keys)
    srv.start()
    yield srv
    srv.stop()


def _trust(trusted: Path, ssh_env: SSHEnv, host: str, port: int) -> None:
    """The app's known_hosts trusting the fixture's host keys at ``host``:``port``."""
    with trusted.open("a") as f:
        for k in ssh_env.server.host_keys:
            kind, b64 = k.with_suffix(".pub").read_text().split()[:2]
            f.write(f"[{host}]:{port} {kind} {b64}\n")


def _machine_rig(
    ssh_env: SSHEnv,
    machine: Machine,
    trusted: Path,
    settings: Settings,
    releases: ReleasesServer,
    tmp_path: Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
) -> Rig:
    """Root on the loopback machine, prepared (uploaded and unpacked) and ready to run."""
    port = port or machine.port
    _trust(trusted, ssh_env, host, port)
    s = replace(settings, down_timeout=30, up_timeout=20)
    rig = make_rig(
        ssh_env, trusted, s, releases, tmp_path,
        user="root", host=host, port=port, home=machine.workdir / "root",
    )  # fmt: skip
    rig.installer.prepare(rig.events.append, rig.cancel)
    return rig


def _said(rig: Rig, stage: str) -> list[str]:
    return [e.message for e in rig.events if isinstance(e, LogEvent) and e.stage == stage]


@pytest.mark.fault
def test_a_name_whose_first_address_drops_packets_is_not_called_down_while_it_answers(
    ssh_env: SSHEnv,
    own_sshd: SSHServer,
    trusted: Path,
    settings: Settings,
    releases: ReleasesServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A dual-stack name whose first address has a broken route: each address gets its own
    time, so the second one's banner says the old system still runs."""
    names = Names(monkeypatch)
    names[NAME] = ["127.0.0.1"]
    _trust(trusted, ssh_env, NAME, own_sshd.port)
    rig = make_rig(ssh_env, trusted, settings, releases, tmp_path, host=NAME, port=own_sshd.port)
    hole = DroppingAddress(DROPS, own_sshd.port)
    names[NAME] = [DROPS, "127.0.0.1"]
    try:
        with pytest.raises(NeverWentDown):
            wait_down(rig.step())
        assert not [m for m in _said(rig, "down") if "went down" in m], _said(rig, "down")
    finally:
        hole.close()
        rig.session.close()


@pytest.mark.fault
def test_the_installer_is_found_on_the_second_address_of_a_name(
    ssh_env: SSHEnv,
    machine: Machine,
    trusted: Path,
    settings: Settings,
    releases: ReleasesServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The whole wait on such a name: down only once the machine is, then the installer on
    the address that answers."""
    names = Names(monkeypatch)
    names[NAME] = ["127.0.0.1"]
    rig = _machine_rig(ssh_env, machine, trusted, settings, releases, tmp_path, host=NAME)
    hole = DroppingAddress(DROPS, machine.port)
    names[NAME] = [DROPS, "127.0.0.1"]
    try:
        stamped: list[tuple[float, Event]] = []
        rig.installer.kexec(rig.events.append, rig.cancel)
        info = rig.installer.wait(lambda e: stamped.append((time.monotonic(), e)), rig.cancel)
        assert info.hostname == "nixos-installer" and machine.state == "installer"
        kexec_at = next(t for t, what in machine.events if what == "kexec")
        went = [t for t, e in stamped if e.stage == "down" and "went down" in e.message]
        assert went and went[0] >= kexec_at, (went, kexec_at)
    finally:
        hole.close()
        rig.session.close()


@pytest.mark.fault
def test_an_old_system_whose_banner_takes_over_a_second_is_not_taken_for_gone(
    ssh_env: SSHEnv,
    machine: Machine,
    trusted: Path,
    settings: Settings,
    releases: ReleasesServer,
    tmp_path: Path,
) -> None:
    """`run` kexecs 6 s after it says so; meanwhile the old system's banners take 1.2 s. The
    down check waits as long for a banner as the wait for the installer does, so it does not
    say "down" early and the old system is never mistaken for a kexec that did not take."""
    relay = SlowBanner(machine.port)
    try:
        rig = _machine_rig(ssh_env, machine, trusted, settings, releases, tmp_path, port=relay.port)
        relay.delay = 1.2
        rig.installer.kexec(rig.events.append, rig.cancel)
        info = rig.installer.wait(rig.events.append, rig.cancel)
        assert info.hostname == "nixos-installer" and machine.state == "installer"
        rig.session.close()
    finally:
        relay.close()


@pytest.mark.fault
def test_the_old_boot_answering_the_wait_for_the_installer_means_not_down_yet(
    ssh_env: SSHEnv,
    machine: Machine,
    trusted: Path,
    settings: Settings,
    releases: ReleasesServer,
    tmp_path: Path,
) -> None:
    """As after a down check fooled by one lost SYN: the wait for the installer starts while
    the old system still runs. A login that finds the old boot is not a verdict."""
    rig = _machine_rig(ssh_env, machine, trusted, settings, releases, tmp_path)
    rig.installer.kexec(rig.events.append, rig.cancel)
    t0 = time.monotonic()
    info = rig.installer.rewait(rig.events.append, rig.cancel)  # no down stage
    assert info.hostname == "nixos-installer" and machine.state == "installer"
    assert time.monotonic() - t0 >= 4  # `run` kexecs 6 s after it returned
    assert any("not gone yet" in m for m in _said(rig, "up")), _said(rig, "up")
    rig.session.close()

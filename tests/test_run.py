"""One server's run, in process, against real sshds: each question it asks, answered by script."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.catalog import CatalogClient
from app.core.download import ImageCache
from app.core.errors import Cancelled, HostKeyUnknown, NewSystemHostKey
from app.core.events import CancelToken, Event
from app.core.fleet import Fleet, SharedImages
from app.core.kinds import AuthMethod, Transfer
from app.core.plan import ImageRequest, InstallRequest
from app.core.preflight import Level
from app.core.profiles import ProfileStore
from app.core.questions import (
    Answers,
    ConfirmationRequired,
    GoAheadRequired,
    SudoPasswordRequired,
)
from app.core.run import Host, HostRun, RunEnv, RunRequest, Step
from app.core.secrets import SecretStore
from app.core.settings import Settings
from app.core.ssh import Credentials, KnownHosts, PassphraseRequired, PasswordRequired, Target
from tests.support.machine import Machine
from tests.support.releases import ReleasesServer
from tests.support.secret_checks import PASSPHRASE
from tests.support.sshd import SSHEnv
from tests.support.tarballs import machine_bundle


def _env(tmp_path: Path, settings: Settings) -> RunEnv:
    return RunEnv(
        settings=settings,
        known_hosts=KnownHosts(tmp_path / "known_hosts"),
        profiles=ProfileStore(tmp_path / "profiles.json"),
        secrets=SecretStore(),
        keys_dir=tmp_path / "keys",
        images=SharedImages(ImageCache(tmp_path / "images"), settings),
    )


def _run(target: Target, env: RunEnv, creds: Credentials | None = None) -> HostRun:
    return HostRun(Host(target.label, target, creds or Credentials(), "srv"), env)


def _request(settings: Settings, tmp_path: Path, source: str = "") -> RunRequest:
    catalog = None if source else CatalogClient(settings, tmp_path / "catalog.json").load()
    return RunRequest(
        ImageRequest(source=source), InstallRequest(transfer=Transfer.UPLOAD), catalog
    )


def test_an_unknown_host_key_is_a_question_and_the_accepted_fingerprint_its_answer(
    ssh_env: SSHEnv, settings: Settings, tmp_path: Path
) -> None:
    env = _env(tmp_path, settings)
    run = _run(
        Target("127.0.0.1", ssh_env.port, ssh_env.nopw.name, identity_files=(str(ssh_env.key),)),
        env,
    )
    answers = Answers()
    with pytest.raises(HostKeyUnknown) as asked:
        run.connect(answers, CancelToken())
    assert run.session is None  # nothing was sent
    answers.give(asked.value)
    session = run.connect(answers, CancelToken())
    assert session.active and session.host_key_fingerprint == asked.value.fingerprint
    run.close()


def test_a_passphrase_and_a_password_are_questions_each_answered_once(
    ssh_env: SSHEnv, trusted: Path, settings: Settings, tmp_path: Path
) -> None:
    env = _env(tmp_path, settings)
    env.known_hosts = KnownHosts(trusted)
    answers = Answers()
    enc = Target("127.0.0.1", ssh_env.port, ssh_env.pw.name, identity_files=(str(ssh_env.enc_key),))
    run = _run(enc, env, Credentials(method=AuthMethod.KEY, use_agent=False))
    with pytest.raises(PassphraseRequired) as asked:
        run.connect(answers, CancelToken())
    answers.give(asked.value, PASSPHRASE)
    assert run.connect(answers, CancelToken()).active
    run.close()
    plain = Target("127.0.0.1", ssh_env.port, ssh_env.plain.name)
    run = _run(plain, env, Credentials(method=AuthMethod.PASSWORD, use_agent=False))
    with pytest.raises(PasswordRequired) as asked_pw:
        run.connect(answers, CancelToken())
    answers.give(asked_pw.value, ssh_env.plain.password)
    assert run.connect(answers, CancelToken()).active
    run.close()


def test_sudo_asks_for_the_password_again_when_it_is_refused(
    ssh_env: SSHEnv, trusted: Path, settings: Settings, tmp_path: Path
) -> None:
    env = _env(tmp_path, settings)
    env.known_hosts = KnownHosts(trusted)
    target = Target("127.0.0.1", ssh_env.port, ssh_env.pw.name, identity_files=(str(ssh_env.key),))
    run, answers = _run(target, env), Answers()
    run.connect(answers, CancelToken())
    run.inspect(lambda _e: None, CancelToken())
    with pytest.raises(SudoPasswordRequired) as asked:
        run.become_root(answers)
    assert not asked.value.wrong and not run.rooted
    answers.give(asked.value, "not the password", run=run.label)
    with pytest.raises(SudoPasswordRequired) as again:
        run.become_root(answers)
    assert again.value.wrong and "refused" in again.value.what
    answers.give(again.value, ssh_env.pw.password, run=run.label)
    run.become_root(answers)
    assert run.rooted
    run.close()


def test_warnings_need_the_go_ahead_and_the_kexec_its_confirmation(
    ssh_env: SSHEnv, machine: Machine, releases: ReleasesServer, settings: Settings,
    tmp_path: Path,
) -> None:  # fmt: skip
    env = _env(tmp_path, settings)
    env.accept_new_host_key = True
    # As a sudo user whose sudo needs a password: a preflight warning of its own.
    target = Target("127.0.0.1", machine.port, ssh_env.pw.name, identity_files=(str(ssh_env.key),))
    run, answers = _run(target, env), Answers(sudo_passwords={})
    answers.sudo_passwords[target.label] = ssh_env.pw.password
    seen: list[Event] = []
    assert run.go(answers, seen.append, CancelToken(), until=Step.ROOT) is None
    assert run.inspection is not None and run.inspection.level is Level.WARN
    request = _request(settings, tmp_path)
    with pytest.raises(GoAheadRequired) as asked:
        run.go(answers, seen.append, CancelToken(), request=request, until=Step.PREPARED)
    assert "sudo will need your password" in asked.value.what and run.plan is None
    answers.give(asked.value)
    assert run.go(answers, seen.append, CancelToken(), request=request, until=Step.PREPARED) is None
    assert run.plan is not None and run.plan.key_name == "srv"
    with pytest.raises(ConfirmationRequired) as confirm:
        run.go(answers, seen.append, CancelToken(), request=request)
    assert confirm.value.file_name == run.plan.file_name and confirm.value.system.startswith(
        "Debian"
    )
    assert machine.state == "original" and run.installer is None  # nothing changed before the yes
    run.close()


def test_a_fleet_asks_about_each_bundles_new_host_key_then_waits_for_it_again(
    ssh_env: SSHEnv, machine: Machine, settings: Settings, tmp_path: Path
) -> None:
    """Script the answers a face gives: every bundle's new key, asked after the kexec."""
    from dataclasses import replace

    from tests.test_fleet import more_machines

    bundle = machine_bundle(
        tmp_path / "kexec-bundle-x86_64", ssh_env.key.with_suffix(".pub").read_bytes()
    )
    env = _env(tmp_path, replace(settings, up_timeout=20, down_timeout=20))
    env.accept_new_host_key = True
    with more_machines(ssh_env, "ok") as (second,):
        hosts = [Host(f"web-{i}", Target("127.0.0.1", m.port, identity_files=(str(ssh_env.key),)),
                      Credentials()) for i, m in enumerate((machine, second))]  # fmt: skip
        fleet = Fleet(hosts, env, CancelToken())
        asked_about: list[str] = []

        def ask(asked: list[tuple[HostRun, object]]) -> None:
            for run, q in asked:
                if isinstance(q, NewSystemHostKey):
                    asked_about.append(run.label)
                answers.give(q)  # type: ignore[arg-type]

        answers = Answers()
        outcomes = fleet.drive(
            answers, ask, _request(settings, tmp_path, str(bundle)), lambda _e: None
        )
        assert machine.state == second.state == "installer"
    assert sorted(asked_about) == ["web-0", "web-1"]
    assert [o.outcome for o in outcomes] == ["installer-ready", "installer-ready"], outcomes
    assert all(o.payload["installer"]["host_key_verified"] is False for o in outcomes)


def test_a_declined_question_ends_that_run_with_nothing_sent(
    ssh_env: SSHEnv, machine: Machine, settings: Settings, tmp_path: Path
) -> None:
    env = _env(tmp_path, settings)
    host = Host(
        "web", Target("127.0.0.1", machine.port, identity_files=(str(ssh_env.key),)), Credentials()
    )
    fleet = Fleet([host], env, CancelToken())

    def decline(asked: list[tuple[HostRun, object]]) -> None:
        for run, _q in asked:
            fleet.end(
                run,
                Cancelled("Host key not trusted; nothing was sent to the server."),
                lambda _e: None,
            )

    (outcome,) = fleet.drive(Answers(), decline, _request(settings, tmp_path), lambda _e: None)
    assert outcome.outcome == "cancelled" and outcome.exit_code == 130
    assert machine.state == "original"

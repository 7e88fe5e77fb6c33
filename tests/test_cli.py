"""The command line as scripts use it: real processes against the real sshd and HTTP server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.core.handoff import open_terminal, terminal_command
from app.core.profiles import Profile, ProfileStore
from tests.support.releases import ASSET, ReleasesServer
from tests.support.secret_checks import GIVEN_SECRETS, assert_no_secret
from tests.support.sshd import SSHEnv

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]

    @property
    def result(self) -> dict[str, Any]:
        results = [e for e in self.events if e["event"] == "result"]
        assert len(results) == 1, self.stdout + self.stderr
        return results[0]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Run:
    full_env = {**os.environ, **(env or {})}
    GIVEN_SECRETS.extend(v for k, v in (env or {}).items() if "PASS" in k or k.endswith("PW"))
    p = subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert_no_secret(p.stdout + p.stderr, f"the output of `{' '.join(args[:2])}`")
    return Run(p.returncode, p.stdout, p.stderr)


def test_help_and_version() -> None:
    r = cli("--help")
    assert r.code == 0 and "images" in r.stdout and "install" in r.stdout
    assert "wizard window opens" in r.stdout
    assert cli("--version").stdout.startswith("nixos-kexec-wizard ")


def test_images_lists_channels_with_checksums(urls: dict[str, str]) -> None:
    r = cli("images", "--json", env=urls)
    assert r.code == 0
    cat = r.result["catalog"]
    assert cat["source"] == "api" and cat["default_channel"] == "nixos-26.05"
    rebuilt = {rel["channel"]: rel["rebuilt"] for rel in cat["releases"]}
    assert rebuilt == {"nixos-unstable": True, "nixos-26.05": True, "nixos-25.11": False}
    assert all(a["digest"] for rel in cat["releases"] for a in rel["assets"])
    human = cli("images", env=urls)
    assert "nixos-26.05 (default): rebuilt weekly" in human.stdout
    assert "nixos-25.11: frozen, last build 2026-05-30" in human.stdout


def test_images_offline_says_checksums_are_unavailable() -> None:
    r = cli("images", "--json", "--offline")
    assert r.code == 0 and r.result["catalog"]["source"] == "builtin"
    assert "checksums are unavailable" in r.result["catalog"]["note"]


def test_download_twice_fetches_once(urls: dict[str, str], releases: ReleasesServer) -> None:
    first = cli("download", "--json", "--arch", "x86_64", env=urls)
    assert first.code == 0 and first.result["outcome"] == "downloaded"
    assert first.result["verification"] == "digest"
    assert any(e["event"] == "progress" for e in first.events)
    second = cli("download", "--json", "--arch", "x86_64", env=urls)
    assert second.result["outcome"] == "cached" and second.result["path"] == first.result["path"]
    assert len(releases.downloads(ASSET)) == 1


def test_download_of_a_missing_channel_is_a_usage_error(urls: dict[str, str]) -> None:
    r = cli("download", "--channel", "nixos-19.03", env=urls)
    assert (
        r.code == 2
        and "There is no channel 'nixos-19.03'" in r.stderr
        and "nixos-26.05" in r.stderr
    )


def test_plain_http_urls_need_the_explicit_setting(releases: ReleasesServer) -> None:
    r = cli("images", "--api-url", releases.api_url)
    assert r.code == 3 and "plain http" in r.stderr and "NIXOS_KEXEC_WIZARD_ALLOW_HTTP" in r.stderr


def _ssh_args(env: SSHEnv, user: str = "nkw-nopw") -> list[str]:
    return [f"{user}@127.0.0.1", "-p", str(env.port), "-i", str(env.key)]


@pytest.mark.fault
def test_probe_refuses_an_unknown_host_key_until_accepted(
    ssh_env: SSHEnv, urls: dict[str, str]
) -> None:
    r = cli("probe", "--json", *_ssh_args(ssh_env), env=urls)
    assert r.code == 22
    err = r.result["error"]
    assert err["error"] == "host-key-unknown" and err["fingerprint"].startswith("SHA256:")
    assert "--accept-new-host-key" in err["fix"]
    ok = cli("probe", "--json", "--accept-new-host-key", *_ssh_args(ssh_env), env=urls)
    assert ok.code == 0, ok.stderr
    res = ok.result
    assert res["host_key_fingerprint"] == err["fingerprint"]
    assert res["facts"]["user"] == "nkw-nopw" and res["facts"]["privilege"] == "sudo"
    assert {v["check"] for v in res["verdicts"]} >= {
        "arch",
        "memory",
        "kexec",
        "tools",
        "privilege",
    }
    assert res["facts"]["reach_v4"] is True  # the server reaches the (local) download server
    stages = [(e["stage"], e["state"]) for e in ok.events if e["event"] == "stage"]
    assert stages == [("probe", "start"), ("probe", "done")]
    again = cli("probe", "--json", *_ssh_args(ssh_env), env=urls)  # known now
    assert again.code == 0


@pytest.mark.fault
def test_wrong_password_is_an_auth_error_and_never_echoed(
    ssh_env: SSHEnv, urls: dict[str, str], trusted: Path
) -> None:
    env = {**urls, "PW": "Wrong-Secret-987"}
    r = cli(
        "probe",
        "--json",
        "nkw-plain@127.0.0.1",
        "-p",
        str(ssh_env.port),
        "--auth",
        "password",
        "--password-env",
        "PW",
        env=env,
    )
    assert r.code == 21 and r.result["error"]["error"] == "auth"
    assert "Wrong-Secret-987" not in r.stdout + r.stderr


def test_missing_password_variable_is_a_usage_error(ssh_env: SSHEnv, trusted: Path) -> None:
    r = cli(
        "probe",
        "nkw-plain@127.0.0.1",
        "-p",
        str(ssh_env.port),
        "--password-env",
        "NOT_SET_ANYWHERE",
    )
    assert r.code == 2 and "NOT_SET_ANYWHERE" in r.stderr


@pytest.mark.fault
def test_install_refuses_without_confirmation_and_changes_nothing(
    ssh_env: SSHEnv, urls: dict[str, str], trusted: Path
) -> None:
    r = cli("install", *_ssh_args(ssh_env), "--transfer", "upload", env=urls)
    staging = ssh_env.nopw.home / "nixos-kexec-wizard"
    assert r.code in (2, 30), r.stderr  # 30: this machine may itself be judged a container
    if r.code == 2:
        assert "--yes" in r.stderr
    assert not staging.exists()


def test_install_with_a_password_and_sudo_password_end_to_end(
    ssh_env: SSHEnv, urls: dict[str, str], trusted: Path, tmp_path: Path
) -> None:
    pw = ssh_env.pw.password
    env = {**urls, "PW": pw}
    args = [
        "install", "--json", "--yes", "nkw-pw@127.0.0.1", "-p", str(ssh_env.port),
        "--auth", "password", "--password-env", "PW", "--sudo-password-env", "PW",
        "--down-timeout", "3", "--timeout", "5", "--save-profile", "box", "--remember-password",
    ]  # fmt: skip
    r = cli(*args, env=env)
    result = r.result
    probe = cli(
        "probe",
        "--json",
        "nkw-pw@127.0.0.1",
        "-p",
        str(ssh_env.port),
        "--auth",
        "password",
        "--password-env",
        "PW",
        env=env,
    )
    stops = [v for v in probe.result["verdicts"] if v["level"] == "stop"]
    staging = ssh_env.pw.home / "nixos-kexec-wizard"
    if stops:
        # This machine is itself judged unfit (e.g. a container): preflight must stop first.
        assert r.code == 30 and result["outcome"] == "preflight"
        assert not staging.exists()
    else:
        assert r.code == 41 and result["outcome"] == "never-went-down", r.stdout[-2000:]
        stages = [(e["stage"], e["state"]) for e in r.events if e["event"] == "stage"]
        assert ("run", "done") in stages and ("down", "failed") in stages
        assert (staging / "kexec" / "kexec.log").read_text().startswith("uid=0 --load")
    # Secrets: never in the output, the logs or the profile; the password is in the keyring.
    logs = list((tmp_path / "app" / "logs").glob("install-*.log"))
    assert logs
    for text in [r.stdout, r.stderr, *(p.read_text() for p in logs)]:
        assert pw not in text
    profiles = (tmp_path / "app" / "config" / "profiles.json").read_text()
    assert pw not in profiles and json.loads(profiles)["profiles"][0]["name"] == "box"
    if not stops:
        assert json.loads(profiles)["profiles"][0]["state"] == "unknown"


def test_save_profile_then_connect_by_profile(
    ssh_env: SSHEnv, urls: dict[str, str], trusted: Path, tmp_path: Path
) -> None:
    r = cli("probe", "--json", *_ssh_args(ssh_env), "--save-profile", "web", env=urls)
    assert r.code == 0
    path = tmp_path / "app" / "config" / "profiles.json"
    assert path.stat().st_mode & 0o777 == 0o600
    prof = json.loads(path.read_text())["profiles"][0]
    assert (prof["host"], prof["port"], prof["user"], prof["state"]) == (
        "127.0.0.1",
        ssh_env.port,
        "nkw-nopw",
        "original",
    )
    assert prof["host_key"].startswith("ssh-ed25519 ") and prof["facts"]["privilege"] == "sudo"
    again = cli("probe", "--json", "--profile", "web", env=urls)
    assert again.code == 0 and again.result["facts"]["user"] == "nkw-nopw"
    listed = cli("profiles", "list", "--json")
    assert [p["name"] for p in listed.result["profiles"]] == ["web"]
    assert cli("profiles", "delete", "web").code == 0
    assert cli("profiles", "show", "web").code == 3


def test_reconnect_prints_the_exact_ssh_command(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "app" / "config" / "profiles.json")
    store.put(
        Profile(
            "box", "203.0.113.10", 2222, "admin", jump="hop@198.51.100.1:22", state="installer",
            installer={
                "host": "203.0.113.10", "port": 2222, "user": "root", "host_key": "ssh-ed25519 AAAA",
                "fingerprint": "SHA256:x", "boot_id": "b", "hostname": "nixos-installer",
                "os_release": {"ID": "nixos"}, "identity_file": "/keys/box_ed25519",
            },
        )
    )  # fmt: skip
    r = cli("reconnect", "box", "--print", "--json")
    assert r.code == 0
    cmd = r.result["command"]
    known = tmp_path / "app" / "config" / "known_hosts"
    assert cmd == [
        "ssh", "-o", f"UserKnownHostsFile={known} {tmp_path / 'home' / '.ssh' / 'known_hosts'}",
        "-p", "2222", "-i", "/keys/box_ed25519", "-J", "hop@198.51.100.1:22", "root@203.0.113.10",
    ]  # fmt: skip
    store.put(Profile("fresh", "h"))
    no = cli("reconnect", "fresh", "--print")
    assert no.code == 3 and "no installer recorded" in no.stderr


def test_terminal_command_prefers_terminal_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERMINAL", "myterm")
    found = {"myterm", "xterm"}
    assert terminal_command(["ssh", "h"], lambda n: n if n in found else None) == [
        "myterm",
        "-e",
        "ssh",
        "h",
    ]
    monkeypatch.delenv("TERMINAL")
    assert terminal_command(["ssh", "h"], lambda n: n if n in found else None) == [
        "xterm",
        "-e",
        "ssh",
        "h",
    ]
    assert terminal_command(["ssh"], lambda n: None) is None


def _bare_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.pop("QT_QPA_PLATFORM", None)  # as on a server: no platform chosen
    return {**env, **extra}


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        ({}, "there is no graphical display here"),
        ({"DISPLAY": ":97"}, "the X display ':97' cannot be opened"),
        ({"WAYLAND_DISPLAY": "wayland-97", "XDG_RUNTIME_DIR": "/nonexistent"}, "Wayland"),
    ],
)
def test_the_wizard_without_a_display_says_so_and_names_the_command_line(
    extra: dict[str, str], said: str
) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "app"], cwd=ROOT, env=_bare_env(**extra),
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert p.returncode == 2, p.stderr  # the usage code, not a Qt abort and a core dump
    assert said in p.stderr and "nixos-kexec-wizard install root@SERVER" in p.stderr


def test_a_real_x_server_passes_the_display_check(tmp_path: Path) -> None:
    from app.ui.launch import display_problem

    xvfb = subprocess.Popen(["Xvfb", ":96", "-nolisten", "tcp"], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while display_problem({"DISPLAY": ":96"}) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert display_problem({"DISPLAY": ":96"}) is None
    finally:
        xvfb.terminate()
        xvfb.wait(5)
    assert display_problem({"DISPLAY": ":96"}) is not None


def test_home_before_the_subcommand_is_honoured(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    ProfileStore(elsewhere / "config" / "profiles.json").put(Profile("only-here", "192.0.2.3"))
    r = cli("--home", str(elsewhere), "profiles", "list")
    assert r.code == 0 and "only-here" in r.stdout, r.stdout + r.stderr


def test_inside_the_flatpak_sandbox_no_terminal_is_started(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Flatpak's sandbox has no desktop programs: the faces copy the command instead."""
    monkeypatch.setenv("DISPLAY", ":99")
    monkeypatch.setenv("TERMINAL", "/bin/true")  # would be found and started outside
    marker = tmp_path / ".flatpak-info"
    marker.write_text("[Application]\nname=io.github.nixos_kexec_wizard\n")
    assert "Flatpak sandbox" in (open_terminal(["ssh", "h"], sandbox=marker) or "")

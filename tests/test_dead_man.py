"""The dead-man switch's words on upstream's and our stand-in's `run`, its refusals and its trace."""

from __future__ import annotations

import base64
import difflib
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from app.cli.context import Context
from app.cli.parser import build_parser
from app.core.errors import ConfigError, PreflightStop, UsageError
from app.core.install.deadman import (
    CMDLINE_LIMIT,
    DISARMED,
    SERVICE,
    TIMER,
    DeadMan,
    command_line_of,
    disarm_verdict,
    patch_run,
    unit_texts,
)
from app.core.plan import dead_man_choice, systemd_takes_units
from app.core.profiles import Profile
from tests.support.machine import Machine
from tests.support.sshd import SSHEnv
from tests.support.tarballs import NIX_RUN, escape_shell_args, fill_run, standin_tarball
from tests.test_cli import ROOT, cli
from tests.test_one_run import _trust

VENDOR = Path(os.environ.get("NKW_VENDOR", ROOT.parent / "shared" / "vendor"))
UPSTREAM_RUN = VENDOR / "nixos-images-e17386d-kexec-run.sh"
NIXPKGS_LIB = next(iter(sorted(VENDOR.glob("nixpkgs-lib-*.tar.gz"))), None)
# What a release's module puts there: the stage-2 init and the installer's kernelParams.
INIT = "/nix/store/0c3xj3a1wq5b9r4cz1y5m8hb2vl7k9x4-nixos-system-nixos-installer-26.05/init"
PARAMS = ["console=tty0", "console=ttyS0,115200", "loglevel=4", "net.ifnames=0"]


def _upstream() -> str:
    if not UPSTREAM_RUN.exists():
        pytest.skip(f"upstream's kexec/run is not at {UPSTREAM_RUN} (set NKW_VENDOR)")
    return fill_run(UPSTREAM_RUN.read_text(), INIT, PARAMS)


@pytest.mark.parametrize("which", ["upstream", "stand-in"])
def test_the_words_go_into_the_kernel_params_line_and_nowhere_else(which: str) -> None:
    text = _upstream() if which == "upstream" else fill_run(NIX_RUN, INIT, PARAMS)
    switch = DeadMan(10)
    patched = patch_run(text, switch.words())
    changed = [ln for ln in difflib.ndiff(text.splitlines(), patched.splitlines())
               if ln.startswith(("- ", "+ "))]  # fmt: skip
    assert changed == [
        "- kernelParams=\"'console=tty0' 'console=ttyS0,115200' 'loglevel=4' 'net.ifnames=0'\"",
        "+ kernelParams=\"'console=tty0' 'console=ttyS0,115200' 'loglevel=4' 'net.ifnames=0' "
        + " ".join(switch.words()) + '"',
    ]  # fmt: skip
    line = command_line_of(patched)
    assert line == " ".join([f"init={INIT}", *PARAMS, *switch.words()])
    assert len(line.encode()) <= CMDLINE_LIMIT


def test_the_shell_gives_kexec_the_patched_command_line_as_one_argument(tmp_path: Path) -> None:
    """The patched stand-in `run`, executed by sh with a kexec that records its arguments."""
    folder = tmp_path / "kexec"
    folder.mkdir()
    patched = patch_run(fill_run(NIX_RUN, INIT, PARAMS), DeadMan(3).words())
    (folder / "run").write_text(patched)
    (folder / "kexec").write_text(
        '#!/bin/sh\n[ "$1" = --load ] && printf "%s\\n" "$@" > "$(dirname "$0")/args"; exit 0\n'
    )
    (folder / "ip").write_text("#!/bin/sh\necho '[]'\n")
    (folder / "initrd").write_bytes(b"")
    for f in ("run", "kexec", "ip"):
        (folder / f).chmod(0o755)
    r = subprocess.run(["sh", str(folder / "run")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr[-2000:]
    args = (folder / "args").read_text().splitlines()
    cmdline = args[args.index("--command-line") + 1]
    assert cmdline == command_line_of(patched)
    assert "systemd.wants=nkw-dead-man.timer" in cmdline and "panic=30" in cmdline


def test_our_escape_matches_nixpkgs_lib_escape_shell_args(tmp_path: Path) -> None:
    nix = shutil.which("nix-instantiate")
    if nix is None or NIXPKGS_LIB is None:
        pytest.skip("needs Debian's nix-bin and the vendored nixpkgs lib")
    with tarfile.open(NIXPKGS_LIB) as t:
        t.extractall(tmp_path, filter="data")
    words = [*PARAMS, "rw", "root=/dev/vda", *DeadMan(10).words()]
    expr = "let lib = import ./nixpkgs-lib/lib; in lib.escapeShellArgs [ {} ]".format(
        " ".join(f'"{w}"' for w in words)
    )
    r = subprocess.run([nix, "--eval", "--strict", "--json", "-E", expr], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == '"' + escape_shell_args(words).replace('"', '\\"') + '"'


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (
            lambda t: re.sub('^kernelParams="', 'kernelParams="$extra ', t, flags=re.M),
            "exactly once",
        ),
        (lambda t: t + 'kernelParams="quiet"\n', "exactly once"),
        (
            lambda t: t.replace("'init=$init $kernelParams'", '"init=$init $kernelParams"'),
            "exactly once",
        ),
        (lambda t: t.replace("loglevel=4", "loglevel=" + "4" * 1900), "limit of 2016"),
        (lambda t: t.replace("'loglevel=4'", "'log level=4'"), "never writes"),
        (lambda t: t.replace("'loglevel=4'", "'a' ;touch /tmp/x;'b'"), "never writes"),
        (lambda t: t.replace("set -eux\n", "set -eux\n  kernelParams=quiet\n"), "exactly once"),
    ],
    ids=[
        "expansion",
        "twice",
        "command-line-changed",
        "too-long",
        "space",
        "shell-syntax",
        "indented-assignment",
    ],
)
def test_a_run_the_app_does_not_know_is_refused_with_the_reason(change, why) -> None:  # type: ignore[no-untyped-def]
    text = change(fill_run(NIX_RUN, INIT, PARAMS))
    with pytest.raises(PreflightStop) as ei:
        patch_run(text, DeadMan(10).words())
    assert why in ei.value.why and "--dead-man off" in ei.value.fix


def test_a_word_that_would_need_quoting_is_refused() -> None:
    with pytest.raises(PreflightStop, match="cannot be armed"):
        patch_run(fill_run(NIX_RUN, INIT, PARAMS), ["panic=30", "a'b"])


def test_the_reboot_is_the_services_success_action_never_the_timers() -> None:
    timer, service = unit_texts(90)
    assert "OnBootSec=90s" in timer and "Action" not in timer
    unit_part, service_part = service.split("[Service]")
    assert "[Unit]" in unit_part and "SuccessAction=reboot-force" in unit_part
    # It succeeds (and restarts the machine) only while the disarm mark is missing.
    assert f'ExecStart=/bin/sh -c "test ! -e {DISARMED}"' in service_part
    b64 = {w.split(":", 1)[0]: w.split(":", 1)[1] for w in DeadMan(1.5).words() if ":" in w}
    assert base64.b64decode(b64[f"systemd.set_credential_binary=systemd.extra-unit.{SERVICE}"]
                            ).decode() == service  # fmt: skip
    assert "OnBootSec=90s" in base64.b64decode(
        b64[f"systemd.set_credential_binary=systemd.extra-unit.{TIMER}"]).decode()  # fmt: skip
    assert DeadMan(10, units=False).words() == ["panic=30"]  # channels before 24.11


def test_old_channels_get_the_panic_restart_only() -> None:
    assert not systemd_takes_units("nixos-24.05") and systemd_takes_units("nixos-24.11")
    assert systemd_takes_units("nixos-unstable") and systemd_takes_units("")


@pytest.mark.parametrize(
    ("output", "verdict", "said"),
    [
        ("mark=yes\nwords=1\nload=loaded\ntimer=inactive\nran=0\n", "disarmed", "stopped"),
        ("mark=yes\nwords=1\nload=loaded\ntimer=active\nran=0\n", "disarmed", "does nothing"),
        ("mark=yes\nwords=1\nload=not-found\ntimer=inactive\nran=\n", "not-armed", "older"),
        ("mark=yes\nwords=0\nload=not-found\ntimer=inactive\nran=\n", "not-armed", "never"),
        ("mark=\nwords=1\nload=loaded\ntimer=inactive\nran=0\n", "still-armed", "missing"),
        ("mark=yes\nwords=1\nload=loaded\ntimer=inactive\nran=812345\n", "still-armed", "812345"),
        ("mark=yes\nwords=1\nload=loaded\ntimer=inactive\nran=\n", "still-armed", "unknown"),
        ("sh: systemctl: not found\n", "still-armed", "could not be confirmed off"),
    ],
)
def test_the_disarm_is_confirmed_only_by_a_stopped_timer_whose_service_never_ran(
    output: str, verdict: str, said: str
) -> None:
    got, message = disarm_verdict(output)
    assert got == verdict and said in message


def test_the_deadline_is_minutes_in_range_or_off() -> None:
    assert dead_man_choice(None) == (10.0, False)
    assert dead_man_choice("off") == (None, False)
    assert dead_man_choice("2.5") == (2.5, True)
    for bad in ("0.5", "300", "soon"):
        with pytest.raises(UsageError, match="--dead-man"):
            dead_man_choice(bad)


# -- on a loopback machine: the launcher, the kexec command line, upstream's run untouched ------


def _install(machine: Machine, ssh_env: SSHEnv, tmp_path: Path, image: Path, *args: str):  # type: ignore[no-untyped-def]
    _trust(tmp_path / "app" / "config" / "known_hosts", machine)
    return cli(
        "install", "--json", "--yes", f"root@127.0.0.1:{machine.port}", "-i", str(ssh_env.key),
        "--image", str(image), "--transfer", "upload", "--down-timeout", "20", "--timeout", "20",
        *args,
    )  # fmt: skip


@pytest.mark.fault
@pytest.mark.parametrize("choice", ["3", "off"])
def test_the_switch_rides_on_the_kexec_command_line_and_off_leaves_no_trace(
    choice: str, ssh_env: SSHEnv, machine: Machine, tmp_path: Path
) -> None:
    run = fill_run(NIX_RUN, INIT, PARAMS)
    image = standin_tarball(tmp_path / "installer.tar.gz", run=run)
    r = _install(machine, ssh_env, tmp_path, image, "--dead-man", choice, "--save-profile", "box")
    assert r.code == 0, r.stdout[-3000:] + r.stderr[-2000:]
    saved = json.loads((tmp_path / "app" / "config" / "profiles.json").read_text())
    assert saved["profiles"][0]["dead_man"] == choice  # the next install starts from it
    # Upstream's run is never edited: the app's launcher sits beside it.
    assert machine.kexec_files["run"] == run.encode()
    cmdline = next(a for a in machine.loaded if a.startswith("init="))  # one argument, whole
    armed = [e for e in r.events if e.get("dead_man") == "armed"]
    if choice == "off":
        assert cmdline == " ".join([f"init={INIT}", *PARAMS])
        assert "nkw-run" not in machine.kexec_files and not armed
        assert r.result["installer"]["dead_man"] == ""
        return
    assert cmdline == " ".join([f"init={INIT}", *PARAMS, *DeadMan(3).words()])
    assert armed and armed[0]["minutes"] == 3
    # This machine's "installer" kernel is not the one `run` loaded (its command line lacks
    # the words): the app says the switch never took hold, as a warning.
    assert r.result["installer"]["dead_man"] == "not-armed"
    warn = next(e for e in r.events if e.get("dead_man") == "not-armed")
    assert warn["level"] == "warn" and "never reached the installer's kernel" in warn["message"]


@pytest.mark.fault
def test_a_run_the_switch_cannot_patch_stops_before_anything_changes_if_it_was_asked_for(
    ssh_env: SSHEnv, machine: Machine, tmp_path: Path
) -> None:
    image = standin_tarball(tmp_path / "installer.tar.gz")  # a run without upstream's lines
    r = _install(machine, ssh_env, tmp_path, image, "--dead-man", "5")
    assert r.code == 30 and r.result["outcome"] == "preflight", r.stdout[-3000:]
    assert "cannot be armed" in r.result["error"]["what"]
    assert machine.state == "original" and not machine.loaded
    assert not (machine.workdir / "root" / "nixos-kexec-wizard").exists()  # cleaned up
    # On by default but not asked for: the kexec goes on, with a warning saying so.
    r = _install(machine, ssh_env, tmp_path, image)
    assert r.code == 0, r.stdout[-3000:]
    assert any(e.get("dead_man") == "not-armed" and e.get("level") == "warn" for e in r.events)


@pytest.mark.parametrize(
    ("kept", "given", "want"),
    [("off", None, (None, False)), ("15", None, (15.0, False)), ("off", "7", (7.0, True)),
     ("", None, (10.0, False))],
)  # fmt: skip
def test_the_profile_keeps_the_choice_and_the_command_line_wins(
    kept: str, given: str | None, want: tuple[float | None, bool], tmp_path: Path
) -> None:
    image = standin_tarball(tmp_path / "installer.tar.gz")
    args = ["install", "--home", str(tmp_path / "home"), "--profile", "box", "--image", str(image)]
    ctx = Context(build_parser().parse_args(args + (["--dead-man", given] if given else [])))
    ctx.profiles.put(Profile(name="box", host="192.0.2.7", dead_man=kept))
    install = ctx.run_request().install
    assert (install.dead_man_minutes, install.dead_man_required) == want


def test_a_profile_value_the_app_cannot_read_names_the_profile(tmp_path: Path) -> None:
    image = standin_tarball(tmp_path / "installer.tar.gz")
    args = ["install", "--home", str(tmp_path / "home"), "--profile", "box", "--image", str(image)]
    ctx = Context(build_parser().parse_args(args))
    ctx.profiles.put(Profile(name="box", host="192.0.2.7", dead_man="soon"))
    with pytest.raises(ConfigError, match="The profile 'box' keeps dead_man = 'soon'"):
        ctx.run_request()

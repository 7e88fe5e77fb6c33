"""What a server says reaches the terminal escaped: os-release, run's output, its errors."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from app.cli.report import Reporter
from app.core.events import LogEvent, OutputEvent, ResultEvent, StageEvent
from app.core.text import printable, printable_lines
from tests.support.machine import DEBIAN, Machine
from tests.support.releases import ASSET, ReleasesServer
from tests.support.sshd import SSHEnv
from tests.support.tarballs import standin_tarball
from tests.test_cli import cli
from tests.test_fleet import _run_in_terminal, more_machines

# Cursor up five lines, erase the line, set the window title, ring the bell, a C1 CSI, a
# carriage return that would overwrite the line, and a right-to-left override.
HOSTILE = "Debian\x1b[5A\x1b[2K\x1b]0;pwned\x07 \x9b6n\rFAKE \u202eeno"
HOSTILE_OS_RELEASE = DEBIAN.replace(
    'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"', f'PRETTY_NAME="{HOSTILE}"'
)
# A kexec that answers with the same sequences on both streams, then refuses.
KEXEC_HOSTILE = r"""#!/bin/sh
echo "uid=$(id -u) $*" >> "$(dirname "$0")/kexec.log"
[ "$1" = -e ] && exit 0
printf 'loading\033[5A\033[2K\033]0;pwned\007 \302\2336n\rFAKE done\n'
printf 'kexec_file_load failed\033[5A\033[2K\rFAKE ok\n' >&2
exit 1
"""
# The app's own terminal sequences: erase to the end of the line, up over its live lines
# (never five here), the pty's line ends.
OURS = re.compile(r"\x1b\[K|\x1b\[[1-4]A|\r\n|\r")


def assert_no_control(shown: str) -> None:
    """Nothing but the app's own sequences, line breaks and printable text reached the terminal."""
    for seq in ("\x1b[5A", "\x1b[2K", "\x1b]0;", "\x07", "\x9b", "\u202e"):
        assert seq not in shown, f"{seq!r} reached the terminal: {shown[-2000:]!r}"
    rest = OURS.sub("", shown)
    bad = sorted({c for c in rest if c != "\n" and not c.isprintable()})
    assert not bad, f"control characters {bad!r} reached the terminal: {shown[-2000:]!r}"


def test_printable_lines_keeps_line_breaks_and_escapes_the_rest() -> None:
    assert printable_lines("a\x1b[2K\nb\rc") == "a\\x1b[2K\nb\\rc"
    assert printable("a\nb") == "a\\nb"


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as stderr on one does."""

    def isatty(self) -> bool:
        return True


@pytest.mark.fault
@pytest.mark.parametrize("tty", [False, True])
def test_the_reporter_escapes_every_server_text(tty: bool) -> None:
    err = Terminal() if tty else io.StringIO()
    r = Reporter(False, out=io.StringIO(), err=err)
    r(StageEvent("run", state="start"))
    r(OutputEvent("run", HOSTILE))
    r(LogEvent("run", HOSTILE, level="warn"))
    r(ResultEvent(payload={"ok": False, "error": {"what": HOSTILE, "why": HOSTILE, "fix": "x"}}))
    r.start_board(["a", "b"])  # a run on many: the live lines carry server text too
    r(OutputEvent("run", HOSTILE, host="a"))
    r(LogEvent("run", HOSTILE, level="warn", host="b"))
    r(ResultEvent(payload={"ok": False, "error": {"what": HOSTILE}}, host="a"))
    r.end_board()
    shown = err.getvalue()
    assert_no_control(shown)
    assert shown.count("\\x1b[5A\\x1b[2K") >= 4  # said, escaped, not dropped


@pytest.mark.fault
def test_os_release_with_escapes_cannot_rewrite_the_confirmation(
    ssh_env: SSHEnv, machine: Machine, urls: dict[str, str]
) -> None:
    (machine.workdir / "os-release").write_text(HOSTILE_OS_RELEASE)  # bind-mounted: live
    code, shown = _run_in_terminal(
        ["install", f"root@127.0.0.1:{machine.port}", "-i", str(ssh_env.key),
         "--accept-new-host-key", "--transfer", "upload"],
        urls,
        [("to boot the installer:", "no")],
    )  # fmt: skip
    assert "to boot the installer:" in shown, shown[-3000:]
    assert code == 130 and "Not confirmed" in shown, shown[-3000:]
    assert machine.state == "original"
    assert_no_control(shown)
    assert (
        "(Debian\\x1b[5A\\x1b[2K\\x1b]0;pwned\\x07 \\x9b6n" in shown
    )  # the probe reads up to the carriage return


@pytest.mark.fault
def test_os_release_with_escapes_cannot_rewrite_the_batch_confirmation(
    ssh_env: SSHEnv, machine: Machine, urls: dict[str, str]
) -> None:
    with more_machines(ssh_env, "ok") as (second,):
        for m in (machine, second):
            (m.workdir / "os-release").write_text(HOSTILE_OS_RELEASE)
        a, b = (f"root@127.0.0.1:{m.port}" for m in (machine, second))
        code, shown = _run_in_terminal(
            ["install", a, b, "-i", str(ssh_env.key), "--accept-new-host-key",
             "--transfer", "upload"],
            urls,
            [("Type the number of servers (2) to boot the installer:", "0")],
        )  # fmt: skip
        assert machine.state == second.state == "original"
    assert "Type the number of servers (2)" in shown, shown[-3000:]
    assert code != 0
    assert_no_control(shown)
    assert shown.count("Debian\\x1b[5A") >= 2


@pytest.mark.fault
def test_run_output_with_escapes_reaches_the_terminal_escaped(
    ssh_env: SSHEnv, machine: Machine, urls: dict[str, str], releases: ReleasesServer,
    tmp_path: Path,
) -> None:  # fmt: skip
    tar = standin_tarball(tmp_path / "hostile.tar.gz", kexec=KEXEC_HOSTILE)
    releases.add("nixos-26.05", ASSET, tar.read_bytes())
    code, shown = _run_in_terminal(
        ["install", f"root@127.0.0.1:{machine.port}", "-i", str(ssh_env.key), "--yes",
         "--accept-new-host-key", "--transfer", "upload"],
        urls,
        [],
    )  # fmt: skip
    assert "kexec_file_load failed\\x1b[5A" in shown, shown[-3000:]
    assert code == 40, shown[-3000:]  # kexec refused
    assert_no_control(shown)
    # Scripts get the same text in JSON, where every control character is escaped by JSON.
    r = cli("install", "--json", "--yes", "--accept-new-host-key", "--transfer", "upload",
            f"root@127.0.0.1:{machine.port}", "-i", str(ssh_env.key), env=urls)  # fmt: skip
    assert "\x1b" not in r.stdout + r.stderr and "\\u001b[5A" in r.stdout

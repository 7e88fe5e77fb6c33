"""The terminal's answers to the runs' questions: prompts, or the error when none can be asked."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable

from app.core.disk.disks import size_text
from app.core.disk.run import DiskChoiceRequired, WipeConfirmationRequired
from app.core.errors import Cancelled, HostKeyUnknown
from app.core.fleet import Asked, Fleet, servers
from app.core.questions import (
    Answers,
    ConfirmationRequired,
    GoAheadRequired,
    Question,
    SudoPasswordRequired,
    unanswered,
)
from app.core.run import HostRun
from app.core.ssh import PassphraseRequired, PasswordRequired
from app.core.text import printable, printable_lines

from .context import Context


class Prompts:
    """Asks the person at the terminal; without one, every question ends its run with the
    error that names the option answering it ahead (``--accept-host-key``, ``--yes``, ...)."""

    def __init__(self, ctx: Context, fleet: Fleet, answers: Answers) -> None:
        self.ctx = ctx
        self.fleet = fleet
        self.answers = answers

    def __call__(self, asked: list[Asked]) -> None:
        """Answer this round's questions, one prompt per kind for every server that asks it."""
        kinds: list[tuple[type, Callable[[list[Asked]], None]]] = [
            (HostKeyUnknown, self._host_keys),
            (PassphraseRequired, self._secrets),
            (PasswordRequired, self._secrets),
            (SudoPasswordRequired, self._secrets),
            (GoAheadRequired, self._go_ahead),
            (ConfirmationRequired, self._confirm),
            (DiskChoiceRequired, self._disk),
            (WipeConfirmationRequired, self._wipe),
        ]
        for kind, ask in kinds:
            these = [(run, q) for run, q in asked if isinstance(q, kind)]
            if not these:
                continue
            if not self.ctx.interactive and kind is not GoAheadRequired:
                for run, q in these:
                    self.fleet.end(run, unanswered(q), self.ctx.report)
                continue
            with self.ctx.report.paused():
                ask(these)

    def _end(self, asked: list[Asked], why: Cancelled) -> None:
        for run, _q in asked:
            self.fleet.end(run, why, self.ctx.report)

    def _host_keys(self, asked: list[Asked]) -> None:
        if len(self.fleet.runs) == 1:
            q = asked[0][1]
            _say(f"{q.what}\n{q.why}\n")
            answer = input("Trust this key and continue? [y/N] ")
        else:
            n = len(asked)
            have = "has" if n == 1 else "have"
            _say(f"\n{servers(n)} {have} a host key this app does not know:\n")
            width = max(len(printable(run.label)) for run, _ in asked)
            for run, q in asked:
                assert isinstance(q, HostKeyUnknown)
                t = run.host.target
                via = f"  (its jump host {q.host}:{q.port})" if (t.host, t.port) != (
                    q.host, q.port) else ""  # fmt: skip
                _say(f"  {printable(run.label):<{width}}  {q.fingerprint}{via}\n")
            _say("Compare them with the servers' consoles or your provider's panel.\n")
            answer = input(f"Trust these {n} key(s) and go on? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            for run, q in asked:
                many = len(self.fleet.runs) > 1
                where = q.host if isinstance(q, HostKeyUnknown) and many else "the server"
                refused = Cancelled(f"Host key not trusted; nothing was sent to {where}.")
                self.fleet.end(run, refused, self.ctx.report)
            return
        for _run, q in asked:
            self.answers.give(q)

    def _secrets(self, asked: list[Asked]) -> None:
        done: set[str] = set()
        for run, q in asked:
            key = _secret_key(run, q)
            if key in done:
                continue  # one key file's passphrase serves every server that uses it
            done.add(key)
            secret = getpass.getpass(printable(_secret_prompt(run, q, len(self.fleet.runs) > 1)))
            self.ctx.report.redact.add(secret)
            self.answers.give(q, secret, run=run.label)

    def _go_ahead(self, asked: list[Asked]) -> None:
        for _run, q in asked:  # the warnings were shown; the confirmation that follows covers them
            self.answers.give(q)

    def _confirm(self, asked: list[Asked]) -> None:
        if len(self.fleet.runs) == 1:
            run, q = asked[0]
            assert isinstance(q, ConfirmationRequired)
            t = run.host.target
            os_name, image = printable(q.system), printable(q.file_name)  # one line each
            _say(
                f"\nAbout to boot the NixOS installer on {printable(t.label)} ({os_name}).\n"
                f"Image: {image}; transfer: {q.transfer} ({printable(q.reason)}).\n"
                "The disks are not touched; a power cycle brings the old system back.\n"
            )
            answer = input(printable(f"Type the host name ({t.host}) to boot the installer: "))
            answer = answer.strip()
            if answer != t.host:
                self._end(asked, Cancelled("Not confirmed; nothing was changed on the server."))
                return
        else:
            n = len(asked)
            _say(f"\nAbout to boot the NixOS installer on {servers(n)}:\n")
            width = max(len(printable(run.label)) for run, _ in asked)
            system = max(
                len(printable(q.system)) for _, q in asked if isinstance(q, ConfirmationRequired)
            )
            for run, q in asked:
                assert isinstance(q, ConfirmationRequired)
                label, shown = printable(run.label), printable(q.system)
                _say(f"  {label:<{width}}  {shown:<{system}}  {printable(q.file_name)}\n")
            _say("The disks are not touched; a power cycle brings each old system back.\n")
            answer = input(f"Type the number of servers ({n}) to boot the installer: ").strip()
            if answer != str(n):
                self._end(asked, Cancelled("Not confirmed; nothing was changed on the servers."))
                return
        self.answers.give(asked[0][1])

    def _disk(self, asked: list[Asked]) -> None:
        for run, q in asked:
            assert isinstance(q, DiskChoiceRequired)
            _say(f"\n{q.what}\n")
            for disk in q.choice.candidates:
                note = q.choice.notes.get(disk.name, "")
                _say(f"  {disk.describe()}  {disk.stable_path}" + (f"  ({note})" if note else "")
                     + "\n")  # fmt: skip
            for disk, why in q.choice.refused:
                _say(f"  not {disk.name} ({size_text(disk.size)}): {why}\n")
            answer = input(printable(f"The disk to install NixOS on ({run.label}): ")).strip()
            if not answer:
                self.fleet.end(run, Cancelled("No disk chosen; nothing was written."),
                               self.ctx.report)  # fmt: skip
                continue
            self.answers.give(q, answer, run=run.label)

    def _wipe(self, asked: list[Asked]) -> None:
        for run, q in asked:
            assert isinstance(q, WipeConfirmationRequired)
            _say(f"\n{q.what}\n{q.why}\n")
            answer = input(printable(f"Type {q.disk.name} to erase it and install NixOS: "))
            if answer.strip() != q.disk.name:
                self.fleet.end(run, Cancelled("Not confirmed; nothing was written to the disk."),
                               self.ctx.report)  # fmt: skip
                continue
            self.answers.give(q, answer.strip(), run=run.label)


def _say(text: str) -> None:
    """Show ``text`` above a prompt. What servers said (os-release, a host name, an error's
    words) is in it, so every control character but the line breaks is escaped."""
    sys.stderr.write(printable_lines(text))


def _secret_key(run: HostRun, q: Question) -> str:
    if isinstance(q, PassphraseRequired):
        return f"passphrase {q.path}"
    if isinstance(q, PasswordRequired):
        return f"password {q.label}"
    return f"sudo {run.label}"


def _secret_prompt(run: HostRun, q: Question, many: bool) -> str:
    if isinstance(q, PassphraseRequired):
        again = " (that one was wrong)" if q.wrong else ""
        return f"Passphrase for {q.path}{again}: "
    if isinstance(q, PasswordRequired):
        return f"Password for {q.label}: "
    assert isinstance(q, SudoPasswordRequired)
    again = " (that one was refused)" if q.wrong else ""
    where = f" on {run.label}" if many else ""
    return f"sudo password for {q.user}{where}{again}: "

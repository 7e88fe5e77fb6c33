"""A batch's questions asked in dialogs: every new host key in one list, then each secret."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Slot
from PySide6.QtWidgets import QDialog

from app.core.errors import Cancelled, HostKeyUnknown, WizardError
from app.core.fleet import Asked
from app.core.questions import Question, SudoPasswordRequired
from app.core.run import HostRun
from app.core.ssh import PassphraseRequired, PasswordRequired
from app.ui.context import Batch
from app.ui.dialogs import HostKeysDialog, SecretDialog
from app.ui.pages.base import BasePage


class BatchQuestions:
    """Asks one round's questions of a batch in dialogs, one kind at a time: every new host key
    in one list, then each secret; a declined question ends its server's run."""

    def __init__(self, page: BasePage, batch: Batch, asked: list[Asked], then: Callable[[], None]):
        self.page, self.batch, self.then = page, batch, then
        self.keys = [(r, q) for r, q in asked if isinstance(q, HostKeyUnknown)]
        self.secrets = [(r, q) for r, q in asked if isinstance(q, SECRET_QUESTIONS)]
        for r, q in asked:  # the go-ahead and the confirmation were given on the pages
            if not isinstance(q, (HostKeyUnknown, *SECRET_QUESTIONS)):
                batch.answers.give(q, run=r.label)
        self.dialog: QDialog | None = None

    def start(self) -> None:
        """Ask the first question (or go on at once when there is none)."""
        if self.keys:
            keys = HostKeysDialog([(r.label, q) for r, q in self.keys], self.page)
            keys.finished.connect(self._keys_answered)
            self.dialog = keys
            keys.open()
        elif self.secrets:
            run, q = self.secrets[0]
            secret = SecretDialog(_secret_title(q), _secret_text(run, q), self.page)
            secret.finished.connect(self._secret_answered)
            self.dialog = secret
            secret.open()
        else:
            self.dialog = None
            self.then()

    def _end(self, run: HostRun, why: WizardError) -> None:
        assert self.batch.fleet is not None
        self.batch.fleet.end(run, why, self.page.ctx.record)

    @Slot(int)
    def _keys_answered(self, code: int) -> None:
        keys, self.keys = self.keys, []
        for run, q in keys:
            if code == QDialog.DialogCode.Accepted:
                self.batch.answers.give(q)
            else:
                self._end(run, Cancelled(f"Host key not trusted; nothing was sent to {q.host}."))
        self.start()

    @Slot(int)
    def _secret_answered(self, code: int) -> None:
        (run, q), self.secrets = self.secrets[0], self.secrets[1:]
        dialog = self.dialog
        if code == QDialog.DialogCode.Accepted and isinstance(dialog, SecretDialog):
            self.page.ctx.redact.add(dialog.secret)
            self.batch.answers.give(q, dialog.secret, run=run.label)
        else:
            self._end(run, Cancelled(f"{q.what} Not given, so {run.label} was left out."))
        self.start()


SECRET_QUESTIONS = (PassphraseRequired, PasswordRequired, SudoPasswordRequired)


def _secret_title(q: Question) -> str:
    if isinstance(q, PassphraseRequired):
        return "Key passphrase"
    return "sudo password" if isinstance(q, SudoPasswordRequired) else "Password"


def _secret_text(run: HostRun, q: Question) -> str:
    if isinstance(q, PassphraseRequired):
        wrong = "did not accept that passphrase. Try again:" if q.wrong else "is encrypted."
        return f"The key {q.path} {wrong} Its passphrase (for every server that uses it):"
    if isinstance(q, SudoPasswordRequired):
        wrong = " That one was refused." if q.wrong else ""
        return f"{run.label}: sudo needs {q.user}'s password.{wrong}"
    return f"{run.label}: {q.what}"

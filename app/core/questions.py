"""The questions a run cannot answer itself, one closed set, and the face's answers to them."""

# A step that needs the user raises one of the questions below and changes nothing. The face
# asks (a prompt, a dialog, one list for several servers), writes the reply into its Answers
# and calls the step again. Answers belong to the face; the run only reads them.

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

from app.core.disk.run import DiskChoiceRequired, WipeConfirmationRequired
from app.core.errors import (
    ExitCode,
    HostKeyOtherType,
    HostKeyUnknown,
    NewSystemHostKey,
    PrivilegeError,
    UsageError,
    WizardError,
)
from app.core.ssh import PassphraseRequired, PasswordRequired


class SudoPasswordRequired(PrivilegeError):
    """sudo needs the login user's password: none was given or remembered, or it was refused."""

    def __init__(self, host: str, user: str, wrong: bool = False) -> None:
        who = user or "this user"
        if wrong:
            super().__init__(
                "sudo refused the password.",
                "Without root the kexec cannot run.",
                f"Check the sudo password (it is the login password of {who}, not root's).",
            )
        else:
            super().__init__(
                f"sudo on {host} needs {user or 'your'}'s password.",
                "The kexec must run as root.",
                "Give the sudo password (--sudo-password-env VAR, or at the prompt).",
            )
        self.host = host
        self.user = user
        self.wrong = wrong


class GoAheadRequired(WizardError):
    """Preflight found warnings: going on needs the user's explicit go-ahead."""

    exit_code = ExitCode.PREFLIGHT
    kind = "preflight"

    def __init__(self, host: str, warnings: list[str]) -> None:
        super().__init__(
            f"{host}: {len(warnings)} preflight warning(s): " + "; ".join(warnings) + ".",
            "The kexec may still work, but each warning is a known way for it to fail.",
            "Read the warnings; go on only if you know what you are doing.",
        )
        self.warnings = warnings


class ConfirmationRequired(UsageError):
    """Everything is ready and nothing has changed yet: the kexec needs the user's yes."""

    def __init__(self, host: str, system: str, file_name: str, transfer: str, reason: str) -> None:
        super().__init__(
            "The install needs a confirmation.",
            "kexec replaces the running system (in RAM only; disks are untouched).",
            "Pass --yes to confirm from a script.",
        )
        self.host = host
        self.system = system
        self.file_name = file_name
        self.transfer = transfer
        self.reason = reason


# Every question a run can raise; anything else a step raises is an error that ends the run.
Question: TypeAlias = (
    HostKeyUnknown  # also HostKeyOtherType and a kexec-bundle's NewSystemHostKey
    | PassphraseRequired
    | PasswordRequired
    | SudoPasswordRequired
    | GoAheadRequired
    | ConfirmationRequired
    | DiskChoiceRequired
    | WipeConfirmationRequired
)
QUESTIONS = (
    HostKeyUnknown,
    PassphraseRequired,
    PasswordRequired,
    SudoPasswordRequired,
    GoAheadRequired,
    ConfirmationRequired,
    DiskChoiceRequired,
    WipeConfirmationRequired,
)


def is_question(exc: BaseException) -> bool:
    """Whether ``exc`` is a question for the user rather than an error."""
    return isinstance(exc, QUESTIONS)


def unanswered(question: Question) -> WizardError:
    """The error a question becomes when nobody can answer it (a script without a terminal):
    the same error, its fix naming the command-line option that answers it ahead."""
    if isinstance(question, HostKeyOtherType | NewSystemHostKey):
        question.fix += f" From the command line: --accept-host-key {question.fingerprint}"
    elif isinstance(question, HostKeyUnknown):
        question.fix += " Or pass --accept-new-host-key to trust it from the command line."
    return question


@dataclass
class Answers:
    """The face's replies so far, passed to every step (per host where the reply is)."""

    host_keys: tuple[tuple[str, int, str], ...] = ()  # (host, port, fingerprint) accepted
    passphrases: dict[str, str] = field(default_factory=dict)  # by key file
    passwords: dict[str, str] = field(default_factory=dict)  # by login label (user@host:port)
    sudo_passwords: dict[str, str] = field(default_factory=dict)  # by the run's label
    go_ahead: bool = False  # the preflight warnings were seen and accepted
    confirmed: bool = False  # the kexec itself was confirmed
    disks: dict[str, str] = field(default_factory=dict)  # by the run's label: the disk named
    wipes: dict[str, str] = field(default_factory=dict)  # by the run's label: the name typed
    shown: dict[str, str] = field(default_factory=dict)  # by label: the digest of what was shown

    def give(self, question: Question, reply: str = "", *, run: str = "") -> None:
        """Record ``reply`` to ``question`` (asked by the run labelled ``run``): a secret, or
        for a host key the fingerprint accepted (default: the one the question shows)."""
        if isinstance(question, HostKeyUnknown):
            fp = reply or question.fingerprint
            self.host_keys = (*self.host_keys, (question.host, question.port, fp))
        elif isinstance(question, PassphraseRequired):
            self.passphrases[question.path] = reply
        elif isinstance(question, PasswordRequired):
            self.passwords[question.label] = reply
        elif isinstance(question, SudoPasswordRequired):
            self.sudo_passwords[run] = reply
        elif isinstance(question, GoAheadRequired):
            self.go_ahead = True
        elif isinstance(question, DiskChoiceRequired):
            self.disks[run] = reply
        elif isinstance(question, WipeConfirmationRequired):
            self.wipes[run] = reply
        else:
            self.confirmed = True

    def accepted(self, host: str, port: int) -> tuple[str, ...]:
        """The fingerprints accepted for ``host``/``port``."""
        return tuple(fp for h, p, fp in self.host_keys if (h, p) == (host, port))

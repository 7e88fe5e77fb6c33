"""Becoming root on the server: the sudo password to try, and the check that it works."""

from __future__ import annotations

from dataclasses import replace

from app.core.errors import PrivilegeError
from app.core.events import CancelToken
from app.core.kinds import PrivilegeKind
from app.core.probe import Facts
from app.core.questions import SudoPasswordRequired
from app.core.settings import Settings
from app.core.ssh import Credentials, Privilege, Session


def known_sudo_password(facts: Facts, creds: Credentials) -> str | None:
    """The sudo password to try without asking, the same in both faces.

    The one given or remembered first, else the login password (sudo asks for the login
    user's own password); None when sudo needs none, or none is known and the face must ask.
    """
    if facts.privilege != PrivilegeKind.SUDO_PASSWORD:
        return None
    return creds.sudo_password if creds.sudo_password is not None else creds.password


def recheck_sudo(
    session: Session, facts: Facts, settings: Settings, cancel: CancelToken | None = None
) -> Facts:
    """The probe's ``sudo -n true`` runs without a terminal: where sudo requires one
    (``Defaults requiretty``) it fails although no password is needed. Asked again through
    the session, which gives sudo a terminal where it requires one; the session keeps that."""
    if facts.privilege != PrivilegeKind.SUDO_PASSWORD:
        return facts
    before = session.privilege
    session.privilege = Privilege(PrivilegeKind.SUDO)
    try:
        res = session.run(
            "true", privileged=True, timeout=settings.command_timeout, cancel=cancel,
            what="sudo without a password",
        )  # fmt: skip
    finally:
        session.privilege = before
    return replace(facts, privilege=PrivilegeKind.SUDO) if res.ok else facts


def establish_privilege(
    session: Session, facts: Facts, sudo_password: str | None, settings: Settings
) -> Privilege:
    """Decide how to become root, checking a sudo password on the server when one is needed."""
    if facts.privilege in (PrivilegeKind.ROOT, PrivilegeKind.SUDO, PrivilegeKind.DOAS):
        priv = Privilege(facts.privilege)
    elif facts.privilege == PrivilegeKind.SUDO_PASSWORD:
        if sudo_password is None:
            raise PrivilegeError(
                f"sudo on {session.target.host} needs {facts.user or 'your'}'s password.",
                "The kexec must run as root.",
                "Give the sudo password (--sudo-password-env VAR, or at the prompt).",
            )
        session.sudo_password = sudo_password
        priv = Privilege(PrivilegeKind.SUDO_PASSWORD)
    else:
        raise PrivilegeError(
            f"{facts.user or 'This user'} cannot become root on {session.target.host}.",
            "Neither root login, sudo nor doas is available, and the kexec must run as root.",
            "Log in as root, or allow this user to use sudo.",
        )
    session.privilege = priv
    if priv.kind == PrivilegeKind.ROOT:
        return priv  # the probe's own `id -u` in this login said 0: nothing is wrapped
    res = session.run(
        "id -u", privileged=True, timeout=settings.command_timeout, what="the root check"
    )
    if res.stdout.strip() != "0":
        session.privilege = None
        err = (res.stderr + res.stdout).lower()  # through a terminal stderr comes on stdout
        if "incorrect password" in err or "try again" in err or "no password was provided" in err:
            raise SudoPasswordRequired(session.target.host, facts.user, wrong=True)
        raise PrivilegeError(
            f"Becoming root with {priv.description} failed: "
            f"{(res.stderr.strip() or res.stdout.strip())[:200]}",
            "This user may not be allowed to use sudo/doas on the server.",
            "Check /etc/sudoers (or doas.conf) for this user, or log in as root.",
        )
    return priv

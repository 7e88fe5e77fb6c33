"""Running the probe on a login, proving its output is its own, and why a login runs none of it."""

from __future__ import annotations

import secrets
from dataclasses import replace

from app.core.errors import LoginRestricted, RemoteCommandError
from app.core.events import CancelToken
from app.core.plan import DEFAULT_STAGING
from app.core.privilege import recheck_sudo
from app.core.probe import Facts, asked_user, own_output, parse_probe, probe_script
from app.core.settings import Settings
from app.core.ssh import Session, Target
from app.core.text import printable


def run_probe(
    session: Session,
    settings: Settings,
    staging: str = DEFAULT_STAGING,
    cancel: CancelToken | None = None,
    reach: bool = True,
) -> Facts:
    """Gather every fact in one round trip, proving first that the output is the probe's own.

    Without ``reach`` the server is not asked to fetch the download URL (its answer could
    not change the plan), so the probe does not wait for that request."""
    token = secrets.token_hex(8)
    script = probe_script(staging, settings.download_url if reach else "", token)
    res = session.run(
        "sh -s",
        stdin=script.encode(),
        timeout=settings.command_timeout,
        cancel=cancel,
        what="the probe",
    )
    if res.stdout_dropped:
        raise RemoteCommandError(
            f"The probe of {session.target.label} printed more output than the app keeps "
            f"({res.stdout_dropped} bytes over {session.output_limit}).",
            "Facts read from a part of it could be wrong, so they are not misread: nothing "
            "was changed on the server.",
            "Look at what the login prints (a MOTD or shell start-up file that floods), or "
            "report the server's `ip addr` size if it has very many interfaces.",
        )
    own = own_output(res.stdout, token)
    if own is None:
        raise login_restricted(session.target, res.status, res.stdout + "\n" + res.stderr)
    return recheck_sudo(session, parse_probe(own), settings, cancel)


def login_restricted(target: Target, status: int, said: str) -> LoginRestricted:
    """Why a login that "worked" ran none of our commands, and which login to use instead."""
    lines = [ln.strip() for ln in said.splitlines() if ln.strip()]
    quoted = printable(" / ".join(lines)[:300]) or "nothing"
    wanted = asked_user(said)
    if wanted and wanted != target.user:
        better = replace(target, user=wanted).label
        return LoginRestricted(
            f"The login as {target.label} runs no commands; all the server says is: {quoted}",
            f"This server (like most cloud images) lets {target.user} log in but runs a fixed "
            f"message instead of any command; the user {wanted} is meant to log in and "
            "become root with sudo, which the app does by itself.",
            f"Log in as {wanted}: nixos-kexec-wizard install {better}",
            wanted,
        )
    return LoginRestricted(
        f"The login as {target.label} runs none of the app's commands (exit status {status}); "
        f"all the server says is: {quoted}",
        "A forced command in authorized_keys, a nologin or restricted shell, or a ForceCommand "
        "in sshd_config answers instead of a shell, so nothing can be checked or run.",
        "Log in as a user with a normal shell that may use sudo, or remove the forced command "
        '(the command="..." part of the key\'s line in ~/.ssh/authorized_keys on the server).',
        None,
    )

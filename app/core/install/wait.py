"""The waits: the old system going down, the installer coming up and logging us in."""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass, replace
from typing import NoReturn

from app.core import remote_sh as sh
from app.core.errors import (
    AuthError,
    Cancelled,
    HostKeyChanged,
    InstallerKeyChanged,
    NeverCameBack,
    NeverWentDown,
    RemoteCommandError,
    SSHConnectError,
    WizardError,
)
from app.core.events import AttemptEvent
from app.core.install.deadman import KEXEC_DELAY
from app.core.install.kexec import NOTABLE
from app.core.install.state import Step
from app.core.install.verify import Identity, old_system_back, read_boot_id, read_identity
from app.core.netpreview import preview as net_preview
from app.core.ssh import ConnectOptions, Session, connect
from app.core.ssh.banner import BannerPoll, banner_socket

BOOT_ID_EVERY = 2.0  # while the old system answers: a login that reads the boot id, this often
# A port refused (or reset) within QUICK_FAIL cost the server nothing but its kernel's answer:
# the next attempt comes after QUICK_RETRY, so the installer's sshd is seen soon after it
# listens. After one that hung, the next starts at once (it has waited long enough).
QUICK_FAIL = 0.05
QUICK_RETRY = 0.1
# How long one connection to the rebooting server may wait for its banner: the installer's
# banners came 0.88-0.95 s after the connection on the TCG test bed, so one second (as the
# wait had, and OpenSSH's ConnectTimeout=1) leaves no margin for a slower server.
BANNER_PATIENCE = 1.4
# How long each of the host's addresses may take to send its banner before the old system
# counts as gone there: as patient as the wait for the installer, or a banner between the two
# would read as "down" here and as the old system still up there.
DOWN_PROBE_TIMEOUT = BANNER_PATIENCE


# ---------------------------------------------------------------------------------------------
# Down


def wait_down(step: Step) -> None:
    """Wait until the old system is gone, by fresh short attempts.

    Never on the old connection: after the kexec it is dead, and a command on it fails
    only at its own deadline (or when TCP gives up). A banner on a new TCP connection
    says soon whether an SSH server still answers; every address of the host gets
    DOWN_PROBE_TIMEOUT of its own, and the server is down only when none of them sends one.
    As both systems have the same host key, a login over that connection reads the boot id
    now and then to tell them apart. Through a jump host only the old connection can be
    asked.
    """
    setup = step.setup
    session, settings, old_boot = setup.session, setup.settings, setup.facts.boot_id
    target = session.target
    if target.jump is not None:
        _wait_down_on_session(step)
        return
    deadline = time.monotonic() + settings.down_timeout
    next_login = time.monotonic() + BOOT_ID_EVERY
    while time.monotonic() < deadline:
        if step.cancel.wait(settings.poll_interval):
            raise Cancelled("Stopped waiting; the kexec may still happen.")
        sock, why = banner_socket(target.host, target.port, timeout=DOWN_PROBE_TIMEOUT)
        if sock is None:
            step.log("down", f"The old system went down ({why}).")
            session.close()
            return
        if time.monotonic() < next_login:
            sock.close()
        else:
            boot = _fresh_boot_id(step, sock)
            next_login = time.monotonic() + BOOT_ID_EVERY
            if boot is not None and boot != old_boot:
                step.log("down", "The server already rebooted.")
                session.close()
                return
    _never_went_down(step)


def _fresh_boot_id(step: Step, sock: socket.socket) -> str | None:
    """The boot id a new login as the old user reads over ``sock``, a connection whose
    banner was seen (None: no readable answer, so no verdict)."""
    setup = step.setup
    opts = ConnectOptions(
        timeout=5.0, expect_key=setup.session.host_key_line, update_known_hosts=False
    )
    try:
        with connect(
            setup.session.target, setup.creds, setup.known_hosts, opts, cancel=step.cancel,
            sock=sock,
        ) as s:  # fmt: skip
            return read_boot_id(s, timeout=3, cancel=step.cancel)
    except WizardError:
        return None


def _wait_down_on_session(step: Step) -> None:
    """Through a jump host: until the open connection stops answering."""
    setup = step.setup
    session, settings, old_boot = setup.session, setup.settings, setup.facts.boot_id
    deadline = time.monotonic() + settings.down_timeout
    while time.monotonic() < deadline:
        if step.cancel.wait(settings.poll_interval):
            raise Cancelled("Stopped waiting; the kexec may still happen.")
        if not session.active:
            step.log("down", "The old system went down.")
            return
        try:
            boot = read_boot_id(session, timeout=3)
        except WizardError:
            step.log("down", "The old system went down.")
            session.close()
            return
        if boot is not None and boot != old_boot:
            step.log("down", "The server already rebooted.")
            return
    _never_went_down(step)


def _never_went_down(step: Step) -> NoReturn:
    """The old system still answers: say so, with the tail of its kernel log."""
    session = step.setup.session
    dmesg = ""
    with contextlib.suppress(WizardError):
        r = session.run(sh.KERNEL_LOG_TAIL, privileged=True, timeout=10, what="dmesg")
        lines = r.stdout.strip().splitlines()
        telling = [ln for ln in lines[:-8] if NOTABLE.search(ln)][-8:]
        dmesg = "\n".join([*telling, *(["..."] if telling else []), *lines[-8:]])
    raise NeverWentDown(
        f"{session.target.host} did not go down within {step.setup.settings.down_timeout:g} s "
        "after kexec/run reported success.",
        "The kexec did not start. `run` sends its later messages to the kernel log; "
        f"its tail:\n{dmesg or '(empty)'}",
        "Read the log above. A common cause is a kernel that cannot kexec this way: retry "
        "with --kexec-extra-flags -c. The old system is still running.",
    )


# ---------------------------------------------------------------------------------------------
# Up


@dataclass
class _Waited:
    """How the wait for the installer went so far (for its events and its failure)."""

    attempts: int = 0
    last: str = "no answer yet"
    refused_auth: bool = False
    started: float = 0.0  # time.monotonic() when the wait began
    limit: float = 0.0  # how long it may last: up_timeout, or longer for the dead-man switch
    old: Identity | None = None  # the old system, when a login last found its boot
    unreadable: bool = False  # the last login's identity check gave no answer
    ident: Identity | None = None  # what the last login's identity check read
    quiet_since_old: int = 0  # attempts without an answer since then


def ports(step: Step) -> list[int]:
    """The ports the installer is looked for on, in order: its own, the old login's, 22."""
    candidates = [step.setup.plan.installer_port, step.setup.session.target.port, 22]
    return list(dict.fromkeys(p for p in candidates if p))


def wait_up(step: Step) -> Session:
    """Poll with fresh short attempts until the installer answers and logs us in.

    Directly, a BannerPoll: one connection at a time, a new one each poll interval (or
    QUICK_RETRY while the ports refuse at once), each address of the host waiting
    BANNER_PATIENCE for its banner; the login goes on over the first to send one. Through
    a jump host, one login attempt per port and poll interval.

    A login that finds the old boot is not a verdict: the kexec may be seconds away (a
    down check fooled by a slow banner or a lost SYN ends early). The wait goes on, and
    only at its deadline is the old system still answering "old-system-back".
    """
    settings, cancel = step.setup.settings, step.cancel
    deadline = _up_deadline(step)
    w = _Waited(started=time.monotonic())
    w.limit = deadline - w.started
    # The old system still answering in its old boot ends the wait at up_timeout, however long
    # the dead-man switch would have it last: there was no kexec to come back from.
    still_old_by = w.started + settings.up_timeout

    def failed(port: int, why: str) -> None:
        w.attempts += 1
        w.last = why
        w.quiet_since_old += 1
        step.emit(AttemptEvent("up", why, attempts=w.attempts, port=port))

    if step.setup.session.target.jump is not None:
        while True:
            for port in ports(step):
                if cancel.cancelled:
                    raise Cancelled("Stopped waiting; the installer may still come up.")
                t0 = time.monotonic()
                w.attempts += 1
                sess = _login(step, port, None, w)
                if sess is not None:
                    return sess
                step.emit(AttemptEvent("up", w.last, attempts=w.attempts, port=port))
                if time.monotonic() >= deadline:
                    raise _gave_up(step, w)
                rest = settings.poll_interval - (time.monotonic() - t0)
                if rest > 0 and cancel.wait(rest):
                    raise Cancelled("Stopped waiting; the installer may still come up.")
    poll = BannerPoll(
        step.state.host, ports(step), pace=settings.poll_interval,
        patience=BANNER_PATIENCE, quick_retry=QUICK_RETRY, quick_fail=QUICK_FAIL,
    )  # fmt: skip
    while True:
        got = poll.wait(deadline, cancel, failed)
        if cancel.cancelled:
            raise Cancelled("Stopped waiting; the installer may still come up.")
        if got is None:
            raise _gave_up(step, w)
        sock, port = got
        w.attempts += 1
        sess = _login(step, port, sock, w)
        if sess is not None:
            return sess
        if w.old is not None and w.quiet_since_old <= 2 and time.monotonic() >= still_old_by:
            raise _gave_up(step, w)
        if w.old is not None and not w.quiet_since_old:
            poll.pause(BOOT_ID_EVERY)  # each login costs the old system a forked sshd
        step.emit(AttemptEvent("up", w.last, attempts=w.attempts, port=port))


def _up_deadline(step: Step) -> float:
    """When the wait for the installer ends: after ``up_timeout``, or with the dead-man switch
    armed, that long after the switch's own deadline, so the app is still there to see the old
    system come back."""
    settings, state = step.setup.settings, step.state
    deadline = time.monotonic() + settings.up_timeout
    if state.dead_man_minutes is None or state.kexec_at is None:
        return deadline
    if not state.dead_man_units:
        return deadline  # only the panic restart: it comes within a boot's time, or never
    fires = state.kexec_at + KEXEC_DELAY + state.dead_man_minutes * 60
    if fires + settings.up_timeout > deadline:
        left = fires - time.monotonic()
        step.log("up", f"Waiting for the installer; if it cannot be reached, the dead-man "
                 f"switch restarts the server into its old system in about {left:.0f} s, and "
                 "the app waits to see it.")  # fmt: skip
    return max(deadline, fires + settings.up_timeout)


def _login(step: Step, port: int, sock: socket.socket | None, w: _Waited) -> Session | None:
    """Log in to what answers on ``port`` and is not the old boot still running: the
    installer, or (our key refused) the old system come back; None, with ``w`` updated,
    when neither."""
    w.quiet_since_old += 1  # until it proves to be the old system
    try:
        sess = connect_installer(step, port, sock)
    except HostKeyChanged as exc:
        raise InstallerKeyChanged(
            f"Something answered at {step.state.host} port {port} with ANOTHER "
            f"host key ({exc.fingerprint}; expected {exc.known}).",
            "The installer keeps the old host keys, so this is either an installer that "
            "lost them or someone intercepting the connection. Nothing was sent to it.",
            "Check on the provider's console what runs there before trusting it.",
        ) from exc
    except AuthError as exc:
        w.refused_auth = True
        w.last = f"the SSH server refused our key ({exc.what})"
        return _old_system_back(step, port, w)
    except (SSHConnectError, RemoteCommandError) as exc:
        w.last = exc.what
        return None
    if _not_gone_yet(step, sess, port, w):
        if w.unreadable and step.setup.session.target.user != "root":
            # Root's key may run a forced command on the old system (a cloud image's "log in
            # as deploy"): a new boot of it answers the way the app logged in before.
            return _old_system_back(step, port, w)
        return None
    step.log("up", f"The server answers on port {port} after {w.attempts} attempts.",
             attempts=w.attempts)  # fmt: skip
    return sess


def _old_system_back(step: Step, port: int, w: _Waited) -> Session | None:
    """A login the way the app first logged in, when it reaches the old system in a new boot
    (for the verify stage to name); None otherwise. Never the installer: that must answer
    root's login, and a login as another user is not one to go on with."""
    old = _try_old_login(step, port)
    if old is None or _not_gone_yet(step, old, port, w):
        return None
    if w.ident is not None and w.ident.os_release.get("VARIANT_ID") == "installer":
        old.close()
        w.last = f"port {port}: the installer answers, but not yet to root's login"
        return None
    return old


def _not_gone_yet(step: Step, sess: Session, port: int, w: _Waited) -> bool:
    """Whether ``sess`` reached the old system still running (its old boot id): closed
    then, and noted in ``w``. A connection lost meanwhile (the kexec) counts as no answer;
    an identity that cannot be read goes on to the verify stage, which says why."""
    w.unreadable, w.ident = False, None
    try:
        ident, _said = read_identity(sess, timeout=5.0, cancel=step.cancel)
    except WizardError as exc:
        sess.close()
        w.last, w.unreadable = exc.what, True
        return True
    w.ident = ident
    if ident is None or ident.boot_id != step.setup.facts.boot_id:
        return False
    sess.close()
    w.last = f"port {port}: the old system still answers (the same boot)"
    if w.old is None:
        step.log("up", f"The old system still answers on port {port} (the same boot): it "
                 "is not gone yet; waiting on for the installer.")  # fmt: skip
    w.old, w.quiet_since_old = ident, 0
    return True


def connect_installer(step: Step, port: int, sock: socket.socket | None = None) -> Session:
    """Log in as root to what answers at the installer's host on ``port``, with our key."""
    setup, state = step.setup, step.state
    target = replace(setup.session.target, host=state.host, port=port, user="root")
    opts = ConnectOptions(
        timeout=5.0,
        expect_key=setup.session.host_key_line,
        update_known_hosts=False,
        # A bundle's system has new host keys: one passes only when the user accepted
        # exactly it (NewSystemHostKey asks); nothing is sent to it before.
        replaced_system=setup.plan.bundle,
        trusted=tuple((target.host, port, fp) for fp in sorted(state.accepted_keys)),
    )
    assert state.installer_creds is not None
    return connect(
        target, state.installer_creds, setup.known_hosts, opts, cancel=step.cancel, sock=sock
    )


def _try_old_login(step: Step, port: int) -> Session | None:
    """Our installer key was refused: see whether the old system came back."""
    setup = step.setup
    target = replace(setup.session.target, host=step.state.host, port=port)
    opts = ConnectOptions(
        timeout=5.0, expect_key=setup.session.host_key_line, update_known_hosts=False
    )
    try:
        return connect(target, setup.creds, setup.known_hosts, opts, cancel=step.cancel)
    except WizardError:
        return None


def _gave_up(step: Step, w: _Waited) -> WizardError:
    """The deadline: the old system still answering (at the last attempts: one or two lost
    on a lossy link do not count), or nothing we could log in to."""
    if w.old is not None and w.quiet_since_old <= 2:
        return old_system_back(
            step.state.host, w.old, same=True, waited=round(time.monotonic() - w.started)
        )
    return _never_came_back(step, w)


def _never_came_back(step: Step, w: _Waited) -> NeverCameBack:
    """Nothing we could log in to answered before the deadline: where to look instead."""
    pv = net_preview(step.setup.facts)
    addrs = ", ".join(pv.expected_addresses) or "unknown"
    moved = " Its address came from DHCP and may have changed." if pv.may_move else ""
    net = "\n".join(f"- {s}" for s in (*pv.keeps, *pv.loses))
    hint = (
        "It answers SSH but refuses our key: the key may not have been carried."
        if w.refused_auth
        else "Nothing answered SSH."
    )
    return NeverCameBack(
        f"{step.state.host} did not come back within {w.limit:.0f} s "
        f"({w.attempts} attempts on ports {', '.join(map(str, ports(step)))}; last: {w.last}).",
        f"{hint} The installer should be at {addrs}.{moved} Expected network:\n{net}",
        "Look at the server's console in your provider's panel. If the address changed, "
        "reconnect to the new one; a power cycle brings the old system back.",
    )

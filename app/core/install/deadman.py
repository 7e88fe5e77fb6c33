"""The dead-man switch: words that send the installer back to the old system unless disarmed."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import shlex
import time
from dataclasses import dataclass
from shlex import quote as q

from app.core import remote_sh as sh
from app.core.errors import DeadManFired, PreflightStop, WizardError
from app.core.install.state import Step
from app.core.netpreview import preview as net_preview
from app.core.plan import DEFAULT_DEAD_MAN_MINUTES
from app.core.probe import Facts
from app.core.ssh import Session

DEFAULT_MINUTES = DEFAULT_DEAD_MAN_MINUTES
TIMER = "nkw-dead-man.timer"
SERVICE = "nkw-dead-man.service"
PANIC_SECONDS = 30  # a kernel panic in the installer restarts the machine after this long
# x86 keeps COMMAND_LINE_SIZE (2048) bytes with the closing NUL; arm64 keeps as much.
CMDLINE_LIMIT = 2047
LAUNCHER = "nkw-run"  # the app's copy of kexec/run with the words added, beside it
# The words added to upstream's kernelParams need no quoting in any shell context they pass
# through (the double-quoted assignment, then the single quotes of `sh -c "... 'init=...'"`).
SAFE_WORD = re.compile(r"[A-Za-z0-9+/=.,:_-]+")
# Upstream's lines as Nix fills them in: one double-quoted value with nothing the shell expands.
INIT_LINE = re.compile(r'^init="([^"$`\\\n]*)"$', re.M)
PARAMS_LINE = re.compile(r'^kernelParams="([^"$`\\\n]*)"$', re.M)
COMMAND_LINE_USE = "--command-line 'init=$init $kernelParams'"


@dataclass(frozen=True)
class DeadMan:
    """The switch as chosen: its deadline, counted from the installer's boot, and whether the
    installer's systemd can take units from the kernel command line (NixOS 24.11 and later);
    without, only a kernel panic restarts the machine."""

    minutes: float = DEFAULT_MINUTES
    units: bool = True

    @property
    def seconds(self) -> int:
        """The deadline in whole seconds."""
        return round(self.minutes * 60)

    def words(self) -> list[str]:
        """The kernel command line words that arm it."""
        words = [f"panic={PANIC_SECONDS}"]
        if self.units:
            timer, service = unit_texts(self.seconds)
            for name, text in ((TIMER, timer), (SERVICE, service)):
                b64 = base64.b64encode(text.encode()).decode()
                words.append(f"systemd.set_credential_binary=systemd.extra-unit.{name}:{b64}")
            words.append(f"systemd.wants={TIMER}")
        return words

    def describe(self) -> str:
        """One sentence for the user."""
        if not self.units:
            return (
                "Dead-man switch (partial): a kernel panic in the installer restarts the server "
                f"into its old system after {PANIC_SECONDS} s; this image's systemd is too old "
                "for the timer."
            )
        return (
            f"Dead-man switch: if the app cannot reach the installer within {self.minutes:g} "
            "min of its boot, the server restarts into its old system by itself."
        )


def unit_texts(seconds: int) -> tuple[str, str]:
    """The timer and the service it starts: the service's success restarts the machine at
    once. The action sits on the service, never on the timer that disarming stops (systemd
    runs a unit's success action on every clean stop)."""
    timer = (
        "[Unit]\nDescription=nixos-kexec-wizard dead-man switch\n"
        f"[Timer]\nOnBootSec={seconds}s\nAccuracySec=1s\n"
    )
    service = (
        "[Unit]\nDescription=nixos-kexec-wizard dead-man switch: back to the old system\n"
        "SuccessAction=reboot-force\n"
        '[Service]\nType=oneshot\nExecStart=/bin/sh -c "echo nkw: dead-man switch fired"\n'
    )
    return timer, service


def patch_run(text: str, words: list[str]) -> str:
    """Upstream's ``kexec/run`` with ``words`` added to its kernelParams line, or
    PreflightStop saying why it cannot be done safely (nothing was changed then)."""
    for word in words:
        if not SAFE_WORD.fullmatch(word):
            raise _refused(f"the word {word[:40]!r} would need quoting")
    inits, params = INIT_LINE.findall(text), PARAMS_LINE.findall(text)
    if len(inits) != 1 or len(params) != 1 or text.count(COMMAND_LINE_USE) != 1:
        raise _refused(
            "its `init=`, `kernelParams=` or `--command-line` line is not there exactly once "
            "in the form the app knows"
        )
    new_params = " ".join([params[0], *words]) if params[0] else " ".join(words)
    line = kernel_command_line(inits[0], new_params)
    if line is None:
        raise _refused("its kernel parameters would not stay one argument of kexec")
    if len(line.encode()) > CMDLINE_LIMIT:
        raise _refused(
            f"the kernel command line would be {len(line.encode())} bytes, over the kernel's "
            f"limit of {CMDLINE_LIMIT}"
        )
    # The line itself, never the same text elsewhere (a comment quoting it).
    return PARAMS_LINE.sub(lambda _m: f'kernelParams="{new_params}"', text, count=1)


def kernel_command_line(init: str, params: str) -> str | None:
    """The command line ``run`` gives kexec for these values (its `sh -c` removes the quotes
    that toggle); None when the shell would split it into more than one argument."""
    try:
        parts = shlex.split(f"'init={init} {params}'")
    except ValueError:
        return None
    return parts[0] if len(parts) == 1 else None


def command_line_of(text: str) -> str | None:
    """The kernel command line a filled-in ``kexec/run`` would boot the installer with."""
    inits, params = INIT_LINE.findall(text), PARAMS_LINE.findall(text)
    if len(inits) != 1 or len(params) != 1:
        return None
    return kernel_command_line(inits[0], params[0])


def _refused(why: str) -> PreflightStop:
    return PreflightStop(
        "The dead-man switch cannot be armed with this image's kexec/run.",
        f"The app adds its words to upstream's script, and {why}. Nothing was changed on the "
        "server.",
        "Use a release image of nixos-images, or turn the switch off (--dead-man off, or the "
        "Confirm page) if you accept a server that may need the provider's console.",
    )


def disarm_script() -> str:
    """Stop the timer, then report what the installer's systemd knows of the switch."""
    return (
        f"systemctl stop {TIMER} >/dev/null 2>&1; "
        f"echo load=$(systemctl show --property=LoadState --value {TIMER}); "
        f"echo timer=$(systemctl is-active {TIMER}); "
        f"echo ran=$(systemctl show --property=InactiveExitTimestampMonotonic --value {SERVICE})"
    )


def disarm_verdict(output: str) -> tuple[bool, str]:
    """(disarmed, what to say) from ``disarm_script``'s output."""
    seen = dict(ln.split("=", 1) for ln in output.splitlines() if "=" in ln)
    load, timer, ran = seen.get("load", ""), seen.get("timer", ""), seen.get("ran", "")
    if load == "not-found":
        return True, (
            "The installer's systemd did not take the switch's timer (older than systemd 256): "
            f"only the kernel panic restart (panic={PANIC_SECONDS}) was armed."
        )
    if load == "loaded" and timer == "inactive" and ran in ("0", ""):
        return True, "Dead-man switch disarmed: its timer is stopped and never fired."
    return False, (
        f"The dead-man switch could not be confirmed off (timer {timer or 'unknown'}, "
        f"load state {load or 'unknown'}, service last started at {ran or 'unknown'})."
    )


def fired(host: str, minutes: float, facts: Facts, what: str) -> DeadManFired:
    """The old system answered after the switch's deadline: the installer was not reached."""
    pv = net_preview(facts)
    net = "\n".join(f"- {s}" for s in (*pv.keeps, *pv.loses)) or "- (nothing recorded)"
    return DeadManFired(
        f"{host} is back on its old system ({what}): the installer was not reachable within "
        f"{minutes:g} min, so the dead-man switch restarted the server.",
        "The installer booted, but the app could not log in to it: its network did not come "
        "back as the old system had it, or it crashed. What the app saw of the network before "
        f"the kexec:\n{net}",
        "Nothing on the disk changed. Try again and watch the provider's console during the "
        "boot; if the address moved, look for the installer at its new one; if the kernel "
        "would not kexec cleanly, retry with --kexec-extra-flags -c.",
    )


# ---------------------------------------------------------------------------------------------
# The steps: arm before `run`, disarm right after the installer is proven


def arm(step: Step) -> None:
    """Write the app's launcher beside upstream's ``run`` (never changing it) with the switch's
    words, when the plan has the switch on; PreflightStop before anything ran if it cannot."""
    plan, state = step.setup.plan, step.state
    if plan.dead_man_minutes is None or plan.bundle:
        return
    switch = DeadMan(plan.dead_man_minutes, plan.dead_man_units)
    try:
        _write_launcher(step, switch)
    except PreflightStop as exc:
        if plan.dead_man_required:
            raise
        step.log("run", f"Dead-man switch NOT armed: {exc.what} {exc.why} The kexec goes on "
                 "without it (it was on by default; ask for it with --dead-man MINUTES to stop "
                 "instead).", level="warn", dead_man="not-armed")  # fmt: skip
        return
    state.launcher, state.dead_man_minutes = LAUNCHER, switch.minutes
    step.log("run", switch.describe(), dead_man="armed", minutes=switch.minutes,
             units=switch.units)  # fmt: skip


def _write_launcher(step: Step, switch: DeadMan) -> None:
    """Read upstream's ``run``, add the words, write the launcher and read its digest back."""
    folder = f"{step.staging.rstrip('/')}/kexec"
    res = step.run(f"cat {q(folder + '/run')}", privileged=True, what="reading kexec/run")
    if not res.ok or res.stdout_dropped:
        raise _refused("kexec/run could not be read whole")
    text = patch_run(res.stdout, switch.words())
    body = text if text.endswith("\n") else text + "\n"
    launcher = f"{folder}/{LAUNCHER}"
    wrote = step.run(
        sh.write_file(launcher, body, secrets.token_hex(8)), privileged=True,
        what="writing the app's kexec launcher",
    )  # fmt: skip
    digest = hashlib.sha256(body.encode()).hexdigest()
    if not wrote.ok or wrote.stdout.split()[:1] != [digest]:
        raise _refused(f"the launcher written to {launcher} did not read back as written")


def disarm(step: Step, session: Session) -> str:
    """Stop the switch on the proven installer; "disarmed", or "still-armed" with a loud
    warning naming the command that stops it. Never raises: the installer is up either way."""
    try:
        res = session.run(
            disarm_script(), timeout=step.setup.settings.command_timeout, cancel=step.cancel,
            what="disarming the dead-man switch",
        )  # fmt: skip
        ok, message = disarm_verdict(res.stdout)
    except WizardError as exc:
        ok, message = False, f"Disarming the dead-man switch failed: {exc.what}"
    if ok:
        step.log("verify", message, dead_man="disarmed")
        return "disarmed"
    target = session.target
    port = f" -p {target.port}" if target.port != 22 else ""
    step.log(
        "verify",
        f"{message} It will restart {target.host} into its old system when its deadline "
        f"comes. Stop it now: ssh{port} root@{target.host} systemctl stop {TIMER}",
        level="warn", dead_man="still-armed",
    )  # fmt: skip
    return "still-armed"


def came_back(step: Step, ident_name: str) -> DeadManFired:
    """The old system answers in a new boot while the switch was armed: it fired (its timer
    after the deadline; before it, most likely the installer's kernel panicked)."""
    state, minutes = step.state, step.state.dead_man_minutes or 0.0
    after = time.monotonic() - state.kexec_at if state.kexec_at is not None else None
    when = f"{after:.0f} s after the kexec" if after is not None else "after the kexec"
    if after is not None and after < minutes * 60:
        what = (
            f"as {ident_name}, {when}, before the switch's deadline: the installer's kernel "
            f"most likely panicked (panic={PANIC_SECONDS})"
        )
    else:
        what = f"as {ident_name}, {when}"
    return fired(step.state.host, minutes, step.setup.facts, what)

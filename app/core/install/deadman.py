"""The dead-man switch: words that send the installer back to the old system unless disarmed."""

from __future__ import annotations

import base64
import datetime
import hashlib
import re
import secrets
import shlex
import time
from dataclasses import dataclass
from shlex import quote as q

from app.core import remote_sh as sh
from app.core.errors import DeadManFired, PreflightStop, WizardError
from app.core.handoff import installer_ssh_command
from app.core.install.state import Step
from app.core.netpreview import preview as net_preview
from app.core.plan import DEFAULT_DEAD_MAN_MINUTES
from app.core.probe import Facts
from app.core.result import DEAD_MAN_MARK, DEAD_MAN_STOP, DEAD_MAN_TIMER, InstallerInfo
from app.core.ssh import Session

DEFAULT_MINUTES = DEFAULT_DEAD_MAN_MINUTES
TIMER = DEAD_MAN_TIMER
SERVICE = "nkw-dead-man.service"
# Disarming writes this: the service then fails instead of succeeding, and only its success
# restarts the machine. (A timer stopped while the boot still starts units was seen to start
# anyway; a file in /run needs nothing of systemd.)
DISARMED = DEAD_MAN_MARK
STOP_COMMAND = DEAD_MAN_STOP  # by hand, on the installer
PANIC_SECONDS = 30  # a kernel panic in the installer restarts the machine after this long
# x86's setup header allows 2047 bytes and the NUL; kexec_file_load (what `run` uses on kernels
# from 6.1) also keeps room for an appended "elfcorehdr=" (30 bytes): 2016 fit everywhere.
CMDLINE_LIMIT = 2016
KEXEC_DELAY = 6.0  # `run` kexecs this long after its success line
LAUNCHER = "nkw-run"  # the app's copy of kexec/run with the words added, beside it
# The words added to upstream's kernelParams need no quoting in any shell context they pass
# through (the double-quoted assignment, then the single quotes of `sh -c "... 'init=...'"`).
SAFE_WORD = re.compile(r"[A-Za-z0-9+/=.,:_-]+")
# Upstream's lines as Nix fills them in: one double-quoted value with nothing the shell expands.
INIT_LINE = re.compile(r'^init="([^"$`\\\n]*)"$', re.M)
PARAMS_LINE = re.compile(r'^kernelParams="([^"$`\\\n]*)"$', re.M)
# Any assignment of them, however written: there must be no other than the one line above.
ANY_ASSIGNMENT = {
    name: re.compile(rf"^\s*(?:export\s+|readonly\s+|local\s+)?{name}=", re.M)
    for name in ("init", "kernelParams")
}
# What Nix writes there (lib.escapeShellArgs of plain parameters): words of safe characters,
# single-quoted or not, one space apart. The quotes toggle when `run` pastes the line inside
# its own single quotes, so a quoted word must be as plain as an unquoted one.
_PLAIN = r"[A-Za-z0-9,._+:@%/=-]"
PARAMS_VALUE = re.compile(rf"(?:(?:'{_PLAIN}*'|{_PLAIN}+)(?: (?:'{_PLAIN}*'|{_PLAIN}+))*)?")
INIT_VALUE = re.compile(rf"{_PLAIN}+")
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
    once, and it succeeds only while the switch is not disarmed. The action sits on the service,
    never on the timer that disarming stops (systemd runs a success action on every clean stop)."""
    timer = (
        "[Unit]\nDescription=nixos-kexec-wizard dead-man switch\n"
        f"[Timer]\nOnBootSec={seconds}s\nAccuracySec=1s\n"
    )
    service = (
        "[Unit]\nDescription=nixos-kexec-wizard dead-man switch: back to the old system\n"
        "SuccessAction=reboot-force\n"
        f'[Service]\nType=oneshot\nExecStart=/bin/sh -c "test ! -e {DISARMED}"\n'
    )
    return timer, service


def patch_run(text: str, words: list[str]) -> str:
    """Upstream's ``kexec/run`` with ``words`` added to its kernelParams line, or
    PreflightStop saying why it cannot be done safely (nothing was changed then)."""
    for word in words:
        if not SAFE_WORD.fullmatch(word):
            raise _refused(f"the word {word[:40]!r} would need quoting")
    inits, params = INIT_LINE.findall(text), PARAMS_LINE.findall(text)
    once = all(len(rx.findall(text)) == 1 for rx in ANY_ASSIGNMENT.values())
    if len(inits) != 1 or len(params) != 1 or not once or text.count(COMMAND_LINE_USE) != 1:
        raise _refused(
            "its `init=`, `kernelParams=` or `--command-line` line is not there exactly once "
            "in the form the app knows"
        )
    if not INIT_VALUE.fullmatch(inits[0]) or not PARAMS_VALUE.fullmatch(params[0]):
        raise _refused(
            "its `init=` or `kernelParams=` value holds characters that Nix's quoting of plain "
            "kernel parameters never writes"
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
    """Disarm (the file the service checks), stop the timer (a few tries: during the boot a
    stop may not take), then report what the installer's kernel and systemd know of it."""
    return (
        f": > {DISARMED}; i=0; while :; do "
        f"systemctl stop {TIMER} >/dev/null 2>&1; "
        f'[ "$(systemctl is-active {TIMER})" != active ] && break; '
        'i=$((i+1)); [ "$i" -ge 10 ] && break; sleep 0.3; done; '
        f"echo mark=$(test -e {DISARMED} && echo yes); "
        f"echo words=$(grep -c 'systemd.wants={TIMER}' /proc/cmdline); "
        f"echo load=$(systemctl show --property=LoadState --value {TIMER}); "
        f"echo timer=$(systemctl is-active {TIMER}); "
        f"echo ran=$(systemctl show --property=InactiveExitTimestampMonotonic --value {SERVICE})"
    )


def disarm_verdict(output: str) -> tuple[str, str]:
    """("disarmed", "not-armed" or "still-armed", what to say) from ``disarm_script``'s
    output: disarmed once the mark is there and the service never ran; words that never
    reached the kernel, or a systemd that did not take them, armed nothing to stop."""
    seen = dict(ln.split("=", 1) for ln in output.splitlines() if "=" in ln)
    words, load = seen.get("words", ""), seen.get("load", "")
    timer, ran = seen.get("timer", ""), seen.get("ran", "")
    if words == "0":
        return "not-armed", (
            "The dead-man switch's words never reached the installer's kernel (its command "
            "line does not hold them), so only what the image does itself can restart it."
        )
    if words == "1" and load == "not-found":
        return "not-armed", (
            "The installer's systemd did not take the switch's timer (older than systemd 256): "
            f"only the kernel panic restart (panic={PANIC_SECONDS}) was armed."
        )
    if seen.get("mark") == "yes" and load == "loaded" and ran == "0":
        how = (
            "its timer is stopped" if timer == "inactive" else "if its timer fires, it does nothing"
        )
        return "disarmed", f"Dead-man switch disarmed: {how}, and it never fired."
    return "still-armed", (
        f"The dead-man switch could not be confirmed off (disarm mark "
        f"{'written' if seen.get('mark') == 'yes' else 'missing'}, timer {timer or 'unknown'}, "
        f"load state {load or 'unknown'}, service last started at {ran or 'unknown'})."
    )


def fired(facts: Facts, headline: str, cause: str) -> DeadManFired:
    """The old system answers again, after the kexec: ``cause`` says what most likely
    restarted it, beside the network the app saw before the kexec."""
    pv = net_preview(facts)
    net = "\n".join(f"- {s}" for s in (*pv.keeps, *pv.loses)) or "- (nothing recorded)"
    return DeadManFired(
        headline,
        f"{cause} What the app saw of the network before the kexec:\n{net}",
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
                 "without it, as the switch was on only by default (given by name, "
                 "--dead-man MINUTES, it stops the install instead).", level="warn",
                 dead_man="not-armed")  # fmt: skip
        return
    state.launcher, state.dead_man_minutes = LAUNCHER, switch.minutes
    state.dead_man_units = switch.units
    step.log("run", switch.describe(), dead_man="armed", minutes=switch.minutes,
             units=switch.units)  # fmt: skip


def _write_launcher(step: Step, switch: DeadMan) -> None:
    """Read upstream's ``run`` (framed: nothing the login prints is taken for it), add the
    words, write the launcher, and check both digests on the server: ``run`` is what was read,
    the launcher what was sent."""
    folder = f"{step.staging.rstrip('/')}/kexec"
    run, launcher = f"{folder}/run", f"{folder}/{LAUNCHER}"
    token = secrets.token_hex(8)
    res = step.run(sh.framed(f"cat {q(run)}", token), privileged=True, what="reading kexec/run")
    text = sh.unframe(res.stdout, token) if res.ok and not res.stdout_dropped else None
    if text is None:
        raise _refused("kexec/run could not be read whole")
    body = patch_run(text, switch.words())
    body = body if body.endswith("\n") else body + "\n"
    write = sh.write_file(launcher, body, token) + f" && sha256sum {q(launcher)} {q(run)}"
    wrote = step.run(sh.framed(write, token), privileged=True,
                     what="writing the app's kexec launcher")  # fmt: skip
    own = sh.unframe(wrote.stdout, token) if wrote.ok else None
    got = [m.group(1) for m in map(sh.SHA256_LINE.fullmatch, (own or "").splitlines()) if m]
    want = [hashlib.sha256(t.encode()).hexdigest() for t in (body, text)]
    if got != want:
        raise _refused(
            f"the launcher written to {launcher}, or the run it was made from, did not read "
            "back as the app had them"
        )


def disarm(step: Step, session: Session, info: InstallerInfo) -> str:
    """Stop the switch on the proven installer (tried twice): "disarmed", "not-armed" (it
    never took hold there; a warning), or "still-armed" with a loud warning naming the command
    that stops it. Never raises: the installer is up either way."""
    message = ""
    for _attempt in range(2):
        try:
            res = session.run(
                disarm_script(), timeout=step.setup.settings.command_timeout,
                cancel=step.cancel, what="disarming the dead-man switch",
            )  # fmt: skip
            verdict, message = disarm_verdict(res.stdout)
        except WizardError as exc:
            verdict, message = "still-armed", f"Disarming the dead-man switch failed: {exc.what}"
        if verdict != "still-armed":
            level = "" if verdict == "disarmed" else "warn"
            step.log("verify", message, level=level, dead_man=verdict)
            return verdict
    setup = step.setup
    ssh = installer_ssh_command(info, setup.session.target.jump, setup.known_hosts.app_file)
    step.log(
        "verify",
        f"{message} It restarts {info.host} into its old system {restart_time(step)} unless "
        f"stopped. Stop it now: {shlex.join([*ssh, STOP_COMMAND])}",
        level="warn", dead_man="still-armed",
    )  # fmt: skip
    return "still-armed"


def restart_time(step: Step) -> str:
    """When the armed switch restarts the server, in words for a message."""
    state = step.state
    if state.kexec_at is None or state.dead_man_minutes is None:
        return "at its deadline"
    left = state.kexec_at + KEXEC_DELAY + state.dead_man_minutes * 60 - time.monotonic()
    at = datetime.datetime.now() + datetime.timedelta(seconds=max(left, 0))
    return f"at about {at:%H:%M} ({max(left, 0) / 60:.0f} min from now)"


def armed_note(step: Step) -> str:
    """For an error after the kexec while the switch is armed: what it will still do."""
    state = step.state
    if state.dead_man_minutes is None or state.kexec_at is None or not state.dead_man_units:
        return ""
    if state.kexec_at + KEXEC_DELAY + state.dead_man_minutes * 60 <= time.monotonic():
        return (
            " The dead-man switch's deadline has passed: if the server does not answer as its "
            "old system soon, it did not come back from the restart (look at the provider's "
            "console: the boot order, the disk)."
        )
    return (
        f" The dead-man switch restarts the server into its old system {restart_time(step)} "
        "unless the installer is reached and it is stopped first."
    )


def came_back(step: Step, ident_name: str) -> DeadManFired:
    """The old system answers in a new boot while the switch was armed: its timer fired if it
    was due, else something restarted the server sooner (a panic, with the switch's panic=)."""
    state, host = step.state, step.state.host
    minutes = state.dead_man_minutes or 0.0
    after = time.monotonic() - state.kexec_at if state.kexec_at is not None else None
    when = f"{after:.0f} s after the kexec" if after is not None else "after the kexec"
    if state.dead_man_units and after is not None and after >= minutes * 60:
        return fired(
            step.setup.facts,
            f"{host} is back on its old system ({ident_name}, {when}): the installer was not "
            f"reachable within {minutes:g} min, so the dead-man switch restarted the server.",
            "The installer booted, but the app could not log in to it: its network did not "
            "come back as the old system had it, or it stopped answering.",
        )
    only = "" if state.dead_man_units else " (this image's switch has only its panic restart)"
    return fired(
        step.setup.facts,
        f"{host} is back on its old system ({ident_name}, {when}), before the dead-man "
        f"switch's timer was due{only}.",
        "Something restarted the server soon after the kexec: most likely the installer's "
        f"kernel panicked (the switch's panic={PANIC_SECONDS} restarts it then), or the kexec "
        "itself failed and the firmware restarted the machine.",
    )

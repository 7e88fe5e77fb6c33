"""The run stage: ``kexec/run`` (or a legacy kexec-bundle) as root; what explains a failure."""

from __future__ import annotations

import re
import time
from collections import deque

from app.core import remote_sh as sh
from app.core.errors import KexecRefused, NeverWentDown, RemoteCommandError, WizardError
from app.core.events import LogEvent, OutputEvent
from app.core.install.state import Step
from app.core.ssh import LINE_LIMIT

SUCCESS_LINE = "machine will boot into nixos"
# The bundle wrapper's last line (its exit status), maybe after output without a newline.
EXIT_LINE = re.compile(rf"^(.*){re.escape(sh.BUNDLE_EXIT)} (\d+)$")
KEPT_LINES = 2000  # lines of `run`'s output kept for the diagnosis (all are shown as they come)
# Kernel log lines that tell why a kexec failed.
NOTABLE = re.compile(r"kexec|lockdown|secure boot|\bIMA\b|not permitted|denied|error|failed", re.I)


def run_kexec(step: Step) -> None:
    """Run ``kexec/run`` as root under setsid; require its success line."""
    setup, state = step.setup, step.state
    if setup.plan.bundle:
        run_bundle(step)
        return
    # Like nixos-anywhere: its own session, waited for (else the output would be lost).
    cmd = sh.run_installer(
        step.staging, setup.plan.kexec_extra_flags, setsid_wait=setup.facts.setsid_wait,
        launcher=state.launcher,
    )  # fmt: skip
    # The tail of what `run` says is enough to explain a failure; a flood is not kept.
    lines: deque[str] = deque(maxlen=KEPT_LINES)
    stderr: deque[str] = deque(maxlen=KEPT_LINES)
    said_success = False

    def on_line(stream: str, line: str) -> None:
        nonlocal said_success
        lines.append(line)
        if SUCCESS_LINE in line and not said_success:
            state.kexec_at = time.monotonic()  # the kexec comes 6 s later
        said_success = said_success or SUCCESS_LINE in line
        if stream == "stderr":
            stderr.append(line)
        step.emit(OutputEvent("run", line, stream=stream))

    def started() -> None:
        state.point_of_no_return = True  # `run` starts a detached kexec; cancel is too late now
        step.emit(
            LogEvent(
                "run", "Running kexec/run: cancelling is no longer safe.", safe_to_cancel=False
            )
        )

    try:
        res = setup.session.run(
            cmd,
            privileged=True,
            timeout=setup.settings.run_timeout,
            on_line=on_line,
            cancel=None,
            what="kexec/run",
            on_start=started,  # only once the server started it (a channel may be refused)
        )
    except RemoteCommandError as exc:
        # The connection may drop because the kexec already happened: let the wait decide.
        if said_success:
            step.log("run", f"The connection closed after the success line ({exc.what}).")
            return
        raise
    out = "\n".join(lines)
    if res.ok and said_success:
        return
    state.point_of_no_return = False
    tail = diagnosis(list(lines), list(stderr))
    if "kexec failed" in out or "kexec_file_load failed" in out or "kexec_load failed" in out:
        hint = (
            "The kernel refused kexec_file_load: retry with --kexec-extra-flags -c "
            "(the classic syscall). "
            if "kexec_file_load" in out
            else ""
        )
        raise KexecRefused(
            "The kernel refused to load the installer (kexec failed).",
            f"What the server said:\n{tail}",
            hint + "If lockdown, Secure Boot or IMA is mentioned, turn Secure Boot off in "
            "the provider's console. The server was not changed.",
        )
    raise KexecRefused(
        f"kexec/run failed (exit status {res.status}) without the success line.",
        f"Its last output:\n{tail}",
        "Read the output above; the server was not rebooted.",
    )


def run_bundle(step: Step) -> None:
    """Start the kexec-bundle detached, as root, and follow its log until the server goes.

    A bundle unpacks itself and kexecs at once (or asks systemd to), so unlike ``run`` it
    never returns on success: its exit status in the log means it failed.
    """
    setup, state = step.setup, step.state
    session, run_timeout = setup.session, setup.settings.run_timeout
    log = sh.bundle_log(step.staging)
    start = sh.start_bundle(step.staging, step.remote_tarball, setsid=setup.facts.has("setsid"))

    def started() -> None:
        state.point_of_no_return = True
        step.emit(
            LogEvent(
                "run", "Running the kexec-bundle: cancelling is no longer safe.",
                safe_to_cancel=False,
            )
        )  # fmt: skip

    session.run(
        start, privileged=True, timeout=setup.settings.command_timeout, cancel=step.cancel,
        what="starting the kexec-bundle", on_start=started,
    )  # fmt: skip
    lines: deque[str] = deque(maxlen=KEPT_LINES)
    offset = 0  # bytes of the log read so far: whole lines only
    status: str | None = None
    deadline = time.monotonic() + run_timeout
    while time.monotonic() < deadline:
        try:
            res = session.run(
                sh.read_from(log, offset), privileged=True, timeout=3, what="the bundle's log"
            )
        except WizardError:
            step.log("run", "The connection closed: the kexec is under way.")
            return
        got, used = whole_lines(res.raw_stdout)
        offset += res.stdout_dropped + used
        for line in got:
            m = EXIT_LINE.search(line)
            if m is not None:
                status = m.group(2)
                line = m.group(1)  # what the bundle printed without a newline before it
            if line:
                lines.append(line)
                step.emit(OutputEvent("run", line))
        if status == "0":
            step.log("run", "The bundle handed over to the new kernel (systemctl kexec).")
            return
        if status is not None:
            state.point_of_no_return = False
            raise KexecRefused(
                f"The kexec-bundle failed (exit status {status}).",
                "Its last output:\n" + diagnosis([], list(lines)),
                "Read the output above; the server was not rebooted. A bundle needs kexec "
                "support in the kernel and space in /tmp to unpack itself.",
            )
        if not session.active or step.cancel.wait(0.5):
            return
    raise NeverWentDown(
        f"The kexec-bundle still ran after {run_timeout:g} s.",
        "It should unpack itself and reboot within a minute.",
        f"Look at {log} on the server; the old system is still running.",
    )


def whole_lines(data: bytes) -> tuple[list[str], int]:
    """The complete lines in ``data`` (decoded for people) and how many bytes they take: a
    line still being written is read again whole next time. A line longer than LINE_LIMIT
    without its end is taken as it is."""
    end = data.rfind(b"\n") + 1
    if end == 0 and len(data) >= LINE_LIMIT:
        end = len(data)
    text = data[:end].decode("utf-8", "replace")
    return text.splitlines(), end


def diagnosis(lines: list[str], stderr: list[str], keep: int = 8) -> str:
    """What explains a failed ``run``: kexec's own words first, then the telling kernel lines.

    kexec's errors come on stderr (beside ``set -x``'s trace), ``run``'s dmesg dump on stdout
    after its "kexec failed" line; the two streams may arrive in either order.
    """
    own = [ln for ln in stderr if ln.strip() and not ln.startswith("+ ")][-keep:]
    marker = next((i for i, ln in enumerate(lines) if "kexec failed" in ln), len(lines))
    dmesg = [ln for ln in lines[marker + 1 :] if not ln.startswith("+ ") and ln not in own]
    telling = [ln for ln in dmesg if NOTABLE.search(ln)][-keep:] or dmesg[-keep:]
    parts = [*own, "Kernel log:", *telling] if telling else own
    return "\n".join(parts) or "(no output)"

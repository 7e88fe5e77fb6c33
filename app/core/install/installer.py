"""The Installer: the stages in order, each timed, undone again where it failed in time."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from app.core.errors import (
    DeadManFired,
    OldSystemBack,
    PreflightStop,
    PrivilegeError,
    WizardError,
)
from app.core.events import CancelToken, EventSink
from app.core.install.deadman import arm, armed_note, disarm
from app.core.install.kexec import run_kexec
from app.core.install.key import ensure_key
from app.core.install.place import cleanup, compare_sha256, transfer_image, unpack
from app.core.install.state import Setup, State, Step
from app.core.install.verify import verify_installer
from app.core.install.wait import wait_down, wait_up
from app.core.plan import InstallPlan
from app.core.preflight import evaluate, raise_first_stop
from app.core.probe import Facts
from app.core.result import InstallerInfo
from app.core.settings import Settings
from app.core.ssh import Credentials, KnownHosts, Session
from app.core.timings import Timings
from app.core.transfer import choose_transfer


class Installer:
    """Runs the stages for one plan on one connected, probed session.

    ``run`` goes through all of them; ``rewait`` looks for the installer again after a wait
    that failed or was stopped. Each call gets its own event sink and cancel token.
    """

    def __init__(
        self,
        plan: InstallPlan,
        session: Session,
        facts: Facts,
        creds: Credentials,
        known_hosts: KnownHosts,
        settings: Settings,
        keys_dir: Path,
    ) -> None:
        self.setup = Setup(plan, session, facts, creds, known_hosts, settings, keys_dir)
        self.state = State.start(self.setup)
        self.timings = Timings()

    @property
    def point_of_no_return(self) -> bool:
        """``run`` started the kexec: cancelling is too late, the server may be rebooting."""
        return self.state.point_of_no_return

    @property
    def installer_creds(self) -> Credentials | None:
        """How to log in to the installer, once the key stage knows."""
        return self.state.installer_creds

    # -- the whole flow -----------------------------------------------------------------

    def run(self, emit: EventSink, cancel: CancelToken) -> InstallerInfo:
        """All stages; returns the verified installer or raises a distinct WizardError."""
        self._check()
        self.prepare(emit, cancel)
        self.kexec(emit, cancel)
        return self.wait(emit, cancel)

    def rewait(
        self,
        emit: EventSink,
        cancel: CancelToken,
        accepted_fingerprint: str | None = None,
        host: str | None = None,
    ) -> InstallerInfo:
        """Wait for the installer again and prove what it is: after the user accepted a
        bundle's new host key (``accepted_fingerprint``), or at a new address (``host``)."""
        step = Step(self.setup, self.state, emit, cancel)
        if accepted_fingerprint:
            self.state.accepted_keys.add(accepted_fingerprint)
        if host and host != self.state.host:
            self.state.host = host
            step.log("up", f"Looking for the installer at {host} now.")
        return self._up_and_verify(step)

    # -- its phases, in order -----------------------------------------------------------

    def prepare(self, emit: EventSink, cancel: CancelToken) -> None:
        """Key, transfer, checksum and unpack: all undone again if anything fails."""
        step = Step(self.setup, self.state, emit, cancel)
        settings = self.setup.settings
        try:
            with self.timings.measure("key", emit, settings.command_timeout):
                ensure_key(step)
            plan, facts = self.setup.plan, self.setup.facts
            mode, reason = choose_transfer(plan.transfer, facts, plan.asset)
            self.state.mode = mode
            step.log("transfer", f"Transfer: {mode} ({reason})", mode=mode)
            with self.timings.measure("transfer", emit):
                transfer_image(step)
            with self.timings.measure("checksum", emit, settings.command_timeout):
                compare_sha256(step)
            with self.timings.measure("unpack", emit, settings.command_timeout):
                unpack(step)
        except BaseException:
            cleanup(step)
            raise

    def kexec(self, emit: EventSink, cancel: CancelToken) -> None:
        """Run ``kexec/run``: from here on, cancelling is too late."""
        step = Step(self.setup, self.state, emit, cancel)
        try:
            with self.timings.measure("run", emit, self.setup.settings.run_timeout):
                arm(step)
                run_kexec(step)
        except BaseException:
            if not self.state.point_of_no_return:
                cleanup(step)
            raise

    def wait(self, emit: EventSink, cancel: CancelToken) -> InstallerInfo:
        """Wait for the old system to go down and the installer to answer; prove what it is."""
        step = Step(self.setup, self.state, emit, cancel)
        with self.timings.measure("down", emit, self.setup.settings.down_timeout):
            wait_down(step)
        return self._up_and_verify(step)

    def _up_and_verify(self, step: Step) -> InstallerInfo:
        """Wait for the installer at the state's host and prove what it is; repeatable."""
        settings = self.setup.settings
        try:
            with self.timings.measure("up", step.emit, settings.up_timeout):
                session = wait_up(step)
            try:
                with self.timings.measure("verify", step.emit, settings.command_timeout):
                    info = verify_installer(step, session, self.setup.facts.boot_id)
                    if self.state.dead_man_minutes is not None:
                        info = replace(info, dead_man=disarm(step, session, info))
                    return info
            finally:
                session.close()
        except WizardError as exc:
            if not isinstance(exc, (DeadManFired, OldSystemBack)):  # it is not armed there
                exc.fix += armed_note(step)
            raise

    def _check(self) -> None:
        """Refuse to start when preflight says stop or root access is missing."""
        plan, session, facts = self.setup.plan, self.setup.session, self.setup.facts
        if facts.is_installer:
            raise PreflightStop(
                f"{session.target.host} already runs the NixOS installer.",
                "The kexec already happened; running it again would only reboot the installer.",
                "Connect with `nixos-kexec-wizard reconnect` and install NixOS.",
            )
        raise_first_stop(evaluate(facts, _image_arch(plan), _image_size(plan)))
        if session.privilege is None:
            raise PrivilegeError(
                "Root access was not established.",
                "The kexec must run as root.",
                "Inspect the server (probe) and give the sudo password if asked.",
            )


def _image_arch(plan: InstallPlan) -> str | None:
    """The arch the image's file name says, if it says one."""
    m = re.search(r"-(x86_64|aarch64)(?:-linux|$)", plan.file_name)
    return m.group(1) if m else None


def _image_size(plan: InstallPlan) -> int | None:
    """The image's size, as checked on this computer or as published."""
    if plan.image is not None:
        return plan.image.info.size
    return plan.asset.size if plan.asset else None

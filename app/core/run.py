"""One server's run: the order of the steps and the policy between them, top to bottom."""

# The order, as ``HostRun.go`` walks it (and the wizard's pages, one step each):
#   1 connect      the host key checked before any credential is sent
#   2 inspect      probe and judge; the server is remembered in its profile; a server that
#                  already runs the installer ends here, and so does a preflight stop
#   3 become_root  the one sudo policy: a given or remembered password, else the login
#                  password, else ask
#   4 prepare      the go-ahead for warnings, the image, the transfer, the one InstallPlan
#   5 install      the confirmation, then key, transfer, checksum, unpack, run, down, up,
#                  verify (a kexec-bundle's new host key is asked about, then waited for again)
#   6 record       the profile, under a guard: a failing write is a warning beside the real
#                  outcome, never instead of it
# A run asked to install NixOS onto the disk (RunRequest.disk) on a server that runs the
# installer goes from step 2 to become_root and then to the disk's own steps (app.core.disk.run:
# look and pick by PREPARED, the typed wipe confirmation and the install by DONE).
# A step that needs the user raises a question (app.core.questions) and changes nothing; the
# face answers and calls again, and the steps already done are not done again.

from __future__ import annotations

import re
import time
import traceback
from dataclasses import dataclass, replace
from enum import IntEnum
from pathlib import Path
from typing import Protocol

from app.core import flow
from app.core.catalog import Catalog
from app.core.disk.disks import OldRoot
from app.core.disk.run import DiskRequest, DiskRun
from app.core.download import CachedImage
from app.core.errors import Cancelled, NewSystemHostKey, WizardError
from app.core.events import CancelToken, EventSink, InfoEvent, LogEvent, PlanEvent, TimingsEvent
from app.core.flow import Inspection as Inspection  # the faces show it
from app.core.handoff import installer_ssh_command
from app.core.imagecheck import bundle_note
from app.core.install import Installer
from app.core.kinds import PrivilegeKind, Transfer
from app.core.plan import DEFAULT_STAGING, ImageChoice, ImageRequest, InstallPlan, InstallRequest
from app.core.preflight import Level
from app.core.privilege import establish_privilege, known_sudo_password
from app.core.profiles import ProfileStore, check_name
from app.core.questions import (
    QUESTIONS,
    Answers,
    ConfirmationRequired,
    GoAheadRequired,
    SudoPasswordRequired,
)
from app.core.result import InstallerInfo, Outcome, leftover_command, leftover_note
from app.core.secrets import SecretStore
from app.core.settings import Settings
from app.core.ssh import ConnectOptions, Credentials, KnownHosts, Session, Target, connect
from app.core.transfer import choose_transfer


class Step(IntEnum):
    """How far a run goes: ``go(until=...)`` stops once this step is done."""

    CONNECTED = 1
    INSPECTED = 2  # probed and judged (the `probe` command stops here)
    CHECKED = 3  # a preflight stop has ended the run
    ROOT = 4
    PREPARED = 5
    DONE = 6


@dataclass
class Host:
    """One server: how it is named in events, reached, and remembered."""

    label: str  # the profile's name, or the target as given
    target: Target
    creds: Credentials
    profile: str | None = None  # the profile kept up to date (None: not saved)
    remember: bool = False  # remember its passwords in the keyring

    @property
    def key_name(self) -> str:
        """What the app's generated key for this server is called: the profile, else the
        ``~/.ssh/config`` alias, else the host (one name for one server, in both faces)."""
        return self.profile or self.target.alias or self.target.host


@dataclass(frozen=True)
class RunRequest:
    """What the user chose for the install: the image and the install's options."""

    image: ImageRequest
    install: InstallRequest
    catalog: Catalog | None = None  # the releases list (None: an image file or URL was given)
    disk: DiskRequest | None = None  # install NixOS onto the disk (a server in the installer)


class Images(Protocol):
    """Where a run gets its verified image (shared by every run that needs the same one)."""

    def get(self, choice: ImageChoice, emit: EventSink, cancel: CancelToken) -> CachedImage:
        """The verified image for ``choice``."""
        ...


@dataclass
class RunEnv:
    """What every run of one invocation shares: settings, stores, images, host-key policy."""

    settings: Settings
    known_hosts: KnownHosts
    profiles: ProfileStore
    secrets: SecretStore
    keys_dir: Path
    images: Images
    accept_new_host_key: bool = False  # --accept-new-host-key: trust a host with no known key
    staging: str = DEFAULT_STAGING  # the folder on each server (--staging-dir)
    systems_dir: Path | None = None  # where each installed system's configuration is kept


def internal_error(exc: BaseException) -> WizardError:
    """A bug, said as such (the traceback goes to the run's log)."""
    return WizardError(
        f"Internal error: {type(exc).__name__}: {exc}",
        "This is a bug in nixos-kexec-wizard, not something you did.",
        "Please report it with the log file; the server was left as the last message said.",
    )


class HostRun:
    """One server's install, from the first connection to the proven installer."""

    def __init__(self, host: Host, env: RunEnv) -> None:
        self.host = host
        self.env = env
        self.session: Session | None = None
        self.inspection: flow.Inspection | None = None
        self.rooted = False
        self.choice: ImageChoice | None = None
        self.plan: InstallPlan | None = None
        self.transfer_reason = ""
        self.installer: Installer | None = None
        self.info: InstallerInfo | None = None
        self.new_key: NewSystemHostKey | None = None  # a bundle's new key, asked about
        self.outcome: Outcome | None = None
        self.disk: DiskRun | None = None  # the disk's steps, once the installer was found
        self.pinned: tuple[str, int, str] | None = None  # a host key proven earlier in this run

    @property
    def label(self) -> str:
        """The server's name in events and results."""
        return self.host.label

    def again(self) -> HostRun:
        """A new run for the same server (after this one ended, e.g. to check again)."""
        self.close()
        return HostRun(self.host, self.env)

    # -- the whole run ----------------------------------------------------------------------

    def go(
        self,
        answers: Answers,
        emit: EventSink,
        cancel: CancelToken,
        *,
        request: RunRequest | None = None,
        until: Step = Step.DONE,
    ) -> Outcome | None:
        """Every step not done yet, in order, as far as ``until``. A question is raised for the
        face (nothing changed); an error ends the run with its outcome, which is returned (None
        while the run goes on)."""
        if self.outcome is not None:
            return self.outcome
        try:
            if self.session is None:
                self.connect(answers, cancel)
            if self.inspection is None:
                self.inspect(emit, cancel, request)
            if self.outcome is not None or until <= Step.INSPECTED:
                return self.outcome
            if self.disk is not None:
                return self.disk_steps(answers, emit, cancel, until, request)
            self.stopped()
            if until <= Step.CHECKED:
                return None
            if not self.rooted:
                self.become_root(answers)
            if until <= Step.ROOT:
                return None
            if self.plan is None:
                if request is None:
                    raise WizardError("No image was chosen for this server.")
                self.prepare(request, answers, emit, cancel)
            if until <= Step.PREPARED:
                return None
            return self.install(answers, emit, cancel)
        except QUESTIONS:
            raise
        except WizardError as exc:
            return self.end(exc)
        except Exception as exc:  # a bug: this server ends with it, the others go on
            emit(LogEvent("internal", traceback.format_exc()))
            return self.end(internal_error(exc))

    def end(self, exc: WizardError) -> Outcome:
        """End the run with ``exc`` (also when the face declines a question)."""
        self.close()
        self.outcome = Outcome.failed(self.label, exc)
        return self.outcome

    def close(self) -> None:
        """Close the SSH session, if one is open (safe from any thread)."""
        if self.session is not None:
            self.session.close()

    # -- 1. connect -------------------------------------------------------------------------

    def connect(self, answers: Answers, cancel: CancelToken) -> Session:
        """Log in, the host key checked first; a new key, a passphrase or a password is a
        question. Connecting again replaces the session."""
        self.close()
        target, creds = self.host.target, self.credentials(answers)
        options = ConnectOptions(
            timeout=self.env.settings.connect_timeout,
            accept_new_host_key=self.env.accept_new_host_key,
            trusted=(*answers.host_keys, *([self.pinned] if self.pinned else [])),
        )
        self.session = connect(target, creds, self.env.known_hosts, options, cancel=cancel)
        self.inspection, self.rooted, self.plan = None, False, None
        return self.session

    def credentials(self, answers: Answers) -> Credentials:
        """The host's credentials with the face's answers in (the host's own stay as given)."""
        c, t = self.host.creds, self.host.target
        return replace(
            c,
            password=answers.passwords.get(t.label, c.password),
            passphrases={**c.passphrases, **answers.passphrases},
            jump_passwords={**c.jump_passwords, **answers.passwords},
            sudo_password=answers.sudo_passwords.get(self.label, c.sudo_password),
        )

    # -- 2. inspect -------------------------------------------------------------------------

    def inspect(
        self, emit: EventSink, cancel: CancelToken, request: RunRequest | None = None
    ) -> flow.Inspection:
        """Probe and judge the server, and remember it in its profile. A server that already
        runs the installer ends the run here (nothing to do)."""
        session = self._session()
        reach = request is None or (
            request.disk is None
            and flow.reach_matters(request.install.transfer, request.image.source)
        )
        found = flow.inspect(
            session, self.env.settings, self.env.staging, emit=emit, cancel=cancel, reach=reach
        )
        self.inspection, self.rooted, self.plan = found, False, None
        asked = request.disk if request is not None else None
        if (self.disk is not None or asked is not None) and not found.facts.is_installer:
            raise not_the_installer(self.label, found.facts.os_name)
        if found.facts.is_installer:
            info = flow.already_installer(session, found.facts)
            if self.disk is not None or asked is not None:
                self.info = info
                self.disk = self.disk or DiskRun(self.label, asked or DiskRequest())
                self.record(emit, installer=info)
                return found
            self.record(emit, installer=info)
            emit(InfoEvent("", f"{session.target.host} already runs the NixOS installer; "
                               "nothing to do."))  # fmt: skip
            self.info = info
            self.close()
            self.outcome = Outcome(
                self.label, True, "already-installer", 0, {"installer": info.to_json()}
            )
        else:
            self.record(emit)  # a stop below still leaves a profile to come back to
        return found

    def stopped(self) -> None:
        """Raise the first preflight stop (nothing was changed)."""
        self._inspected().raise_first_stop()

    # -- 3. become root ---------------------------------------------------------------------

    def become_root(self, answers: Answers) -> None:
        """Act as root from now on: a sudo password given or remembered is tried, else the
        login password; none known, or one refused, is a question."""
        session, facts = self._session(), self._inspected().facts
        creds = self.credentials(answers)
        password = known_sudo_password(facts, creds)
        needs = facts.privilege == PrivilegeKind.SUDO_PASSWORD
        if needs and password is None:
            raise SudoPasswordRequired(session.target.host, facts.user)
        establish_privilege(session, facts, password, self.env.settings)  # refused: asked again
        self.rooted = True

    # -- 4. prepare -------------------------------------------------------------------------

    def choose(self, request: RunRequest) -> tuple[ImageChoice, Transfer, str]:
        """The image for this server and how it travels, with the reason (nothing fetched)."""
        facts = self._inspected().facts
        choice = flow.choose_image(request.image, facts, self.env.settings, request.catalog)
        mode, reason = choose_transfer(request.install.transfer, facts, choice.asset)
        return choice, mode, reason

    def fetch(self, choice: ImageChoice, emit: EventSink, cancel: CancelToken) -> CachedImage:
        """The verified image on this computer (shared with every run that needs it)."""
        warn_unchecked(choice, emit)
        image = self.env.images.get(choice, emit, cancel)
        emit(InfoEvent("", f"Image: {image.path.name}: {image.verification_note}"))
        return image

    def prepare(
        self, request: RunRequest, answers: Answers, emit: EventSink, cancel: CancelToken
    ) -> InstallPlan:
        """The one plan for this server: the warnings accepted, root, the image (fetched when
        it is uploaded) and the transfer. Nothing on the server changes here."""
        found = self._inspected()
        self.stopped()
        warnings = [v.title for v in found.verdicts if v.level is Level.WARN]
        if warnings and not answers.go_ahead:
            raise GoAheadRequired(self.label, warnings)
        if not self.rooted:
            self.become_root(answers)
        cancel.check()
        choice, mode, reason = self.choose(request)
        image = self.fetch(choice, emit, cancel) if mode == Transfer.UPLOAD else None
        install = replace(request.install, key_name=self.host.key_name)
        plan = flow.make_plan(self.host.target, found.facts, choice, mode, image, install)
        if plan.bundle:
            emit(InfoEvent("", bundle_note(), level="warn"))
        emit(PlanEvent(plan=plan.summary()))
        self.choice, self.plan, self.transfer_reason = choice, plan, reason
        return plan

    # -- 5. install -------------------------------------------------------------------------

    def install(self, answers: Answers, emit: EventSink, cancel: CancelToken) -> Outcome:
        """Boot the installer and prove it; the outcome is recorded in the profile. Asks for
        the confirmation first, and about a kexec-bundle's new host key when it shows one."""
        plan, facts = self._prepared(), self._inspected().facts
        if not answers.confirmed:
            raise ConfirmationRequired(
                self.label, facts.os_name, plan.file_name, plan.transfer, self.transfer_reason
            )
        meta = self.choice.meta if self.choice is not None else None
        installer, asked = self.installer, self.new_key
        if installer is None:
            installer = self.installer = Installer(
                plan, self._session(), facts, self.credentials(answers), self.env.known_hosts,
                self.env.settings, self.env.keys_dir,
            )  # fmt: skip
        try:
            if asked is None:
                info = installer.run(emit, cancel)
            else:  # the user answered the question about a bundle's new host key
                accepted = answers.accepted(asked.host, asked.port)
                self.new_key = None
                info = installer.rewait(
                    emit, cancel, accepted_fingerprint=accepted[-1] if accepted else None
                )
        except NewSystemHostKey as question:
            self.new_key = question
            raise
        except WizardError:
            state = "unknown" if installer.point_of_no_return else "original"
            self.record(emit, image=meta, state=state)
            emit(TimingsEvent(timings=installer.timings.stages))
            self.close()
            raise
        return self._installed(info, emit, meta)

    def rewait(self, emit: EventSink, cancel: CancelToken, host: str) -> Outcome:
        """Look for the installer again, at another address the user gave."""
        if self.installer is None:
            raise WizardError("Nothing was installed on this server in this run.")
        info = self.installer.rewait(emit, cancel, host=host)
        return self._installed(info, emit, self.choice.meta if self.choice else None)

    def _installed(
        self, info: InstallerInfo, emit: EventSink, meta: dict[str, str] | None
    ) -> Outcome:
        assert self.installer is not None
        self.info = info
        self.record(emit, image=meta, installer=info)
        proof = "" if info.host_key_verified else " (accepted by you, not verified)"
        emit(InfoEvent("", f"NixOS installer is running at root@{info.host} (port {info.port}), "
                           f"host key {info.fingerprint}{proof}."))  # fmt: skip
        note = leftover_note(info)
        if note:
            emit(InfoEvent("", note, level="warn"))
        self.close()
        target = self.host.target
        payload = {
            "leftovers": [{"file": info.key_left_in, "remove": leftover_command(info)}]
            if note
            else [],
            "installer": info.to_json(),
            "timings": self.installer.timings.stages,
            "ssh_command": installer_ssh_command(info, target.jump, self.env.known_hosts.app_file),
        }
        self.outcome = Outcome(self.label, True, "installer-ready", 0, payload)
        return self.outcome

    def installer_credentials(self, answers: Answers) -> Credentials:
        """How to log in to the installer: the key the install proved it with, else the agent
        and key files (with the passphrases given)."""
        creds = self.installer.installer_creds if self.installer is not None else None
        if creds is not None:
            return creds
        return Credentials(passphrases={**self.host.creds.passphrases, **answers.passphrases})

    # -- 5b. onto the disk (a server that runs the installer) --------------------------------

    def disk_steps(
        self,
        answers: Answers,
        emit: EventSink,
        cancel: CancelToken,
        until: Step,
        request: RunRequest | None = None,
    ) -> Outcome | None:
        """Root and a look at the disks by ROOT; the disk picked and laid out with the
        request's choices by PREPARED (the configuration kept on this computer); the typed wipe
        confirmation and the install by DONE. Nothing reboots after an error."""
        disk = self.disk
        assert disk is not None
        if until <= Step.CHECKED:
            return None
        if not self.rooted:
            self.become_root(answers)
        session, facts, old_root = self._session(), self._inspected().facts, self.old_root()
        if disk.choice is None:
            disk.look(session, facts, old_root, emit, cancel)
        if until <= Step.ROOT:
            return None
        before, laid_out = disk.disk, disk.configuration
        wanted = request.disk if request is not None else None
        chosen = disk.pick(answers.disks.get(self.label) or disk.request.disk, wanted)
        if chosen is not before or disk.configuration != laid_out or disk.saved is None:
            emit(PlanEvent(plan={"disk": disk.summary()}))
            for note in disk.notes:
                emit(InfoEvent("disks", f"Note: {note}.", level="warn"))
            note = disk.reach(session)  # PreflightStop: nothing written
            if note:
                emit(InfoEvent("disks", note, level="warn"))
            if self.env.systems_dir is not None:
                stamp = time.strftime("%Y%m%d-%H%M%S")
                where = disk.save(self.env.systems_dir / folder_name(self.host) / stamp)
                emit(InfoEvent("disks", f"The configuration is kept in {where}."))
        if until <= Step.PREPARED:
            return None
        typed = answers.wipes.get(self.label) or disk.request.yes_wipe
        disk.confirm(typed, old_root, answers.shown.get(self.label, ""))
        try:
            installed = disk.install(session, emit, cancel)
        except WizardError:
            emit(TimingsEvent(timings=disk.timings.stages))
            self.close()
            raise
        self.record(emit, state="installed", system=str(disk.saved or ""))
        self.close()
        emit(InfoEvent("", f"NixOS is installed on {disk.summary()['disk']} of {self.label} "
                           f"({installed.toplevel}). The server still runs the installer: "
                           "reboot it to start the installed system."))  # fmt: skip
        payload = {
            **disk.summary(),
            "toplevel": installed.toplevel,
            "configuration": str(disk.saved) if disk.saved else None,
            "timings": disk.timings.stages,
            "installer": self.info.to_json() if self.info else None,
        }
        self.outcome = Outcome(self.label, True, "nixos-installed", 0, payload)
        return self.outcome

    def onto_disk(self, answers: Answers, request: DiskRequest) -> HostRun:
        """A run for the installer this run found or booted, to install NixOS onto its disk:
        root with the key the install proved it with, the installer's verified host key."""
        info = self.info
        if info is None:
            raise WizardError(
                f"No installer is known on {self.label}.",
                "NixOS is installed onto the disk from the installer running in RAM.",
                "Boot the installer first, or connect to the server that runs it.",
            )
        t = self.host.target
        ids = (info.identity_file,) if info.identity_file else t.identity_files
        target = replace(t, host=info.host, port=info.port, user=info.user, identity_files=ids)
        proven = self.installer.installer_creds if self.installer is not None else None
        host = replace(self.host, target=target, creds=proven or self.credentials(answers))
        run = HostRun(host, self.env)
        run.pinned = (info.host, info.port, info.fingerprint)
        run.disk = DiskRun(self.label, request)
        return run

    def old_root(self) -> OldRoot | None:
        """The old system's root disk, as the server's profile kept it before the kexec."""
        name = self.host.profile
        profile = self.env.profiles.load().get(name) if name else None
        return OldRoot.from_json(profile.old_root) if profile else None

    # -- 6. record --------------------------------------------------------------------------

    def keep_as(self, profile: str, remember: bool) -> None:
        """Remember this server under ``profile`` from now on (its name checked here)."""
        self.host = replace(self.host, profile=check_name(profile), remember=remember)

    def _dead_man_choice(self) -> str | None:
        """The dead-man switch this run's plan used, as the profile keeps it (None: no plan)."""
        plan = self.installer.setup.plan if self.installer is not None else None
        if plan is None or plan.bundle:
            return None
        return "off" if plan.dead_man_minutes is None else f"{plan.dead_man_minutes:g}"

    def record(
        self,
        emit: EventSink,
        *,
        image: dict[str, str] | None = None,
        installer: InstallerInfo | None = None,
        state: str | None = None,
        system: str | None = None,
    ) -> None:
        """Save the server in its profile (secrets to the keyring only). A profile that cannot
        be written is a warning: the run's own outcome stands."""
        name, session = self.host.profile, self.session
        if not name or session is None:
            return
        facts = self.inspection.facts if self.inspection is not None else None
        try:
            profile, warning = flow.record(
                self.env.profiles, self.env.secrets, name, target=self.host.target,
                creds=self.host.creds, host_key=session.host_key_line, facts=facts,
                image=image, installer=installer, state=state, remember=self.host.remember,
                dead_man=self._dead_man_choice(), system=system,
                keep_login=self.disk is not None,
            )  # fmt: skip
        except (WizardError, OSError, ValueError) as exc:
            what = exc.what if isinstance(exc, WizardError) else str(exc)
            emit(InfoEvent("", f"The profile {name!r} was not saved: {what} This does not "
                               "change the server; the result below is the install's own. Check "
                               "that the app's config folder is writable (or --home DIR).",
                           level="warn"))  # fmt: skip
            return
        if warning:
            emit(InfoEvent("", warning, level="warn"))
        emit(InfoEvent("", f"Saved profile {profile.name!r} ({profile.state})."))

    # -- state ------------------------------------------------------------------------------

    def _session(self) -> Session:
        if self.session is None or not self.session.active:
            raise Cancelled(f"The connection to {self.label} is closed.", "", "Connect again.")
        return self.session

    def _inspected(self) -> flow.Inspection:
        if self.inspection is None:
            raise WizardError(f"{self.label} has not been inspected yet.")
        return self.inspection

    def _prepared(self) -> InstallPlan:
        if self.plan is None:
            raise WizardError(f"Nothing is planned for {self.label} yet.")
        return self.plan


def image_alone(
    request: ImageRequest,
    catalog: Catalog | None,
    settings: Settings,
    images: Images,
    emit: EventSink,
    cancel: CancelToken,
) -> CachedImage:
    """An image chosen and verified without a server (the `download` command, and the kexec
    installer a netboot server hands out)."""
    choice = flow.choose_image(request, None, settings, catalog)
    warn_unchecked(choice, emit)
    return images.get(choice, emit, cancel)


def folder_name(host: Host) -> str:
    """A server's folder under the systems folder: its profile, else its address and port, as
    a file name (nothing that climbs out of the folder or hides)."""
    t = host.target
    name = host.profile or f"{t.alias or t.host}-{t.port}"
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return safe or "server"


def not_the_installer(label: str, os_name: str) -> WizardError:
    """install-nixos found the old system, not the installer, at ``label``."""
    return WizardError(
        f"{label} runs {os_name or 'a system'}, not the NixOS installer.",
        "install-nixos installs from the installer running in RAM; it does not boot it.",
        f"Boot the installer first (nixos-kexec-wizard install {label}), then run install-nixos "
        "on the address it answers at.",
    )


def warn_unchecked(choice: ImageChoice, emit: EventSink) -> None:
    """Say loudly that a release file without a published sha256 can only be size-checked."""
    asset = choice.asset
    if asset is not None and not asset.digest:
        emit(InfoEvent("", f"WARNING: {asset.name} has no published checksum; "
                           f"{asset.checksum_note}.", level="warn"))  # fmt: skip

"""The install stages: key, transfer, checksum, unpack, run, wait down, wait up, verify."""

from __future__ import annotations

import contextlib
import re
import secrets
import shlex
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from app.core import keys as keymod
from app.core import remote_sh as sh
from app.core.catalog import Asset
from app.core.errors import (
    AuthError,
    Cancelled,
    ConfigError,
    ExitCode,
    HostKeyChanged,
    IntegrityError,
    LoginRestricted,
    PreflightStop,
    PrivilegeError,
    RemoteCommandError,
    SSHConnectError,
    TransferError,
    WizardError,
)
from app.core.events import (
    AttemptEvent,
    CancelToken,
    EventSink,
    LogEvent,
    OutputEvent,
    ProgressMeter,
    StageEvent,
    discard,
)
from app.core.imagecheck import check_tar_listing
from app.core.kinds import AuthMethod, PrivilegeKind, ServerHash, Transfer
from app.core.lazy import LazyModule
from app.core.netpreview import NetPreview
from app.core.netpreview import preview as net_preview
from app.core.plan import DEFAULT_STAGING, InstallPlan
from app.core.preflight import evaluate, raise_first_stop
from app.core.probe import (
    Facts,
    asked_user,
    own_output,
    parse_os_release,
    parse_probe,
    probe_script,
)
from app.core.settings import Settings
from app.core.ssh import (
    CommandResult,
    ConnectOptions,
    Credentials,
    KnownHosts,
    Privilege,
    Session,
    Target,
    connect,
    key_line,
)
from app.core.ssh.banner import BannerPoll, has_banner
from app.core.text import printable

if TYPE_CHECKING:
    import paramiko
else:
    paramiko = LazyModule("paramiko")

SUCCESS_LINE = "machine will boot into nixos"
KEY_RE = re.compile(r"(?:ssh-|ecdsa-|sk-)[A-Za-z0-9@.-]+\s+([A-Za-z0-9+/=]+)")
DOWN_PROBE_TIMEOUT = 1.0  # seconds a fresh connection may take to send its SSH banner
BOOT_ID_EVERY = 2.0  # while banners still answer: a login that reads the boot id, this often
# A port refused (or reset) within QUICK_FAIL cost the server nothing but its kernel's answer:
# the next attempt comes after QUICK_RETRY, so the installer's sshd is seen soon after it
# listens. After one that hung, the next starts at once (it has waited long enough).
QUICK_FAIL = 0.05
QUICK_RETRY = 0.1
# How long one connection to the rebooting server may wait for its banner: the installer's
# banners came 0.88-0.95 s after the connection on the TCG test bed, so one second (as the
# wait had, and OpenSSH's ConnectTimeout=1) leaves no margin for a slower server.
BANNER_PATIENCE = 1.4
KEPT_LINES = 2000  # lines of `run`'s output kept for the diagnosis (all are shown as they come)


# ---------------------------------------------------------------------------------------------
# Failures after the point of no return: each a distinct outcome and exit code


class KexecRefused(WizardError):
    """``run`` did not load the new kernel."""

    exit_code = ExitCode.KEXEC_REFUSED
    kind = "kexec-refused"


class NeverWentDown(WizardError):
    """``run`` said it would reboot, but the old system kept answering."""

    exit_code = ExitCode.NEVER_WENT_DOWN
    kind = "never-went-down"


class OldSystemBack(WizardError):
    """The server came back, but as its old system."""

    exit_code = ExitCode.OLD_SYSTEM_BACK
    kind = "old-system-back"


class NeverCameBack(WizardError):
    """The server went down and nothing answered before the deadline."""

    exit_code = ExitCode.NEVER_CAME_BACK
    kind = "never-came-back"


class InstallerKeyChanged(WizardError):
    """Something answered after the kexec with another host key: stop, do not log in."""

    exit_code = ExitCode.INSTALLER_KEY_CHANGED
    kind = "installer-key-changed"


# ---------------------------------------------------------------------------------------------
# Plan and result


def leftover_command(info: InstallerInfo) -> str | None:
    """How to remove the app's key line from the old system, if one was left there."""
    if not info.key_left_in or not info.key_comment:
        return None
    return f"sed -i '/ {info.key_comment}$/d' {shlex.quote(info.key_left_in)}"


def leftover_note(info: InstallerInfo) -> str | None:
    """The sentence that tells the user about the key line left on the old system."""
    cmd = leftover_command(info)
    if cmd is None:
        return None
    return (
        f"The app's key line stays in {info.key_left_in} of the old system (on its disk). "
        "Installing NixOS replaces that system; if you boot the old system again instead, "
        f"remove the line there with: {cmd}"
    )


@dataclass(frozen=True)
class InstallerInfo:
    """The verified installer: how to reach it and proof of what it is."""

    host: str
    port: int
    user: str
    host_key: str
    fingerprint: str
    boot_id: str
    hostname: str
    os_release: dict[str, str]
    identity_file: str | None = None
    # False when the host key is one the user accepted, not the one proven before the kexec.
    host_key_verified: bool = True
    # The old system's authorized_keys where the app's key line stays, and that line's comment.
    key_left_in: str = ""
    key_comment: str = ""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> InstallerInfo:
        """Read saved installer details (unknown keys from other versions are ignored)."""
        names = {f.name: f for f in fields(cls)}
        clean = {k: v for k, v in data.items() if k in names}
        try:
            info = cls(**clean)
        except TypeError as exc:
            raise ConfigError(
                f"The installer saved in {where} is incomplete ({exc}).",
                "Without its address and host key the app cannot reach it safely.",
                "Inspect the server again (probe), which records the installer anew.",
            ) from exc
        wrong = [
            k
            for k, t in (("host", str), ("port", int), ("host_key", str), ("fingerprint", str))
            if not isinstance(getattr(info, k), t) or isinstance(getattr(info, k), bool)
        ]
        if wrong or not isinstance(info.os_release, dict):
            raise ConfigError(
                f"The installer saved in {where} has unreadable fields: "
                f"{', '.join(wrong) or 'os_release'}.",
                "Without its address and host key the app cannot reach it safely.",
                "Inspect the server again (probe), which records the installer anew.",
            )
        return info


@dataclass
class Timings:
    """Seconds spent per stage."""

    stages: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def measure(self, stage: str, emit: EventSink, deadline: float | None = None) -> Iterator[None]:
        """Time a stage and emit its start and end events."""
        t0 = time.monotonic()
        emit(StageEvent(stage, state="start", deadline=deadline))
        state = "failed"
        try:
            yield
            state = "done"
        except Cancelled:
            state = "cancelled"
            raise
        finally:
            took = round(time.monotonic() - t0, 3)
            self.stages[stage] = took
            emit(StageEvent(stage, state=state, seconds=took))


# ---------------------------------------------------------------------------------------------
# Probe, privilege, transfer choice


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
    return parse_probe(own)


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


def known_sudo_password(facts: Facts, creds: Credentials) -> str | None:
    """The sudo password to try without asking, the same in both faces.

    The one given or remembered first, else the login password (sudo asks for the login
    user's own password); None when sudo needs none, or none is known and the face must ask.
    """
    if facts.privilege != "sudo-password":
        return None
    return creds.sudo_password if creds.sudo_password is not None else creds.password


def establish_privilege(
    session: Session, facts: Facts, sudo_password: str | None, settings: Settings
) -> Privilege:
    """Decide how to become root, checking a sudo password on the server when one is needed."""
    if facts.privilege in ("root", "sudo", "doas"):
        priv = Privilege(facts.privilege)
    elif facts.privilege == "sudo-password":
        if sudo_password is None:
            raise PrivilegeError(
                f"sudo on {session.target.host} needs {facts.user or 'your'}'s password.",
                "The kexec must run as root.",
                "Give the sudo password (--sudo-password-env VAR, or at the prompt).",
            )
        session.sudo_password = sudo_password
        priv = Privilege("sudo-password")
    else:
        raise PrivilegeError(
            f"{facts.user or 'This user'} cannot become root on {session.target.host}.",
            "Neither root login, sudo nor doas is available, and the kexec must run as root.",
            "Log in as root, or allow this user to use sudo.",
        )
    session.privilege = priv
    if priv.kind == "root":
        return priv  # the probe's own `id -u` in this login said 0: nothing is wrapped
    res = session.run(
        "id -u", privileged=True, timeout=settings.command_timeout, what="the root check"
    )
    if res.stdout.strip() != "0":
        session.privilege = None
        err = res.stderr.lower()
        if "incorrect password" in err or "try again" in err or "no password was provided" in err:
            raise PrivilegeError(
                "sudo refused the password.",
                "Without root the kexec cannot run.",
                "Check the sudo password (it is the login password of "
                f"{facts.user or 'this user'}, not root's).",
            )
        raise PrivilegeError(
            f"Becoming root with {priv.description} failed: {res.stderr.strip()[:200]}",
            "This user may not be allowed to use sudo/doas on the server.",
            "Check /etc/sudoers (or doas.conf) for this user, or log in as root.",
        )
    return priv


def choose_transfer(requested: Transfer, facts: Facts, asset: Asset | None) -> tuple[Transfer, str]:
    """``upload`` or ``remote``, with the reason in words.

    The server downloads only an image with a published sha256 (which it checks before
    anything is unpacked), and only with curl, whose ``--proto`` keeps it on https.
    """
    downloader = facts.has("curl")
    can_check = facts.has("sha256sum") or facts.has("openssl")
    reach = bool(facts.reach_v4 or facts.reach_v6)
    unasked = facts.reach_v4 is None and facts.reach_v6 is None  # never claim what was not seen
    has_digest = asset is not None and asset.digest is not None
    requested = Transfer(requested)
    if requested == Transfer.UPLOAD:
        return Transfer.UPLOAD, "you chose to upload from this computer"
    if requested == Transfer.REMOTE:
        missing = [
            why
            for ok, why in (
                (asset is not None, "the image is a local file"),
                (
                    asset is None or asset.digest is not None,
                    "no sha256 was published for it, so nothing could check it before it boots",
                ),
                (downloader, "the server has no curl (needed to stay on https)"),
                (reach or unasked, "the server cannot reach the download server"),
                (can_check, "the server has neither sha256sum nor openssl to check the file"),
            )
            if not ok
        ]
        if missing:
            raise TransferError(
                "The server cannot download the image itself: " + "; ".join(missing) + ".",
                "The image must be checked on the server before it is booted.",
                "Use --transfer upload (or auto) to send it from this computer.",
            )
        return Transfer.REMOTE, "you chose to let the server download it"
    if asset is not None and downloader and reach and has_digest and can_check:
        return (
            Transfer.REMOTE,
            "the server reaches the download server and can check the sha256 itself",
        )
    if asset is None:
        return Transfer.UPLOAD, "the image is a file on this computer"
    if not has_digest:
        return Transfer.UPLOAD, "the server downloads only images with a published sha256"
    if not reach:
        return Transfer.UPLOAD, "the server cannot reach the download server"
    return Transfer.UPLOAD, "the server lacks curl or a sha256 tool"


# ---------------------------------------------------------------------------------------------
# The installer


@dataclass
class _Waited:
    """How the wait for the installer went so far (for its events and its failure)."""

    attempts: int = 0
    last: str = "no answer yet"
    refused_auth: bool = False


class Installer:
    """Runs the stages for one plan on one connected, probed session."""

    def __init__(
        self,
        plan: InstallPlan,
        session: Session,
        facts: Facts,
        creds: Credentials,
        known_hosts: KnownHosts,
        settings: Settings,
        keys_dir: Path,
        *,
        emit: EventSink = discard,
        cancel: CancelToken | None = None,
    ) -> None:
        self.plan = plan
        self.session = session
        self.facts = facts
        self.creds = creds
        self.known_hosts = known_hosts
        self.settings = settings
        self.keys_dir = keys_dir
        self.emit = emit
        self.cancel = cancel or CancelToken()
        self.timings = Timings()
        self.staging = facts.staging.path or DEFAULT_STAGING  # as the probe resolved it
        self.preview: NetPreview = net_preview(facts)
        self.installer_creds: Credentials | None = None
        self.identity_file: str | None = None
        self.added_key: tuple[str, str] | None = None  # (file, line) we appended
        self.accepted_keys: set[str] = set(plan.accept_host_keys)
        self.mode = "upload"  # how the image travels, once chosen
        self.staging_checked = False  # the staging folder's owner and mode were checked
        self.streamed_sha: str | None = None  # the server's sha256 of the upload it received
        self.server_hash = ServerHash.NONE  # how the server hashed the upload
        self.point_of_no_return = False

    # -- helpers ------------------------------------------------------------------------

    def _log(self, stage: str, message: str, level: str = "", **extra: Any) -> None:
        self.emit(LogEvent(stage, message, level=level, extra=extra))

    def _run(
        self, cmd: str, *, privileged: bool = False, timeout: float | None = None, what: str = ""
    ) -> Any:
        return self.session.run(
            cmd,
            privileged=privileged,
            timeout=timeout or self.settings.command_timeout,
            cancel=self.cancel,
            what=what or cmd,
        )

    @property
    def remote_tarball(self) -> str:
        """Where the tarball lands on the server."""
        return f"{self.staging.rstrip('/')}/{self.plan.file_name}"

    # -- the whole flow -----------------------------------------------------------------

    def run(self) -> InstallerInfo:
        """All stages; returns the verified installer or raises a distinct WizardError."""
        self.check()
        self.prepare()
        self.kexec()
        return self.wait()

    def check(self) -> None:
        """Refuse to start when preflight says stop or root access is missing."""
        if self.facts.is_installer:
            raise PreflightStop(
                f"{self.session.target.host} already runs the NixOS installer.",
                "The kexec already happened; running it again would only reboot the installer.",
                "Connect with `nixos-kexec-wizard reconnect` and install NixOS.",
            )
        raise_first_stop(evaluate(self.facts, self._image_arch(), self._image_size()))
        if self.session.privilege is None:
            raise PrivilegeError(
                "Root access was not established.",
                "The kexec must run as root.",
                "Inspect the server (probe) and give the sudo password if asked.",
            )

    def prepare(self) -> None:
        """Key, transfer, checksum and unpack: all undone again if anything fails."""
        try:
            with self.timings.measure("key", self.emit, self.settings.command_timeout):
                self.stage_key()
            mode, reason = choose_transfer(self.plan.transfer, self.facts, self.plan.asset)
            self.mode = mode
            self._log("transfer", f"Transfer: {mode} ({reason})", mode=mode)
            with self.timings.measure("transfer", self.emit):
                self.stage_transfer(mode)
            with self.timings.measure("checksum", self.emit, self.settings.command_timeout):
                self.stage_checksum()
            with self.timings.measure("unpack", self.emit, self.settings.command_timeout):
                self.stage_unpack()
        except BaseException:
            self.cleanup()
            raise

    def kexec(self) -> None:
        """Run ``kexec/run``: from here on, cancelling is too late."""
        try:
            with self.timings.measure("run", self.emit, self.settings.run_timeout):
                self.stage_run()
        except BaseException:
            if not self.point_of_no_return:
                self.cleanup()
            raise

    def wait(self) -> InstallerInfo:
        """Wait for the old system to go down and the installer to answer; prove what it is."""
        with self.timings.measure("down", self.emit, self.settings.down_timeout):
            self.stage_wait_down(self.facts.boot_id)
        return self.wait_for_installer()

    def wait_for_installer(self, host: str | None = None) -> InstallerInfo:
        """Wait for the installer (at ``host`` if it moved) and prove what it is; repeatable."""
        if host and host != self.session.target.host:
            self.session.target = replace(self.session.target, host=host)
            self._log("up", f"Looking for the installer at {host} now.")
        with self.timings.measure("up", self.emit, self.settings.up_timeout):
            session = self.stage_wait_up()
        with self.timings.measure("verify", self.emit, self.settings.command_timeout):
            return self.stage_verify(session, self.facts.boot_id)

    def _image_arch(self) -> str | None:
        m = re.search(r"-(x86_64|aarch64)(?:-linux|$)", self.plan.file_name)
        return m.group(1) if m else None

    def _image_size(self) -> int | None:
        if self.plan.image is not None:
            return self.plan.image.info.size
        return self.plan.asset.size if self.plan.asset else None

    # -- key ------------------------------------------------------------------------------

    def _carried_files(self) -> tuple[list[str], str]:
        """authorized_keys files `run` copies for this login, and the login user's own file."""
        files = [
            "/root/.ssh/authorized_keys",
            "/root/.ssh/authorized_keys2",
            "/etc/ssh/authorized_keys.d/root",
        ]
        home = self.facts.home or "/root"
        if self.session.privilege and self.session.privilege.kind != "root":
            user = self.facts.user
            files += [
                f"{home}/.ssh/authorized_keys",
                f"{home}/.ssh/authorized_keys2",
                f"/etc/ssh/authorized_keys.d/{user}",
            ]
        return files, f"{home}/.ssh/authorized_keys"

    def _carried_blobs(self, files: list[str]) -> set[str]:
        res = self._run(sh.read_files(files), privileged=True, what="reading authorized_keys")
        return {m.group(1) for m in KEY_RE.finditer(res.stdout)}

    def stage_key(self) -> None:
        """Make sure the installer will accept a key we hold; install our own if needed."""
        if self.plan.bundle:
            # A bundle boots with the keys it was built with; nothing on the server is carried.
            self._log(
                "key",
                "A kexec-bundle carries only the SSH keys it was built with; after the reboot "
                "the wizard logs in with your keys and agent.",
            )
            # Keys only: no password is ever sent to a host whose key cannot be checked first.
            self.installer_creds = replace(self.creds, method=AuthMethod.AUTO, password=None)
            return
        files, own_file = self._carried_files()
        blobs = self._carried_blobs(files)
        auth_key = self.session.auth_key
        if auth_key is not None and auth_key.get_base64() in blobs:
            self._log("key", "Your login key is in a file the installer keeps; it will work there.")
            self.installer_creds = replace(self.creds, method=AuthMethod.AUTO, password=None)
            self.identity_file = (
                self.plan.target.identity_files[0] if self.plan.target.identity_files else None
            )
            return
        reason = (
            "you logged in with a password" if auth_key is None else "your key would not be carried"
        )
        path = keymod.key_path(self.keys_dir, self.plan.key_name)
        key, line = keymod.load_or_create(
            path, f"nixos-kexec-wizard:{keymod.slug(self.plan.key_name)}"
        )
        self._log("key", f"Installing the app's own key ({reason}): {path}")
        if key.get_base64() not in blobs:
            res = self._run(sh.append_line(own_file, line), what="adding the key")
            if not res.ok:
                raise RemoteCommandError(
                    f"Could not add the app's key to {own_file}: {res.stderr.strip()[:200]}",
                    "Without a key the installer cannot be reached (root has no password there).",
                    "Check the permissions of ~/.ssh on the server.",
                )
            self.added_key = (own_file, line)
        self.installer_creds = Credentials(
            method=AuthMethod.KEY, extra_keys=(key,), use_agent=False
        )
        self.identity_file = str(path)
        self._verify_key_login(key)

    def _verify_key_login(self, key: paramiko.PKey) -> None:
        opts = ConnectOptions(
            timeout=self.settings.connect_timeout, expect_key=self.session.host_key_line
        )
        creds = Credentials(method=AuthMethod.KEY, extra_keys=(key,), use_agent=False)
        try:
            with connect(self.session.target, creds, self.known_hosts, opts, cancel=self.cancel):
                pass
            self._log("key", "Checked: a fresh login with the app's key works.")
        except AuthError:
            # sshd may read another AuthorizedKeysFile; `run` still copies the file we wrote.
            self._log(
                "key",
                "A fresh login with the app's key was refused by this sshd (it may read keys "
                "from elsewhere); the key is in the file the installer keeps, so continuing.",
                level="warn",
            )

    # -- transfer -------------------------------------------------------------------------

    def _remote_sha(self, path: str) -> str | None:
        return remote_sha256(
            self.session, path, timeout=max(self.settings.command_timeout, 300), cancel=self.cancel
        )

    def stage_transfer(self, mode: str) -> None:
        """Put the tarball on the server (skipped when an identical one is already there).

        Round trips cost (about 80 ms each on a small emulated server): the folder is made
        and its owners listed in one, the marker made and an earlier copy hashed in one, the
        upload stored and hashed in one, and the move reports the size it put in place."""
        res = self._run(
            sh.make_folder_and_list_owners(self.staging), what="making the staging folder"
        )
        if res.status == 3:
            raise TransferError(
                f"Cannot create {self.staging} on the server: {res.stderr.strip()[:200]}",
                "The image needs a writable staging folder.",
                "Choose another staging folder.",
            )
        self.check_staging_owner(res)
        res = self._run(
            sh.mark_and_hash(f"{self.staging}/{sh.MARKER}", self.remote_tarball),
            timeout=max(self.settings.command_timeout, 300),
            what="the staging marker and an earlier copy's sha256",
        )
        want = self.plan.sha256
        if want and sh.parse_sha256(res.stdout) == want:
            self._log("transfer", "The same image is already on the server; not sending it again.")
            return
        part = self.remote_tarball + ".part"
        if mode == "remote":
            self._remote_download(part)
        else:
            if self.plan.image is None:
                raise TransferError("No local image to upload.", "", "Download the image first.")
            # The server hashes what it received in the upload's own command (when it has a
            # tool for it), and the checksum stage compares; else it reads the file again.
            self.server_hash = server_hash_for(self.facts)
            self.streamed_sha = self.session.upload(
                self.plan.image.path, part, emit=self.emit, cancel=self.cancel,
                server_hash=self.server_hash,
            )  # fmt: skip
        res = self._run(sh.move_and_size(part, self.remote_tarball), what="mv")
        if not res.ok:
            raise TransferError(f"Cannot move the image into place: {res.stderr.strip()[:200]}")
        size = res.stdout.strip()
        if self.plan.image is not None and size != str(self.plan.image.info.size):
            self.streamed_sha = None  # not the whole file: the checksum stage hashes it again

    def check_staging_owner(self, res: CommandResult) -> None:
        """Refuse a staging folder (or a parent) that another user owns or may write to, from
        the ``uid mode path`` lines ``make_folder_and_list_owners`` printed.

        ``run`` executes as root from there: whoever can change the folder could change what
        root runs. A parent writable by others is fine only with the sticky bit (as ``/tmp``).
        """
        uid = self.facts.uid
        lines = [ln.split(" ", 2) for ln in res.stdout.splitlines() if ln.strip()]
        if not res.ok or not lines or any(len(x) != 3 for x in lines):
            raise TransferError(
                f"Cannot check who owns {self.staging} on the server.",
                f"stat said: {res.stderr.strip()[:200] or '(nothing)'}",
                "Choose a staging folder you own (--staging-dir).",
            )
        for i, (owner, mode_text, path) in enumerate(lines):
            mode = int(mode_text, 8)
            owned = int(owner) in (0, uid)
            others_write = bool(mode & 0o022)
            allowed = not others_write or (i > 0 and int(owner) == 0 and bool(mode & 0o1000))
            if not owned or not allowed:
                whose = f"user id {owner}" if not owned else "others too"
                raise TransferError(
                    f"The staging folder {self.staging} is not safe: {path} "
                    + (f"belongs to {whose}." if not owned else "may be written by others.")
                    + f" (owner {owner}, mode {mode_text})",
                    "kexec/run runs as root from the staging folder; whoever can change it "
                    "could make root run something else. Nothing was put there.",
                    "Choose a staging folder that you (or root) own and only you can write "
                    "(--staging-dir), for example ~/nixos-kexec-wizard.",
                )
        self.staging_checked = True

    def _remote_download(self, part: str) -> None:
        asset = self.plan.asset
        assert asset is not None
        cmd = sh.download(asset.url, part, allow_http=self.settings.allow_http)
        result: dict[str, Any] = {}

        def worker() -> None:
            try:
                result["res"] = self.session.run(
                    cmd, timeout=3600, cancel=self.cancel, what="the server's download"
                )
            except BaseException as exc:
                result["exc"] = exc

        th = threading.Thread(target=worker, name="remote-download", daemon=True)
        th.start()
        meter = ProgressMeter(self.emit, "transfer", asset.size)
        while th.is_alive():
            th.join(1.0)
            if self.cancel.cancelled:
                break
            with contextlib.suppress(WizardError):
                res = self.session.run(sh.file_size(part), timeout=5, what="stat")
                if res.ok and res.stdout.strip().isdigit():
                    n = int(res.stdout.strip())
                    meter.advance(n - meter.done)
        th.join()
        if "exc" in result:
            raise result["exc"]
        res = result["res"]
        if not res.ok:
            raise TransferError(
                f"The server could not download {asset.url}: {res.stderr.strip()[:300]}",
                "The server's own download failed.",
                "Try again with --transfer upload to send the image from this computer.",
            )
        meter.finish()

    def stage_checksum(self) -> None:
        """Compare the server's sha256 of the tarball with the verified one."""
        want = self.plan.sha256
        streamed = self.streamed_sha
        got = streamed or self._remote_sha(self.remote_tarball)
        if want is None and self.mode == "remote":
            raise TransferError(
                "The image the server downloaded has no published sha256 to check it against.",
                "Nothing may boot that was not checked.",
                "Use --transfer upload: the image is then checked on this computer first.",
            )
        if want is None:
            self._log(
                "checksum", f"No checksum to compare against (server computed {got}).", level="warn"
            )
            return
        if got is None:
            if self.mode != "remote":
                self._log(
                    "checksum",
                    "The server has neither sha256sum nor openssl: the image was sent from the "
                    "verified copy on this computer over SSH, whose integrity checks protect it.",
                    level="warn",
                )
                return
            raise TransferError(
                "The server cannot compute a sha256 of the image.", "", "Install coreutils."
            )
        if got != want:
            self._run(sh.remove(self.remote_tarball), what="rm")
            raise TransferError(
                f"The image on the server has sha256 {got}, expected {want}.",
                "It was damaged on the way and must not be booted. It was deleted.",
                "Try the install again.",
            )
        how = (
            f" ({HASHED[self.server_hash]}, and its size matches)"
            if streamed and self.server_hash in HASHED
            else ""
        )
        self._log("checksum", f"sha256 matches on the server{how}: {got}")
        if self.mode == "remote" and not self.plan.bundle:
            self._check_remote_members()

    def _check_remote_members(self) -> None:
        """The tarball member check, on the server's copy that this computer never saw."""
        res = self._run(
            sh.list_tarball(self.remote_tarball),
            timeout=max(self.settings.command_timeout, 300),
            what="listing the image",
        )
        try:
            if not res.ok:
                raise TransferError(
                    f"The server cannot list the image: {res.stderr.strip()[:200]}",
                    "An image whose members cannot be checked is not unpacked.",
                    "Use --transfer upload.",
                )
            if res.stdout_dropped:
                # Only the tail was kept: members before it would go unchecked.
                raise IntegrityError(
                    f"The member list of {self.plan.file_name} is too long to check "
                    f"({res.stdout_dropped + len(res.stdout)} bytes).",
                    "The upstream tarball has a handful of members; this one does not look like "
                    "it, and a member that was not checked must not be unpacked. It was deleted.",
                    "Use an image from the nixos-images releases, or --transfer upload.",
                )
            check_tar_listing(self.plan.file_name, res.stdout)
        except WizardError:
            self._run(sh.remove(self.remote_tarball), what="rm")
            raise
        self._log("checksum", "The image's members have the upstream layout.")

    def stage_unpack(self) -> None:
        """Unpack into <staging>/kexec as the login user, setting aside a folder we did not make."""
        if self.plan.bundle:
            res = self._run(sh.make_executable(self.remote_tarball), what="chmod")
            if not res.ok:
                raise TransferError(
                    f"The kexec-bundle cannot be made executable: {res.stderr.strip()[:300]}",
                    "It runs as a program on the server.",
                    "Choose a staging folder you own (--staging-dir).",
                )
            return
        # A previous run of `run` (as root) leaves root-owned files in our kexec/ folder: a
        # login that is not root removes them as root first; root does both in one command.
        cmd = sh.unpack(self.staging, self.plan.file_name)
        privilege = self.session.privilege
        if privilege is not None and privilege.kind != PrivilegeKind.ROOT:
            self._run(
                sh.remove_own_unpack(self.staging),
                privileged=True,
                what="removing the previous unpack",
            )
        else:
            cmd = f"{sh.remove_own_unpack(self.staging)}; {cmd}"
        res = self._run(cmd, timeout=max(self.settings.command_timeout, 300), what="tar")
        if not res.ok:
            raise TransferError(
                f"Unpacking the image on the server failed: {res.stderr.strip()[:300]}",
                "The staging folder may be full, or the image is damaged.",
                "Free space on the server and try again.",
            )

    # -- run ------------------------------------------------------------------------------

    def stage_run(self) -> None:
        """Run ``kexec/run`` as root under setsid; require its success line."""
        if self.plan.bundle:
            self.stage_run_bundle()
            return
        # Like nixos-anywhere: its own session, waited for (else the output would be lost).
        cmd = sh.run_installer(
            self.staging, self.plan.kexec_extra_flags, setsid_wait=self.facts.setsid_wait
        )
        # The tail of what `run` says is enough to explain a failure; a flood is not kept.
        lines: deque[str] = deque(maxlen=KEPT_LINES)
        stderr: deque[str] = deque(maxlen=KEPT_LINES)
        said_success = False

        def on_line(stream: str, line: str) -> None:
            nonlocal said_success
            lines.append(line)
            said_success = said_success or SUCCESS_LINE in line
            if stream == "stderr":
                stderr.append(line)
            self.emit(OutputEvent("run", line, stream=stream))

        self.point_of_no_return = True  # `run` starts a detached kexec; cancel is too late now
        self.emit(
            LogEvent(
                "run", "Running kexec/run: cancelling is no longer safe.", safe_to_cancel=False
            )
        )
        try:
            res = self.session.run(
                cmd,
                privileged=True,
                timeout=self.settings.run_timeout,
                on_line=on_line,
                cancel=None,
                what="kexec/run",
            )
        except RemoteCommandError as exc:
            # The connection may drop because the kexec already happened: let the wait decide.
            if said_success:
                self._log("run", f"The connection closed after the success line ({exc.what}).")
                return
            raise
        out = "\n".join(lines)
        if res.ok and said_success:
            return
        self.point_of_no_return = False
        tail = _diagnosis(list(lines), list(stderr))
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

    def stage_run_bundle(self) -> None:
        """Start the kexec-bundle detached, as root, and follow its log until the server goes.

        A bundle unpacks itself and kexecs at once (or asks systemd to), so unlike ``run`` it
        never returns on success: its exit status in the log means it failed.
        """
        log = sh.bundle_log(self.staging)
        start = sh.start_bundle(self.staging, self.remote_tarball, setsid=self.facts.has("setsid"))
        self.point_of_no_return = True
        self.emit(
            LogEvent(
                "run",
                "Running the kexec-bundle: cancelling is no longer safe.",
                safe_to_cancel=False,
            )
        )
        self._run(start, privileged=True, what="starting the kexec-bundle")
        lines: deque[str] = deque(maxlen=KEPT_LINES)
        offset = 0
        deadline = time.monotonic() + self.settings.run_timeout
        while time.monotonic() < deadline:
            try:
                res = self.session.run(
                    sh.read_from(log, offset),
                    privileged=True,
                    timeout=3,
                    what="the bundle's log",
                )
            except WizardError:
                self._log("run", "The connection closed: the kexec is under way.")
                return
            offset += len(res.stdout.encode()) + res.stdout_dropped
            for line in res.stdout.splitlines():
                lines.append(line)
                if not line.startswith(f"{sh.BUNDLE_EXIT} "):
                    self.emit(OutputEvent("run", line))
            exits = (ln.split()[1] for ln in lines if ln.startswith(f"{sh.BUNDLE_EXIT} "))
            status = next(exits, None)
            if status == "0":
                self._log("run", "The bundle handed over to the new kernel (systemctl kexec).")
                return
            if status is not None:
                self.point_of_no_return = False
                raise KexecRefused(
                    f"The kexec-bundle failed (exit status {status}).",
                    "Its last output:\n" + _diagnosis(list(lines)[:-1], []),
                    "Read the output above; the server was not rebooted. A bundle needs kexec "
                    "support in the kernel and space in /tmp to unpack itself.",
                )
            if not self.session.active or self.cancel.wait(0.5):
                return
        raise NeverWentDown(
            f"The kexec-bundle still ran after {self.settings.run_timeout:g} s.",
            "It should unpack itself and reboot within a minute.",
            f"Look at {log} on the server; the old system is still running.",
        )

    # -- waiting --------------------------------------------------------------------------

    def stage_wait_down(self, old_boot: str) -> None:
        """Wait until the old system is gone, by fresh short attempts.

        Never on the old connection: after the kexec it is dead, and a command on it fails
        only at its own deadline (or when TCP gives up). A banner on a new TCP connection
        says in a second whether an SSH server still answers; as both systems have the same
        host key, a login's boot id tells them apart now and then. Through a jump host only
        the old connection can be asked.
        """
        target = self.session.target
        if target.jump is not None:
            self._wait_down_on_session(old_boot)
            return
        deadline = time.monotonic() + self.settings.down_timeout
        next_login = time.monotonic() + BOOT_ID_EVERY
        while time.monotonic() < deadline:
            if self.cancel.wait(self.settings.poll_interval):
                raise Cancelled("Stopped waiting; the kexec may still happen.")
            up, why = has_banner(target.host, target.port, timeout=DOWN_PROBE_TIMEOUT)
            if not up:
                self._log("down", f"The old system went down ({why}).")
                self.session.close()
                return
            if time.monotonic() >= next_login:
                boot = self._fresh_boot_id()
                next_login = time.monotonic() + BOOT_ID_EVERY
                if boot is not None and boot != old_boot:
                    self._log("down", "The server already rebooted.")
                    self.session.close()
                    return
        self._never_went_down()

    def _fresh_boot_id(self) -> str | None:
        """The boot id a new login as the old user reads (None: no answer, so no verdict)."""
        opts = ConnectOptions(
            timeout=5.0, expect_key=self.session.host_key_line, update_known_hosts=False
        )
        try:
            with connect(
                self.session.target, self.creds, self.known_hosts, opts, cancel=self.cancel
            ) as s:
                res = s.run(sh.BOOT_ID, timeout=3, cancel=self.cancel, what="liveness check")
                return res.stdout.strip()
        except WizardError:
            return None

    def _wait_down_on_session(self, old_boot: str) -> None:
        """Through a jump host: until the open connection stops answering."""
        deadline = time.monotonic() + self.settings.down_timeout
        while time.monotonic() < deadline:
            if self.cancel.wait(self.settings.poll_interval):
                raise Cancelled("Stopped waiting; the kexec may still happen.")
            if not self.session.active:
                self._log("down", "The old system went down.")
                return
            try:
                res = self.session.run(sh.BOOT_ID, timeout=3, what="liveness check")
            except WizardError:
                self._log("down", "The old system went down.")
                self.session.close()
                return
            if res.stdout.strip() and res.stdout.strip() != old_boot:
                self._log("down", "The server already rebooted.")
                return
        self._never_went_down()

    def _never_went_down(self) -> NoReturn:
        """The old system still answers: say so, with the tail of its kernel log."""
        dmesg = ""
        with contextlib.suppress(WizardError):
            r = self.session.run(
                "dmesg 2>&1 | tail -n 200", privileged=True, timeout=10, what="dmesg"
            )
            lines = r.stdout.strip().splitlines()
            telling = [ln for ln in lines[:-8] if NOTABLE.search(ln)][-8:]
            dmesg = "\n".join([*telling, *(["..."] if telling else []), *lines[-8:]])
        raise NeverWentDown(
            f"{self.session.target.host} did not go down within {self.settings.down_timeout:g} s "
            "after kexec/run reported success.",
            "The kexec did not start. `run` sends its later messages to the kernel log; "
            f"its tail:\n{dmesg or '(empty)'}",
            "Read the log above. A common cause is a kernel that cannot kexec this way: retry "
            "with --kexec-extra-flags -c. The old system is still running.",
        )

    def _ports(self) -> list[int]:
        ports = [self.plan.installer_port, self.session.target.port, 22]
        return list(dict.fromkeys(p for p in ports if p))

    def stage_wait_up(self) -> Session:
        """Poll with fresh short attempts until the installer answers and logs us in.

        Directly, a BannerPoll: one connection at a time, a new one each poll interval (or
        QUICK_RETRY while the ports refuse at once), each waiting BANNER_PATIENCE for its
        banner; the login goes on over the first to send one. Through a jump host, one login
        attempt per port and poll interval.
        """
        target = self.session.target
        deadline = time.monotonic() + self.settings.up_timeout
        w = _Waited()

        def failed(port: int, why: str) -> None:
            w.attempts += 1
            w.last = why
            self.emit(AttemptEvent("up", why, attempts=w.attempts, port=port))

        if target.jump is not None:
            while True:
                for port in self._ports():
                    if self.cancel.cancelled:
                        raise Cancelled("Stopped waiting; the installer may still come up.")
                    t0 = time.monotonic()
                    w.attempts += 1
                    sess = self._login(port, None, w)
                    if sess is not None:
                        return sess
                    self.emit(AttemptEvent("up", w.last, attempts=w.attempts, port=port))
                    if time.monotonic() >= deadline:
                        raise self._never_came_back(w.attempts, w.last, w.refused_auth)
                    rest = self.settings.poll_interval - (time.monotonic() - t0)
                    if rest > 0 and self.cancel.wait(rest):
                        raise Cancelled("Stopped waiting; the installer may still come up.")
        poll = BannerPoll(
            target.host, self._ports(), pace=self.settings.poll_interval,
            patience=BANNER_PATIENCE, quick_retry=QUICK_RETRY, quick_fail=QUICK_FAIL,
        )  # fmt: skip
        while True:
            got = poll.wait(deadline, self.cancel, failed)
            if self.cancel.cancelled:
                raise Cancelled("Stopped waiting; the installer may still come up.")
            if got is None:
                raise self._never_came_back(w.attempts, w.last, w.refused_auth)
            sock, port = got
            w.attempts += 1
            sess = self._login(port, sock, w)
            if sess is not None:
                return sess
            self.emit(AttemptEvent("up", w.last, attempts=w.attempts, port=port))

    def _login(self, port: int, sock: socket.socket | None, w: _Waited) -> Session | None:
        """Log in to what answers on ``port``: the installer, or (our key refused) the old
        system come back; None, with ``w`` updated, when neither."""
        try:
            sess = self._connect_installer(port, sock)
        except HostKeyChanged as exc:
            raise InstallerKeyChanged(
                f"Something answered at {self.session.target.host} port {port} with ANOTHER "
                f"host key ({exc.fingerprint}; expected {exc.known}).",
                "The installer keeps the old host keys, so this is either an installer that "
                "lost them or someone intercepting the connection. Nothing was sent to it.",
                "Check on the provider's console what runs there before trusting it.",
            ) from exc
        except AuthError as exc:
            w.refused_auth = True
            w.last = f"the SSH server refused our key ({exc.what})"
            return self._try_old_login(port)
        except (SSHConnectError, RemoteCommandError) as exc:
            w.last = exc.what
            return None
        self._log("up", f"The server answers on port {port} after {w.attempts} attempts.",
                  attempts=w.attempts)  # fmt: skip
        return sess

    def accept_host_key(self, fingerprint: str) -> None:
        """The user accepted this (unverified) host key of a bundle's new system."""
        self.accepted_keys.add(fingerprint)

    def _connect_installer(self, port: int, sock: socket.socket | None = None) -> Session:
        target = replace(self.session.target, port=port, user="root")
        opts = ConnectOptions(
            timeout=5.0,
            expect_key=self.session.host_key_line,
            update_known_hosts=False,
            # A bundle's system has new host keys: one passes only when the user accepted
            # exactly it (NewSystemHostKey asks); nothing is sent to it before.
            replaced_system=self.plan.bundle,
            trusted=tuple((target.host, port, fp) for fp in sorted(self.accepted_keys)),
        )
        assert self.installer_creds is not None
        return connect(
            target, self.installer_creds, self.known_hosts, opts, cancel=self.cancel, sock=sock
        )

    def _try_old_login(self, port: int) -> Session | None:
        """Our installer key was refused: see whether the old system came back."""
        target = replace(self.session.target, port=port)
        opts = ConnectOptions(
            timeout=5.0, expect_key=self.session.host_key_line, update_known_hosts=False
        )
        try:
            return connect(target, self.creds, self.known_hosts, opts, cancel=self.cancel)
        except WizardError:
            return None

    def _never_came_back(self, attempts: int, last: str, refused_auth: bool) -> NeverCameBack:
        addrs = ", ".join(self.preview.expected_addresses) or "unknown"
        moved = " Its address came from DHCP and may have changed." if self.preview.may_move else ""
        net = "\n".join(f"- {s}" for s in (*self.preview.keeps, *self.preview.loses))
        hint = (
            "It answers SSH but refuses our key: the key may not have been carried."
            if refused_auth
            else "Nothing answered SSH."
        )
        return NeverCameBack(
            f"{self.session.target.host} did not come back within {self.settings.up_timeout:g} s "
            f"({attempts} attempts on ports {', '.join(map(str, self._ports()))}; last: {last}).",
            f"{hint} The installer should be at {addrs}.{moved} Expected network:\n{net}",
            "Look at the server's console in your provider's panel. If the address changed, "
            "reconnect to the new one; a power cycle brings the old system back.",
        )

    # -- verify ---------------------------------------------------------------------------

    def stage_verify(self, session: Session, old_boot: str) -> InstallerInfo:
        """Prove it is the installer: VARIANT_ID=installer, a new boot_id, the same host key."""
        try:
            res = session.run(
                "cat /etc/os-release; echo @@; cat /proc/sys/kernel/random/boot_id; echo @@; "
                "cat /proc/sys/kernel/hostname",
                timeout=self.settings.command_timeout,
                what="the identity check",
            )
        finally:
            session.close()
        parts = res.stdout.split("@@\n")
        osr = parse_os_release(parts[0].splitlines()) if parts else {}
        boot = parts[1].strip() if len(parts) > 1 else ""
        hostname = parts[2].strip() if len(parts) > 2 else ""
        # Bundles predate VARIANT_ID=installer: for them NixOS and a new boot are the proof.
        variant_ok = osr.get("VARIANT_ID") == "installer" or self.plan.bundle
        installer = osr.get("ID") == "nixos" and variant_ok
        if not installer or boot == old_boot:
            same = boot == old_boot
            raise OldSystemBack(
                f"{session.target.host} answers, but as {osr.get('PRETTY_NAME', 'the old system')} "
                + (
                    "(same boot: it never rebooted)."
                    if same
                    else "(it rebooted into the old system)."
                ),
                "The kexec did not take: the old kernel is running.",
                "Check the kernel log (dmesg) on the server; retry with --kexec-extra-flags -c, "
                "and make sure the server has at least 2 GiB of RAM.",
            )
        verified = key_line(session.host_key) == self.session.host_key_line
        info = InstallerInfo(
            host=session.target.host,
            port=session.target.port,
            user="root",
            host_key=key_line(session.host_key),
            fingerprint=str(session.host_key.fingerprint),
            boot_id=boot,
            hostname=hostname,
            os_release={
                k: v
                for k, v in osr.items()
                if k in ("ID", "VARIANT_ID", "VERSION_ID", "PRETTY_NAME", "BUILD_ID")
            },
            identity_file=self.identity_file,
            host_key_verified=verified,
            key_left_in=self.added_key[0] if self.added_key else "",
            key_comment=self.added_key[1].split()[-1] if self.added_key else "",
        )
        # OpenSSH (and `reconnect`) must trust it too, also when it answered on another port.
        if not self.known_hosts.knows(info.host, info.port, info.host_key):
            if verified:
                self.known_hosts.add(info.host, info.port, session.host_key)
            else:
                old = self.known_hosts.replace(
                    info.host, info.port, session.host_key, "a kexec-bundle booted new host keys"
                )
                kept = (
                    f" The old entry stays in {self.known_hosts.app_file} as a comment."
                    if old
                    else ""
                )
                self._log(
                    "verify",
                    f"Trusting the new host key {info.fingerprint} because you accepted it; it "
                    f"is not verified (a kexec-bundle cannot keep the old keys).{kept}",
                    level="warn",
                )
        if verified:
            self._log(
                "verify",
                f"Verified: NixOS installer at root@{info.host} port {info.port}, "
                f"host key {info.fingerprint} (the same as before the kexec)",
            )
        else:
            self._log(
                "verify",
                f"NixOS ({osr.get('PRETTY_NAME', 'kexec-bundle')}) at root@{info.host} port "
                f"{info.port}: a new boot, host key {info.fingerprint} accepted by you, not "
                "verified.",
                level="warn",
            )
        return info

    # -- cleanup before the point of no return --------------------------------------------

    def cleanup(self) -> None:
        """Leave the server as it was: remove what we put there, and the key we added."""
        steps = []
        if self.staging_checked:
            clean = sh.clean_staging(self.staging, self.remote_tarball)
            steps.append((clean, self.session.privilege is not None))
        else:
            # Not checked (yet): only an empty folder the mkdir made goes, as the login user.
            steps.append((sh.remove_empty_folder(self.staging), False))
        if self.added_key is not None:
            steps.append((sh.remove_line(*self.added_key), False))
        try:
            for cmd, privileged in steps:
                # `run` leaves root-owned files in kexec/: remove them as root.
                res = self.session.run(cmd, privileged=privileged, timeout=30, what="cleanup")
                if sh.KEY_KEPT in res.stdout:
                    f, _line = self.added_key or ("", "")
                    self._log(
                        "cleanup",
                        f"The app's key line could not be removed from {f} (the server's disk "
                        "may be full); the file was left as it was, with your keys in it.",
                        level="warn",
                    )
                    return
        except WizardError as exc:
            self._log("cleanup", f"Could not clean up on the server: {exc.what}", level="warn")
            return
        extra = " and removed the app's key" if self.added_key else ""
        self._log("cleanup", f"Removed the image from the server{extra}; it is as it was.")


NOTABLE = re.compile(r"kexec|lockdown|secure boot|\bIMA\b|not permitted|denied|error|failed", re.I)


def _diagnosis(lines: list[str], stderr: list[str], keep: int = 8) -> str:
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


HASHED = {
    ServerHash.WHILE_RECEIVING: "hashed as it arrived",
    ServerHash.AFTER_STORING: "hashed once stored, in the upload's own command",
}


def server_hash_for(facts: Facts) -> ServerHash:
    """How the server should hash an upload: beside the transfer where it has CPUs to spare
    (or says nothing of them), after storing it on one CPU, where the pipe beside the
    transfer costs more than a second read from the page cache (2.9 vs 2.4 s for 22 MB on
    the test bed's one emulated CPU); not at all without a tool for it."""
    if not (facts.has("openssl") or facts.has("sha256sum")):
        return ServerHash.NONE
    return ServerHash.AFTER_STORING if facts.cpus == 1 else ServerHash.WHILE_RECEIVING


def remote_sha256(
    session: Session, path: str, *, timeout: float, cancel: CancelToken | None = None
) -> str | None:
    """The sha256 of a file on the server, or None if it is missing or nothing can hash it.

    OpenSSL uses the CPU's SHA instructions where coreutils' sha256sum often does not (about
    7x faster on a recent x86 server), so it goes first; sha256sum is the fallback.
    """
    res = session.run(
        sh.sha256(path),
        timeout=timeout,
        cancel=cancel,
        what="sha256 of the image",
    )
    return sh.parse_sha256(res.stdout)

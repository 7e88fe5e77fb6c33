"""Errors the engine raises: each says what happened, why it matters and what to do."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes, one per failure class (documented in the README)."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    CONFIG = 3
    DOWNLOAD = 10
    INTEGRITY = 11
    SSH_CONNECT = 20
    AUTH = 21
    HOST_KEY_UNKNOWN = 22
    HOST_KEY_CHANGED = 23
    PRIVILEGE = 24
    REMOTE_COMMAND = 25
    LOGIN_RESTRICTED = 26
    PREFLIGHT = 30
    TRANSFER = 31
    KEXEC_REFUSED = 40
    NEVER_WENT_DOWN = 41
    OLD_SYSTEM_BACK = 42
    NEVER_CAME_BACK = 43
    INSTALLER_KEY_CHANGED = 44
    DEAD_MAN_FIRED = 45
    DISK = 50
    CANCELLED = 130


class WizardError(Exception):
    """Base of every expected failure: a message in three parts and an exit code."""

    exit_code: ExitCode = ExitCode.INTERNAL
    kind = "error"

    def __init__(self, what: str, why: str = "", fix: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.why = why
        self.fix = fix

    def explain(self) -> str:
        """The whole message as plain sentences for a person."""
        parts = [self.what]
        if self.why:
            parts.append(self.why)
        if self.fix:
            parts.append(f"What to do: {self.fix}")
        return "\n".join(parts)

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready form for the machine-readable output."""
        return {
            "error": self.kind,
            "what": self.what,
            "why": self.why,
            "fix": self.fix,
            "exit_code": int(self.exit_code),
        }


class ConfigError(WizardError):
    """A setting, flag or file of ours is wrong."""

    exit_code = ExitCode.CONFIG
    kind = "config"


class UsageError(WizardError):
    """The command line asks for something impossible."""

    exit_code = ExitCode.USAGE
    kind = "usage"


class DownloadError(WizardError):
    """Fetching the catalog or an image failed."""

    exit_code = ExitCode.DOWNLOAD
    kind = "download"


class IntegrityError(WizardError):
    """A file is not what it claims to be: wrong checksum, size or tarball layout."""

    exit_code = ExitCode.INTEGRITY
    kind = "integrity"


class SSHConnectError(WizardError):
    """The server could not be reached or the SSH handshake failed."""

    exit_code = ExitCode.SSH_CONNECT
    kind = "ssh-connect"


class AuthError(WizardError):
    """The server refused every credential we offered."""

    exit_code = ExitCode.AUTH
    kind = "auth"


class HostKeyUnknown(WizardError):
    """The server's host key is not known yet: the face must ask the user."""

    exit_code = ExitCode.HOST_KEY_UNKNOWN
    kind = "host-key-unknown"

    def __init__(self, host: str, port: int, key_type: str, fingerprint: str) -> None:
        super().__init__(
            f"The authenticity of {host} port {port} can't be established: "
            f"its {key_type} key is {fingerprint}.",
            "This is the first connection to this server (or its name changed). "
            "Trusting a wrong key lets someone in the middle read your credentials.",
            "Compare the fingerprint with the one your provider shows (or run "
            "`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the console), then accept it.",
        )
        self.host = host
        self.port = port
        self.key_type = key_type
        self.fingerprint = fingerprint

    def as_dict(self) -> dict[str, object]:
        """Add the key details so a face can ask about them."""
        return {
            **super().as_dict(),
            "host": self.host,
            "port": self.port,
            "key_type": self.key_type,
            "fingerprint": self.fingerprint,
        }


class HostKeyChanged(WizardError):
    """The server presented a different key from the one we know: a hard stop."""

    exit_code = ExitCode.HOST_KEY_CHANGED
    kind = "host-key-changed"

    def __init__(self, host: str, port: int, key_type: str, fingerprint: str, known: str) -> None:
        super().__init__(
            f"WARNING: the host key of {host} port {port} has CHANGED. It now presents "
            f"{key_type} {fingerprint}; we know it as {known}.",
            "Either the server was reinstalled, or someone is intercepting the connection. "
            "Nothing was sent after the handshake.",
            "Confirm with your provider or on the server's console that the key really "
            "changed; then remove the old entry from the app's known_hosts file and try again.",
        )
        self.host = host
        self.port = port
        self.key_type = key_type
        self.fingerprint = fingerprint
        self.known = known


class HostKeyOtherType(HostKeyUnknown):
    """Keys of other types are known for this host, not the one it presents: ask, never assume."""

    def __init__(
        self, host: str, port: int, key_type: str, fingerprint: str, known: list[tuple[str, str]]
    ) -> None:
        super().__init__(host, port, key_type, fingerprint)
        listed = "; ".join(f"{t} {fp}" for t, fp in known)
        self.what = (
            f"{host} port {port} presents a {key_type} key ({fingerprint}), but only keys of "
            f"other types are known for it: {listed}."
        )
        self.why = (
            "A server that changed its keys, or someone in the middle offering a key of another "
            "type, looks exactly like this. --accept-new-host-key does not apply: it is for hosts "
            "with no known key."
        )
        self.fix = (
            "Compare the fingerprint with the server's console (`ssh-keygen -lf "
            "/etc/ssh/ssh_host_*_key.pub`), then accept exactly that fingerprint."
        )
        self.known_keys = known
        self.args = (self.what,)


class NewSystemHostKey(HostKeyUnknown):
    """A system that cannot keep the old host keys (a kexec-bundle) presents a new one."""

    def __init__(self, host: str, port: int, key_type: str, fingerprint: str, old: str) -> None:
        super().__init__(host, port, key_type, fingerprint)
        self.what = (
            f"{host} port {port} now presents a new {key_type} host key {fingerprint} "
            f"(before: {old}). It is NOT verified."
        )
        self.why = (
            "A kexec-bundle cannot keep the old host keys, so nothing proves that the new key "
            "belongs to the system it booted and not to someone in the middle. Nothing was sent "
            "to it, and the old key is still the one trusted for this address."
        )
        self.fix = (
            "Compare the fingerprint with the server's console (`ssh-keygen -lf "
            "/etc/ssh/ssh_host_ed25519_key.pub` there); accept it only if it matches (at the "
            "prompt, or with --accept-host-key FINGERPRINT)."
        )
        self.old = old
        self.args = (self.what,)


class HostKeyRevoked(WizardError):
    """The server presented a key marked @revoked in known_hosts: a hard stop."""

    exit_code = ExitCode.HOST_KEY_CHANGED
    kind = "host-key-revoked"

    def __init__(self, host: str, port: int, key_type: str, fingerprint: str) -> None:
        super().__init__(
            f"{host} port {port} presents the {key_type} key {fingerprint}, which your "
            "known_hosts marks @revoked.",
            "A revoked key must never be trusted again (it may be stolen). Nothing was sent.",
            "Ask the server's owner which key it should have now; do not connect until then.",
        )
        self.fingerprint = fingerprint


class KnownHostsUnreadable(WizardError):
    """A known_hosts line for this host cannot be read, so the host cannot be called new."""

    exit_code = ExitCode.HOST_KEY_CHANGED
    kind = "known-hosts-unreadable"

    def __init__(self, host: str, port: int, where: list[str]) -> None:
        super().__init__(
            f"A known_hosts entry for {host} port {port} cannot be read ({', '.join(where)}).",
            "It may hold the key this server had before; without reading it the app cannot tell "
            "a first connection from a changed key, so it sends nothing.",
            "Fix or delete that line (ssh-keygen -R can remove a host's entries), then try again.",
        )
        self.where = where


class PrivilegeError(WizardError):
    """We are not root and cannot become root."""

    exit_code = ExitCode.PRIVILEGE
    kind = "privilege"


class RemoteCommandError(WizardError):
    """A command on the server failed or ran past its deadline."""

    exit_code = ExitCode.REMOTE_COMMAND
    kind = "remote-command"


class LoginRestricted(WizardError):
    """The login works but runs something else than our commands (forced command, nologin)."""

    exit_code = ExitCode.LOGIN_RESTRICTED
    kind = "login-restricted"

    def __init__(self, what: str, why: str, fix: str, suggested_user: str | None) -> None:
        super().__init__(what, why, fix)
        self.suggested_user = suggested_user

    def as_dict(self) -> dict[str, object]:
        """Add the user the server asks for, so a face can offer it."""
        return {**super().as_dict(), "suggested_user": self.suggested_user}


class PreflightStop(WizardError):
    """A preflight check found something that makes kexec fail."""

    exit_code = ExitCode.PREFLIGHT
    kind = "preflight"


class TransferError(WizardError):
    """The image could not be placed on the server intact."""

    exit_code = ExitCode.TRANSFER
    kind = "transfer"


class Cancelled(WizardError):
    """The user cancelled."""

    exit_code = ExitCode.CANCELLED
    kind = "cancelled"

    def __init__(self, what: str = "Cancelled.", why: str = "", fix: str = "") -> None:
        super().__init__(what, why, fix)


# ---------------------------------------------------------------------------------------------
# The install's failures after the point of no return: each a distinct outcome and exit code


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


class DeadManFired(WizardError):
    """The installer was not reached in time and the dead-man switch restarted the server
    into its old system, which answers now."""

    exit_code = ExitCode.DEAD_MAN_FIRED
    kind = "dead-man-fired"


class NeverCameBack(WizardError):
    """The server went down and nothing answered before the deadline."""

    exit_code = ExitCode.NEVER_CAME_BACK
    kind = "never-came-back"


class InstallerKeyChanged(WizardError):
    """Something answered after the kexec with another host key: stop, do not log in."""

    exit_code = ExitCode.INSTALLER_KEY_CHANGED
    kind = "installer-key-changed"


class DiskError(WizardError):
    """Preparing the chosen disk failed: the installer still runs, nothing was rebooted, and
    the message says what state the disk is in."""

    exit_code = ExitCode.DISK
    kind = "disk"

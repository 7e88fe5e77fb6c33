"""How to log in: credentials, privilege, key files, password and keyboard-interactive."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from app.core.errors import (
    AuthError,
    SSHConnectError,
)
from app.core.events import CancelToken
from app.core.kinds import AuthMethod, PrivilegeKind
from app.core.lazy import LazyModule

if TYPE_CHECKING:
    import paramiko
else:
    paramiko = LazyModule("paramiko")
from app.core.ssh.target import Target

DEFAULT_KEY_FILES = ("id_ed25519", "id_ecdsa", "id_rsa")

# ---------------------------------------------------------------------------------------------
# Credentials and privilege


@dataclass
class Credentials:
    """How to log in. Secrets live only here, in memory, never in a profile or a log."""

    method: AuthMethod = AuthMethod.AUTO
    password: str | None = None
    passphrases: dict[str, str] = field(default_factory=dict)
    sudo_password: str | None = None
    use_agent: bool = True
    # Keys the app itself holds (e.g. its generated per-profile key), tried first.
    extra_keys: tuple[paramiko.PKey, ...] = ()
    # Passwords for jump hosts, by their label (user@host[:port]); never the target's.
    jump_passwords: dict[str, str] = field(default_factory=dict)

    def for_jump(self, label: str) -> Credentials:
        """A jump hop's login: agent and key files as for any login, its own password only.

        Neither the target's password nor the app's installer key is offered to a hop.
        """
        return Credentials(
            method=AuthMethod.AUTO,
            password=self.jump_passwords.get(label),
            passphrases=self.passphrases,
            use_agent=self.use_agent,
            jump_passwords=self.jump_passwords,
        )

    def __repr__(self) -> str:
        return f"Credentials(method={self.method!r}, password={'***' if self.password else None})"


class PassphraseRequired(AuthError):
    """A key file is encrypted and no passphrase was given: the face must ask."""

    kind = "passphrase-required"

    def __init__(self, path: str, wrong: bool = False) -> None:
        super().__init__(
            f"The key {path} "
            + ("did not accept that passphrase." if wrong else "needs a passphrase."),
            "The key file is encrypted.",
            "Enter the key's passphrase, or load the key into your ssh-agent.",
        )
        self.path = path
        self.wrong = wrong


class PasswordRequired(AuthError):
    """The server takes a password and none was given: the face must ask."""

    kind = "password-required"

    def __init__(self, label: str) -> None:
        self.label = label
        super().__init__(
            f"{label} asks for a password.",
            "No key was accepted, and no password was given.",
            "Enter the password, or add your public key to the server's authorized_keys.",
        )


@dataclass(frozen=True)
class Privilege:
    """How commands become root on the server."""

    kind: PrivilegeKind

    def wrap(self, command: str, prompt: str = "") -> str:
        """``command`` run as root through this privilege (``prompt``: what sudo prints when
        it wants the password; none where the password is typed ahead into its input)."""
        inner = shlex.quote(command)
        if self.kind == PrivilegeKind.ROOT:
            return command
        if self.kind == PrivilegeKind.SUDO:
            return f"sudo -n -- sh -c {inner}"
        if self.kind == PrivilegeKind.SUDO_PASSWORD:
            # -k: always read the password, so it never lands in the command's stdin.
            return f"sudo -k -S -p {shlex.quote(prompt)} -- sh -c {inner}"
        if self.kind == PrivilegeKind.DOAS:
            return f"doas -n -- sh -c {inner}"
        raise ValueError(self.kind)

    @property
    def description(self) -> str:
        """In words, for the checklist."""
        return {
            PrivilegeKind.ROOT: "logged in as root",
            PrivilegeKind.SUDO: "sudo without a password",
            PrivilegeKind.SUDO_PASSWORD: "sudo with your password",
            PrivilegeKind.DOAS: "doas without a password",
        }[self.kind]


def load_key_file(path: str, passphrase: str | None) -> paramiko.PKey:
    """Load a private key of any supported type; PassphraseRequired when encrypted."""
    try:
        # paramiko hands the password to cryptography, which wants bytes.
        secret = passphrase.encode() if passphrase is not None else None
        return paramiko.PKey.from_path(path, password=secret)  # type: ignore[arg-type]
    except paramiko.PasswordRequiredException as exc:
        raise PassphraseRequired(path) from exc
    except TypeError as exc:
        # cryptography: "Key is password-protected, but password was not provided."
        if "password" in str(exc).lower():
            raise PassphraseRequired(path) from exc
        raise _unreadable_key(path, exc) from exc
    except (ValueError, paramiko.SSHException) as exc:
        if passphrase is not None:
            raise PassphraseRequired(path, wrong=True) from exc
        raise _unreadable_key(path, exc) from exc
    except OSError as exc:
        raise AuthError(
            f"The key file {path} cannot be read ({exc.strerror or exc}).",
            "Without it this login cannot use that key.",
            "Check the path and the file's permissions.",
        ) from exc


def _unreadable_key(path: str, exc: Exception) -> AuthError:
    return AuthError(
        f"The key file {path} cannot be read: {exc}.",
        "It is not a private key this app understands.",
        "Choose the private key (not the .pub file), in OpenSSH or PEM format.",
    )


def authenticate(
    t: paramiko.Transport, target: Target, creds: Credentials, cancel: CancelToken | None
) -> tuple[paramiko.PKey | None, str]:
    user = target.user
    allowed: list[str] = []

    def try_key(k: paramiko.PKey) -> bool:
        nonlocal allowed
        if cancel is not None:
            cancel.check()
        try:
            t.auth_publickey(user, k)
            return True
        except paramiko.BadAuthenticationType as exc:
            allowed = list(exc.allowed_types)
            return False
        except paramiko.AuthenticationException:
            return False
        except paramiko.SSHException as exc:
            raise SSHConnectError(
                f"{target.label} closed the connection during login.",
                f"({exc})",
                "The server may limit login attempts (MaxAuthTries); load fewer keys in your "
                "agent or name the key with -i.",
            ) from exc

    method = creds.method
    encrypted: str | None = None
    if method in ("auto", "key", "agent"):
        for k in creds.extra_keys:
            if try_key(k):
                return k, "key"
    if method in ("auto", "agent") and creds.use_agent:
        agent = paramiko.Agent()
        try:
            for k in agent.get_keys():
                if try_key(k):
                    return k, "agent"
        finally:
            agent.close()
    if method in ("auto", "key"):
        files = list(target.identity_files)
        explicit = bool(files)
        if not files:
            ssh_dir = Path.home() / ".ssh"
            files = [str(ssh_dir / n) for n in DEFAULT_KEY_FILES if (ssh_dir / n).is_file()]
        for path in files:
            try:
                k = load_key_file(path, creds.passphrases.get(path))
            except PassphraseRequired as exc:
                if exc.wrong or method == "key" or explicit:
                    raise
                encrypted = encrypted or path
                continue
            except AuthError:
                if explicit:
                    raise
                continue
            if try_key(k):
                return k, "key"
    if method in ("auto", "password"):
        if creds.password is not None:
            try:
                t.auth_password(user, creds.password)
                return None, "password"
            except paramiko.BadAuthenticationType as exc:
                allowed = list(exc.allowed_types)
                if "keyboard-interactive" in allowed and _kbd_interactive(t, user, creds.password):
                    return None, "password"
            except paramiko.AuthenticationException:
                pass
            raise AuthError(
                f"{target.label} refused the password.",
                "The password is wrong, or password login is disabled for this user.",
                "Check the password (and the user name), or log in with a key.",
            )
        if method == AuthMethod.PASSWORD or (
            method == AuthMethod.AUTO and not allowed and encrypted is None
        ):
            raise PasswordRequired(target.label)
    if encrypted is not None:
        raise PassphraseRequired(encrypted)
    if "password" in allowed or "keyboard-interactive" in allowed:
        raise PasswordRequired(target.label)
    raise AuthError(
        f"{target.label} accepted none of the keys offered.",
        "Your public key is not in the server's authorized_keys for this user.",
        "Add your key with ssh-copy-id, choose another key file, or log in with a password.",
    )


def _kbd_interactive(t: paramiko.Transport, user: str, password: str) -> bool:
    def handler(_title: str, _instr: str, prompts: list[tuple[str, bool]]) -> list[str]:
        return [password for _ in prompts]

    try:
        t.auth_interactive(user, handler)
        return True
    except paramiko.AuthenticationException:
        return False

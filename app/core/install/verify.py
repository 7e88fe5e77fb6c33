"""The verify stage: prove what answered is the installer; trust its host key for OpenSSH."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from app.core import remote_sh as sh
from app.core.errors import OldSystemBack, RemoteCommandError
from app.core.events import CancelToken
from app.core.install.deadman import came_back
from app.core.install.place import login_noise
from app.core.install.state import Step
from app.core.probe import parse_os_release
from app.core.result import InstallerInfo
from app.core.ssh import Session, key_line

KEPT_OS_RELEASE = ("ID", "VARIANT_ID", "VERSION_ID", "PRETTY_NAME", "BUILD_ID")
BOOT_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class Identity:
    """Who answers: its os-release, boot id ("" when unreadable) and hostname."""

    os_release: dict[str, str]
    boot_id: str
    hostname: str

    @property
    def name(self) -> str:
        """The system's name for a message."""
        return self.os_release.get("PRETTY_NAME", "the old system")


def read_boot_id(session: Session, timeout: float, cancel: CancelToken | None = None) -> str | None:
    """The boot id of what ``session`` is logged in to, read only between its own frame
    lines (a login that prints a welcome is not a new boot); None when it cannot be read."""
    token = secrets.token_hex(8)
    res = session.run(
        sh.framed(sh.BOOT_ID, token), timeout=timeout, cancel=cancel, what="liveness check"
    )
    own = sh.unframe(res.stdout, token)
    boot = (own or "").strip()
    return boot if res.ok and BOOT_ID_RE.fullmatch(boot) else None


def read_identity(
    session: Session, timeout: float, cancel: CancelToken | None = None
) -> tuple[Identity | None, str]:
    """Who ``session`` is logged in to, read only between its own frame lines, and all the
    command printed; None when the frame is not whole (the login prints text of its own, or
    runs something else)."""
    token = secrets.token_hex(8)
    res = session.run(
        sh.framed(sh.IDENTITY, token), timeout=timeout, cancel=cancel, what="the identity check"
    )
    own = sh.unframe(res.stdout, token)
    if own is None:
        return None, res.stdout
    parts = own.split("@@\n")
    boot = parts[1].strip() if len(parts) > 1 else ""
    ident = Identity(
        os_release=parse_os_release(parts[0].splitlines()),
        boot_id=boot if BOOT_ID_RE.fullmatch(boot) else "",
        hostname=parts[2].strip() if len(parts) > 2 else "",
    )
    return ident, res.stdout


def old_system_back(host: str, ident: Identity, same: bool, waited: float = 0) -> OldSystemBack:
    """The kexec did not take: the old system (or a new boot of it) answers."""
    how = "(the same boot: it never rebooted)" if same else "(it rebooted into the old system)"
    still = f", still {waited:g} s after the wait for the installer began" if waited else ""
    return OldSystemBack(
        f"{host} answers, but as {ident.name} {how}{still}.",
        "The kexec did not take: the old kernel is running.",
        "Check the kernel log (dmesg) on the server; retry with --kexec-extra-flags -c, "
        "and make sure the server has at least 2 GiB of RAM.",
    )


def verify_installer(step: Step, session: Session, old_boot: str) -> InstallerInfo:
    """Prove it is the installer: VARIANT_ID=installer, a new boot_id, the same host key
    (``session`` stays open: the caller closes it)."""
    setup, state = step.setup, step.state
    ident, said = read_identity(session, setup.settings.command_timeout, step.cancel)
    if ident is None:
        noise = login_noise("the identity check", said)
        raise RemoteCommandError(noise.what, noise.why, noise.fix)
    osr, boot, hostname = ident.os_release, ident.boot_id, ident.hostname
    # Bundles predate VARIANT_ID=installer: for them NixOS and a new boot are the proof.
    variant_ok = osr.get("VARIANT_ID") == "installer" or setup.plan.bundle
    installer = osr.get("ID") == "nixos" and variant_ok
    if not installer and boot and boot != old_boot and state.dead_man_minutes is not None:
        raise came_back(step, ident.name)
    if not installer or boot == old_boot:
        raise old_system_back(session.target.host, ident, same=boot == old_boot)
    verified = key_line(session.host_key) == setup.session.host_key_line
    added = state.added_key
    info = InstallerInfo(
        host=session.target.host,
        port=session.target.port,
        user="root",
        host_key=key_line(session.host_key),
        fingerprint=str(session.host_key.fingerprint),
        boot_id=boot,
        hostname=hostname,
        os_release={k: v for k, v in osr.items() if k in KEPT_OS_RELEASE},
        identity_file=state.identity_file,
        host_key_verified=verified,
        key_left_in=added[0] if added else "",
        key_comment=added[1].split()[-1] if added else "",
    )
    known_hosts = setup.known_hosts
    # OpenSSH (and `reconnect`) must trust it too, also when it answered on another port.
    if not known_hosts.knows(info.host, info.port, info.host_key):
        if verified:
            known_hosts.add(info.host, info.port, session.host_key)
        else:
            old = known_hosts.replace(
                info.host, info.port, session.host_key, "a kexec-bundle booted new host keys"
            )
            kept = f" The old entry stays in {known_hosts.app_file} as a comment." if old else ""
            step.log(
                "verify",
                f"Trusting the new host key {info.fingerprint} because you accepted it; it "
                f"is not verified (a kexec-bundle cannot keep the old keys).{kept}",
                level="warn",
            )
    if verified:
        step.log(
            "verify",
            f"Verified: NixOS installer at root@{info.host} port {info.port}, "
            f"host key {info.fingerprint} (the same as before the kexec)",
        )
    else:
        step.log(
            "verify",
            f"NixOS ({osr.get('PRETTY_NAME', 'kexec-bundle')}) at root@{info.host} port "
            f"{info.port}: a new boot, host key {info.fingerprint} accepted by you, not "
            "verified.",
            level="warn",
        )
    return info

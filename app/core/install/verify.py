"""The verify stage: prove what answered is the installer; trust its host key for OpenSSH."""

from __future__ import annotations

from app.core import remote_sh as sh
from app.core.errors import OldSystemBack
from app.core.install.state import Step
from app.core.probe import parse_os_release
from app.core.result import InstallerInfo
from app.core.ssh import Session, key_line

KEPT_OS_RELEASE = ("ID", "VARIANT_ID", "VERSION_ID", "PRETTY_NAME", "BUILD_ID")


def verify_installer(step: Step, session: Session, old_boot: str) -> InstallerInfo:
    """Prove it is the installer: VARIANT_ID=installer, a new boot_id, the same host key."""
    setup, state = step.setup, step.state
    try:
        res = session.run(
            sh.IDENTITY, timeout=setup.settings.command_timeout, what="the identity check"
        )
    finally:
        session.close()
    parts = res.stdout.split("@@\n")
    osr = parse_os_release(parts[0].splitlines()) if parts else {}
    boot = parts[1].strip() if len(parts) > 1 else ""
    hostname = parts[2].strip() if len(parts) > 2 else ""
    # Bundles predate VARIANT_ID=installer: for them NixOS and a new boot are the proof.
    variant_ok = osr.get("VARIANT_ID") == "installer" or setup.plan.bundle
    installer = osr.get("ID") == "nixos" and variant_ok
    if not installer or boot == old_boot:
        same = boot == old_boot
        raise OldSystemBack(
            f"{session.target.host} answers, but as {osr.get('PRETTY_NAME', 'the old system')} "
            + ("(same boot: it never rebooted)." if same else "(it rebooted into the old system)."),
            "The kexec did not take: the old kernel is running.",
            "Check the kernel log (dmesg) on the server; retry with --kexec-extra-flags -c, "
            "and make sure the server has at least 2 GiB of RAM.",
        )
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

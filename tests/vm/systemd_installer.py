"""A stand-in installer with systemd: the trixie origin booted again by kexec, as the installer."""

# The dead-man switch needs what only a real systemd does: read units from the kernel command
# line, start a timer, reboot at its deadline. Debian trixie's systemd 257 does all of it (NixOS
# 24.11 and later have systemd 256 or newer). So this stand-in kexecs the trixie origin's own
# kernel and initramfs with the root on its own disk; the command line (upstream's `run` format,
# tests/support/kexec-run-nix.sh) makes that boot an installer: an os-release with ID=nixos and
# VARIANT_ID=installer, host name nixos-installer, root's keys as `run` carries them (root's and
# the sudo user's, without options; the cloud-metadata unit masked). The behaviour comes, like the
# switch itself, as a unit passed on the kernel command line.

from __future__ import annotations

import base64
import io
import tarfile
from pathlib import Path

from tests.support.tarballs import NIX_RUN, fill_run

INIT = "/lib/systemd/systemd"


def _unit(mode: str) -> str:
    os_release = (
        "echo ID=nixos > /run/nkw-os-release; echo VARIANT_ID=installer >> /run/nkw-os-release; "
        "echo PRETTY_NAME=NixOS-installer-stand-in >> /run/nkw-os-release; "
        "mount --bind /run/nkw-os-release /usr/lib/os-release; hostname nixos-installer; "
        # root's keys as `run` carries them: root's and the sudo user's, without options.
        "cat /root/.ssh/authorized_keys /home/deploy/.ssh/authorized_keys 2>/dev/null "
        '| grep -o -E "(ssh-|ecdsa-|sk-)[^ ]+ [^ ]+" > /run/nkw-keys; '
        "cp /run/nkw-keys /root/.ssh/authorized_keys"
    )
    then = "; sleep 3; echo c > /proc/sysrq-trigger" if mode == "panic" else ""
    return (
        "[Unit]\nDescription=Test bed: this boot stands in for the NixOS installer\n"
        "DefaultDependencies=no\nAfter=local-fs.target\nBefore=ssh.service sysinit.target\n"
        f"[Service]\nType=oneshot\nExecStart=/bin/sh -c '{os_release}{then}'\n"
    )


def kernel_params(mode: str) -> list[str]:
    """The stand-in's boot.kernelParams: ``ok``, ``nonet`` (its network never comes up) or
    ``panic`` (its kernel panics once booted)."""
    b64 = base64.b64encode(_unit(mode).encode()).decode()
    params = [
        "root=/dev/vda", "rw", "console=ttyS0", "systemd.mask=nkw-keys.service",
        f"systemd.set_credential_binary=systemd.extra-unit.nkw-standin.service:{b64}",
        "systemd.wants=nkw-standin.service",
    ]  # fmt: skip
    if mode == "nonet":
        params.append("systemd.mask=systemd-networkd.service")
    return params


def systemd_installer(out: Path, bed: Path, origin: Path, mode: str = "ok") -> Path:
    """Write the stand-in tarball for ``mode``: upstream's layout, the origin's kernel and
    initramfs, the bed's kexec and ip, ``run`` filled in."""
    members: dict[str, tuple[bytes, int]] = {}
    with tarfile.open(bed / "installer-ok.tar.gz") as src:
        for m in src.getmembers():
            if m.isfile() and (m.name in ("kexec/kexec", "kexec/ip") or "/lib/" in m.name):
                f = src.extractfile(m)
                assert f is not None
                members[m.name] = (f.read(), m.mode)
    members["kexec/run"] = (fill_run(NIX_RUN, INIT, kernel_params(mode)).encode(), 0o755)
    members["kexec/bzImage"] = ((origin / "vmlinuz").read_bytes(), 0o644)
    members["kexec/initrd"] = ((origin / "initrd.img").read_bytes(), 0o644)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for name in ("kexec", "kexec/lib"):
            d = tarfile.TarInfo(name)
            d.type, d.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(d)
        for name, (data, mode_bits) in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode_bits
            tar.addfile(info, io.BytesIO(data))
    path = out / f"installer-systemd-{mode}.tar.gz"
    path.write_bytes(buf.getvalue())
    return path

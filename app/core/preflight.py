"""Facts to verdicts: ok, warn or stop, each with the reason and the fix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from app.core.errors import PreflightStop
from app.core.kinds import PrivilegeKind
from app.core.probe import Facts

GiB = 1024**3
MiB = 1024**2
# The image in the staging folder needs room for the tarball and its unpacked copy while `run`
# works (the kernel and initrd inside are compressed already, so the copy is about as large as
# the tarball), and a margin for the file system and the logs (the initrd is unpacked into RAM
# by the new kernel, not on disk).
MARGIN = 16 * MiB
# What kexec/run and the app's own steps cannot do without (busybox often lacks nohup).
REQUIRED_TOOLS = ("cpio", "tar", "gzip", "find", "nohup", "mktemp")


class Level(StrEnum):
    """How bad a finding is."""

    OK = "ok"
    WARN = "warn"
    STOP = "stop"


@dataclass(frozen=True)
class Verdict:
    """One line of the checklist."""

    check: str
    level: Level
    title: str
    reason: str = ""
    fix: str = ""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**asdict(self), "level": str(self.level)}


def _ok(check: str, title: str, reason: str = "") -> Verdict:
    return Verdict(check, Level.OK, title, reason)


def _gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"


def _size(n: int) -> str:
    return _gib(n) if n >= 10 * GiB else f"{n // MiB} MiB"


def evaluate(
    facts: Facts, image_arch: str | None = None, image_size: int | None = None
) -> list[Verdict]:
    """Every check, in the order a person reads them."""
    out = [
        _installer(facts),
        _arch(facts, image_arch),
        _memory(facts),
        _container(facts),
        _kexec(facts),
        _lockdown(facts),
        _tools(facts),
        _privilege(facts),
        _staging(facts, image_size),
        _host_keys(facts),
    ]
    return [v for v in out if v is not None]


def worst(verdicts: list[Verdict]) -> Level:
    """The most severe level in the list."""
    levels = {v.level for v in verdicts}
    if Level.STOP in levels:
        return Level.STOP
    return Level.WARN if Level.WARN in levels else Level.OK


def _installer(f: Facts) -> Verdict | None:
    if f.is_installer:
        return Verdict(
            "installer",
            Level.STOP,
            "This server already runs the NixOS installer",
            "Its os-release says ID=nixos, VARIANT_ID=installer: the kexec already happened.",
            "Nothing to do: connect and install NixOS (for example with nixos-anywhere).",
        )
    return None


def _arch(f: Facts, image_arch: str | None) -> Verdict:
    if f.arch is None:
        return Verdict(
            "arch",
            Level.STOP,
            f"No installer exists for the {f.machine or 'unknown'} architecture",
            "The kexec installer is built for x86_64 and aarch64 only.",
            "Use your provider's rescue system or an ISO instead.",
        )
    if image_arch and image_arch != f.arch:
        return Verdict(
            "arch",
            Level.STOP,
            f"The image is for {image_arch}, the server is {f.arch}",
            "A kernel for another architecture cannot be started by kexec.",
            f"Choose the {f.arch} image.",
        )
    return _ok("arch", f"Architecture {f.arch}")


def _memory(f: Facts) -> Verdict:
    if f.mem_total is None:
        return Verdict(
            "memory",
            Level.WARN,
            "Memory size unknown",
            "The server did not report /proc/meminfo.",
            "Make sure it has at least 2 GiB of RAM.",
        )
    swap = " Swap does not count: the installer runs from RAM." if f.swap_total else ""
    if f.mem_total < GiB:
        return Verdict(
            "memory",
            Level.STOP,
            f"Only {_gib(f.mem_total)} of RAM",
            "The installer unpacks itself into RAM and needs at least 1 GiB." + swap,
            "Resize the server to at least 2 GiB of RAM, or use the provider's ISO/rescue boot.",
        )
    if f.mem_total < 2 * GiB:
        return Verdict(
            "memory",
            Level.WARN,
            f"{_gib(f.mem_total)} of RAM is tight",
            "Installers with under 2 GiB have run out of memory while booting." + swap,
            "Resize to 2 GiB or more if you can; otherwise it may still work.",
        )
    return _ok("memory", f"{_gib(f.mem_total)} of RAM")


def _container(f: Facts) -> Verdict:
    if f.container and f.container != "none":
        return Verdict(
            "container",
            Level.STOP,
            f"This is a container ({f.container}), not a virtual machine",
            "A container shares its host's kernel and cannot replace it with kexec.",
            "Use a KVM/VM plan from your provider, or its ISO/rescue boot.",
        )
    virt = f.virt if f.virt and f.virt != "none" else "bare metal or unknown"
    return _ok("container", f"Not a container ({virt})")


def _kexec(f: Facts) -> Verdict:
    if f.kexec_load_disabled:
        return Verdict(
            "kexec",
            Level.STOP,
            "kexec is disabled on this kernel",
            "/proc/sys/kernel/kexec_load_disabled is 1, and it cannot be switched back on "
            "without a reboot.",
            "Find what sets kernel.kexec_load_disabled (sysctl.d, a hardening package), remove "
            "it, reboot, then try again.",
        )
    if f.kexec_load_disabled is None:
        return Verdict(
            "kexec",
            Level.WARN,
            "Cannot tell whether kexec is allowed",
            "/proc/sys/kernel/kexec_load_disabled is missing: the kernel may lack kexec.",
            "Try anyway; if it fails the app will say so before anything changes.",
        )
    return _ok("kexec", "kexec is allowed")


def _lockdown(f: Facts) -> Verdict:
    if f.lockdown in ("integrity", "confidentiality"):
        return Verdict(
            "lockdown",
            Level.STOP,
            f"The kernel is locked down ({f.lockdown})",
            "Lockdown (usually from Secure Boot) refuses to kexec an unsigned kernel.",
            "Turn off Secure Boot in the provider's console or firmware, then try again.",
        )
    return _ok("lockdown", "No kernel lockdown")


def _tools(f: Facts) -> Verdict:
    missing = [t for t in REQUIRED_TOOLS if not f.has(t)]
    if missing:
        return Verdict(
            "tools",
            Level.STOP,
            "Missing tools: " + ", ".join(missing),
            "The kexec `run` script needs them: cpio, gzip and find pack your keys and network "
            "settings (without cpio the installer boots but you cannot log in), nohup detaches "
            "the final kexec, tar unpacks the image.",
            "Install them first, e.g. `apt install cpio coreutils` / `dnf install cpio` / "
            "`apk add cpio coreutils`.",
        )
    if not f.sort_v:
        return Verdict(
            "tools",
            Level.WARN,
            "sort has no -V",
            "`run` uses `sort -V` to pick the kexec syscall; with busybox sort it may choose "
            "the older one.",
            "Install coreutils if the kexec fails.",
        )
    return _ok("tools", "cpio, tar, gzip, find, nohup and mktemp are present")


def _privilege(f: Facts) -> Verdict:
    if f.privilege == PrivilegeKind.NONE:
        return Verdict(
            "privilege",
            Level.STOP,
            "No way to become root",
            "You are not root and neither sudo nor doas is available.",
            "Log in as root, or install sudo and give your user the right to use it.",
        )
    if f.privilege == PrivilegeKind.SUDO_PASSWORD:
        return Verdict(
            "privilege",
            Level.WARN,
            "sudo will need your password",
            "sudo does not run without a password for this user (or it may not be allowed "
            "at all: that is only known once the password is tried).",
            "Give the sudo password when asked (it is never written to disk).",
        )
    names = {
        "root": "Logged in as root",
        "sudo": "Root through sudo without a password",
        "doas": "Root through doas",
    }
    return _ok("privilege", names[f.privilege])


def staging_need(image_size: int) -> int:
    """The room the staging folder needs for an image of ``image_size`` bytes: the tarball,
    its unpacked copy, and a margin (a tenth, at least ``MARGIN``)."""
    return 2 * image_size + max(image_size // 10, MARGIN)


def another_folder(where: str) -> str:
    """How to choose another staging folder, in each face's words."""
    return (
        f"choose another staging folder than {where} with --staging-dir DIR on the command "
        "line (the wizard always uses the default, ~/nixos-kexec-wizard of the login user)"
    )


def _staging(f: Facts, image_size: int | None) -> Verdict:
    s = f.staging
    where = s.path or "the staging folder"
    if s.existing and not s.writable:
        return Verdict(
            "staging",
            Level.STOP,
            f"Cannot write to {where}",
            f"{s.existing} is not writable by {f.user or 'this user'}.",
            f"Make it writable for {f.user or 'this user'}, or {another_folder(where)}.",
        )
    if s.noexec:
        return Verdict(
            "staging",
            Level.STOP,
            f"{s.mount_point} is mounted noexec",
            f"The `run` script and kexec binary cannot be executed from {where}.",
            f"Pick a folder on a file system without noexec (e.g. under /root): "
            f"{another_folder(where)}.",
        )
    need = staging_need(image_size) if image_size else None
    if need is not None and s.free_bytes is not None and s.free_bytes < need:
        return Verdict(
            "staging",
            Level.STOP,
            f"Only {_size(s.free_bytes)} free for {where}",
            f"The image ({_size(image_size or 0)}) and its unpacked copy need about "
            f"{_mib(need)} MiB there, with a margin.",
            f"Free {_mib(need - s.free_bytes)} MiB more in {s.mount_point or where}, or "
            f"{another_folder(where)} on a file system with {_mib(need)} MiB free.",
        )
    if s.fstype in ("tmpfs", "ramfs"):
        return Verdict(
            "staging",
            Level.WARN,
            f"{where} is in RAM ({s.fstype})",
            "The image then takes RAM that kexec needs while it loads the installer.",
            f"On a server with little RAM, {another_folder(where)} on disk (e.g. under /root).",
        )
    if s.free_bytes is None:
        return Verdict(
            "staging",
            Level.WARN,
            f"Free space of {where} unknown",
            "df did not answer.",
            f"Make sure about {_mib(need)} MiB are free there."
            if need
            else "Make sure there is room for twice the image's size there.",
        )
    if need is None:
        return _ok(
            "staging",
            f"{_size(s.free_bytes)} free in {where}",
            "Judged against the image once it is chosen, before anything is sent.",
        )
    return _ok("staging", f"{_size(s.free_bytes)} free in {where}")


def _mib(n: int) -> int:
    """Whole MiB, rounded up (room asked for is never less than needed)."""
    return -(-n // MiB)


def _host_keys(f: Facts) -> Verdict:
    if not f.host_key_files:
        return Verdict(
            "host-keys",
            Level.WARN,
            "No SSH host keys found in /etc/ssh",
            "The installer reuses them so that you can check it is the same machine; "
            "without them it generates new ones and the app cannot prove its identity.",
            "Check the sshd configuration; the install continues with a changed-key warning.",
        )
    served = [t for t in f.public_host_keys if t in ("ed25519", "rsa")]
    if not served:
        return Verdict(
            "host-keys",
            Level.WARN,
            "No ed25519 or RSA host key",
            "The installer serves only those two types of the old keys.",
            "Generate an ed25519 host key (`ssh-keygen -A`) before the install.",
        )
    return _ok("host-keys", "Host keys will be kept: " + ", ".join(served))


def raise_first_stop(verdicts: Sequence[Verdict]) -> None:
    """Raise :class:`PreflightStop` for the first stop verdict, if any."""
    stops = [v for v in verdicts if v.level is Level.STOP]
    if stops:
        v = stops[0]
        raise PreflightStop(f"Preflight stop: {v.title}.", v.reason, v.fix)

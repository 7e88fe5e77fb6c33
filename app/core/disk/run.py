"""The disk half of a server's run: from the proven installer to NixOS installed on its disk."""

# The order, as HostRun walks it once the server runs the installer (one step per call; a
# step that needs the user raises a question and changes nothing):
#   look     the disks, the installer's release, the keys it accepts; its dead-man switch off
#   pick     the disk: --disk, else the one default (the old root disk, or the only one),
#            laid out with the request's choices (memory plan, configuration, disko file)
#   reach    the binary cache and the nixpkgs tarball, asked from the installer
#   confirm  the disk's name typed (--yes-wipe DISK), for the disk and files laid out
#   install  partition, format, mount, the files, nixos-install, the check of what it left
# Nothing reboots here: the installed system is booted by a later step, never after an error.

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from app.core.disk.checks import Plan, check_disk_size, memory_plan
from app.core.disk.config import (
    Network,
    NetworkMode,
    SystemConfig,
    check_login_key,
    configuration_nix,
    key_parts,
)
from app.core.disk.disks import Choice, Disk, OldRoot, choose, list_command, parse_disks, what_is_on
from app.core.disk.install import (
    Installed,
    Release,
    install_nixos,
    nixpkgs_url,
    parse_version,
    version_command,
)
from app.core.disk.layout import Layout, disko_nix
from app.core.disk.prepare import confirm_wipe, prepare_disk
from app.core.disk.reach import check_reach
from app.core.errors import ConfigError, DiskError, PreflightStop, UsageError
from app.core.events import CancelToken, EventSink, InfoEvent, OutputEvent, ProgressEvent
from app.core.install.deadman import disarm_script, disarm_verdict
from app.core.probe import Facts
from app.core.result import DEAD_MAN_STOP
from app.core.settings import DEFAULT_BINARY_CACHE, DEFAULT_NIXPKGS_ARCHIVE
from app.core.ssh import Session
from app.core.timings import Timings

LOOK_TIMEOUT = 60.0
# The installer's own authorized keys: the ones `kexec/run` carried over from the old system.
AUTHORIZED = "/root/.ssh/authorized_keys"


class DiskChoiceRequired(UsageError):
    """Several disks could take the system and none is the obvious one: the user names it."""

    def __init__(self, host: str, choice: Choice, given: str = "") -> None:
        names = ", ".join(d.name for d in choice.candidates)
        if not names:
            what = f"{host} has no disk that can take the system."
            fix = ("Free a disk (the list says why each was refused) or add one to the server, "
                   "then try again.")  # fmt: skip
        else:
            n = len(choice.candidates)
            what = (f"{host} has no disk the install can use called {given!r}." if given else
                    f"{host} has {n} disks the system could go on: {names}.")  # fmt: skip
            fix = f"Name the disk: --disk NAME (one of: {names}; the Disks page's list)."
        refused = "; ".join(f"{d.name}: {why}" for d, why in choice.refused)
        why = choice.why_no_default or "The app never guesses which disk to wipe."
        super().__init__(what, why + (f" Refused: {refused}." if refused else ""), fix)
        self.host = host
        self.choice = choice
        self.given = given


class WipeConfirmationRequired(UsageError):
    """Everything is ready and nothing is written yet: the wipe needs the disk's name typed."""

    def __init__(
        self, host: str, disk: Disk, on_it: str, typed: str = "", *, changed: bool = False
    ) -> None:
        wrong = f" ({typed!r} is not its name)" if typed and not changed else ""
        if changed:
            wrong = " (the disk or the configuration changed after it was shown: look again)"
        super().__init__(
            f"Installing NixOS on {host} erases {disk.describe()}{wrong}.",
            f"On it now: {on_it}. This cannot be undone.",
            f"Type the disk's name to confirm: --yes-wipe {disk.name} (--yes alone is not enough).",
        )
        self.host = host
        self.disk = disk
        self.on_it = on_it
        self.typed = typed


@dataclass(frozen=True)
class DiskRequest:
    """What the user chose for the installed system (the options of `install-nixos`)."""

    disk: str = ""  # a kernel name, /dev path or stable link; "" for the one default
    yes_wipe: str = ""  # the disk's name, typed ahead
    swap_mib: int = 0  # a swap partition (0: none; a swapfile is added when RAM is short)
    hostname: str = ""  # "" keeps the old system's host name
    timezone: str = "UTC"
    admin_user: str = ""
    keys: tuple[str, ...] = ()  # authorized for root beside the keys the installer accepts
    network: NetworkMode = NetworkMode.AS_BEFORE
    nixpkgs_url: str = ""  # "" pins the installer's own nixpkgs revision
    nixpkgs_archive: str = DEFAULT_NIXPKGS_ARCHIVE  # where that revision's tarball is fetched
    binary_cache: str = DEFAULT_BINARY_CACHE  # where nixos-install downloads the system's packages


@dataclass
class DiskRun:
    """One server's disk install; each step keeps what it found for the next."""

    label: str
    request: DiskRequest
    timings: Timings = field(default_factory=Timings)
    disks: list[Disk] = field(default_factory=list)
    choice: Choice | None = None
    release: Release | None = None
    keys: tuple[str, ...] = ()
    memory: Plan = field(default_factory=Plan)
    disk: Disk | None = None
    layout: Layout | None = None
    configuration: str = ""
    disko: str = ""
    notes: list[str] = field(default_factory=list)
    saved: Path | None = None
    installed: Installed | None = None
    config: SystemConfig | None = None
    network: Network = field(default_factory=Network)
    mem: tuple[int | None, int | None] = (None, None)
    arch: str = "x86_64"
    hostname: str = "nixos"  # the default: the installer's (the old system's) host name
    login_keys: tuple[str, ...] = ()  # the public key the app logged in to the installer with

    # -- look -------------------------------------------------------------------------------

    def look(
        self,
        session: Session,
        facts: Facts,
        old_root: OldRoot | None,
        emit: EventSink,
        cancel: CancelToken,
    ) -> None:
        """The disks, the installer's release and authorized keys (nothing written)."""
        with self.timings.measure("disks", emit):
            res = session.run(list_command(), timeout=LOOK_TIMEOUT, what="listing the disks")
            try:
                self.disks = parse_disks(res.stdout)
            except ValueError as exc:
                raise DiskError(
                    f"{self.label}'s list of disks could not be read: {exc}.",
                    "lsblk on the installer answered something the app does not understand, "
                    "so it cannot tell which disk is which. Nothing was written.",
                    "Log in to the installer and run lsblk -J; report what it prints.",
                ) from exc
            if not self.disks:
                raise DiskError(
                    f"{self.label} listed no disks.",
                    "The installer's lsblk answered nothing the app could read. Nothing was "
                    "written.",
                    "Log in to the installer and run lsblk; a server without a disk cannot be "
                    "installed to.",
                )
            self.choice = choose(self.disks, old_root)
            for disk, why in self.choice.refused:
                emit(InfoEvent("disks", f"Not {disk.describe()}: {why}."))
            cancel.check()
            res = session.run(version_command(), timeout=LOOK_TIMEOUT, what="nixos-version")
            self.release = parse_version(res.stdout)
            if self.release is None:
                raise DiskError(
                    f"{self.label}'s installer did not name its NixOS release "
                    "(nixos-version --json).",
                    "The installed system's nixpkgs is pinned to the installer's own; without "
                    "it the app cannot tell what it would install. Nothing was written.",
                    "Boot a current NixOS installer (nixos-version comes with every one since "
                    "NixOS 22.05) and try again.",
                )
            self._dead_man_off(session)
            res = session.run(f"cat {AUTHORIZED} 2>/dev/null || true", timeout=LOOK_TIMEOUT,
                              privileged=True, what="reading root's authorized keys")  # fmt: skip
            self.keys = tuple(_keys(res.stdout))
        self.network = Network(facts.interfaces, facts.routes, facts.dns)
        self.mem = (facts.mem_total, facts.swap_total)
        self.arch = facts.arch or "x86_64"
        self.hostname = _hostname(facts.hostname)
        self.login_keys = (_key_line(session),) if session.auth_key is not None else ()

    def _dead_man_off(self, session: Session) -> None:
        """The installer's dead-man switch, if the app armed one, stopped for good: it would
        restart the server in the middle of the install, onto a half-written disk."""
        res = session.run(disarm_script(), timeout=LOOK_TIMEOUT, privileged=True,
                          what="stopping the dead-man switch")  # fmt: skip
        state, said = disarm_verdict(res.stdout)
        if state == "still-armed":
            raise PreflightStop(
                said,
                "It restarts the server into its old system when its time is up; in the "
                "middle of the install that leaves a half-written disk. Nothing was written.",
                f"Log in to the installer and run: {DEAD_MAN_STOP}; then try again.",
            )

    # -- pick -------------------------------------------------------------------------------

    def pick(self, given: str, request: DiskRequest | None = None) -> Disk:
        """The disk named (``given``), else the one default, laid out with ``request``'s
        choices (the run's own when None); a question when no disk is named or found."""
        choice = self.choice
        assert choice is not None
        request = request or self.request
        disk = _find(choice, given) if given else choice.default
        if disk is None:
            if given and (refused := _refused(choice, given)) is not None:
                raise PreflightStop(
                    f"{refused[0].describe()} cannot take the system: {refused[1]}.",
                    "The app never writes to a disk that is read-only, removable, too small "
                    "or in use. Nothing was written.",
                    "Name another disk with --disk, or free this one first.",
                )
            raise DiskChoiceRequired(self.label, choice, given)
        if disk is not self.disk or request != self.request or self.config is None:
            self._lay_out(disk, request)
        return disk

    def system(self, request: DiskRequest) -> SystemConfig:
        """The installed system as ``request`` chooses it (root's keys: the installer's and the
        request's; at least one the app logs in with, or ConfigError)."""
        assert self.release is not None
        r = request
        url = r.nixpkgs_url or nixpkgs_url(self.release.revision, r.nixpkgs_archive)
        keys = tuple(dict.fromkeys([*self.keys, *(k.strip() for k in r.keys)]))
        config = SystemConfig(
            r.hostname or self.hostname, self.release.state_version, keys,
            timezone=r.timezone, admin_user=r.admin_user, network=r.network, nixpkgs_url=url,
        )  # fmt: skip
        check_login_key(config, self.login_keys)
        return config

    def _lay_out(self, disk: Disk, request: DiskRequest) -> None:
        config = self.system(request)
        layout = Layout(disk.stable_path, arch=self.arch, swap_mib=request.swap_mib)
        memory = memory_plan(*self.mem, layout)
        check_disk_size(disk, layout, memory)
        if memory.swapfile_mib:
            config = replace(config, swapfile_mib=memory.swapfile_mib)
        try:
            self.configuration, self.notes = configuration_nix(config, layout, self.network)
        except ValueError as exc:  # the server's own addresses or DNS, as it reported them
            raise ConfigError(
                f"The server's network cannot be carried into the configuration: {exc}.",
                "The installed system would start without the network the server has now. "
                "Nothing was written.",
                "Choose DHCP (--network dhcp; on the System page, Network: DHCP).",
            ) from exc
        self.disko = disko_nix(layout)
        self.disk, self.layout, self.memory, self.config = disk, layout, memory, config
        self.request = request
        self.saved = None

    def _config(self) -> SystemConfig:
        if self.config is None:
            raise DiskError(
                f"No disk was chosen on {self.label} yet.",
                "The configuration is made for the chosen disk. Nothing was written.",
                "Choose the disk first (--disk NAME, or the Disks page).",
            )
        return self.config

    def save(self, folder: Path) -> Path:
        """Keep configuration.nix and disko-config.nix in ``folder`` on this computer, so the
        same system can be installed again with disko or nixos-anywhere."""
        try:
            folder.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            for n in range(1, 100):  # never into a folder another run (or server) made
                where = folder if n == 1 else folder.with_name(f"{folder.name}-{n}")
                try:
                    where.mkdir(mode=0o700)
                    break
                except FileExistsError:
                    continue
            (where / "configuration.nix").write_text(self.configuration)
            (where / "disko-config.nix").write_text(self.disko)
        except OSError as exc:
            raise ConfigError(
                f"The configuration could not be kept in {folder}: {exc.strerror or exc}.",
                "The app keeps every installed system's configuration on this computer before "
                "anything is written to the server. Nothing was written.",
                "Choose a writable folder with --save-config DIR (or free space there).",
            ) from exc
        self.saved = where
        return where

    # -- reach, confirm and install ---------------------------------------------------------

    def reach(self, session: Session) -> str:
        """PreflightStop unless the installer reaches the binary cache and the nixpkgs tarball
        (nothing written); a note when it could not tell."""
        urls = [f"{self.request.binary_cache}/nix-cache-info", self._config().nixpkgs_url]
        return check_reach(session, urls, timeout=LOOK_TIMEOUT)

    def digest(self) -> str:
        """What a confirmation is given for: the disk and the two files, as one hash."""
        disk = self.disk
        seen = f"{disk.stable_path}\0{disk.size}" if disk else ""
        text = f"{seen}\0{self.configuration}\0{self.disko}"
        return hashlib.sha256(text.encode()).hexdigest()

    def confirm(self, typed: str, old_root: OldRoot | None, shown: str = "") -> None:
        """The wipe confirmed by the disk's name (and, from a face that showed the files, for
        exactly what it showed: ``shown`` is its ``digest()``); else the question again."""
        disk = self.disk
        assert disk is not None
        changed = bool(shown) and shown != self.digest()
        try:
            confirm_wipe(disk, "" if changed else typed)
        except ConfigError:
            raise WipeConfirmationRequired(
                self.label, disk, what_is_on(disk, old_root), typed, changed=changed
            ) from None

    def install(self, session: Session, emit: EventSink, cancel: CancelToken) -> Installed:
        """Partition, format and mount the confirmed disk, then nixos-install onto it."""
        disk, layout = self.disk, self.layout
        assert disk is not None and layout is not None
        url = self._config().nixpkgs_url
        cancel.check()

        def said(stage: str) -> Callable[[str, str], None]:
            return lambda stream, line: emit(OutputEvent(stage, line, stream=stream))

        emit(InfoEvent("partition", f"Erasing {disk.describe()} on {self.label}.",
                       safe_to_cancel=False))  # fmt: skip
        with self.timings.measure("partition", emit, deadline=None):
            prepare_disk(session, layout, disk, on_line=said("partition"))
        with self.timings.measure("nixos-install", emit):
            self.installed = install_nixos(
                session, layout, self.configuration, self.disko, url,
                swapfile_mib=self.memory.swapfile_mib, cache=self.request.binary_cache,
                on_line=said("nixos-install"),
                on_copied=lambda n: emit(ProgressEvent("nixos-install", f"{n} store paths copied",
                                                       done=n)),
            )  # fmt: skip
        return self.installed

    def summary(self) -> dict[str, object]:
        """The plan as the faces show it and the JSON result carries it."""
        disk, layout, config = self.disk, self.layout, self._config()
        return {
            "disk": disk.stable_path if disk else None,
            "disk_name": disk.name if disk else None,
            "size": disk.size if disk else None,
            "swap_mib": layout.swap_mib if layout else 0,
            "swapfile_mib": self.memory.swapfile_mib,
            "hostname": config.hostname,
            "nixpkgs": config.nixpkgs_url,
            "binary_cache": self.request.binary_cache,
            "release": self.release.version if self.release else None,
            "authorized_keys": len(config.root_keys),
            "notes": list(self.notes),
        }


def _keys(text: str) -> list[str]:
    """The plain key lines of an authorized_keys file (options and junk are not carried)."""
    out = []
    for line in text.splitlines():
        try:
            key_parts(line)
        except ConfigError:
            continue
        out.append(line.strip())
    return out


def _key_line(session: Session) -> str:
    key = session.auth_key
    assert key is not None
    return f"{key.get_name()} {key.get_base64()}"


GENERIC_NAMES = ("", "nixos", "nixos-installer", "localhost")


def _hostname(name: str) -> str:
    """The installer's host name as NixOS takes it (its first label; the kexec installer keeps
    the old system's), else "nixos"."""
    first = name.split(".")[0]
    ok = re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?", first)
    return first if ok and first not in GENERIC_NAMES else "nixos"


def _names(disk: Disk) -> set[str]:
    return {disk.name, disk.path, disk.stable_path, disk.by_id, disk.by_path} - {""}


def _find(choice: Choice, given: str) -> Disk | None:
    return next((d for d in choice.candidates if given in _names(d)), None)


def _refused(choice: Choice, given: str) -> tuple[Disk, str] | None:
    return next(((d, why) for d, why in choice.refused if given in _names(d)), None)

"""The configuration.nix the app writes for the installed system, checked before it is written."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from app.core.disk.layout import Layout
from app.core.errors import ConfigError
from app.core.probe import Interface, Route

# NixOS's own check for networking.hostName (nixos/modules/tasks/network-interfaces.nix).
HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?")
TIMEZONE_RE = re.compile(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+){0,2}")
USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# Names NixOS (or a module it enables) already uses for a system user: taking one for the admin
# fails the evaluation ("Exactly one of isSystemUser and isNormalUser") after the disk is wiped.
SYSTEM_USERS = frozenset(
    {
        "root", "nobody", "sshd", "messagebus", "nscd", "polkituser", "systemd-coredump",
        "systemd-network", "systemd-resolve", "systemd-timesync", "systemd-oom", "sddm",
        "avahi", "dhcpcd",
    }
)  # fmt: skip
SYSTEM_PREFIXES = ("nixbld", "systemd-", "_")
STATE_VERSION_RE = re.compile(r"\d{2}\.\d{2}")
NIXPKGS_URL_RE = re.compile(r"https?://[A-Za-z0-9.:/_~%+-]+\.tar\.gz")
KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
KEY_RE = re.compile(r"(?P<type>[a-z0-9@.-]+) (?P<blob>[A-Za-z0-9+/]+={0,3})(?: (?P<comment>.*))?")
# Routes the kernel or a DHCP/RA client made come back by themselves; the rest are carried.
CARRIED_PROTOCOLS = ("boot", "static")
SWAPFILE = "/var/lib/swapfile"


class NetworkMode(StrEnum):
    """How the installed system configures its network."""

    AS_BEFORE = (
        "as-before"  # the old system's static addresses, routes and DNS; DHCP where it had it
    )
    DHCP = "dhcp"


@dataclass(frozen=True)
class SystemConfig:
    """What the user chose for the installed system."""

    hostname: str
    state_version: str  # the installer's release, "25.11": the defaults the system starts with
    root_keys: tuple[str, ...]
    timezone: str = "UTC"
    admin_user: str = ""  # a user in wheel with the same keys and sudo without a password
    network: NetworkMode = NetworkMode.AS_BEFORE
    swapfile_mib: int = 0
    # The nixpkgs the system was installed from: its NIX_PATH, so `nixos-rebuild` works there
    # (nixos-install copies no channel).
    nixpkgs_url: str = ""

    def __post_init__(self) -> None:
        if not HOSTNAME_RE.fullmatch(self.hostname):
            raise ConfigError(
                f"The host name {self.hostname!r} is not one NixOS accepts.",
                "networking.hostName is letters, digits, '-' and '_', up to 63, no dots.",
                "Set --hostname (the System page's Host name) to a name like web-1.",
            )
        if not TIMEZONE_RE.fullmatch(self.timezone):
            raise ConfigError(
                f"The time zone {self.timezone!r} is not a tz database name.",
                "time.timeZone names a file under /usr/share/zoneinfo.",
                "Set --timezone to a name like UTC or Europe/Berlin.",
            )
        admin = self.admin_user
        if admin and (
            not USER_RE.fullmatch(admin)
            or admin in SYSTEM_USERS
            or admin.startswith(SYSTEM_PREFIXES)
        ):
            raise ConfigError(
                f"The user name {self.admin_user!r} cannot be used for the admin user.",
                "A user name is lowercase letters, digits, '-' and '_', up to 32, and not one "
                "NixOS keeps for itself (root, nobody, sshd, nixbld*, systemd-*, ...).",
                "Set --admin-user to a name like alice, or leave it out.",
            )
        if not STATE_VERSION_RE.fullmatch(self.state_version):
            raise ValueError(f"state version {self.state_version!r} is not like 25.11")
        for key in self.root_keys:
            key_parts(key)
        # One line each, as written into authorized_keys (a pasted key may end in CR LF).
        object.__setattr__(self, "root_keys", tuple(k.strip() for k in self.root_keys))
        if self.nixpkgs_url and not NIXPKGS_URL_RE.fullmatch(self.nixpkgs_url):
            raise ConfigError(
                f"{self.nixpkgs_url!r} is not a nixpkgs tarball URL.",
                "The installed system is built from it and nix.nixPath points at it; it is an "
                "http(s) URL ending in .tar.gz, with no spaces or quotes.",
                "Give --nixpkgs-url like https://github.com/NixOS/nixpkgs/archive/<commit>.tar.gz "
                "(or --nixpkgs-archive for a mirror of that folder).",
            )


def key_parts(line: str) -> tuple[str, str]:
    """(type, base64) of an authorized-keys line without options; ConfigError for anything else."""
    m = KEY_RE.fullmatch(line.strip())
    if m is None or m["type"] not in KEY_TYPES or not (m["comment"] or "").isprintable():
        shown = line.strip()[:60]
        raise ConfigError(
            f"{shown!r} is not a public key line the app can authorize.",
            "Each key is one line: a type (ssh-ed25519, ssh-rsa, ecdsa-..., sk-...), the key in "
            "base64, and an optional comment; options before the type are not taken.",
            "Paste the contents of a .pub file into --authorized-key (the System page's keys).",
        )
    return m["type"], m["blob"]


def check_login_key(config: SystemConfig, usable: Sequence[str]) -> str:
    """The authorized key the app will log in to the installed system with; ConfigError when
    none of ``usable`` (the keys the app holds for this server) is authorized, since the
    installed system would then lock everyone out."""
    wanted = {key_parts(k) for k in config.root_keys}
    for key in usable:
        if key_parts(key) in wanted:
            return key
    raise ConfigError(
        "None of the keys to authorize is one the app can log in with.",
        "The installed system accepts only those keys (no passwords): the app could not prove "
        "it booted, and it would lock everyone out.",
        "Keep the key the app connected with in --authorized-key (the System page's list), or "
        "add the public half of a key in --identity.",
    )


def nix_string(s: str) -> str:
    """``s`` as a Nix string literal: quotes, backslashes and ``${`` escaped; nothing that is
    not printable (a newline would end a key line in authorized_keys)."""
    if not s.isprintable():
        raise ValueError(f"{s!r} holds characters a configuration never needs")
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${") + '"'


def _list(items: Sequence[str], indent: str) -> str:
    if not items:
        return "[ ]"
    inner = "".join(f"{indent}  {nix_string(i)}\n" for i in items)
    return f"[\n{inner}{indent}]"


@dataclass(frozen=True)
class Network:
    """The old system's network as the probe recorded it."""

    interfaces: tuple[Interface, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: tuple[str, ...] = ()


def network_nix(net: Network, mode: NetworkMode) -> tuple[list[str], list[str]]:
    """The lines that configure the network, and notes on what was not carried over."""
    if mode is NetworkMode.DHCP:
        return ["  networking.useDHCP = true;"], []
    lines = ["  networking.useDHCP = false;", "  networking.useNetworkd = true;"]
    notes: list[str] = []
    carried = 0
    for iface in net.interfaces:
        if iface.name == "lo" or iface.link_type != "ether" or not iface.mac:
            continue
        if iface.kind or iface.master:
            notes.append(
                f"{iface.name} is a {iface.kind or 'member of ' + str(iface.master)}; the "
                "installed system does not recreate it: configure it in configuration.nix"
            )
            continue
        static = [a for a in iface.addresses if a.scope == "global" and not a.dynamic]
        dhcp = any(a.dynamic and a.family == "inet" for a in iface.addresses)
        routes = [
            r
            for r in net.routes
            if r.dev == iface.name and r.gateway and r.protocol in CARRIED_PROTOCOLS
        ]
        if not (static or dhcp):
            continue
        carried += 1
        lines.append(f"  systemd.network.networks.{nix_string('10-' + iface.name)} = {{")
        lines.append(f"    matchConfig.MACAddress = {nix_string(iface.mac)};")
        if static:
            addrs = [f"{ipaddress.ip_interface(f'{a.local}/{a.prefixlen}')}" for a in static]
            lines.append(f"    address = {_list(addrs, '    ')};")
        if routes:
            lines.append("    routes = [")
            for r in routes:
                gw = str(ipaddress.ip_address(r.gateway or ""))
                dst = "" if r.dst == "default" else str(ipaddress.ip_network(r.dst, strict=False))
                attrs = [f"Gateway = {nix_string(gw)};"]
                attrs += [f"Destination = {nix_string(dst)};"] if dst else []
                attrs += ["GatewayOnLink = true;"] if r.onlink else []
                lines.append(f"      {{ {' '.join(attrs)} }}")
            lines.append("    ];")
        lines.append(f"    networkConfig.DHCP = {nix_string('ipv4' if dhcp else 'no')};")
        if not dhcp:  # IPv6 router advertisements still give a SLAAC address and a route
            lines.append("    networkConfig.IPv6AcceptRA = true;")
        lines.append("  };")
    if net.dns:
        servers = [str(ipaddress.ip_address(d)) for d in net.dns]
        lines.append(f"  networking.nameservers = {_list(servers, '  ')};")
    if not carried:
        notes.append("the old system's network was not recorded: the installed system uses DHCP")
        return ["  networking.useDHCP = true;"], notes
    return lines, notes


def configuration_nix(config: SystemConfig, layout: Layout, net: Network) -> tuple[str, list[str]]:
    """The whole configuration.nix (it imports the hardware-configuration.nix that
    nixos-generate-config writes, and nothing that needs a module outside nixpkgs) and notes
    for the user on what it does not carry over."""
    net_lines, notes = network_nix(net, config.network)
    device = layout.disk if layout.arch == "x86_64" else "nodev"
    keys = _list(config.root_keys, "  ")
    out = [
        "# The installed system, as the NixOS Kexec Wizard wrote it. Change it and run",
        "# `nixos-rebuild switch` on the server (nixpkgs is the one it was installed from, see",
        "# nix.nixPath); disko-config.nix beside it is the disk layout.",
        "{ ... }:",
        "{",
        "  imports = [ ./hardware-configuration.nix ];",
        "",
        "  # GRUB for BIOS and UEFI alike; as a removable EFI loader it writes no EFI variables.",
        "  boot.loader.grub = {",
        "    enable = true;",
        "    efiSupport = true;",
        "    efiInstallAsRemovable = true;",
        f"    device = {nix_string(device)};",
        "    configurationLimit = 10;  # older systems stay bootable; /boot (512 MiB) holds them",
        "  };",
        "",
        f"  networking.hostName = {nix_string(config.hostname)};",
        f"  time.timeZone = {nix_string(config.timezone)};",
        *net_lines,
        "",
        "  services.openssh.enable = true;",
        "  services.openssh.settings.PasswordAuthentication = false;",
        "  services.openssh.settings.KbdInteractiveAuthentication = false;",
        '  services.openssh.settings.PermitRootLogin = "prohibit-password";',
        f"  users.users.root.openssh.authorizedKeys.keys = {keys};",
    ]
    if config.admin_user:
        out += [
            f"  users.users.{nix_string(config.admin_user)} = {{",
            "    isNormalUser = true;",
            '    extraGroups = [ "wheel" ];',
            f"    openssh.authorizedKeys.keys = {_list(config.root_keys, '    ')};",
            "  };",
            "  security.sudo.wheelNeedsPassword = false;  # the user has a key, not a password",
        ]
    if config.swapfile_mib:
        out.append(
            f"  swapDevices = [ {{ device = {nix_string(SWAPFILE)}; "
            f"size = {int(config.swapfile_mib)}; }} ];"
        )
    if config.nixpkgs_url:
        out.append(f"  nix.nixPath = [ {nix_string('nixpkgs=' + config.nixpkgs_url)} ];")
    out += ["", f"  system.stateVersion = {nix_string(config.state_version)};", "}", ""]
    return "\n".join(out), notes

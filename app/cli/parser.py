"""The command line's grammar: every subcommand and option, and nothing they do."""

from __future__ import annotations

import argparse

from app import __version__
from app.core.catalog import ARCHES, DEFAULT_VARIANT, VARIANTS
from app.core.fleet import DEFAULT_PARALLEL
from app.core.netboot import DEFAULT_SERVE_FOR
from app.core.plan import DEFAULT_DEAD_MAN_MINUTES, DEFAULT_STAGING


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("app")
    g.add_argument(
        "--home", metavar="DIR", help="keep all state under DIR (or $NIXOS_KEXEC_WIZARD_HOME)"
    )
    g.add_argument("--json", action="store_true", help="one JSON object per line on stdout")
    g.add_argument(
        "--api-url", metavar="URL", help="releases API base (or $NIXOS_KEXEC_WIZARD_API_URL)"
    )
    g.add_argument(
        "--download-url",
        metavar="URL",
        help="release download base (or $NIXOS_KEXEC_WIZARD_DOWNLOAD_URL)",
    )
    g.add_argument(
        "--allow-http", action="store_true", help="allow plain http URLs (local mirrors and tests)"
    )


def _add_ssh(p: argparse.ArgumentParser, many: bool = False) -> None:
    p.add_argument(
        "target",
        nargs="*" if many else "?",
        help="[user@]host[:port] or an ~/.ssh/config alias"
        + (" (several at once)" if many else ""),
    )
    g = p.add_argument_group("ssh")
    g.add_argument("-p", "--port", type=int)
    g.add_argument("-l", "--user")
    g.add_argument(
        "-i", "--identity", action="append", metavar="FILE", help="private key file (repeatable)"
    )
    g.add_argument(
        "-J", "--jump", metavar="[USER@]HOST[:PORT]", help="jump host(s), comma-separated"
    )
    g.add_argument("--auth", choices=["auto", "agent", "key", "password"])
    g.add_argument("--password-env", metavar="VAR", help="read the login password from $VAR")
    g.add_argument("--sudo-password-env", metavar="VAR", help="read the sudo password from $VAR")
    g.add_argument(
        "--known-hosts", metavar="FILE", help="the app's known_hosts file to read and update"
    )
    g.add_argument(
        "--accept-new-host-key",
        action="store_true",
        help="trust the key of a host with no known key (never a changed one, nor another type)",
    )
    p.add_argument(
        "--accept-host-key",
        action="append",
        metavar="SHA256:...",
        help="trust exactly this host key fingerprint (repeatable), e.g. after comparing it on "
        "the console",
    )
    g.add_argument("--connect-timeout", type=float, metavar="S")
    g.add_argument("--profile", metavar="NAME", help="connect with a saved profile")
    g.add_argument("--save-profile", metavar="NAME", help="save this server as a profile")
    g.add_argument(
        "--remember-password", action="store_true", help="store passwords in the system keyring"
    )
    g.add_argument(
        "--staging-dir", metavar="DIR", help=f"folder on the server (default {DEFAULT_STAGING})"
    )


def _add_image(p: argparse.ArgumentParser, bundle: bool = True) -> None:
    g = p.add_argument_group("image")
    g.add_argument("--channel", help="nixos-YY.MM or nixos-unstable (default: newest stable)")
    g.add_argument("--arch", choices=ARCHES, help="default: the server's (or this computer's)")
    g.add_argument("--variant", choices=VARIANTS, help=f"default: {DEFAULT_VARIANT}")
    g.add_argument(
        "--image", metavar="PATH|URL", help="a local tarball or a URL instead of a channel"
    )
    g.add_argument("--offline", action="store_true", help="do not ask the releases API")
    if not bundle:
        return
    g.add_argument(
        "--bundle",
        action="store_true",
        help="the channel's legacy kexec-bundle (releases frozen before 2023) instead",
    )


def _add_many(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("many servers")
    g.add_argument(
        "--from-profiles", nargs="+", metavar="NAME", help="the saved profiles to install on"
    )
    g.add_argument(
        "--targets", metavar="FILE", help="one target per line ('#' starts a comment; - is stdin)"
    )
    g.add_argument(
        "--parallel",
        type=int,
        default=DEFAULT_PARALLEL,
        metavar="N",
        help=f"servers worked on at the same time (default {DEFAULT_PARALLEL})",
    )


def _add_disk(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("the disk")
    g.add_argument(
        "--disk",
        metavar="NAME",
        help="the disk to install on: vda, /dev/vda or a /dev/disk/by-id link (default: the old "
        "system's root disk, or the only disk that can take it)",
    )
    g.add_argument(
        "--yes-wipe",
        metavar="NAME",
        help="confirm erasing the disk by its name, e.g. --yes-wipe vda (--yes is not enough)",
    )
    g.add_argument(
        "--swap-size", type=int, default=0, metavar="MIB", help="a swap partition (default none)"
    )
    g = p.add_argument_group("the installed system")
    g.add_argument("--hostname", help="its host name (default: the server's own, else nixos)")
    g.add_argument("--timezone", default="UTC", help="a tz database name (default UTC)")
    g.add_argument("--admin-user", metavar="NAME", help="a user with sudo and root's keys")
    g.add_argument(
        "--authorized-key",
        action="append",
        metavar="KEY|FILE",
        help="another public key for root: the line, or a .pub file (repeatable); the keys the "
        "installer accepts are kept",
    )
    g.add_argument(
        "--network",
        choices=["as-before", "dhcp"],
        default="as-before",
        help="the addresses, routes and DNS the server has now (default), or DHCP",
    )
    g.add_argument(
        "--nixpkgs-url",
        metavar="URL",
        help="the nixpkgs tarball to install from (default: the installer's own revision)",
    )
    g.add_argument(
        "--nixpkgs-archive",
        metavar="URL",
        help="where that revision's tarball is fetched (default "
        "https://github.com/NixOS/nixpkgs/archive)",
    )
    g.add_argument(
        "--binary-cache",
        metavar="URL",
        help="where nixos-install downloads the system (default https://cache.nixos.org)",
    )
    g.add_argument(
        "--save-config",
        metavar="DIR",
        help="keep each server's configuration.nix and disko-config.nix under DIR (default: "
        "the app's config folder, systems/)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    p = argparse.ArgumentParser(
        prog="nixos-kexec-wizard",
        description="Boot the NixOS installer into RAM on a Linux server over SSH.",
        epilog="Without a subcommand the wizard window opens. `COMMAND --help` shows each "
        "command's options.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--home", dest="gui_home", metavar="DIR", help="keep all state under DIR")
    p.add_argument(
        "--smoke-test", action="store_true", help="open the wizard, then quit (for tests)"
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("images", help="list channels and images")
    _add_common(s)
    s.add_argument("--refresh", action="store_true", help="ignore the cached answer")
    s.add_argument("--offline", action="store_true", help="do not ask the releases API")

    s = sub.add_parser("download", help="download and verify an image into the cache")
    _add_common(s)
    _add_image(s)

    s = sub.add_parser("probe", help="inspect a server and judge whether kexec will work")
    _add_common(s)
    _add_ssh(s)

    s = sub.add_parser("install", help="boot the NixOS installer on a server (or many)")
    _add_common(s)
    _add_ssh(s, many=True)
    _add_image(s)
    _add_many(s)
    g = s.add_argument_group("install")
    g.add_argument("--transfer", choices=["auto", "upload", "remote"], default="auto")
    g.add_argument(
        "--installer-port", type=int, metavar="PORT", help="also try this port after the kexec"
    )
    g.add_argument("--kexec-extra-flags", metavar="FLAGS", help="passed to kexec/run (e.g. -c)")
    g.add_argument(
        "--dead-man",
        metavar="MINUTES|off",
        help="restart the server into its old system if the installer cannot be reached "
        f"this long after its boot (default {DEFAULT_DEAD_MAN_MINUTES:g}; off to disable)",
    )
    g.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="how long to wait for the installer (default 300)",
    )
    g.add_argument(
        "--down-timeout",
        type=float,
        metavar="S",
        help="how long to wait for the old system to stop (default 60)",
    )
    g.add_argument("-y", "--yes", action="store_true", help="confirm the kexec without a prompt")

    s = sub.add_parser(
        "install-nixos",
        help="install NixOS onto the disk of a server that runs the installer (or many)",
    )
    _add_common(s)
    _add_ssh(s, many=True)
    _add_many(s)
    _add_disk(s)

    s = sub.add_parser(
        "netboot",
        help="the release's iPXE chain URL, or serve a netboot image to a machine on the LAN",
    )
    _add_common(s)
    _add_image(s, bundle=False)
    g = s.add_argument_group("netboot")
    g.add_argument(
        "--serve",
        metavar="ADDR:PORT",
        help="serve kernel, initrd and an iPXE script from this computer (e.g. 127.0.0.1:8080)",
    )
    g.add_argument(
        "--serve-for",
        type=float,
        default=DEFAULT_SERVE_FOR,
        metavar="S",
        help=f"stop serving after S seconds (default {DEFAULT_SERVE_FOR:g})",
    )
    g.add_argument(
        "--from-kexec",
        action="store_true",
        help="serve the kexec installer with your SSH keys (reachable over SSH, no console)",
    )
    g.add_argument(
        "--authorized-keys",
        action="append",
        metavar="FILE",
        help="public keys for --from-kexec (default: ~/.ssh/*.pub and the app's keys)",
    )
    g.add_argument(
        "--kernel-args", metavar="ARGS", help="extra kernel arguments, e.g. console=ttyS0"
    )

    s = sub.add_parser("reconnect", help="open a terminal on a profile's installer")
    _add_common(s)
    s.add_argument("name", help="profile name")
    s.add_argument("--print", action="store_true", help="print the ssh command instead")
    s.add_argument("--known-hosts", metavar="FILE")

    s = sub.add_parser("profiles", help="list, show or delete saved profiles")
    _add_common(s)
    s.add_argument("action", choices=["list", "show", "delete"])
    s.add_argument("name", nargs="?")
    return p

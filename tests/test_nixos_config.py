"""The configuration.nix the app writes, parsed and evaluated by the real Nix (Debian's nix-bin)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from app.core.disk.config import (
    Network,
    NetworkMode,
    SystemConfig,
    check_login_key,
    configuration_nix,
    nix_string,
)
from app.core.disk.layout import Layout
from app.core.errors import ConfigError
from app.core.probe import Address, Interface, Route

APP_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBnkwTestKeyForTheApp0000000000000000000 nkw-app"
USER_KEY = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 alice@laptop"
# The old system of a rented server: a static address with an on-link gateway outside its
# subnet (as Hetzner's do), static IPv6, a bridge the user made, DNS.
OLD_NET = Network(
    interfaces=(
        Interface("lo", "00:00:00:00:00:00", "loopback"),
        Interface(
            "enp1s0",
            "52:54:00:12:34:56",
            addresses=(
                Address("inet", "203.0.113.7", 32),
                Address("inet6", "2001:db8:1::2", 64),
                Address("inet6", "fe80::5054:ff:fe12:3456", 64, scope="link"),
            ),
        ),
        Interface(
            "br0", "52:54:00:aa:aa:aa", kind="bridge", addresses=(Address("inet", "10.0.0.1", 24),)
        ),
    ),
    routes=(
        Route("inet", "default", "172.31.1.1", "enp1s0", "static", onlink=True),
        Route("inet6", "default", "fe80::1", "enp1s0", "static"),
        Route("inet", "203.0.113.0/24", None, "enp1s0", "kernel"),
        Route("inet", "10.9.0.0/16", "10.0.0.254", "br0", "static"),
    ),
    dns=("185.12.64.1", "2a01:4ff:ff00::add:1"),
)


def nix(*args: str) -> str:
    exe = shutil.which("nix-instantiate")
    if exe is None:
        pytest.skip("needs Debian's nix-bin (tests/setup-host.sh installs it)")
    res = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    return res.stdout


def evaluate(text: str, tmp_path: Path) -> dict[str, Any]:
    """The configuration's attributes as the real Nix reads them (all but its imports, which
    need the hardware file nixos-generate-config writes on the server)."""
    f = tmp_path / "configuration.nix"
    f.write_text(text)
    nix("--parse", str(f))
    expr = f'builtins.removeAttrs (import {f} {{ }}) [ "imports" ]'
    out = json.loads(nix("--eval", "--strict", "--json", "--readonly-mode", "-E", expr))
    assert isinstance(out, dict)
    return out


def config(**kw: Any) -> SystemConfig:
    base: dict[str, Any] = {"hostname": "web-1", "state_version": "25.11",
                            "root_keys": (APP_KEY, USER_KEY)}  # fmt: skip
    return SystemConfig(**{**base, **kw})


def test_the_old_systems_network_is_carried_by_mac_with_its_onlink_gateway(tmp_path: Path) -> None:
    text, notes = configuration_nix(config(), Layout("/dev/disk/by-id/virtio-nkw-1"), OLD_NET)
    cfg = evaluate(text, tmp_path)
    assert cfg["networking"] == {
        "hostName": "web-1",
        "useDHCP": False,
        "useNetworkd": True,
        "nameservers": ["185.12.64.1", "2a01:4ff:ff00::add:1"],
    }
    assert cfg["systemd"]["network"]["networks"] == {
        "10-enp1s0": {
            "matchConfig": {"MACAddress": "52:54:00:12:34:56"},
            "address": ["203.0.113.7/32", "2001:db8:1::2/64"],
            "routes": [
                {"Gateway": "172.31.1.1", "GatewayOnLink": True},
                {"Gateway": "fe80::1"},
            ],
            "networkConfig": {"DHCP": "no", "IPv6AcceptRA": True},
        }
    }
    assert notes == [
        "br0 is a bridge; the installed system does not recreate it: configure it in "
        "configuration.nix"
    ]
    grub = cfg["boot"]["loader"]["grub"]
    assert grub == {"enable": True, "efiSupport": True, "efiInstallAsRemovable": True,
                    "device": "/dev/disk/by-id/virtio-nkw-1", "configurationLimit": 10}  # fmt: skip
    assert cfg["users"]["users"]["root"]["openssh"]["authorizedKeys"]["keys"] == [APP_KEY, USER_KEY]
    assert cfg["services"]["openssh"]["settings"]["PasswordAuthentication"] is False
    assert cfg["system"]["stateVersion"] == "25.11" and cfg["time"]["timeZone"] == "UTC"


def test_dhcp_on_the_old_system_stays_dhcp_and_aarch64_boots_grub_as_efi_only(
    tmp_path: Path,
) -> None:
    net = Network((Interface("eth0", "02:00:00:00:00:01",
                             addresses=(Address("inet", "10.0.2.15", 24, dynamic=True),)),),
                  (Route("inet", "default", "10.0.2.2", "eth0", "dhcp"),))  # fmt: skip
    text, notes = configuration_nix(config(), Layout("/dev/vda", arch="aarch64"), net)
    cfg = evaluate(text, tmp_path)
    (eth0,) = cfg["systemd"]["network"]["networks"].values()
    assert eth0["networkConfig"] == {"DHCP": "ipv4"} and "routes" not in eth0
    assert cfg["boot"]["loader"]["grub"]["device"] == "nodev"
    assert notes == []


def test_no_recorded_network_or_dhcp_mode_means_dhcp(tmp_path: Path) -> None:
    for net, mode in ((Network(), NetworkMode.AS_BEFORE), (OLD_NET, NetworkMode.DHCP)):
        text, notes = configuration_nix(config(network=mode), Layout("/dev/vda"), net)
        cfg = evaluate(text, tmp_path)
        assert cfg["networking"]["useDHCP"] is True and "systemd" not in cfg
        assert bool(notes) == (mode is NetworkMode.AS_BEFORE)


def test_an_admin_user_gets_the_keys_sudo_and_a_swapfile_is_declared(tmp_path: Path) -> None:
    text, _ = configuration_nix(
        config(admin_user="alice", swapfile_mib=2048, timezone="Europe/Berlin"),
        Layout("/dev/vda"), OLD_NET,
    )  # fmt: skip
    cfg = evaluate(text, tmp_path)
    alice = cfg["users"]["users"]["alice"]
    assert alice["extraGroups"] == ["wheel"] and alice["isNormalUser"] is True
    assert alice["openssh"]["authorizedKeys"]["keys"] == [APP_KEY, USER_KEY]
    assert cfg["security"]["sudo"]["wheelNeedsPassword"] is False
    assert cfg["swapDevices"] == [{"device": "/var/lib/swapfile", "size": 2048}]
    assert cfg["time"]["timeZone"] == "Europe/Berlin"


@pytest.mark.fault
@pytest.mark.parametrize(
    "comment", ['a"b', "c\\d", '${builtins.abort "x"}', "$${x}", "''${x}", "e\\${x}", "ünï"]
)
def test_a_key_comment_reaches_the_system_exactly_as_written(comment: str, tmp_path: Path) -> None:
    """A comment is the user's text: Nix must read it back byte for byte, never evaluate it."""
    key = f"{APP_KEY.rsplit(' ', 1)[0]} {comment}"
    text, _ = configuration_nix(config(root_keys=(key,)), Layout("/dev/vda"), OLD_NET)
    cfg = evaluate(text, tmp_path)
    assert cfg["users"]["users"]["root"]["openssh"]["authorizedKeys"]["keys"] == [key]
    assert json.loads(nix("--eval", "--json", "-E", nix_string(comment))) == comment


@pytest.mark.fault
@pytest.mark.parametrize(
    ("field", "value", "names"),
    [
        ("hostname", "web.example.com", "--hostname"),
        ("hostname", "-x", "--hostname"),
        ("timezone", "../../etc/passwd", "--timezone"),
        ("admin_user", "root", "--admin-user"),
        ("admin_user", "Alice Smith", "--admin-user"),
        ("root_keys", ("ssh-ed25519 AAAA x\nssh-rsa BBBB evil",), "--authorized-key"),
        ("root_keys", ('command="rm -rf /" ssh-ed25519 AAAA',), "--authorized-key"),
        ("root_keys", ("ssh-dss AAAA",), "--authorized-key"),
    ],
)
def test_a_choice_nix_or_sshd_would_read_otherwise_is_refused_naming_its_option(
    field: str, value: object, names: str
) -> None:
    with pytest.raises(ConfigError) as err:
        config(**{field: value})
    assert names in err.value.fix


@pytest.mark.fault
def test_an_installed_system_the_app_could_not_log_in_to_is_refused() -> None:
    cfg = config(root_keys=(USER_KEY,))
    with pytest.raises(ConfigError) as err:
        check_login_key(cfg, [APP_KEY])
    assert "--authorized-key" in err.value.fix and "lock" in err.value.why
    # The same key with another comment is the same key.
    assert check_login_key(config(), [APP_KEY.replace("nkw-app", "other")]).startswith(
        "ssh-ed25519"
    )


@pytest.mark.fault
@pytest.mark.parametrize("name", ["sshd", "nixbld1", "systemd-network", "messagebus", "nobody"])
def test_an_admin_named_like_a_system_user_is_refused_before_the_wipe(name: str) -> None:
    """NixOS would fail its own assertion, with the old system already wiped."""
    with pytest.raises(ConfigError) as err:
        config(admin_user=name)
    assert "--admin-user" in err.value.fix


def test_a_pasted_key_ending_in_crlf_and_the_nixpkgs_pin_reach_the_system(tmp_path: Path) -> None:
    url = "https://github.com/NixOS/nixpkgs/archive/" + "a" * 40 + ".tar.gz"
    cfg = config(root_keys=(APP_KEY + "\r\n",), nixpkgs_url=url)
    text, _ = configuration_nix(cfg, Layout("/dev/vda"), Network())
    got = evaluate(text, tmp_path)
    assert got["users"]["users"]["root"]["openssh"]["authorizedKeys"]["keys"] == [APP_KEY]
    assert got["nix"]["nixPath"] == [f"nixpkgs={url}"]  # nixos-rebuild works after the install

"""Pure probe parsers on recorded outputs: real servers, busybox, containers, garbage."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.configuration import storage_directory

from app.core.probe import (
    PROBE_SCRIPT,
    parse_os_release,
    parse_probe,
    parse_routes,
    probe_script,
    split_sections,
)

DATA = Path(__file__).parent / "data"


def load(name: str) -> str:
    return (DATA / name).read_text()


def test_a_debian_kvm_server() -> None:
    f = parse_probe(load("probe-debian12-kvm.txt"))
    assert (f.kernel, f.machine, f.arch) == ("6.1.0-26-cloud-amd64", "x86_64", "x86_64")
    assert f.os_name == "Debian GNU/Linux 12 (bookworm)" and not f.is_installer
    assert f.mem_total == 3915776 * 1024 and f.swap_total == 1048572 * 1024
    assert (f.uid, f.user, f.home, f.privilege) == (0, "root", "/root", "root")
    assert (f.virt, f.container) == ("kvm", "none") or (f.virt, f.container) == ("kvm", "")
    assert f.kexec_load_disabled is False and f.lockdown == "none"
    assert f.has("cpio") and f.sort_v and not f.has("wget")
    assert f.staging.free_bytes == 35000000 * 1024 and f.staging.fstype == "ext4"
    assert not f.staging.noexec and f.staging.writable
    assert f.net_format == "json"
    eth0 = next(i for i in f.interfaces if i.name == "eth0")
    assert eth0.mac == "96:00:01:02:03:04"
    assert [a.cidr for a in eth0.addresses if a.scope == "global"] == [
        "203.0.113.10/32",
        "2001:db8:1::1/64",
    ]
    default4 = next(r for r in f.routes if r.family == "inet" and r.dst == "default")
    assert (default4.gateway, default4.onlink, default4.protocol) == ("172.31.1.1", True, "static")
    assert f.dns == ("185.12.64.1", "185.12.64.2")
    assert f.public_host_keys == ("ecdsa", "ed25519", "rsa")
    assert (f.reach_v4, f.reach_v6) == (True, True) and f.notes == ()


def test_a_debootstrapped_debian_12_with_systemd_as_its_cloud_user() -> None:
    """Recorded from tests/vm/debian.sh's bookworm origin (systemd, Debian's sshd, ifupdown's
    DHCP on ens3), logged in as the cloud-style `deploy` with passwordless sudo."""
    from app.core.preflight import Level, evaluate

    f = parse_probe(load("probe-debian12-systemd-deploy.txt"))
    assert (f.kernel, f.arch, f.os_name) == (
        "6.1.0-50-cloud-amd64", "x86_64", "Debian GNU/Linux 12 (bookworm)"
    )  # fmt: skip
    assert (f.uid, f.user, f.home, f.privilege) == (1000, "deploy", "/home/deploy", "sudo")
    assert f.virt == "qemu" and f.container in ("", "none") and not f.is_installer
    assert f.kexec_load_disabled is False and f.lockdown == "none" and f.sort_v
    assert f.staging.path == "/home/deploy/nixos-kexec-wizard" and f.staging.fstype == "ext4"
    assert f.staging.writable and not f.staging.noexec
    ens3 = next(i for i in f.interfaces if i.name == "ens3")  # systemd's name, not eth0
    assert ens3.mac == "52:54:00:12:34:56"
    dhcp = next(a for a in ens3.addresses if a.cidr == "10.0.2.15/24")
    assert dhcp.dynamic  # a DHCP lease: the installer asks for one again, not a static copy
    assert f.public_host_keys == ("ecdsa", "ed25519", "rsa") and f.notes == ()
    levels = {v.title: v.level for v in evaluate(f)}
    assert Level.STOP not in levels.values()
    assert levels["Root through sudo without a password"] is Level.OK


@pytest.mark.parametrize(
    ("name", "kernel", "pretty"),
    [
        ("probe-debian11-systemd-deploy.txt", "5.10.0-32-cloud-amd64",
         "Debian GNU/Linux 11 (bullseye)"),
        ("probe-debian13-systemd-deploy.txt", "6.12.117+deb13-cloud-amd64",
         "Debian GNU/Linux 13 (trixie)"),
    ],
    ids=["bullseye", "trixie"],
)  # fmt: skip
def test_debootstrapped_debian_11_and_13_as_their_cloud_user(
    name: str, kernel: str, pretty: str
) -> None:
    """Recorded from tests/vm/debian.sh's bullseye (ifupdown, dhclient) and trixie
    (systemd-networkd) origins, logged in as `deploy`."""
    from app.core.preflight import Level, evaluate

    f = parse_probe(load(name))
    assert (f.kernel, f.arch, f.os_name) == (kernel, "x86_64", pretty)
    assert (f.user, f.home, f.privilege, f.virt) == ("deploy", "/home/deploy", "sudo", "qemu")
    assert f.sort_v and f.has("cpio") and f.staging.fstype == "ext4" and f.notes == ()
    ens3 = next(i for i in f.interfaces if i.name == "ens3")
    # Either tool's lease is marked dynamic: the installer asks for one again.
    assert next(a for a in ens3.addresses if a.cidr == "10.0.2.15/24").dynamic
    levels = {v.title: v.level for v in evaluate(f)}
    assert Level.STOP not in levels.values()
    assert levels["Root through sudo without a password"] is Level.OK


def test_a_debootstrapped_debian_12_for_arm64() -> None:
    """Recorded from tests/vm/debian.sh's bookworm arm64 origin (qemu-system-aarch64, virt
    machine), logged in as `deploy`: the facts that pick the aarch64 image."""
    from app.core.preflight import Level, evaluate

    f = parse_probe(load("probe-debian12-arm64-deploy.txt"))
    assert (f.kernel, f.arch, f.machine) == ("6.1.0-50-cloud-arm64", "aarch64", "aarch64")
    assert (f.user, f.privilege, f.virt) == ("deploy", "sudo", "qemu")
    # virt's PCIe bus gives no slot numbers: systemd names the NIC by its path.
    nic = next(i for i in f.interfaces if i.name == "enp0s3")
    assert nic.mac == "52:54:00:12:34:56"
    assert next(a for a in nic.addresses if a.cidr == "10.0.2.15/24").dynamic
    assert Level.STOP not in {v.level for v in evaluate(f)}
    stop = next(v for v in evaluate(f, "x86_64") if v.level is Level.STOP)
    assert stop.title == "The image is for x86_64, the server is aarch64"


def test_busybox_without_json_or_sort_v_and_a_sudo_user() -> None:
    f = parse_probe(load("probe-alpine-busybox.txt"))
    assert f.net_format == "text" and any("--json" in n for n in f.notes)
    assert not f.sort_v and not f.has("cpio") and f.privilege == "sudo-password"
    assert f.staging.noexec and f.staging.fstype == "tmpfs"
    by_name = {i.name: i for i in f.interfaces}
    assert set(by_name) == {"lo", "eth0", "eth0.100", "wg0"}
    assert by_name["eth0"].mac == "52:54:00:12:34:56"
    assert (
        by_name["eth0"].addresses[0].dynamic and by_name["eth0"].addresses[0].cidr == "10.0.2.15/24"
    )
    assert by_name["eth0.100"].kind == "vlan"
    assert by_name["wg0"].mac is None and by_name["wg0"].link_type == "none"
    default = next(r for r in f.routes if r.dst == "default")
    assert (default.gateway, default.dev) == ("10.0.2.2", "eth0")
    assert (f.reach_v4, f.reach_v6) == (True, False)


def test_openvz_is_recognised_as_a_container() -> None:
    f = parse_probe(load("probe-openvz.txt"))
    assert f.container == "openvz"
    assert f.kexec_load_disabled is None and f.net_format == "none"


def test_the_installer_is_recognised_with_unquoted_and_single_quoted_values() -> None:
    f = parse_probe(load("probe-nixos-installer.txt"))
    assert f.is_installer and f.os_name == "NixOS 26.05 (Yarara)" and f.arch == "aarch64"
    bond = next(i for i in f.interfaces if i.name == "bond0")
    assert bond.kind == "bond"
    assert next(i for i in f.interfaces if i.name == "enp1s0").master == "bond0"


@pytest.mark.fault
def test_truncated_output_is_noted_not_fatal() -> None:
    text = load("probe-debian12-kvm.txt")
    f = parse_probe(text[: text.index("@@nkw staging")])
    assert f.kernel == "6.1.0-26-cloud-amd64" and f.staging.path == ""
    assert any("cut short" in n for n in f.notes)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\x00\xff garbage",
        "@@nkw uname\n",
        "@@nkw ip-addr\n[{broken json\n@@nkw end",
        "@@nkw priv\nsudo; rm -rf /\n",
    ],
)
@pytest.mark.fault
def test_garbage_never_raises(text: str) -> None:
    f = parse_probe(text)
    assert f.privilege in ("root", "sudo", "sudo-password", "doas", "none")
    assert f.arch is None or f.arch in ("x86_64", "aarch64")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=2000))
@pytest.mark.fault
def test_fuzzed_output_never_crashes_the_parser(text: str) -> None:
    parse_probe(text)
    parse_probe("@@nkw ip-addr\n" + text + "\n@@nkw ip-route4\n" + text + "\n@@nkw end")


def test_the_fuzzers_keep_nothing_in_the_clone() -> None:
    root = Path(__file__).resolve().parent.parent
    assert settings.default.database is None  # nothing replayed from, or written for, a rerun
    assert not storage_directory("unicode_data").path.resolve().is_relative_to(root)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=80), max_size=20))
@pytest.mark.fault
def test_fuzzed_os_release_and_routes(lines: list[str]) -> None:
    parse_os_release(lines)
    parse_routes(lines, "inet")


def test_os_release_quoting() -> None:
    r = parse_os_release(
        ['ID="nixos"', "VARIANT_ID=installer", "NAME='Nix OS'", 'BAD="unterminated', "# c", "x=1"]
    )
    assert r == {"ID": "nixos", "VARIANT_ID": "installer", "NAME": "Nix OS", "BAD": "unterminated"}


def test_sections_before_the_first_marker_are_ignored() -> None:
    assert split_sections("motd line\n@@nkw a\n1\n\n2\n@@nkw b\n") == {"a": ["1", "2"], "b": []}


def test_staging_and_url_are_quoted_into_the_script() -> None:
    s = probe_script("/srv/it's here; rm -rf /", "http://h/$(reboot)")
    assert "STAGING='/srv/it'\"'\"'s here; rm -rf /'" in s
    assert "URL='http://h/$(reboot)'" in s
    assert "__" not in s.replace("__STAGING__", "").replace("__URL__", "").replace("__TOOLS__", "")
    assert "__STAGING__" in PROBE_SCRIPT


def test_the_probe_counts_the_cpus_the_login_may_use(tmp_path: Path) -> None:
    """The upload's hashing depends on it: run the probe itself here, on all CPUs and on one."""
    import os
    import subprocess

    script = probe_script(str(tmp_path / "staging"), "")
    everything = subprocess.run(
        ["/bin/sh", "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    pinned = subprocess.run(
        ["taskset", "-c", "0", "/bin/sh", "-c", script],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert parse_probe(everything.stdout).cpus == len(os.sched_getaffinity(0))
    assert parse_probe(pinned.stdout).cpus == 1
    # A recorded server from before the count, or one that prints nonsense, says nothing.
    assert parse_probe(load("probe-debian12-kvm.txt")).cpus is None
    for said in ("0", "x", "9" * 5000):
        assert parse_probe(f"@@nkw tools\ncpus={said}\n@@nkw end\n").cpus is None


@pytest.mark.parametrize("shell", ["dash", "bash", "busybox"])
def test_the_probe_run_here_finds_its_tools_and_staging_in_each_shell(
    shell: str, tmp_path: Path
) -> None:
    """The script itself, in the shells servers have: a tool it does not find is not one the
    server has, and the staging folder's nearest existing parent is found without dirname."""
    import shutil
    import subprocess

    argv = ["busybox", "sh"] if shell == "busybox" else [shell]
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} is not installed here")
    (tmp_path / "a").mkdir()
    script = probe_script(str(tmp_path / "a" / "b" / "c"), "")
    script = script.replace("for t in ", "for t in nkw-no-such-tool ", 1)
    out = subprocess.run([*argv, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    facts = parse_probe(out.stdout)
    assert facts.has("tar") and facts.has("sort") and not facts.has("nkw-no-such-tool")
    assert "nkw-no-such-tool=" in out.stdout  # said, as not found
    assert facts.staging is not None
    assert facts.staging.existing == str(tmp_path / "a") and facts.staging.writable
    assert facts.staging.mount_point and facts.staging.fstype and facts.staging.free_bytes
    if shell != "busybox":  # GNU sort here; busybox's may lack -V
        assert facts.sort_v

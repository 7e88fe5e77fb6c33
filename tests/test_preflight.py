"""Preflight verdicts and the network preview, from recorded facts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from app.core.catalog import Asset
from app.core.errors import TransferError
from app.core.netpreview import preview
from app.core.preflight import GiB, Level, MiB, evaluate, worst
from app.core.probe import Facts, Staging, parse_probe
from app.core.transfer import choose_transfer

DATA = Path(__file__).parent / "data"


def facts(name: str = "probe-debian12-kvm.txt") -> Facts:
    return parse_probe((DATA / name).read_text())


def by_check(f: Facts, **kw: object) -> dict[str, object]:
    return {v.check: v for v in evaluate(f, **kw)}  # type: ignore[arg-type]


def test_a_healthy_server_is_all_ok() -> None:
    verdicts = evaluate(facts(), "x86_64", 440 * MiB)
    assert worst(verdicts) is Level.OK, [v for v in verdicts if v.level is not Level.OK]
    assert all(v.title for v in verdicts)


@pytest.mark.parametrize(
    ("change", "check", "level", "words"),
    [
        ({"mem_total": 900 * MiB}, "memory", Level.STOP, "at least 1 GiB"),
        ({"mem_total": int(1.5 * GiB)}, "memory", Level.WARN, "under 2 GiB"),
        ({"mem_total": None}, "memory", Level.WARN, "did not report"),
        ({"machine": "riscv64"}, "arch", Level.STOP, "x86_64 and aarch64"),
        ({"container": "lxc"}, "container", Level.STOP, "shares its host's kernel"),
        ({"kexec_load_disabled": True}, "kexec", Level.STOP, "kexec_load_disabled is 1"),
        ({"kexec_load_disabled": None}, "kexec", Level.WARN, "missing"),
        ({"lockdown": "integrity"}, "lockdown", Level.STOP, "Secure Boot"),
        ({"privilege": "none"}, "privilege", Level.STOP, "neither sudo nor doas"),
        ({"privilege": "sudo-password"}, "privilege", Level.WARN, "without a password"),
        ({"host_key_files": ()}, "host-keys", Level.WARN, "generates new ones"),
        (
            {"host_key_files": ("ssh_host_ecdsa_key.pub",)},
            "host-keys",
            Level.WARN,
            "only those two",
        ),
        ({"sort_v": False}, "tools", Level.WARN, "sort -V"),
        (
            {"os_release": {"ID": "nixos", "VARIANT_ID": "installer"}},
            "installer",
            Level.STOP,
            "already happened",
        ),
    ],
)
def test_each_fact_gives_its_verdict(
    change: dict[str, object], check: str, level: Level, words: str
) -> None:
    v = by_check(replace(facts(), **change))[check]  # type: ignore[arg-type]
    assert v.level is level  # type: ignore[attr-defined]
    assert words in v.reason + v.title  # type: ignore[attr-defined]
    assert v.fix  # type: ignore[attr-defined]


def test_swap_never_counts_as_memory() -> None:
    f = replace(facts(), mem_total=800 * MiB, swap_total=8 * GiB)
    v = by_check(f)["memory"]
    assert v.level is Level.STOP and "Swap does not count" in v.reason  # type: ignore[attr-defined]


def test_missing_cpio_names_the_tool_and_the_package() -> None:
    f = facts("probe-alpine-busybox.txt")
    v = by_check(f)["tools"]
    assert v.level is Level.STOP and "cpio" in v.title and "nohup" in v.title  # type: ignore[attr-defined]
    assert "apk add cpio" in v.fix  # type: ignore[attr-defined]


def test_the_image_arch_must_match_the_server() -> None:
    v = by_check(facts(), image_arch="aarch64")["arch"]
    assert v.level is Level.STOP and "x86_64 image" in v.fix  # type: ignore[attr-defined]


def test_staging_problems() -> None:
    base = facts()
    noexec = by_check(facts("probe-alpine-busybox.txt"))["staging"]
    assert noexec.level is Level.STOP and "noexec" in noexec.title  # type: ignore[attr-defined]
    small = replace(base, staging=replace(base.staging, free_bytes=300 * MiB))
    v = by_check(small, image_size=440 * MiB)["staging"]
    assert v.level is Level.STOP and "924 MiB" in v.reason  # type: ignore[attr-defined]
    ro = replace(base, staging=Staging(path="/x/y", existing="/x", writable=False))
    assert by_check(ro)["staging"].level is Level.STOP  # type: ignore[attr-defined]
    ram = replace(base, staging=replace(base.staging, fstype="tmpfs"))
    assert by_check(ram)["staging"].level is Level.WARN  # type: ignore[attr-defined]


def test_the_room_asked_for_is_the_chosen_images_and_the_fix_names_the_option() -> None:
    """A local 22 MB image on a server with 500 MiB free: the app once asked for 1100 MiB
    (twice a guessed 500 MiB image) and said only "choose another staging folder"."""
    base = facts()
    roomy = replace(base, staging=replace(base.staging, free_bytes=500 * MiB))
    for size in (None, 22_000_000):  # before the image is chosen, and for the local image
        v = by_check(roomy, image_size=size)["staging"]
        assert v.level is Level.OK, v  # type: ignore[attr-defined]
    tight = replace(base, staging=replace(base.staging, free_bytes=40 * MiB))
    v = by_check(tight, image_size=22_000_000)["staging"]
    assert v.level is Level.STOP, v  # type: ignore[attr-defined]
    assert "need about 58 MiB" in v.reason  # type: ignore[attr-defined]
    assert "Free 18 MiB more in /" in v.fix  # type: ignore[attr-defined]
    assert "--staging-dir DIR" in v.fix and "the wizard" in v.fix  # type: ignore[attr-defined]
    for bad in (
        replace(base, staging=Staging(path="/x/y", existing="/x", writable=False)),
        facts("probe-alpine-busybox.txt"),  # noexec
        replace(base, staging=replace(base.staging, fstype="tmpfs")),
    ):
        assert "--staging-dir DIR" in by_check(bad)["staging"].fix  # type: ignore[attr-defined]


def test_openvz_stops_with_the_container_reason() -> None:
    assert worst(evaluate(facts("probe-openvz.txt"))) is Level.STOP


# -- network preview -------------------------------------------------------------------


def test_static_addresses_and_routes_are_kept_dns_is_lost() -> None:
    p = preview(facts())
    text = "\n".join(p.keeps)
    assert (
        "eth0 (96:00:01:02:03:04) keeps its static addresses 203.0.113.10/32, 2001:db8:1::1/64"
        in text
    )
    assert "Route default via 172.31.1.1 on eth0 (onlink) is kept." in text
    assert "Route default via fe80::1 on eth0 is kept." in text
    assert "2001:db8:1::/64" not in text  # kernel routes come back by themselves
    assert any("DNS servers (185.12.64.1, 185.12.64.2) are not copied" in s for s in p.loses)
    assert p.expected_addresses == ("203.0.113.10", "2001:db8:1::1") and not p.may_move


def test_dhcp_vlan_and_macless_interfaces_are_called_out() -> None:
    p = preview(facts("probe-alpine-busybox.txt"))
    loses = "\n".join(p.loses)
    assert "10.0.2.15 came from DHCP" in loses and p.may_move
    assert "eth0.100 is a vlan" in loses and "192.168.100.5/24" in loses
    assert "wg0 has no MAC address" in loses and "10.99.0.2/24 will be lost" in loses
    assert any("eth0 asks DHCP again, requesting its old lease 10.0.2.15/24" in s for s in p.keeps)


def test_bonds_are_lost_and_their_members_fall_back_to_dhcp() -> None:
    p = preview(facts("probe-nixos-installer.txt"))
    assert any("bond0 is a bond" in s and "198.51.100.20/24" in s for s in p.loses)
    assert any("enp1s0 belongs to bond0" in s for s in p.loses)


def test_an_unreadable_network_says_so() -> None:
    p = preview(facts("probe-openvz.txt"))
    assert p.keeps == () and "could not be read" in p.loses[0]


# -- transfer choice -------------------------------------------------------------------

ASSET = Asset("x.tar.gz", "https://h/x.tar.gz", size=10, digest="a" * 64)


def test_auto_lets_the_server_download_when_it_can_check_the_file() -> None:
    assert choose_transfer("auto", facts(), ASSET)[0] == "remote"
    mode, why = choose_transfer("auto", facts(), replace(ASSET, digest=None))
    assert mode == "upload" and "only images with a published sha256" in why
    mode, why = choose_transfer("auto", replace(facts(), reach_v4=False, reach_v6=False), ASSET)
    assert mode == "upload" and "cannot reach" in why
    assert choose_transfer("auto", facts(), None)[0] == "upload"


def test_remote_is_refused_with_every_reason() -> None:
    f = replace(facts(), reach_v4=False, reach_v6=None, tools={})
    with pytest.raises(TransferError) as ei:
        choose_transfer("remote", f, ASSET)
    assert "has no curl" in ei.value.what and "cannot reach" in ei.value.what
    assert choose_transfer("upload", facts(), ASSET)[0] == "upload"


@pytest.mark.parametrize(
    ("transfer", "source", "matters"),
    [
        ("auto", "", True),  # a release: the server may download it itself
        ("remote", "https://mirror.example/x.tar.gz", True),  # refused with the reason if not
        ("auto", "https://mirror.example/x.tar.gz", True),
        ("upload", "", False),  # chosen: the answer changes nothing
        ("auto", "/home/me/x.tar.gz", False),  # a file here is always uploaded
        ("remote", "~/x.tar.gz", False),  # refused for being local, whatever the server reaches
    ],
)
def test_the_probe_asks_about_the_download_server_only_when_the_answer_can_matter(
    transfer: str, source: str, matters: bool
) -> None:
    from app.core.flow import reach_matters
    from app.core.kinds import Transfer

    assert reach_matters(Transfer(transfer), source) is matters
    if matters:
        return
    # Without the answer the choice is the one the answer would have given.
    unknown = replace(facts(), reach_v4=None, reach_v6=None)
    asset = None if source else ASSET
    if transfer == "remote":
        for f in (facts(), unknown):  # the last one checked below
            with pytest.raises(TransferError, match="the image is a local file") as ei:
                choose_transfer(transfer, f, asset)
        assert "cannot reach" not in ei.value.what  # it was not asked, so it is not claimed
    else:
        assert choose_transfer(transfer, unknown, asset) == choose_transfer(
            transfer, facts(), asset
        )

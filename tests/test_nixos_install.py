"""The install step's commands and how their answers are read: the release, the pin, the check."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from app.core.disk.install import (
    check_command,
    files_script,
    install_command,
    nixpkgs_url,
    parse_check,
    parse_version,
    version_command,
)
from app.core.disk.layout import Layout
from app.core.remote_sh import framed

REV = "4f3c2a1e9b7d6c5a4f3e2d1c0b9a8f7e6d5c4b3a"
X86 = Layout("/dev/disk/by-id/virtio-nkw-disk-1")
ARM = Layout("/dev/vda", arch="aarch64")
TOPLEVEL = "/nix/store/" + "a" * 32 + "-nixos-system-web-1-26.05.20261120.4f3c2a1"


def sh(cmd: str) -> str:
    """``cmd`` run by a real /bin/sh, as the server's shell runs it."""
    return subprocess.run(["/bin/sh", "-c", cmd], capture_output=True, text=True, timeout=30,
                          check=False).stdout  # fmt: skip


def printed(token: str, text: str) -> str:
    return sh(framed(f"cat <<'EOF'\n{text}\nEOF\n", token))


def test_the_installers_release_pins_nixpkgs_to_its_own_commit() -> None:
    cmd = version_command()
    assert "nixos-version --json" in cmd
    out = printed(
        "nixosversion", f'{{"nixosVersion":"26.05.20261120.4f3c2a1","nixpkgsRevision":"{REV}"}}'
    )
    release = parse_version(out)
    assert release is not None and release.state_version == "26.05"
    assert nixpkgs_url(release.revision) == f"https://github.com/NixOS/nixpkgs/archive/{REV}.tar.gz"
    assert nixpkgs_url(REV, "http://mirror.example/archive/") == (
        f"http://mirror.example/archive/{REV}.tar.gz"
    )


@pytest.mark.fault
@pytest.mark.parametrize(
    "answer",
    [
        "not json",
        '["a list"]',
        '{"nixosVersion":"26.05","nixpkgsRevision":"main"}',
        f'{{"nixosVersion":"26.05; reboot","nixpkgsRevision":"{REV}"}}',
        f'{{"nixosVersion":"26.05.1","nixpkgsRevision":"{REV}; reboot"}}',
    ],
)
def test_a_release_that_could_pin_nothing_is_none(answer: str) -> None:
    assert parse_version(printed("nixosversion", answer)) is None


def test_nixos_install_runs_pinned_with_its_temporary_files_on_the_new_disk() -> None:
    assert install_command(f"https://github.com/NixOS/nixpkgs/archive/{REV}.tar.gz") == (
        f"NIX_PATH=nixpkgs=https://github.com/NixOS/nixpkgs/archive/{REV}.tar.gz "
        "TMPDIR=/mnt/tmp XDG_CACHE_HOME=/mnt/var/cache/nkw "
        "nixos-install --root /mnt --no-root-passwd --no-channel-copy </dev/null"
    )
    with pytest.raises(ValueError):
        nixpkgs_url("main; reboot")


def test_the_check_needs_the_toplevel_every_boot_file_and_grubs_code() -> None:
    whole = "\n".join([f"toplevel {TOPLEVEL}", "file /mnt/boot/grub/grub.cfg",
                       "file /mnt/boot/EFI/BOOT/BOOTX64.EFI", "file /mnt/boot/grub/i386-pc/core.img",
                       "code mbr", "code bios-boot"])  # fmt: skip
    got = parse_check(printed("installed", whole), X86)
    assert got.toplevel == TOPLEVEL and got.missing == ()
    no_grub = parse_check(printed("installed", f"toplevel {TOPLEVEL}"), X86)
    assert no_grub.missing == ("/mnt/boot/grub/grub.cfg", "/mnt/boot/EFI/BOOT/BOOTX64.EFI",
                               "/mnt/boot/grub/i386-pc/core.img", "mbr", "bios-boot")  # fmt: skip
    arm = parse_check(printed("installed", f"toplevel {TOPLEVEL}\nfile /mnt/boot/grub/grub.cfg\n"
                                           "file /mnt/boot/EFI/BOOT/BOOTAA64.EFI"), ARM)  # fmt: skip
    assert arm.missing == ()


@pytest.mark.fault
def test_a_profile_that_is_not_a_store_path_is_no_toplevel() -> None:
    """readlink -f of a dangling or missing profile prints a path that is not a system."""
    for said in ("toplevel /mnt/nix/var/nix/profiles/system", "toplevel ", "toplevel /etc; x"):
        assert parse_check(printed("installed", said), ARM).toplevel == ""
    assert parse_check("", ARM).toplevel == ""  # nothing came back


def test_the_files_are_written_by_here_documents_that_cannot_end_early() -> None:
    script = files_script("{ }\n", "{ }\n", swapfile_mib=512)
    assert (
        "bs=1M count=512" in script
        and "nixos-generate-config --root /mnt --show-hardware" in script
    )
    assert "NKW_END_CONFIGURATION\n" in script and "cp -p" in script
    with pytest.raises(ValueError):
        files_script("{ }\nNKW_END_CONFIGURATION\nrm -rf /\n", "{ }")


def test_the_profile_is_followed_inside_the_new_system_and_must_be_there(tmp_path: Path) -> None:
    """The same command with /mnt moved to a folder here: system -> system-1-link ->
    /nix/store/... is read under the new root, as a chroot would, not in this machine's store."""
    cmd = check_command(ARM).replace("/mnt", str(tmp_path))
    profiles = tmp_path / "nix/var/nix/profiles"
    profiles.mkdir(parents=True)
    (profiles / "system-1-link").symlink_to(TOPLEVEL)
    (profiles / "system").symlink_to("system-1-link")
    assert parse_check(sh(cmd).replace(str(tmp_path), "/mnt"), ARM).toplevel == ""  # not there
    (tmp_path / TOPLEVEL.lstrip("/")).mkdir(parents=True)
    assert parse_check(sh(cmd).replace(str(tmp_path), "/mnt"), ARM).toplevel == TOPLEVEL

"""The remote shell commands, exactly as built, and what they do when a real sh runs them."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from app.core import remote_sh as sh

# A path no command may let the shell interpret: each part would leave a pwned* file.
NASTY = "staging $(touch pwned1) `touch pwned2`; touch pwned3 && touch pwned4 | touch pwned5"


def run(cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` with /bin/sh, as the server's shell would."""
    return subprocess.run(
        ["/bin/sh", "-c", cmd], capture_output=True, text=True, cwd=cwd, timeout=30, check=False
    )


def test_the_commands_are_exactly_these() -> None:
    assert sh.make_folder("~/x y") == (
        "umask 077 && mkdir -p '~/x y' && { [ -n \"$(ls -A '~/x y')\" ] || chmod 700 '~/x y' "
        "2>/dev/null; true; }"
    )
    assert sh.move("/a b.part", "/a b") == "mv -f '/a b.part' '/a b'"
    assert sh.remove("/s/i.tar.gz", "/s/i.tar.gz.part") == "rm -f /s/i.tar.gz /s/i.tar.gz.part"
    assert sh.file_size("/s/p") == "stat -c %s /s/p 2>/dev/null"
    assert sh.sha256("/s/i") == sh.framed(
        "{ openssl dgst -sha256 -r /s/i || sha256sum /s/i; } 2>/dev/null", "sha256"
    )
    assert sh.framed("cd /s && exit 3", "ab12") == (
        "printf '\\n@@nkw begin %s\\n' ab12; ( cd /s && exit 3 ); s=$?; "
        "printf '\\n@@nkw end %s\\n' ab12; exit $s"
    )
    assert sh.list_tarball("/s/i") == "LC_ALL=C tar -tvzf /s/i"
    assert sh.make_executable("/s/b") == "chmod 755 /s/b"
    assert sh.read_from("/s/log", 10) == "tail -c +11 /s/log 2>/dev/null; true"
    assert sh.download("https://h/i.tgz", "/s/i.part") == (
        "curl -fsSL --proto =https --proto-redir =https --retry 2 --connect-timeout 15 "
        "-o /s/i.part https://h/i.tgz"
    )
    assert "--proto =http,https --proto-redir =http,https" in sh.download(
        "http://mirror/i", "/s/i", allow_http=True
    )
    assert sh.run_installer("/s/", "-c --debug") == (
        "setsid --wait /s/kexec/run --kexec-extra-flags '-c --debug' </dev/null"
    )
    assert sh.run_installer("/s", setsid_wait=False) == "/s/kexec/run </dev/null"
    assert sh.start_bundle("/s", "/s/kexec-bundle-x86_64") == (
        "cd /s && rm -f /s/kexec-bundle.log && "
        '{ nohup setsid sh -c \'"$0"; echo "nkw-exit $?"\' /s/kexec-bundle-x86_64 '
        "</dev/null >/s/kexec-bundle.log 2>&1 & }"
    )
    assert sh.remove_empty_folder("/s/") == "rmdir /s 2>/dev/null; true"


@pytest.mark.parametrize(
    "build",
    [
        sh.make_folder,
        sh.touch,
        sh.receive,
        sh.receive_hashing,
        lambda p: sh.move(p, p),
        sh.remove,
        sh.file_size,
        sh.sha256,
        sh.list_tarball,
        sh.remove_own_unpack,
        lambda p: sh.unpack(p, p),
        lambda p: sh.run_installer(p, "-c", setsid_wait=False),
        lambda p: sh.start_bundle(p, p, setsid=False),
        lambda p: sh.read_from(p, 0),
        lambda p: sh.clean_staging(p, p),
        lambda p: sh.append_line(p, p),
        lambda p: sh.remove_line(p, p),
        sh.owners_up_to_root,
        lambda p: sh.read_files([p]),
        sh.make_folder_and_list_owners,
        lambda p: sh.mark_and_hash(p, p),
        lambda p: sh.move_and_size(p, p),
        sh.receive_then_hash,
    ],
)
def test_a_hostile_path_is_never_run_by_the_shell(
    build: Callable[[str], str], tmp_path: Path
) -> None:
    """A path (or key line) full of shell syntax stays data: nothing in it runs."""
    res = run(build(NASTY), tmp_path)
    assert res.returncode in range(0, 128), res.stderr
    planted = sorted(p.name for p in tmp_path.rglob("pwned*"))
    assert planted == [], f"the shell ran part of the path: {planted}"


def test_append_line_adds_the_missing_newline_and_keeps_the_file_private(tmp_path: Path) -> None:
    keys = tmp_path / "ssh dir" / "authorized_keys"
    assert run(sh.append_line(str(keys), "ssh-ed25519 AAAA first")).returncode == 0
    assert oct(keys.stat().st_mode & 0o777) == "0o600"
    keys.write_text(keys.read_text() + "ssh-ed25519 BBBB no-newline")
    assert run(sh.append_line(str(keys), "ssh-ed25519 CCCC app")).returncode == 0
    assert keys.read_text().splitlines() == [
        "ssh-ed25519 AAAA first",
        "ssh-ed25519 BBBB no-newline",
        "ssh-ed25519 CCCC app",
    ]


def test_remove_line_takes_out_exactly_that_line(tmp_path: Path) -> None:
    (tmp_path / "ssh").mkdir()
    keys = tmp_path / "ssh" / "authorized_keys"
    keys.write_text("a key\napp key\napp key extended\nlast\n")
    res = run(sh.remove_line(str(keys), "app key"))
    assert res.returncode == 0 and sh.KEY_KEPT not in res.stdout
    assert keys.read_text() == "a key\napp key extended\nlast\n"
    assert sorted(p.name for p in keys.parent.iterdir()) == ["authorized_keys"]  # no leftovers


def test_read_files_prints_the_readable_ones(tmp_path: Path) -> None:
    a, missing = tmp_path / "a", tmp_path / "missing"
    a.write_text("ssh-ed25519 AAAA a\n")
    res = run(sh.read_files([str(missing), str(a)]))
    assert res.returncode == 0 and res.stdout == "ssh-ed25519 AAAA a\n"


def test_owners_up_to_root_lists_every_parent(tmp_path: Path) -> None:
    staging = tmp_path / "s t"
    staging.mkdir()
    res = run(sh.owners_up_to_root(str(staging)))
    lines = [ln.split(" ", 2) for ln in res.stdout.splitlines()]
    assert res.returncode == 0
    assert lines[0][0] == str(os.getuid()) and lines[0][2] == str(staging)
    assert int(lines[0][1], 8) == staging.stat().st_mode & 0o7777
    assert lines[-1][2] == "/" and len(lines) == len(staging.parts)


def test_the_batched_transfer_commands_are_exactly_these() -> None:
    assert sh.make_folder_and_list_owners("/s") == (
        f"{sh.make_folder('/s')} || exit 3; {sh.owners_up_to_root('/s')}"
    )
    assert sh.mark_and_hash("/s/.m", "/s/i", "t0") == f"touch /s/.m; {sh.sha256('/s/i', 't0')}"
    assert sh.move_and_size("/s/i.part", "/s/i") == "mv -f /s/i.part /s/i && stat -c %s /s/i"


def test_making_the_folder_and_listing_its_owners_is_one_round_trip(tmp_path: Path) -> None:
    staging = tmp_path / "new" / "s t"
    res = run(sh.make_folder_and_list_owners(str(staging)))
    lines = [ln.split(" ", 2) for ln in res.stdout.splitlines()]
    assert res.returncode == 0 and staging.is_dir()
    assert lines[0] == [str(os.getuid()), "700", str(staging)]
    assert lines[-1][2] == "/" and len(lines) == len(staging.parts)
    # A folder that cannot be made is its own exit status, with nothing listed.
    (tmp_path / "file").write_text("")
    res = run(sh.make_folder_and_list_owners(str(tmp_path / "file" / "s")))
    assert res.returncode == 3 and res.stdout == "" and res.stderr


def test_mark_and_hash_prints_an_earlier_copys_digest_or_nothing(tmp_path: Path) -> None:
    import hashlib

    image, marker = tmp_path / "i.tar.gz", tmp_path / sh.MARKER
    res = run(sh.mark_and_hash(str(marker), str(image)))
    assert marker.exists() and sh.parse_sha256(res.stdout) is None
    image.write_bytes(b"earlier copy")
    res = run(sh.mark_and_hash(str(marker), str(image)))
    assert sh.parse_sha256(res.stdout) == hashlib.sha256(b"earlier copy").hexdigest()


def test_move_and_size_reports_what_is_in_place(tmp_path: Path) -> None:
    part, dest = tmp_path / "i.part", tmp_path / "i"
    part.write_bytes(b"x" * 1234)
    dest.write_bytes(b"old")
    res = run(sh.move_and_size(str(part), str(dest)))
    assert res.returncode == 0 and res.stdout.strip() == "1234" and not part.exists()
    assert run(sh.move_and_size(str(part), str(dest))).returncode != 0  # nothing to move


@pytest.mark.parametrize("receive", [sh.receive_then_hash, sh.receive_hashing])
def test_each_receive_stores_the_bytes_and_prints_their_sha256(
    receive: Callable[[str], str], tmp_path: Path
) -> None:
    """Hashing after storing (one CPU) and while receiving (more) keep the same bytes."""
    import hashlib

    data = os.urandom(3 << 20)
    dest = tmp_path / "image.tar.gz.part"
    res = subprocess.run(
        ["/bin/sh", "-c", receive(str(dest))], input=data, capture_output=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert res.returncode == 0 and sh.WRITE_FAILED.encode() not in res.stderr
    assert dest.read_bytes() == data and oct(dest.stat().st_mode & 0o777) == "0o600"
    assert sh.parse_sha256(res.stdout.decode()) == hashlib.sha256(data).hexdigest()


def test_receive_then_hash_is_the_exact_command() -> None:
    assert sh.receive_then_hash("/s/i.part") == sh.framed(
        "umask 077 && cat > /s/i.part || { echo nkw-write-failed >&2; exit 1; }; "
        "{ openssl dgst -sha256 -r /s/i.part || sha256sum /s/i.part; } 2>/dev/null; true",
        "sha256",
    )


def test_receive_then_hash_fails_and_prints_no_digest_when_nothing_was_stored(
    tmp_path: Path,
) -> None:
    dest = tmp_path / "no such folder" / "image.part"
    res = subprocess.run(
        ["/bin/sh", "-c", sh.receive_then_hash(str(dest))], input=b"x" * 1000,
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert res.returncode != 0 and sh.WRITE_FAILED.encode() in res.stderr
    assert sh.parse_sha256(res.stdout.decode()) is None


def test_unpack_sets_aside_a_folder_it_did_not_make_and_cleanup_removes_only_its_own(
    tmp_path: Path,
) -> None:
    staging = tmp_path / "staging"
    (staging / "kexec").mkdir(parents=True)
    (staging / "kexec" / "theirs").write_text("not ours")
    src = tmp_path / "src" / "kexec"
    src.mkdir(parents=True)
    (src / "run").write_text("#!/bin/sh\n")
    (src / "run").chmod(0o755)
    subprocess.run(
        ["tar", "-czf", str(staging / "i.tar.gz"), "-C", str(src.parent), "kexec"], check=True
    )
    assert run(sh.unpack(str(staging), "i.tar.gz")).returncode == 0
    previous = [p for p in staging.iterdir() if p.name.startswith("kexec.previous-")]
    assert len(previous) == 1 and (previous[0] / "theirs").read_text() == "not ours"
    assert (staging / "kexec" / sh.MARKER).exists()
    (staging / sh.MARKER).touch()
    assert run(sh.clean_staging(str(staging), str(staging / "i.tar.gz"))).returncode == 0
    # The app's unpack, image and marker are gone; the folder it did not make stays.
    assert sorted(p.name for p in staging.iterdir()) == [previous[0].name]


def test_receive_hashing_says_when_the_file_was_not_written(tmp_path: Path) -> None:
    dest = tmp_path / "no such folder" / "image.part"
    res = subprocess.run(
        ["/bin/sh", "-c", sh.receive_hashing(str(dest))], input=b"x" * 1000,
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert sh.WRITE_FAILED.encode() in res.stderr  # the digest printed is of bytes not stored


def test_the_receive_commands_are_exactly_these() -> None:
    assert sh.receive("/s/i.part") == "umask 077 && cat > /s/i.part"
    assert sh.receive_hashing("/s/i.part") == sh.framed(
        "umask 077 && { tee -- /s/i.part || echo nkw-write-failed >&2; } | "
        "{ openssl dgst -sha256 -r 2>/dev/null || sha256sum; }",
        "sha256",
    )
    frame = "\n@@nkw begin sha256\n{}\n@@nkw end sha256\n"
    assert sh.parse_sha256(frame.format("ab" * 32 + " *stdin\n")) == "ab" * 32
    assert sh.parse_sha256("Welcome\n" + frame.format("ab" * 32 + "  -\n") + "Bye\n") == "ab" * 32
    assert sh.parse_sha256("ab" * 32 + " *stdin\n") is None  # not framed: not its own
    assert sh.parse_sha256(frame.format("Welcome\n" + "ab" * 32)) is None  # one line only
    assert sh.parse_sha256("") is None


@pytest.mark.parametrize("token", ["", "c0ffee"])
def test_a_digest_is_read_through_whatever_the_login_prints_around_it(
    token: str, tmp_path: Path
) -> None:
    import hashlib

    image = tmp_path / "i.tar.gz"
    image.write_bytes(b"earlier copy")
    cmd = (
        sh.mark_and_hash(str(tmp_path / sh.MARKER), str(image), token)
        if token
        else (sh.sha256(str(image)))
    )
    chatty = "echo Welcome; echo to the server; echo; trap 'echo Bye; echo see you soon' EXIT; "
    res = run(chatty + cmd)
    assert "Welcome" in res.stdout and "see you soon" in res.stdout
    got = sh.parse_sha256(res.stdout, token) if token else sh.parse_sha256(res.stdout)
    assert got == hashlib.sha256(b"earlier copy").hexdigest()


@pytest.mark.parametrize("shell", ["/bin/sh", "dash", "busybox sh"])
def test_an_upload_unpacked_as_it_arrives_is_hashed_whole_and_placed_only_when_told(
    shell: str, tmp_path: Path
) -> None:
    """The tarball on stdin lands unpacked in the private folder, its digest printed; only
    ``place_unpacked`` puts it where ``run`` starts, and a hostile folder name stays inert."""
    import hashlib

    staging = tmp_path / NASTY
    staging.mkdir()
    (staging / "kexec").mkdir()
    (staging / "kexec" / "theirs").write_text("not ours")
    src = tmp_path / "src" / "kexec"
    src.mkdir(parents=True)
    (src / "run").write_text("#!/bin/sh\n" + "echo pad\n" * 50_000)
    (src / "run").chmod(0o755)
    data = subprocess.run(
        ["tar", "-czf", "-", "-C", str(src.parent), "kexec"], check=True, capture_output=True
    ).stdout
    res = subprocess.run(
        [*shell.split(), "-c", sh.receive_unpacking(str(staging))], input=data,
        capture_output=True, timeout=30, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0 and sh.WRITE_FAILED.encode() not in res.stderr, res.stderr
    assert sh.parse_sha256(res.stdout.decode()) == hashlib.sha256(data).hexdigest()
    unpacked = staging / sh.UNPACKING
    assert (unpacked / "kexec" / "run").read_bytes() == (src / "run").read_bytes()
    assert oct(unpacked.stat().st_mode & 0o777) == "0o700"
    assert (staging / "kexec" / "theirs").exists()  # nothing placed before the digest matched
    assert run(sh.place_unpacked(str(staging))).returncode == 0
    assert (staging / "kexec" / "run").stat().st_mode & 0o111
    assert not unpacked.exists() and (staging / "kexec" / sh.MARKER).exists()
    assert [p for p in staging.iterdir() if p.name.startswith("kexec.previous-")]
    assert not list(tmp_path.glob("pwned*"))


def test_a_broken_upload_unpacked_as_it_arrives_says_so_and_is_dropped(tmp_path: Path) -> None:
    """A cut or damaged stream: tar fails, the rest of stdin is still read (the sender never
    waits on a full pipe), the failure is said, and drop_unpacked leaves nothing behind."""
    staging = tmp_path / "staging"
    staging.mkdir()
    res = subprocess.run(
        ["/bin/sh", "-c", sh.receive_unpacking(str(staging))], input=b"\x1f\x8b" + os.urandom(1 << 20),
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert sh.WRITE_FAILED.encode() in res.stderr
    assert run(sh.drop_unpacked(str(staging))).returncode == 0
    assert list(staging.iterdir()) == []


def test_the_unpacking_commands_are_exactly_these() -> None:
    assert sh.place_unpacked("/s t") == (
        "cd '/s t' && if [ -e kexec ]; then mv kexec \"kexec.previous-$(date +%Y%m%d%H%M%S)\"; "
        "fi && mv .nixos-kexec-wizard.unpack/kexec kexec && rmdir .nixos-kexec-wizard.unpack && "
        "touch kexec/.nixos-kexec-wizard && test -x kexec/run"
    )
    assert sh.drop_unpacked("/s t/") == (
        "rm -rf '/s t/.nixos-kexec-wizard.unpack' '/s t/.nixos-kexec-wizard.unpack.fifo'"
    )
    assert sh.receive_unpacking("/s") == sh.framed(
        "umask 077 && rm -rf /s/.nixos-kexec-wizard.unpack /s/.nixos-kexec-wizard.unpack.fifo "
        "&& mkdir /s/.nixos-kexec-wizard.unpack && mkfifo /s/.nixos-kexec-wizard.unpack.fifo || "
        "{ echo nkw-write-failed >&2; cat > /dev/null; exit 1; }; "
        "{ openssl dgst -sha256 -r 2>/dev/null || sha256sum; } < /s/.nixos-kexec-wizard.unpack.fifo & "
        "{ tee -- /s/.nixos-kexec-wizard.unpack.fifo || echo nkw-write-failed >&2; } | "
        "tar -xzf - -C /s/.nixos-kexec-wizard.unpack || echo nkw-write-failed >&2; "
        "cat > /dev/null; wait; rm -f /s/.nixos-kexec-wizard.unpack.fifo",
        sh.DIGEST,
    )


@pytest.mark.fault
def test_cleanup_outlasts_an_unpack_that_is_still_writing(tmp_path: Path) -> None:
    """A cancelled upload's ``tar`` can still be writing when the cleanup runs (its stdin ends
    only once the server notices the closed channel): one ``rm -rf`` then races it, fails on a
    folder that is not empty, and the staging folder stayed behind."""
    staging = tmp_path / "staging"
    unpack = staging / sh.UNPACKING
    (unpack / "kexec").mkdir(parents=True)
    (staging / sh.MARKER).touch()
    # Like tar -C: it writes relative to a folder it entered, for up to 3 s or until that
    # folder is gone; each entry a folder holding a file, as a tarball's members are.
    writer = subprocess.Popen(
        ["/bin/sh", "-c", "cd kexec && i=0; end=$(( $(date +%s) + 3 )); "
         "while [ $(date +%s) -lt $end ] && mkdir d$i 2>/dev/null; do "
         ": > d$i/f; i=$((i+1)); done"],
        cwd=unpack,
    )  # fmt: skip
    try:
        while sum(1 for _ in (unpack / "kexec").iterdir()) < 50:
            assert writer.poll() is None, "the writer ended before the cleanup started"
        assert run(sh.clean_staging(str(staging), str(staging / "i.tar.gz"))).returncode == 0
        assert not staging.exists(), sorted(p.name for p in staging.rglob("*"))[:5]
    finally:
        writer.kill()
        writer.wait()

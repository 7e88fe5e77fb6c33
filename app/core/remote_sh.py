"""Every shell command the install runs on the server, built by pure functions (tested exactly)."""

# Each function quotes what it is given with shlex.quote and returns one POSIX sh command
# (busybox ash, dash and bash all run them). Nothing here talks to a server: the install
# package runs them, in its stage order, and reads their output.

from __future__ import annotations

import re
from collections.abc import Sequence
from shlex import quote as q

MARKER = ".nixos-kexec-wizard"  # marks a folder (or file) the app made, so only those go
BUNDLE_EXIT = "nkw-exit"  # the kexec-bundle wrapper's last line: its exit status
KEY_KEPT = "nkw-key-kept"  # printed when the app's key line was left in place
WRITE_FAILED = "nkw-write-failed"  # printed (on stderr) when a received file was not written
UNPACKING = f"{MARKER}.unpack"  # an upload unpacked as it arrives, unused until its hash matched
# One line of openssl's ``-r`` or sha256sum's output (sha256sum puts a backslash first when
# the file's name needs escaping).
SHA256_LINE = re.compile(r"\\?([0-9a-f]{64})(?: [ *][^\n]*)?\n?")
FRAME = "@@nkw"  # the probe's marker, too: a framed command's output lies between two lines
DIGEST = "sha256"  # the frame of a digest whose caller passes no token of its own
TOKEN_RE = re.compile(r"[0-9A-Za-z]{1,64}")


def framed(cmd: str, token: str) -> str:
    """``cmd`` (in a subshell, so its ``exit`` ends only it) between two lines naming
    ``token``, with its exit status kept: whatever the login shell prints before or after it
    (a ``.bashrc`` welcome, an EXIT trap) is never read as its output (see ``unframe``)."""
    if not TOKEN_RE.fullmatch(token):
        raise ValueError(f"a frame token is letters and digits only: {token!r}")
    return (
        f"printf '\\n{FRAME} begin %s\\n' {token}; ( {cmd} ); s=$?; "
        f"printf '\\n{FRAME} end %s\\n' {token}; exit $s"
    )


def unframe(stdout: str, token: str) -> str | None:
    """Exactly what a ``framed`` command printed, or None when its frame is not whole (the
    command never started, or it was cut short)."""
    text = "\n" + stdout
    begin, end = f"\n{FRAME} begin {token}\n", f"\n{FRAME} end {token}\n"
    start = text.find(begin)
    if start < 0:
        return None
    start += len(begin)
    stop = text.find(end, start)
    if stop < 0 and text.endswith(end[:-1]):  # nothing at all after it, not even the newline
        stop = len(text) - len(end) + 1
    return None if stop < 0 else text[start:stop]


def read_files(files: Sequence[str]) -> str:
    """Print each readable file of ``files`` (the authorized_keys the installer will carry)."""
    return "for f in " + " ".join(q(f) for f in files) + '; do [ -r "$f" ] && cat "$f"; done; true'


def append_line(path: str, line: str) -> str:
    """Append ``line`` to ``path`` (mode 600 when new), after a newline if the file lacks one."""
    f = q(path)
    return (
        f'umask 077; mkdir -p "$(dirname {f})" && '
        f'{{ [ ! -s {f} ] || [ -z "$(tail -c 1 {f})" ] || echo >> {f}; }}'
        f" && echo {q(line)} >> {f}"
    )


def make_folder(path: str) -> str:
    """Create the staging folder (and its parents) for this user alone, whatever the login's
    umask (Debian 13 gives users 002); an empty one, as an earlier run under such a umask left
    it, is made private too. A folder with something in it is left as it is (and judged)."""
    f = q(path)
    private = f'{{ [ -n "$(ls -A {f})" ] || chmod 700 {f} 2>/dev/null; true; }}'
    return f"umask 077 && mkdir -p {f} && {private}"


def owners_up_to_root(path: str) -> str:
    """``uid mode path`` for the folder and each parent up to ``/`` (symlinks resolved)."""
    return (
        f"d=$(readlink -f {q(path)}) && p=$d && while :; do stat -c '%u %a %n' \"$p\" || exit 1; "
        '[ "$p" = / ] && break; p=$(dirname "$p"); done'
    )


def make_folder_and_list_owners(path: str) -> str:
    """``make_folder``, then ``owners_up_to_root`` in the same round trip; exit status 3 (and
    nothing on stdout) when the folder could not be made."""
    return f"{make_folder(path)} || exit 3; {owners_up_to_root(path)}"


def mark_and_hash(marker: str, path: str, token: str = DIGEST) -> str:
    """Create the staging marker, then print the sha256 of ``path`` (nothing when missing),
    framed by ``token``."""
    return f"touch {q(marker)}; {sha256(path, token)}"


def move_and_size(src: str, dest: str) -> str:
    """Move a finished transfer into place and print the size of what is there now."""
    return f"{move(src, dest)} && stat -c %s {q(dest)}"


def touch(path: str) -> str:
    """Create an empty file (the staging folder's marker)."""
    return f"touch {q(path)}"


def move(src: str, dest: str) -> str:
    """Move a finished transfer into place, replacing what was there."""
    return f"mv -f {q(src)} {q(dest)}"


def remove(*paths: str) -> str:
    """Remove files (missing ones are fine)."""
    return "rm -f " + " ".join(q(p) for p in paths)


def make_executable(path: str) -> str:
    """Make a kexec-bundle runnable."""
    return f"chmod 755 {q(path)}"


def download(url: str, dest: str, *, allow_http: bool = False) -> str:
    """curl ``url`` to ``dest``; never off https, redirects included (plain http only when the
    user allowed a plain-http mirror)."""
    proto = "=http,https" if allow_http else "=https"
    return (
        f"curl -fsSL --proto {proto} --proto-redir {proto} --retry 2 --connect-timeout 15 "
        f"-o {q(dest)} {q(url)}"
    )


def file_size(path: str) -> str:
    """The size of ``path`` in bytes (nothing when it is missing)."""
    return f"stat -c %s {q(path)} 2>/dev/null"


def receive(path: str) -> str:
    """Store stdin at ``path``, mode 600."""
    return f"umask 077 && cat > {q(path)}"


def receive_hashing(path: str) -> str:
    """Store stdin at ``path`` (mode 600) and print the sha256 of the bytes as they pass:
    OpenSSL first, else coreutils (the one that is missing reads nothing); a failed write
    says ``nkw-write-failed`` on stderr, so a short file is never taken for the whole. The
    digest is framed (``DIGEST``), so what the login prints is never read as it."""
    return framed(
        f"umask 077 && {{ tee -- {q(path)} || echo {WRITE_FAILED} >&2; }} | "
        "{ openssl dgst -sha256 -r 2>/dev/null || sha256sum; }",
        DIGEST,
    )


def receive_then_hash(path: str) -> str:
    """Store stdin at ``path`` (mode 600), then print the sha256 of the stored file: on a
    server with one CPU a second read from the page cache costs less than a pipe beside the
    transfer. A failed write says ``nkw-write-failed`` on stderr; no tool prints no digest."""
    f = q(path)
    return framed(
        f"umask 077 && cat > {f} || {{ echo {WRITE_FAILED} >&2; exit 1; }}; "
        f"{{ openssl dgst -sha256 -r {f} || sha256sum {f}; }} 2>/dev/null; true",
        DIGEST,
    )


def receive_unpacking(staging: str) -> str:
    """Unpack stdin (the gzip tarball) into ``<staging>/.nixos-kexec-wizard.unpack``, private,
    while the same bytes are hashed beside it (OpenSSL first, else coreutils), and print that
    digest, framed (``DIGEST``): where the server has CPUs to spare the unpack costs no time of
    its own. Nothing in that folder is used until the digest matched (``place_unpacked``); a
    failed unpack says ``nkw-write-failed`` on stderr, and what is left of the upload is read
    to its end so the sender never waits on a full pipe."""
    d = staging.rstrip("/") + "/" + UNPACKING
    u, f = q(d), q(d + ".fifo")
    return framed(
        f"umask 077 && rm -rf {u} {f} && mkdir {u} && mkfifo {f} || "
        f"{{ echo {WRITE_FAILED} >&2; cat > /dev/null; exit 1; }}; "
        f"{{ openssl dgst -sha256 -r 2>/dev/null || sha256sum; }} < {f} & "
        f"{{ tee -- {f} || echo {WRITE_FAILED} >&2; }} | tar -xzf - -C {u} "
        f"|| echo {WRITE_FAILED} >&2; cat > /dev/null; wait; rm -f {f}",
        DIGEST,
    )


def place_unpacked(staging: str) -> str:
    """Put the unpack whose digest matched where ``kexec/run`` is started from (setting aside
    a kexec/ folder the app did not make), mark it as the app's and check ``run`` is there."""
    return (
        f"cd {q(staging)} && if [ -e kexec ]; then "
        f'mv kexec "kexec.previous-$(date +%Y%m%d%H%M%S)"; fi && '
        f"mv {q(UNPACKING)}/kexec kexec && rmdir {q(UNPACKING)} && touch kexec/{MARKER} && "
        "test -x kexec/run"
    )


def drop_unpacked(staging: str) -> str:
    """Remove an unpack whose digest did not match (or whose upload broke), unused."""
    d = staging.rstrip("/") + "/" + UNPACKING
    return f"rm -rf {q(d)} {q(d + '.fifo')}"


def parse_sha256(output: str, token: str = DIGEST) -> str | None:
    """The digest from what ``sha256``, ``mark_and_hash``, ``receive_hashing`` or
    ``receive_then_hash`` printed within their frame: one digest line and nothing else, or
    None (no tool, no file, or output that is not a digest)."""
    own = unframe(output, token)
    m = SHA256_LINE.fullmatch(own) if own else None
    return m.group(1) if m else None


def sha256(path: str, token: str = DIGEST) -> str:
    """The sha256 of ``path``: OpenSSL first (it uses the CPU's SHA instructions), else
    coreutils; nothing when it is missing; framed by ``token``."""
    f = q(path)
    return framed(f"{{ openssl dgst -sha256 -r {f} || sha256sum {f}; }} 2>/dev/null", token)


def list_tarball(path: str) -> str:
    """The verbose member list of a gzip tarball, in the C locale (parsed by check_tar_listing)."""
    return f"LC_ALL=C tar -tvzf {q(path)}"


def remove_own_unpack(staging: str) -> str:
    """Remove the kexec/ folder of an earlier unpack, only when the app made it."""
    return f"cd {q(staging)} && if [ -e kexec/{MARKER} ]; then rm -rf kexec; fi"


def unpack(staging: str, file_name: str) -> str:
    """Unpack the tarball into <staging>/kexec, setting aside a kexec/ folder the app did not
    make, mark it as the app's and check that ``kexec/run`` is there."""
    return (
        f"cd {q(staging)} && if [ -e kexec ]; then "
        f'mv kexec "kexec.previous-$(date +%Y%m%d%H%M%S)"; fi && '
        f"tar -xzf {q(file_name)} && touch kexec/{MARKER} && test -x kexec/run"
    )


def run_installer(
    staging: str, kexec_extra_flags: str = "", *, setsid_wait: bool = True, launcher: str = "run"
) -> str:
    """Run ``kexec/run`` (or the app's ``launcher`` beside it) in its own session, waited for
    (busybox's setsid cannot wait; ``run`` detaches its kexec with nohup anyway), with kexec's
    extra flags when given."""
    run = q(f"{staging.rstrip('/')}/kexec/{launcher}")
    args = f" --kexec-extra-flags {q(kexec_extra_flags)}" if kexec_extra_flags else ""
    setsid = "setsid --wait " if setsid_wait else ""
    return f"{setsid}{run}{args} </dev/null"


def bundle_log(staging: str) -> str:
    """Where a kexec-bundle's output goes."""
    return f"{staging.rstrip('/')}/kexec-bundle.log"


def start_bundle(staging: str, bundle: str, *, setsid: bool = True) -> str:
    """Start the kexec-bundle detached, its output and then its exit status in its log."""
    log = bundle_log(staging)
    wrapper = q(f'"$0"; echo "{BUNDLE_EXIT} $?"')
    session = "setsid " if setsid else ""
    return (
        f"cd {q(staging)} && rm -f {q(log)} && "
        f"{{ nohup {session}sh -c {wrapper} {q(bundle)} </dev/null >{q(log)} 2>&1 & }}"
    )


def read_from(path: str, offset: int) -> str:
    """What ``path`` holds from byte ``offset`` on (nothing when it is missing)."""
    return f"tail -c +{offset + 1} {q(path)} 2>/dev/null; true"


BOOT_ID = "cat /proc/sys/kernel/random/boot_id"
# Who answers after the kexec: its os-release, boot id and hostname, split by "@@" lines.
IDENTITY = (
    "cat /etc/os-release; echo @@; cat /proc/sys/kernel/random/boot_id; echo @@; "
    "cat /proc/sys/kernel/hostname"
)
KERNEL_LOG_TAIL = "dmesg 2>&1 | tail -n 200"  # where `run` says why a kexec did not start


def clean_staging(staging: str, tarball: str) -> str:
    """Remove the image, its partial transfer, the app's unpack and marker, and the folder if
    it is then empty; never anything the app did not make."""
    d = staging.rstrip("/")
    u = q(d + "/" + UNPACKING)
    # A cancelled upload's tar may still be writing into its unpack until the server sees the
    # channel closed: one rm -rf races it, so it is repeated (for up to 10 s) until it is gone.
    drop = (
        f"i=0; while {drop_unpacked(d)} 2>/dev/null; [ -e {u} ] && [ $i -lt 100 ]; do "
        "i=$((i+1)); sleep 0.1 2>/dev/null || sleep 1; done"
    )
    return (
        "; ".join(
            [
                remove(tarball, tarball + ".part", bundle_log(d)),
                drop,
                f"if [ -e {q(d + '/kexec/' + MARKER)} ]; then rm -rf {q(d + '/kexec')}; fi",
                remove(d + "/" + MARKER),
                f"rmdir {q(d)} 2>/dev/null",
            ]
        )
        + "; true"
    )


def remove_empty_folder(staging: str) -> str:
    """Remove the staging folder only if it is empty (before its owner was checked)."""
    return f"rmdir {q(staging.rstrip('/'))} 2>/dev/null; true"


def remove_line(path: str, line: str) -> str:
    """Remove exactly ``line`` from ``path``, or leave the file untouched.

    The file is rewritten only when the filtered copy was written whole and has exactly the
    other lines; a backup is kept until the rewritten file is proven equal to that copy, and
    put back if it is not. On any failure it prints ``nkw-key-kept`` and changes nothing.
    """
    f, ln = q(path), q(line)
    tmp, bak = q(path + ".nkw-tmp"), q(path + ".nkw-backup")
    return (
        f"[ -f {f} ] || exit 0; "
        f"keep() {{ rm -f {tmp}; echo {KEY_KEPT}; exit 0; }}; "
        f"cp -p {f} {bak} && cmp -s {f} {bak} || {{ rm -f {bak}; keep; }}; "
        f"grep -vxF -- {ln} {f} > {tmp}; [ $? -le 1 ] || {{ rm -f {bak}; keep; }}; "
        f'[ "$(wc -l < {tmp})" -eq "$(( $(wc -l < {f}) - $(grep -cxF -- {ln} {f}) ))" ] '
        f"|| {{ rm -f {bak}; keep; }}; "
        f"if cat {tmp} > {f} && cmp -s {tmp} {f}; then rm -f {tmp} {bak}; "
        f"else cat {bak} > {f} && cmp -s {bak} {f} && rm -f {bak}; keep; fi"
    )


def write_file(path: str, text: str, token: str) -> str:
    """Write ``text`` (no secret: it is part of the command) to ``path``, mode 0700; ``token``
    makes the here-document's end line one the text cannot hold."""
    end = f"NKW_END_{token}"
    if end in text:
        raise ValueError("the text holds the here-document's end line")
    body = text if text.endswith("\n") else text + "\n"
    f = q(path)
    return f"umask 077 && rm -f {f} && cat > {f} <<'{end}'\n{body}{end}\nchmod 700 {f}"

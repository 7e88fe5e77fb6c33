"""Placing the image: staging owners, transfer, checksum, member check, unpack, cleanup."""

from __future__ import annotations

import contextlib
import posixpath
import re
import secrets
import threading
from typing import Any

from app.core import remote_sh as sh
from app.core.errors import IntegrityError, TransferError, WizardError
from app.core.events import ProgressMeter
from app.core.imagecheck import check_tar_listing
from app.core.install.state import Step
from app.core.kinds import PrivilegeKind, ServerHash, Transfer
from app.core.preflight import another_folder
from app.core.ssh import CommandResult
from app.core.text import printable
from app.core.transfer import HASHED, remote_sha256, server_hash_for, streams_into_tar

OWNER_LINE = re.compile(r"(\d+) ([0-7]{1,4}) (/[^\n]*)")  # ``uid mode path`` from stat


def login_noise(what: str, said: str) -> TransferError:
    """A command's output that never came between its frame lines: the login prints text of
    its own (or runs something else), and how to quiet it."""
    lines = [ln.strip() for ln in said.splitlines() if ln.strip()]
    quoted = printable(" / ".join(lines)[:300]) or "nothing"
    return TransferError(
        f"Cannot read the server's answer to {what}.",
        "Its output never came whole between the marker lines the app frames it with: the "
        "login prints text of its own around every command, or runs something else (all "
        f"it said: {quoted}). Nothing was read from it.",
        "Make the login quiet for commands: in the login user's (and root's) ~/.bashrc, and "
        "what it reads, print only in interactive shells (put the lines that print inside "
        "`case $- in *i*) ... ;; esac`), and show a welcome in /etc/motd instead. Then try "
        "again.",
    )


def own_output(step: Step, cmd: str, what: str, **kw: Any) -> tuple[CommandResult, str]:
    """Run ``cmd`` framed by a random token; its result and exactly what it printed."""
    token = secrets.token_hex(8)
    res = step.run(sh.framed(cmd, token), what=what, **kw)
    if res.stdout_dropped:
        return res, ""  # its start is gone; the caller says why that is refused
    own = sh.unframe(res.stdout, token)
    if own is None:
        raise login_noise(what, res.stdout)
    return res, own


def transfer_image(step: Step) -> None:
    """Put the tarball on the server (skipped when an identical one is already there).

    Round trips cost (about 80 ms each on a small emulated server): the folder is made
    and its owners listed in one, the marker made and an earlier copy hashed in one, the
    upload stored and hashed in one, and the move reports the size it put in place."""
    setup, state = step.setup, step.state
    staging = step.staging
    res, own = own_output(
        step, sh.make_folder_and_list_owners(staging), "making the staging folder"
    )
    if res.status == 3:
        raise TransferError(
            f"Cannot create {staging} on the server: {res.stderr.strip()[:200]}",
            "The image needs a writable staging folder.",
            "C" + another_folder(staging)[1:] + ".",
        )
    _check_staging_owner(step, res, own)
    # From here on every command names the real path the check judged (step.staging).
    staging, tarball = step.staging, step.remote_tarball
    token = secrets.token_hex(8)
    res = step.run(
        sh.mark_and_hash(f"{staging}/{sh.MARKER}", tarball, token),
        timeout=max(setup.settings.command_timeout, 300),
        what="the staging marker and an earlier copy's sha256",
    )
    want = setup.plan.sha256
    if want and sh.parse_sha256(res.stdout, token) == want:
        step.log("transfer", "The same image is already on the server; not sending it again.")
        return
    part = tarball + ".part"
    image = setup.plan.image
    if state.mode == Transfer.REMOTE:
        _remote_download(step, part)
    else:
        if image is None:
            raise TransferError("No local image to upload.", "", "Download the image first.")
        if streams_into_tar(setup.facts, setup.plan):
            # Unpacked as it arrives, hashed beside it; the checksum stage compares before
            # anything of it is used, and the unpack stage only moves it into place.
            state.server_hash = ServerHash.WHILE_UNPACKING
            state.streamed_sha = setup.session.upload(
                image.path, staging, emit=step.emit, cancel=step.cancel,
                server_hash=state.server_hash,
            )  # fmt: skip
            return
        # The server hashes what it received in the upload's own command (when it has a
        # tool for it), and the checksum stage compares; else it reads the file again.
        state.server_hash = server_hash_for(setup.facts)
        state.streamed_sha = setup.session.upload(
            image.path, part, emit=step.emit, cancel=step.cancel, server_hash=state.server_hash
        )
    res, own = own_output(step, sh.move_and_size(part, tarball), "moving the image into place")
    if not res.ok:
        raise TransferError(f"Cannot move the image into place: {res.stderr.strip()[:200]}")
    size = own.strip()
    if image is not None and size != str(image.info.size):
        state.streamed_sha = None  # not the whole file: the checksum stage hashes it again


def owner_lines(own: str) -> list[tuple[str, str, str]] | None:
    """The ``uid mode path`` lines of ``owners_up_to_root``, strictly: one for the folder's
    real path and one for each parent up to ``/``, in order; None for anything else."""
    lines = own.splitlines()
    matches = [OWNER_LINE.fullmatch(ln) for ln in lines]
    if not lines or any(m is None for m in matches):
        return None
    out = [(m.group(1), m.group(2), m.group(3)) for m in matches if m is not None]
    paths = [p for _o, _m, p in out]
    chain = [paths[0]]
    while chain[-1] != "/":
        chain.append(posixpath.dirname(chain[-1]))
    return out if paths == chain and posixpath.normpath(paths[0]) == paths[0] else None


def _check_staging_owner(step: Step, res: CommandResult, own: str) -> None:
    """Refuse a staging folder (or a parent) that another user owns or may write to, from
    the ``uid mode path`` lines ``make_folder_and_list_owners`` printed; once it passes,
    every later command names the real path judged here (``Step.staging``).

    ``run`` executes as root from there: whoever can change the folder could change what
    root runs. A parent writable by others is fine only with the sticky bit (as ``/tmp``).
    A link on the way (given in the path) is not followed again after the check: whoever
    may re-point it changes nothing that runs.
    """
    setup = step.setup
    staging, uid = step.staging, setup.facts.uid
    lines = owner_lines(own) if res.ok else None
    if lines is None:
        said = printable((res.stderr.strip() or own.strip())[:200]) or "(nothing)"
        raise TransferError(
            f"Cannot check who owns {staging} on the server.",
            f"stat said: {said}",
            "Choose a staging folder you own (--staging-dir DIR).",
        )
    for i, (owner, mode_text, path) in enumerate(lines):
        mode = int(mode_text, 8)
        owned = int(owner) in (0, uid)
        others_write = bool(mode & 0o022)
        allowed = not others_write or (i > 0 and int(owner) == 0 and bool(mode & 0o1000))
        if not owned or not allowed:
            whose = f"user id {owner}" if not owned else "others too"
            raise TransferError(
                f"The staging folder {staging} is not safe: {path} "
                + (f"belongs to {whose}." if not owned else "may be written by others.")
                + f" (owner {owner}, mode {mode_text})",
                "kexec/run runs as root from the staging folder; whoever can change it "
                "could make root run something else. Nothing was put there.",
                "Choose a staging folder that you (or root) own and only you can write "
                "(--staging-dir DIR), for example ~/nixos-kexec-wizard.",
            )
    real = lines[0][2]
    if real != staging:
        step.log("transfer", f"The staging folder {staging} is {real}; the app uses that path.")
    step.state.staging = real


def _remote_download(step: Step, part: str) -> None:
    """The server downloads the image itself; its progress is the size of the file so far."""
    session = step.setup.session
    asset = step.setup.plan.asset
    assert asset is not None
    cmd = sh.download(asset.url, part, allow_http=step.setup.settings.allow_http)
    result: dict[str, Any] = {}

    def worker() -> None:
        try:
            result["res"] = session.run(
                cmd, timeout=3600, cancel=step.cancel, what="the server's download"
            )
        except BaseException as exc:
            result["exc"] = exc

    th = threading.Thread(target=worker, name="remote-download", daemon=True)
    th.start()
    meter = ProgressMeter(step.emit, "transfer", asset.size)
    while th.is_alive():
        th.join(1.0)
        if step.cancel.cancelled:
            break
        with contextlib.suppress(WizardError):
            token = secrets.token_hex(8)
            res = session.run(sh.framed(sh.file_size(part), token), timeout=5, what="stat")
            own = (sh.unframe(res.stdout, token) or "").strip()
            if res.ok and own.isdigit():
                meter.advance(int(own) - meter.done)
    th.join()
    if "exc" in result:
        raise result["exc"]
    res = result["res"]
    if not res.ok:
        raise TransferError(
            f"The server could not download {asset.url}: {res.stderr.strip()[:300]}",
            "The server's own download failed.",
            "Try again with --transfer upload to send the image from this computer.",
        )
    meter.finish()


def compare_sha256(step: Step) -> None:
    """Compare the server's sha256 of the tarball with the verified one."""
    setup, state = step.setup, step.state
    tarball, remote = step.remote_tarball, state.mode == Transfer.REMOTE
    want = setup.plan.sha256
    streamed = state.streamed_sha
    if state.server_hash is ServerHash.WHILE_UNPACKING:
        _compare_unpacked(step, streamed, want)
        return
    got = streamed or remote_sha256(
        setup.session,
        tarball,
        timeout=max(setup.settings.command_timeout, 300),
        cancel=step.cancel,
    )
    if want is None and remote:
        raise TransferError(
            "The image the server downloaded has no published sha256 to check it against.",
            "Nothing may boot that was not checked.",
            "Use --transfer upload: the image is then checked on this computer first.",
        )
    if want is None:
        step.log(
            "checksum", f"No checksum to compare against (server computed {got}).", level="warn"
        )
        return
    if got is None:
        if not remote:
            step.log(
                "checksum",
                "The server has neither sha256sum nor openssl: the image was sent from the "
                "verified copy on this computer over SSH, whose integrity checks protect it.",
                level="warn",
            )
            return
        raise TransferError(
            "The server cannot compute a sha256 of the image.", "", "Install coreutils."
        )
    if got != want:
        step.run(sh.remove(tarball), what="rm")
        raise TransferError(
            f"The image on the server has sha256 {got}, expected {want}.",
            "It was damaged on the way and must not be booted. It was deleted.",
            "Try the install again.",
        )
    how = (
        f" ({HASHED[state.server_hash]}, and its size matches)"
        if streamed and state.server_hash in HASHED
        else ""
    )
    step.log("checksum", f"sha256 matches on the server{how}: {got}")
    if remote and not setup.plan.bundle:
        _check_remote_members(step)


def _compare_unpacked(step: Step, got: str | None, want: str | None) -> None:
    """The digest of an upload unpacked as it arrived: anything but a match removes the
    unpack, unused."""
    if got is not None and got == want:
        step.log(
            "checksum",
            f"sha256 matches on the server ({HASHED[ServerHash.WHILE_UNPACKING]}): {got}",
        )
        return
    step.run(sh.drop_unpacked(step.staging), what="removing the unpack")
    if got is None:
        raise TransferError(
            "The server printed no sha256 of the image it unpacked.",
            "The upload or its unpack broke off, so what arrived cannot be proven whole. "
            "It was removed, unused.",
            "Try the install again.",
        )
    raise TransferError(
        f"The image the server unpacked has sha256 {got}, expected {want}.",
        "It was damaged on the way and must not be booted. It was removed, unused.",
        "Try the install again.",
    )


def _check_remote_members(step: Step) -> None:
    """The tarball member check, on the server's copy that this computer never saw."""
    setup = step.setup
    tarball, name = step.remote_tarball, setup.plan.file_name
    try:
        res, own = own_output(
            step,
            sh.list_tarball(tarball),
            "listing the image",
            timeout=max(setup.settings.command_timeout, 300),
        )
        if not res.ok:
            raise TransferError(
                f"The server cannot list the image: {res.stderr.strip()[:200]}",
                "An image whose members cannot be checked is not unpacked.",
                "Use --transfer upload.",
            )
        if res.stdout_dropped:
            # Only the tail was kept: members before it would go unchecked.
            raise IntegrityError(
                f"The member list of {name} is too long to check "
                f"({res.stdout_dropped + len(res.stdout)} bytes).",
                "The upstream tarball has a handful of members; this one does not look like "
                "it, and a member that was not checked must not be unpacked. It was deleted.",
                "Use an image from the nixos-images releases, or --transfer upload.",
            )
        check_tar_listing(name, own)
    except WizardError:
        step.run(sh.remove(tarball), what="rm")
        raise
    step.log("checksum", "The image's members have the upstream layout.")


def unpack(step: Step) -> None:
    """Unpack into <staging>/kexec as the login user, setting aside a folder we did not make."""
    setup = step.setup
    staging = step.staging
    if setup.plan.bundle:
        res = step.run(sh.make_executable(step.remote_tarball), what="chmod")
        if not res.ok:
            raise TransferError(
                f"The kexec-bundle cannot be made executable: {res.stderr.strip()[:300]}",
                "It runs as a program on the server.",
                "Choose a staging folder you own (--staging-dir).",
            )
        return
    # A previous run of `run` (as root) leaves root-owned files in our kexec/ folder: a
    # login that is not root removes them as root first; root does both in one command.
    streamed = step.state.server_hash is ServerHash.WHILE_UNPACKING
    cmd = sh.place_unpacked(staging) if streamed else sh.unpack(staging, setup.plan.file_name)
    privilege = setup.session.privilege
    if privilege is not None and privilege.kind != PrivilegeKind.ROOT:
        step.run(
            sh.remove_own_unpack(staging), privileged=True, what="removing the previous unpack"
        )
    else:
        cmd = f"{sh.remove_own_unpack(staging)}; {cmd}"
    res = step.run(cmd, timeout=max(setup.settings.command_timeout, 300), what="tar")
    if not res.ok:
        raise TransferError(
            f"Unpacking the image on the server failed: {res.stderr.strip()[:300]}",
            "The staging folder may be full, or the image is damaged.",
            f"Free space in {staging} and try again, or {another_folder(staging)}.",
        )


def cleanup(step: Step) -> None:
    """Leave the server as it was: remove what we put there, and the key we added."""
    setup, state = step.setup, step.state
    session, staging, added = setup.session, step.staging, state.added_key
    steps = []
    if state.staging:
        clean = sh.clean_staging(staging, step.remote_tarball)
        steps.append((clean, session.privilege is not None))
    else:
        # Not checked (yet): only an empty folder the mkdir made goes, as the login user.
        steps.append((sh.remove_empty_folder(staging), False))
    if added is not None:
        steps.append((sh.remove_line(*added), False))
    try:
        for cmd, privileged in steps:
            # `run` leaves root-owned files in kexec/: remove them as root.
            res = session.run(cmd, privileged=privileged, timeout=30, what="cleanup")
            if sh.KEY_KEPT in res.stdout:
                f, _line = added or ("", "")
                step.log(
                    "cleanup",
                    f"The app's key line could not be removed from {f} (the server's disk "
                    "may be full); the file was left as it was, with your keys in it.",
                    level="warn",
                )
                return
    except WizardError as exc:
        step.log("cleanup", f"Could not clean up on the server: {exc.what}", level="warn")
        return
    extra = " and removed the app's key" if added else ""
    step.log("cleanup", f"Removed the image from the server{extra}; it is as it was.")

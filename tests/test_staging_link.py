"""A staging path through another user's link: what runs as root is what the owner check saw."""

from __future__ import annotations

import io
import os
import pwd
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest

from app.core.errors import WizardError
from app.core.install.kexec import run_kexec
from app.core.install.place import compare_sha256, transfer_image, unpack
from app.core.settings import Settings
from tests.support.releases import ASSET, ReleasesServer
from tests.support.sshd import SSHEnv
from tests.test_install import make_rig

pytestmark = pytest.mark.fault


def _evil_tarball(proof: Path) -> bytes:
    """A tarball of the same name whose ``kexec/run`` leaves a proof of who ran it."""
    run = f"#!/bin/sh\nid -u > {proof}\necho machine will boot into nixos\n".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        d = tarfile.TarInfo("kexec")
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(d)
        f = tarfile.TarInfo("kexec/run")
        f.size, f.mode = len(run), 0o755
        tar.addfile(f, io.BytesIO(run))
    return buf.getvalue()


def _link_as(user: pwd.struct_passwd, target: Path, link: Path) -> None:
    """Point ``link`` at ``target`` as ``user`` would: a new link of theirs put in its place."""
    new = link.with_name(".new-link")
    os.symlink(target, new)
    os.lchown(new, user.pw_uid, user.pw_gid)
    os.replace(new, link)


def test_a_link_re_pointed_after_the_owner_check_changes_nothing_that_runs(
    ssh_env: SSHEnv, trusted: Path, settings: Settings, releases: ReleasesServer, tmp_path: Path
) -> None:
    """nkw-plain owns a folder and the link in it that leads to nkw-nopw's own staging
    folder: the owner check passes (the folder it leads to is nkw-nopw's). nkw-plain then
    points the link at a folder of theirs holding a tarball of the same name, between the
    check and the unpack: root must still unpack and run only what was checked."""
    other = pwd.getpwnam(ssh_env.plain.name)
    shared = Path(tempfile.mkdtemp(prefix="nkw-shared-", dir="/var/tmp"))
    try:
        os.chmod(shared, 0o755)
        os.chown(shared, other.pw_uid, other.pw_gid)
        real = ssh_env.nopw.home / "real-stage"
        real.mkdir(mode=0o700)
        shutil.chown(real, ssh_env.nopw.name, ssh_env.nopw.name)
        evil = shared / "evil"
        evil.mkdir()
        proof = shared / "proof"
        (evil / ASSET).write_bytes(_evil_tarball(proof))
        for p in (evil, evil / ASSET):
            os.chown(p, other.pw_uid, other.pw_gid)
        os.chmod(evil, 0o777)  # so that nkw-nopw's tar can unpack there
        link = shared / "stage"
        _link_as(other, real, link)

        rig = make_rig(ssh_env, trusted, settings, releases, tmp_path, staging=str(link))
        step = rig.step()
        transfer_image(step)  # the owner check passes: the link leads to nkw-nopw's folder
        _link_as(other, evil, link)  # now it leads to nkw-plain's
        try:
            compare_sha256(step)
            unpack(step)
            run_kexec(step)
        except WizardError:
            pass  # refusing is fine too; running nkw-plain's `run` is not
        assert not proof.exists(), f"nkw-plain's kexec/run ran as uid {proof.read_text()}"
        assert not (evil / "kexec").exists()  # nothing was unpacked where the link leads now
        # What was checked is what was unpacked and run, as root.
        assert (real / "kexec" / "kexec.log").read_text().startswith("uid=0 --load ")
        assert rig.step().staging == str(real)
        rig.session.close()
    finally:
        shutil.rmtree(shared, ignore_errors=True)
        shutil.rmtree(ssh_env.nopw.home / "real-stage", ignore_errors=True)

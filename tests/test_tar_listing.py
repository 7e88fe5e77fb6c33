"""The member check on the server's ``tar -tv`` listing agrees with the local one on every member."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.errors import IntegrityError
from app.core.imagecheck import check_tar_listing, check_tarball
from tests.support.releases import ASSET
from tests.support.tarballs import standin_tarball

KINDS = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE}
KINDS |= {"hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}
# What the server's tar may be: GNU tar (escapes odd bytes) or busybox (prints them raw).
LISTERS = [["tar"]] + ([["busybox", "tar"]] if shutil.which("busybox") else [])

Member = tuple[str, str, str, str]  # name, kind, link target, owner name


def _tarball(path: Path, members: list[Member]) -> Path:
    """The stand-in tarball with ``members`` appended, in order."""
    good = standin_tarball(path.with_suffix(".good"))
    buf = io.BytesIO()
    with tarfile.open(good) as src, tarfile.open(fileobj=buf, mode="w:gz") as out:
        for m in src.getmembers():
            out.addfile(m, src.extractfile(m) if m.isfile() else None)
        for name, kind, target, owner in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.uname = KINDS[kind], target, owner
            out.addfile(info, io.BytesIO(b"") if kind == "file" else None)
    path.write_bytes(buf.getvalue())
    return path


def _verdicts(tar: Path) -> dict[str, str]:
    """``ok`` or the refusal, from the local check and from each tar's listing."""
    out = {}
    try:
        check_tarball(tar)
        out["local"] = "ok"
    except IntegrityError as exc:
        out["local"] = "refused"
        out["local-why"] = exc.what
    for lister in LISTERS:
        listing = subprocess.run(
            [*lister, "-tvzf", str(tar)], capture_output=True, env={"LC_ALL": "C"}, check=True
        ).stdout.decode(errors="replace")
        try:
            check_tar_listing(ASSET, listing)
            out[lister[0]] = "ok"
        except IntegrityError:
            out[lister[0]] = "refused"
    return out


def _agree(verdicts: dict[str, str]) -> bool:
    return len({v for k, v in verdicts.items() if not k.endswith("-why")}) == 1


@pytest.mark.fault
def test_a_link_whose_name_holds_an_arrow_is_refused_by_both(tmp_path: Path) -> None:
    """``kexec/a -> b`` leading to /etc lists as ``kexec/a -> b -> /etc``: read as the link
    ``kexec/a`` to ``b -> /etc`` it looked as if it stayed inside."""
    tar = _tarball(tmp_path / ASSET, [("kexec/a -> b", "symlink", "/etc", "")])
    got = _verdicts(tar)
    assert got["local"] == "refused" and _agree(got), got


TABLE: list[tuple[list[Member], str]] = [
    ([], "ok"),
    ([("kexec/s", "symlink", ".", ""), ("kexec/here", "symlink", "s/run", "")], "ok"),
    ([("kexec/h", "hardlink", "kexec/run", "")], "refused"),
    ([("kexec/extra.conf", "file", "", "nixbld")], "ok"),
    ([("kexec/a -> b", "symlink", "/etc", "")], "refused"),
    ([("kexec/a -> b", "symlink", "c", "")], "refused"),
    ([("kexec/a", "symlink", "b -> /etc", "")], "refused"),
    ([("kexec/a -> b", "file", "", "")], "refused"),
    ([("kexec/c link to d", "symlink", "e", "")], "refused"),
    ([("kexec/c link to d", "hardlink", "kexec/run", "")], "refused"),
    ([("kexec/h", "hardlink", "kexec/run -> x", "")], "refused"),
    ([("kexec/sp ace", "file", "", "")], "refused"),
    ([("kexec/back\\slash", "file", "", "")], "refused"),
    ([("kexec/new\nline", "file", "", "")], "refused"),
    ([("kexec/caf\u00e9", "file", "", "")], "refused"),
    ([("kexec/f", "file", "", "a b")], "refused"),
    ([("kexec/f", "file", "", "1970-01-01 00:00 kexec/x")], "refused"),
    ([("kexec/fifo", "fifo", "", "")], "refused"),
    ([("kexec/up", "symlink", "../etc", "")], "refused"),
]


@pytest.mark.parametrize(("members", "want"), TABLE, ids=[repr(m) for m, _w in TABLE])
def test_both_checks_give_the_same_verdict_on_crafted_members(
    tmp_path: Path, members: list[Member], want: str
) -> None:
    got = _verdicts(_tarball(tmp_path / ASSET, members))
    assert _agree(got) and got["local"] == want, got


PIECES = [
    "kexec/",
    "a",
    "b",
    " -> ",
    " link to ",
    "/",
    "..",
    ".",
    " ",
    "\\",
    "\u00e9",
    "\t",
    "/etc",
]
names = st.lists(st.sampled_from(PIECES), min_size=1, max_size=5).map("".join)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    members=st.lists(
        st.tuples(
            st.just("kexec/").flatmap(lambda k: names.map(lambda n: k + n)),
            st.sampled_from(["file", "symlink", "hardlink", "dir"]),
            names,
            st.sampled_from(["", "root", "a b", "\u00e9"]),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_both_checks_agree_on_any_member_made_of_awkward_pieces(
    tmp_path: Path, members: list[Member]
) -> None:
    members = [(n, k, t if k in ("symlink", "hardlink") else "", o) for n, k, t, o in members]
    got = _verdicts(_tarball(tmp_path / ASSET, members))
    assert _agree(got), (members, got)

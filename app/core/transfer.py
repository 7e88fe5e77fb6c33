"""How the image reaches the server and how the server hashes it: the transfer policy."""

from __future__ import annotations

from app.core import remote_sh as sh
from app.core.catalog import Asset
from app.core.errors import TransferError
from app.core.events import CancelToken
from app.core.kinds import ServerHash, Transfer
from app.core.plan import InstallPlan
from app.core.probe import Facts
from app.core.ssh import Session

# How the server hashed an upload, in the words the checksum stage uses.
HASHED = {
    ServerHash.WHILE_RECEIVING: "hashed as it arrived",
    ServerHash.AFTER_STORING: "hashed once stored, in the upload's own command",
    ServerHash.WHILE_UNPACKING: "hashed as it was unpacked into a private folder, none of "
    "which was used before this",
}


def choose_transfer(requested: Transfer, facts: Facts, asset: Asset | None) -> tuple[Transfer, str]:
    """``upload`` or ``remote``, with the reason in words.

    The server downloads only an image with a published sha256 (which it checks before
    anything is unpacked), and only with curl, whose ``--proto`` keeps it on https.
    """
    downloader = facts.has("curl")
    can_check = facts.has("sha256sum") or facts.has("openssl")
    reach = bool(facts.reach_v4 or facts.reach_v6)
    unasked = facts.reach_v4 is None and facts.reach_v6 is None  # never claim what was not seen
    has_digest = asset is not None and asset.digest is not None
    requested = Transfer(requested)
    if requested == Transfer.UPLOAD:
        return Transfer.UPLOAD, "you chose to upload from this computer"
    if requested == Transfer.REMOTE:
        missing = [
            why
            for ok, why in (
                (asset is not None, "the image is a local file"),
                (
                    asset is None or asset.digest is not None,
                    "no sha256 was published for it, so nothing could check it before it boots",
                ),
                (downloader, "the server has no curl (needed to stay on https)"),
                (reach or unasked, "the server cannot reach the download server"),
                (can_check, "the server has neither sha256sum nor openssl to check the file"),
            )
            if not ok
        ]
        if missing:
            raise TransferError(
                "The server cannot download the image itself: " + "; ".join(missing) + ".",
                "The image must be checked on the server before it is booted.",
                "Use --transfer upload (or auto) to send it from this computer.",
            )
        return Transfer.REMOTE, "you chose to let the server download it"
    if asset is not None and downloader and reach and has_digest and can_check:
        return (
            Transfer.REMOTE,
            "the server reaches the download server and can check the sha256 itself",
        )
    if asset is None:
        return Transfer.UPLOAD, "the image is a file on this computer"
    if not has_digest:
        return Transfer.UPLOAD, "the server downloads only images with a published sha256"
    if not reach:
        return Transfer.UPLOAD, "the server cannot reach the download server"
    return Transfer.UPLOAD, "the server lacks curl or a sha256 tool"


def server_hash_for(facts: Facts) -> ServerHash:
    """How the server should hash an upload: beside the transfer where it has CPUs to spare
    (or says nothing of them), after storing it on one CPU, where the pipe beside the
    transfer costs more than a second read from the page cache (2.9 vs 2.4 s for 22 MB on
    the test bed's one emulated CPU); not at all without a tool for it."""
    if not (facts.has("openssl") or facts.has("sha256sum")):
        return ServerHash.NONE
    return ServerHash.AFTER_STORING if facts.cpus == 1 else ServerHash.WHILE_RECEIVING


def streams_into_tar(facts: Facts, plan: InstallPlan) -> bool:
    """Whether an upload is unpacked as it arrives (hashed beside it, used only once the
    digest matched) instead of stored, then unpacked: on two or more CPUs, where tar and the
    hash run beside the transfer (on one CPU storing first was measured faster), for a
    tarball whose sha256 is known, on a server with the tools for it."""
    return (
        facts.cpus is not None
        and facts.cpus >= 2
        and not plan.bundle
        and plan.image is not None
        and plan.sha256 is not None
        and server_hash_for(facts) is not ServerHash.NONE
        and facts.has("mkfifo")
        and facts.has("tee")
    )


def remote_sha256(
    session: Session, path: str, *, timeout: float, cancel: CancelToken | None = None
) -> str | None:
    """The sha256 of a file on the server, or None if it is missing or nothing can hash it.

    OpenSSL uses the CPU's SHA instructions where coreutils' sha256sum often does not (about
    7x faster on a recent x86 server), so it goes first; sha256sum is the fallback.
    """
    res = session.run(
        sh.sha256(path),
        timeout=timeout,
        cancel=cancel,
        what="sha256 of the image",
    )
    return sh.parse_sha256(res.stdout)

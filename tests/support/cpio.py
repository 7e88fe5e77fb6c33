"""Reading newc cpio archives (what `run` appends), and gzip'd stand-in initrds."""

from __future__ import annotations

import gzip
import stat
import zlib

from app.core.netboot import newc

MAGIC = b"070701"


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


def read_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    """Every regular file in one or more concatenated newc archives (later ones win)."""
    files: dict[str, tuple[int, bytes]] = {}
    off = 0
    while (off := data.find(MAGIC, off)) >= 0 and off + 110 <= len(data):
        hdr = data[off : off + 110]
        fields = [int(hdr[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[off + 110 : off + 110 + namesize - 1].decode(errors="replace")
        off += 110 + namesize
        off += _pad4(off)
        content = data[off : off + size]
        off += size + _pad4(size)
        if name != "TRAILER!!!" and stat.S_ISREG(mode):
            files[name.removeprefix("./")] = (stat.S_IMODE(mode), content)
    return files


def read_initrd(data: bytes) -> dict[str, tuple[int, bytes]]:
    """The files of an initrd made of concatenated gzip'd newc archives."""
    out = bytearray()
    while data:
        d = zlib.decompressobj(wbits=31)
        out += d.decompress(data)
        data = d.unused_data.lstrip(b"\0")
    return read_newc(bytes(out))


def gzip_newc(files: dict[str, tuple[int, bytes]]) -> bytes:
    """A gzip'd newc archive of ``{name: (mode, data)}`` files, as the kernel takes for an initrd."""
    entries = [(name, stat.S_IFREG | mode, data) for name, (mode, data) in files.items()]
    return gzip.compress(newc(entries), compresslevel=1, mtime=0)

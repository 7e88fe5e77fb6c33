"""Just enough of the newc cpio format to build stand-in initrds and read what `run` appends."""

from __future__ import annotations

import gzip
import stat
import zlib

MAGIC = b"070701"


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


def write_newc(files: dict[str, tuple[int, bytes]]) -> bytes:
    """A newc archive of ``{name: (mode, data)}`` (regular files only)."""
    out = bytearray()
    for ino, (name, (mode, data)) in enumerate([*files.items(), ("TRAILER!!!", (0, b""))], 1):
        raw = name.encode() + b"\0"
        fields = [
            ino,
            (stat.S_IFREG | mode) if mode else 0,
            0,
            0,
            1,
            0,
            len(data),
            0,
            0,
            0,
            0,
            len(raw),
            0,
        ]
        out += MAGIC + b"".join(b"%08X" % f for f in fields)
        out += raw + b"\0" * _pad4(110 + len(raw))
        out += data + b"\0" * _pad4(len(data))
    return bytes(out)


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
    """A gzip'd newc archive, as the kernel takes for an initrd."""
    return gzip.compress(write_newc(files), compresslevel=1, mtime=0)

"""A disk image read from the host side: its GPT partitions and what file system each one holds."""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

SECTOR = 512
# The type GUIDs of sgdisk's codes the layout uses.
TYPE_CODES = {
    uuid.UUID("21686148-6449-6e6f-744e-656564454649"): "EF02",
    uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b"): "EF00",
    uuid.UUID("0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"): "8200",
    uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4"): "8300",
}


@dataclass(frozen=True)
class GptPartition:
    """One used entry of the partition table."""

    number: int
    typecode: str
    label: str
    first: int  # sectors
    last: int

    @property
    def size(self) -> int:
        """In bytes."""
        return (self.last - self.first + 1) * SECTOR


def read_gpt(image: Path) -> list[GptPartition]:
    """The primary GPT of a raw image, as the firmware reads it (UEFI spec, chapter 5)."""
    with image.open("rb") as f:
        f.seek(SECTOR)
        header = f.read(92)
        assert header[:8] == b"EFI PART", "no GPT header"
        entries_lba, count, size = struct.unpack_from("<QII", header, 72)
        f.seek(entries_lba * SECTOR)
        table = f.read(count * size)
    out = []
    for n in range(count):
        e = table[n * size : (n + 1) * size]
        kind = uuid.UUID(bytes_le=e[:16])
        if kind.int == 0:
            continue
        first, last = struct.unpack_from("<QQ", e, 32)
        label = e[56:128].decode("utf-16-le").rstrip("\0")
        out.append(GptPartition(n + 1, TYPE_CODES.get(kind, str(kind)), label, first, last))
    return out


def file_system(image: Path, part: GptPartition) -> str:
    """What the partition's first blocks say it holds: ext4, vfat, swap or "" (by the magic
    numbers mkfs writes, read without mounting anything)."""
    with image.open("rb") as f:
        f.seek(part.first * SECTOR)
        head = f.read(8192)
    if head[1080:1082] == b"\x53\xef":
        return "ext4"
    if head[82:87] == b"FAT32" or head[54:59] in (b"FAT16", b"FAT12"):
        return "vfat"
    if head[4086:4096] == b"SWAPSPACE2":
        return "swap"
    return ""

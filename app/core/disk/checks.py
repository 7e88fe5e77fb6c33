"""Checks before the wipe: memory for the evaluation (with a swapfile) and a large enough disk."""

from __future__ import annotations

from dataclasses import dataclass

from app.core.disk.disks import Disk, size_text
from app.core.disk.layout import Layout
from app.core.errors import PreflightStop

MiB = 1 << 20
GiB = 1 << 30
# Evaluating a NixOS configuration takes about 1.8-2 GiB (Nix issue 5200) beside the installer's
# own RAM root: below this much memory and swap together, the install gets a swapfile.
EVAL_MEMORY = 3 * GiB
# The installer lives in RAM; below about 1 GiB (a "1 GiB" server reports a little less) it
# has no room left for Nix at all, swap or not.
MIN_RAM = 896 * MiB
MIN_ROOT = 8 * GiB  # a small system, its first rebuild, and nixos-install's caches


@dataclass(frozen=True)
class Plan:
    """What the install needs on this server: the swapfile to add (MiB, 0 for none)."""

    swapfile_mib: int = 0


def memory_plan(mem_total: int | None, swap_total: int | None, layout: Layout) -> Plan:
    """A swapfile on the new root when RAM and swap (the installer's and the layout's
    partition) stay under what the evaluation needs; PreflightStop when RAM is too small even
    for that. An unknown RAM size plans the swapfile, which costs only disk space."""
    if mem_total is not None and mem_total < MIN_RAM:
        raise PreflightStop(
            f"The installer has {size_text(mem_total)} of RAM; installing needs about 1 GiB "
            "or more.",
            "The installer runs from RAM, and Nix's evaluation of the configuration needs about "
            "2 GiB more; swap helps with the second, not the first. Nothing was written.",
            "Resize the server to at least 2 GiB of RAM for the install (it can shrink again "
            "afterwards).",
        )
    have = (mem_total or 0) + (swap_total or 0) + layout.swap_mib * MiB
    if mem_total is not None and have >= EVAL_MEMORY:
        return Plan()
    short = EVAL_MEMORY - have if mem_total is not None else 2 * GiB
    return Plan(swapfile_mib=max(1024, -(-short // (512 * MiB)) * 512))


def check_disk_size(disk: Disk, layout: Layout, plan: Plan) -> None:
    """PreflightStop when the disk cannot hold the layout, the swapfile and a usable root."""
    bios = 1 if layout.arch == "x86_64" else 0
    need = (bios + layout.esp_mib + layout.swap_mib + plan.swapfile_mib) * MiB + MIN_ROOT
    if disk.size < need:
        raise PreflightStop(
            f"{disk.describe()} is too small: the layout needs {size_text(need)}.",
            f"The boot partitions, swap ({layout.swap_mib + plan.swapfile_mib} MiB) and a root "
            f"of at least {size_text(MIN_ROOT)} must fit. Nothing was written.",
            "Choose a larger disk (--disk), or a smaller swap partition (--swap-size).",
        )

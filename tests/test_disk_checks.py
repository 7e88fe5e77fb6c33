"""Checks before the wipe: the swapfile a small server gets, and the RAM and disk sizes refused."""

from __future__ import annotations

import pytest

from app.core.disk.checks import GiB, MiB, Plan, check_disk_size, memory_plan
from app.core.disk.disks import Disk
from app.core.disk.layout import Layout
from app.core.errors import PreflightStop

VDA = Layout("/dev/vda")


@pytest.mark.parametrize(
    ("ram", "swap", "layout", "swapfile"),
    [
        (4 * GiB, 0, VDA, 0),  # enough RAM: no swapfile
        (2 * GiB, 0, VDA, 1024),  # 1 GiB short
        (2 * GiB, 0, Layout("/dev/vda", swap_mib=1024), 0),  # the swap partition covers it
        (int(1.5 * GiB), 256 * MiB, VDA, 1536),  # short by 1.25 GiB: rounded up to 512 MiB
        (None, None, VDA, 2048),  # RAM unknown: a swapfile costs only disk space
    ],
)
def test_a_server_short_of_memory_for_the_evaluation_gets_a_swapfile(
    ram: int | None, swap: int | None, layout: Layout, swapfile: int
) -> None:
    assert memory_plan(ram, swap, layout) == Plan(swapfile_mib=swapfile)


@pytest.mark.fault
def test_ram_no_swap_can_make_up_for_is_refused_before_anything_is_written() -> None:
    with pytest.raises(PreflightStop) as err:
        memory_plan(800 * MiB, 8 * GiB, VDA)
    assert "Nothing was written" in err.value.why and "2 GiB" in err.value.fix


@pytest.mark.fault
def test_a_disk_too_small_for_the_layout_and_swapfile_is_refused() -> None:
    disk = Disk("vda", "/dev/vda", 10 * GiB)
    check_disk_size(disk, VDA, Plan())  # 8 GiB root + 513 MiB of boot partitions fit
    with pytest.raises(PreflightStop) as err:
        check_disk_size(disk, VDA, Plan(swapfile_mib=2048))
    assert "10.0 GiB" in err.value.what and "--disk" in err.value.fix

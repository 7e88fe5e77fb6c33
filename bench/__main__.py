"""Run every benchmark and print one table (``make bench``); ``--write`` keeps it in a file."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import download, fleet, gui_stall, netboot, reachable, upload, vm_install
from bench.common import ROOT, Row

BENCHES: dict[str, Callable[[], list[Row]]] = {
    "upload": upload.measure,
    "download": download.measure,
    "netboot": netboot.measure,
    "reachable": reachable.measure,
    "fleet": fleet.measure,
    "vm": vm_install.measure,
    "gui-start": lambda: _gui_start(),
    "gui-stall": gui_stall.measure,
    "gui-keyring": gui_stall.measure_keyring,
}


def _gui_start() -> list[Row]:
    # A fresh process per launch: gui_start.py times whole processes.
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gui_start.py"), "--runs", "7", "--rows"],
        check=True, capture_output=True, text=True, cwd=ROOT,
    ).stdout  # fmt: skip
    start, rss = (float(x) for x in out.split())
    return [
        Row("GUI: process start to the first window shown", "-", f"{start:.2f} s median of 7",
            "<= 0.8 s", start <= 0.8),
        Row("GUI: resident memory, idle on the first page", "-", f"{rss:.0f} MB", "<= 150 MB",
            rss <= 150),
    ]  # fmt: skip


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    lines = ["| what | reference | result | target | |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r.what} | {r.reference} | {r.result} | {r.target} | {r.verdict} |" for r in rows]
    return "\n".join(lines)


def machine() -> str:
    """One line about where the figures come from."""
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
         if ln.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", action="append", choices=sorted(BENCHES), help="run just these")
    ap.add_argument("--write", type=Path, help="also write the table to this Markdown file")
    args = ap.parse_args()
    rows: list[Row] = []
    t0 = time.monotonic()
    for name in args.only or BENCHES:
        print(f"-- {name} ...", file=sys.stderr, flush=True)
        got = BENCHES[name]()
        for r in got:
            print(f"   {r.what}: {r.result} [{r.verdict}]", file=sys.stderr, flush=True)
        rows += got
    text = table(rows)
    print(text)
    if args.write:
        took = time.monotonic() - t0
        args.write.write_text(
            "# Benchmarks\n\n"
            f"Measured by `make bench` on {datetime.date.today():%Y-%m-%d}: {machine()}; "
            f"{took / 60:.0f} min. Medians of several runs; each compares against its reference "
            "in the same run. Reproduce with `make bench` (as root: it starts sshd, adds a "
            "local user and boots QEMU).\n\n" + text + "\n\n" + NOTES
        )
    return 0 if all(r.met is not False for r in rows) else 1


NOTES = """\
## How each row is measured

- **transfer**: `bench/upload.py`. 400 MiB of random bytes to an OpenSSH `sshd` on 127.0.0.1.
  The app's path is `Session.upload` (paramiko, AES-GCM, 64 MiB window, no copy of the unsent
  rest per packet) and then `remote_sha256` on the server (OpenSSL first: it uses the CPU's SHA
  instructions, coreutils' `sha256sum` here runs at 170 MB/s). The reference is
  `ssh host 'cat > f' < file`, which checks nothing. Runs alternate.
- **download**: `bench/download.py`. A 1 GiB kexec-shaped tarball from a `sendfile` HTTP server
  on 127.0.0.1 (so the server costs no CPU), `Downloader.download` (1 MiB reads, sha256 on its
  own thread) against `curl -o`. The member check that follows (`check_tarball`, streamed with a
  1 MiB buffer) is reported on its own line: it runs once per image.
- **probe** and **reachable**: `bench/reachable.py`. The loopback machine (sshd in its own
  namespaces) is installed for real; its installer sshd starts after a random 1-2 s, and the
  latency runs from its first banner to the app's "answers on port" event.
- **VM**: `bench/vm_install.py`. A fresh origin VM per run (QEMU; TCG here, with a CPU model
  that has AES-NI like any real server). The floor is `bench/vm_floor.sh`: upload, unpack, run,
  then `ssh` every 0.2 s until `VARIANT_ID=installer`. The app runs `install` from its own start,
  including the probe, key, sha256 check and host-key proof.
- **GUI**: `bench/gui_start.py` launches `--smoke-test` seven times (offscreen) after one warm
  launch; `bench/gui_stall.py` ticks a 5 ms precise timer in the GUI thread while a `Job`
  uploads 400 MiB and the progress bar updates, and reports the longest gap beyond 5 ms.
"""


if __name__ == "__main__":
    raise SystemExit(main())

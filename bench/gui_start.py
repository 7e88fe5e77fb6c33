"""GUI cold start: process start to the first window shown, and resident memory then.

``--appimage FILE`` compares, in the same run and interleaved, the one-dir tree (``--tree``,
default dist/nixos-kexec-wizard), the AppImage mounted and the AppImage extracted-and-run,
printing every run.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def once(home: Path, command: list[str], **extra: str) -> tuple[float, float]:
    env = {**os.environ, "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen")}
    env.update(extra)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*command, "--smoke-test", "--home", str(home)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    shown = time.perf_counter() - t0
    proc.wait(30)
    m = re.search(r"resident memory (\d+) MB", line)
    if proc.returncode != 0 or m is None:
        raise SystemExit(f"smoke test failed: {line!r}")
    return shown, float(m.group(1))


def compare(appimage: str, tree: str, runs: int) -> int:
    """The tree, the AppImage mounted and extracted, interleaved; every run, then the medians."""
    modes: dict[str, tuple[list[str], dict[str, str]]] = {
        "tree": ([tree], {}),
        "mounted": ([appimage], {}),
        "extracted": ([appimage], {"APPIMAGE_EXTRACT_AND_RUN": "1"}),
    }
    times: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as home:
        for command, extra in modes.values():
            once(Path(home), command, **extra)  # warm the page cache, as a second launch would be
        for i in range(runs):
            for mode, (command, extra) in modes.items():
                times[mode].append(once(Path(home), command, **extra)[0])
            print(f"run {i + 1}: " + ", ".join(f"{m} {t[-1]:.2f} s" for m, t in times.items()))
    base = statistics.median(times["tree"])
    size = Path(appimage).stat().st_size / 2**20
    print(f"AppImage {size:.0f} MB; median of {runs}, process start to the first window:")
    for mode, t in times.items():
        print(f"  {mode:9} {statistics.median(t):.2f} s  ({statistics.median(t) / base:.2f}x the "
              f"tree; min {min(t):.2f}, max {max(t):.2f})")  # fmt: skip
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rows", action="store_true", help="print just the two medians")
    ap.add_argument("--exe", help="time this program (e.g. the bundle) instead of python -m app")
    ap.add_argument("--appimage", help="compare this AppImage, mounted and extracted, to --tree")
    ap.add_argument(
        "--tree", default=str(ROOT / "dist" / "nixos-kexec-wizard" / "nixos-kexec-wizard")
    )
    args = ap.parse_args()
    if args.appimage:
        return compare(args.appimage, args.tree, args.runs)
    # An installed app (pip, pipx, the bundle) ships its bytecode; a checkout may not have it yet.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "app")], check=True)
    with tempfile.TemporaryDirectory() as home:
        command = [args.exe] if args.exe else [sys.executable, "-m", "app"]
        once(Path(home), command)  # warm the page cache, as a second launch would be
        results = [once(Path(home), command) for _ in range(args.runs)]
    starts = [r[0] for r in results]
    rss = [r[1] for r in results]
    if args.rows:
        print(f"{statistics.median(starts):.3f} {statistics.median(rss):.0f}")
        return 0
    print(
        f"GUI start to first window (median of {args.runs}): {statistics.median(starts):.2f} s "
        f"(min {min(starts):.2f}, max {max(starts):.2f}); "
        f"resident memory {statistics.median(rss):.0f} MB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

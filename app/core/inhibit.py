"""Keep the desktop from suspending while a long transfer or wait runs, where it allows that."""

from __future__ import annotations

import shutil
import subprocess

from app import APP_NAME


class SleepInhibitor:
    """Holds a ``systemd-inhibit`` lock while active; does nothing where none is available."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def active(self) -> bool:
        """Whether a lock is held."""
        return self._proc is not None and self._proc.poll() is None

    def acquire(self, why: str) -> bool:
        """Take the lock; False when the desktop offers none."""
        if self.active:
            return True
        exe = shutil.which("systemd-inhibit")
        if exe is None:
            return False
        try:
            self._proc = subprocess.Popen(
                [exe, "--what=sleep:idle", f"--who={APP_NAME}", f"--why={why}", "--mode=block",
                 "sleep", "infinity"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        except OSError:
            return False
        return True

    def release(self) -> None:
        """Give the lock back."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(2)
            self._proc = None

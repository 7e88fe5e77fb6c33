"""Start the Qt application and show the wizard; ``--smoke-test`` quits after a short timer."""

from __future__ import annotations

import sys
import time
from importlib import resources
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import QApplication

from app import APP_ID, APP_NAME, __version__
from app.core.paths import AppPaths
from app.ui.context import AppContext
from app.ui.wizard import KexecWizard


def app_icon() -> QIcon:
    """The app's icon, loaded from the package (works installed and frozen)."""
    data = resources.files("app.ui").joinpath("assets/nixos-kexec-wizard.svg").read_bytes()
    pixmap = QPixmap()
    pixmap.loadFromData(data, "SVG")
    return QIcon(pixmap)


def make_app(argv: list[str] | None = None) -> QApplication:
    """The QApplication with the names desktops match the window against."""
    existing = QApplication.instance()
    app = existing if isinstance(existing, QApplication) else QApplication(argv or [APP_NAME])
    app.setApplicationName(APP_NAME)
    app.setApplicationDisplayName("NixOS Kexec Wizard")
    app.setApplicationVersion(__version__)
    app.setDesktopFileName(APP_ID)
    app.setWindowIcon(app_icon())
    return app


def _rss_mb() -> float:
    """This process's resident memory in MB (0 where /proc is not available)."""
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii")
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_gui(home: str | None = None, smoke_test: bool = False) -> int:
    """Open the wizard and run until it closes."""
    t0 = time.perf_counter()
    app = make_app(sys.argv[:1])
    ctx = AppContext(AppPaths.resolve(home))
    wizard = KexecWizard(ctx, app.windowIcon())
    wizard.show()
    if smoke_test:
        app.processEvents()
        shown = time.perf_counter() - t0
        print(
            f"smoke test: wizard shown after {shown:.2f} s, resident memory {_rss_mb():.0f} MB; "
            "quitting",
            flush=True,
        )
        QTimer.singleShot(500, wizard.reject)
    return int(app.exec())

"""Whether a window can open here, checked without Qt (which would abort without a display)."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
from collections.abc import Mapping
from pathlib import Path


def display_problem(env: Mapping[str, str] | None = None) -> str | None:
    """Why no window could be shown here, or None (checked before Qt, which would abort).

    Only on Linux and the BSDs, and only when no Qt platform was chosen explicitly
    (``QT_QPA_PLATFORM=offscreen`` needs no display).
    """
    env = os.environ if env is None else env
    if not sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        return None
    if env.get("QT_QPA_PLATFORM"):
        return None
    wayland, x11 = env.get("WAYLAND_DISPLAY", ""), env.get("DISPLAY", "")
    if wayland:
        runtime = env.get("XDG_RUNTIME_DIR", "")
        path = Path(wayland) if wayland.startswith("/") else Path(runtime) / wayland
        if path.is_socket():
            return None
        if not x11:
            return f"the Wayland display {wayland!r} cannot be opened (no socket at {path})"
    if not x11:
        return "there is no graphical display here (neither DISPLAY nor WAYLAND_DISPLAY is set)"
    m = re.fullmatch(r"(?:unix)?:(\d+)(?:\.\d+)?", x11)
    if m:  # a local X server listens on its socket (the abstract one on Linux, or the file)
        sock_dir = "/tmp/.X11-unix"  # noqa: S108  (X11's fixed place, only connected to)
        for address in (f"\0{sock_dir}/X{m.group(1)}", f"{sock_dir}/X{m.group(1)}"):
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2)
                sock.connect(address)
                return None
        return f"the X display {x11!r} cannot be opened (no X server answers there)"
    return None  # a forwarded or remote display: Qt tries it

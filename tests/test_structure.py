"""House rules checked on the source: a Qt-free engine, docstrings everywhere."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.sources import tree

ROOT = Path(__file__).resolve().parent.parent
QT_MODULES = ("PySide6", "PyQt5", "PyQt6", "shiboken6")


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_the_engine_never_imports_qt() -> None:
    files = list((ROOT / "app" / "core").rglob("*.py"))
    assert len(files) > 10
    offenders = [str(f.relative_to(ROOT)) for f in files if _imports(f) & set(QT_MODULES)]
    assert offenders == []


def test_qt_is_imported_only_under_app_ui() -> None:
    offenders = [
        str(f.relative_to(ROOT))
        for f in (ROOT / "app").rglob("*.py")
        if "ui" not in f.relative_to(ROOT / "app").parts[:1] and _imports(f) & set(QT_MODULES)
    ]
    assert offenders == []


def test_every_module_has_a_one_line_docstring() -> None:
    missing = []
    for f in [*(ROOT / "app").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]:
        doc = ast.get_docstring(tree(f))
        if not doc or "\n" in doc.strip():
            missing.append(str(f.relative_to(ROOT)))
    assert missing == []


FACES = [*sorted((ROOT / "app" / "cli").glob("*.py")), *sorted((ROOT / "app" / "ui").rglob("*.py"))]
# The engine's step library and the SSH session: a face that imports one of these has taken
# over the run's order or its policy (how to probe, when sudo is tried, what the transfer is,
# what to save). The faces import the run, the fleet, requests, questions, events, errors, the
# result models and the engine's plain services (catalog, profiles, settings, netboot, ...).
STEP_MODULES = {
    "app.core.flow",
    "app.core.install",
    "app.core.inspect",
    "app.core.privilege",
    "app.core.transfer",
    "app.core.remote_sh",
    "app.core.probe_run",
    "app.core.ssh.session",
    "app.core.ssh.banner",
}
# From the ssh package the faces take targets, credentials and known_hosts, never a session.
SSH_SESSION_NAMES = {"Session", "connect", "ConnectOptions"}


def _imported(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) for every name a file imports."""
    out = []
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, "") for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.lineno, node.module, a.name) for a in node.names]
    return out


def test_the_faces_import_the_run_never_its_steps_or_the_ssh_session() -> None:
    """Both faces ask and show; the run owns the order of the steps and the policy between."""
    assert len(FACES) > 15
    offenders = []
    for f in FACES:
        for line, module, name in _imported(f):
            step = any(module == m or module.startswith(m + ".") for m in STEP_MODULES)
            session = module == "app.core.ssh" and name in SSH_SESSION_NAMES
            if step or session:
                offenders.append(f"{f.relative_to(ROOT)}:{line} {module} {name}".strip())
    assert offenders == []


def test_the_faces_neither_build_plans_nor_run_installers() -> None:
    """The one InstallPlan of a server is built by its run; no face makes or runs one."""
    offenders = []
    for f in FACES:
        for node in ast.walk(tree(f)):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                if name in ("InstallPlan", "Installer"):
                    offenders.append(f"{f.relative_to(ROOT)}:{node.lineno} {name}(...)")
    assert offenders == []


def test_no_module_of_the_app_is_over_700_lines() -> None:
    """One concern per module: a module that grows past this has two."""
    long = {
        str(f.relative_to(ROOT)): n
        for f in (ROOT / "app").rglob("*.py")
        if (n := len(f.read_text().splitlines())) > 700
    }
    assert long == {}

"""House rules checked on the source: a Qt-free engine, docstrings everywhere."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QT_MODULES = ("PySide6", "PyQt5", "PyQt6", "shiboken6")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
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
        doc = ast.get_docstring(ast.parse(f.read_text()))
        if not doc or "\n" in doc.strip():
            missing.append(str(f.relative_to(ROOT)))
    assert missing == []


FACES = [ROOT / "app" / "cli.py", *sorted((ROOT / "app" / "ui" / "pages").glob("*.py"))]
STAGES = {"check", "prepare", "kexec", "stage_key", "stage_transfer", "stage_checksum", "stage_run"}
# The engine's own steps behind the flow: a face that calls one has taken over the flow's order
# or its policy (how to probe, when sudo is tried, what the transfer is, what to save).
BEHIND_THE_FLOW = {
    "run_probe",
    "establish_privilege",
    "known_sudo_password",
    "evaluate",
    "choose_transfer",
    "wait_for_installer",
    "accept_host_key",
    "local_image",
}


def test_the_faces_neither_build_plans_nor_sequence_stages() -> None:
    """Both faces ask and show; the engine's flow builds the plan and runs the stages."""
    offenders = []
    for f in FACES:
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name in ("InstallPlan", "Installer", *BEHIND_THE_FLOW) or (
                isinstance(func, ast.Attribute) and name in STAGES
            ):
                offenders.append(f"{f.relative_to(ROOT)}:{node.lineno} {name}(...)")
    assert offenders == []

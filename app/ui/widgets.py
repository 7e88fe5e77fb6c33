"""Small widgets the pages share: the verdict checklist, the stage list, the error panel."""

from __future__ import annotations

import html
import shlex
import time
from collections.abc import Callable, Sequence

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QIcon
from PySide6.QtWidgets import (
    QComboBox,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QProgressBar,
    QStyle,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core.catalog import Catalog
from app.core.errors import WizardError
from app.core.events import ProgressEvent
from app.core.handoff import open_terminal
from app.core.preflight import Level, Verdict


def std_icon(widget: QWidget, kind: str) -> QIcon:
    """A standard icon: ok, warn, stop, info, pending or running."""
    names = {
        "ok": QStyle.StandardPixmap.SP_DialogApplyButton,
        "warn": QStyle.StandardPixmap.SP_MessageBoxWarning,
        "stop": QStyle.StandardPixmap.SP_MessageBoxCritical,
        "info": QStyle.StandardPixmap.SP_MessageBoxInformation,
        "running": QStyle.StandardPixmap.SP_BrowserReload,
        "pending": QStyle.StandardPixmap.SP_ArrowRight,
        "cancelled": QStyle.StandardPixmap.SP_DialogCancelButton,
    }
    return widget.style().standardIcon(names[kind])


def fill_channels(combo: QComboBox, catalog: Catalog) -> None:
    """The catalog's channels, the current stable one chosen, each with how it is built."""
    default = catalog.default_channel()
    combo.blockSignals(True)
    combo.clear()
    for r in catalog.releases:
        if r.channel == default:
            label = f"{r.channel} — current stable, rebuilt weekly"
        elif r.rebuilt:
            label = f"{r.channel} — rebuilt weekly"
        else:
            label = f"{r.channel} — frozen, last build {(r.last_build or 'unknown')[:10]}"
        combo.addItem(label, r.channel)
    combo.setCurrentIndex(max(0, combo.findData(default)))
    combo.blockSignals(False)


def plain_tip(text: str) -> str:
    """A tooltip that shows ``text`` as it is: Qt renders a tooltip that looks like markup as
    rich text, and server text (an error, a verdict's reason) must never be markup."""
    return "<p style='white-space:pre-wrap'>" + html.escape(text) + "</p>"


def wrap_label(text: str = "", rich: bool = False) -> QLabel:
    """A word-wrapping label whose text can be selected."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.RichText if rich else Qt.TextFormat.PlainText)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


class Checklist(QWidget):
    """One row per verdict: a light, the title, and for warn/stop the reason and the fix."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setSpacing(6)
        self.setAccessibleName("Preflight checklist")
        self.rows: list[QWidget] = []

    def set_verdicts(self, verdicts: list[Verdict]) -> None:
        """Show ``verdicts``, the most severe first."""
        for row in self.rows:
            row.deleteLater()
        self.rows = []
        order = {Level.STOP: 0, Level.WARN: 1, Level.OK: 2}
        for v in sorted(verdicts, key=lambda v: order[v.level]):
            row = QWidget(self)
            h = QHBoxLayout(row)
            h.setContentsMargins(0, 0, 0, 0)
            icon = QLabel(row)
            icon.setPixmap(std_icon(self, v.level.value).pixmap(20, 20))
            icon.setAlignment(Qt.AlignmentFlag.AlignTop)
            h.addWidget(icon)
            text = html.escape(v.title)
            if v.level is not Level.OK:
                text = f"<b>{text}</b>"
                text += f"<br>{html.escape(v.reason)}<br><i>Fix: {html.escape(v.fix)}</i>"
            label = wrap_label(text, rich=True)
            label.setAccessibleName(f"{v.level.value}: {v.title}")
            h.addWidget(label, 1)
            row.setObjectName(f"verdict-{v.check}")
            self._layout.addWidget(row)
            self.rows.append(row)


STAGE_NAMES = {
    "key": "Make sure the installer will accept your key",
    "transfer": "Transfer the image",
    "checksum": "Check the image's sha256 on the server",
    "unpack": "Unpack the image",
    "run": "Run kexec/run (load the installer)",
    "down": "Wait for the old system to go down",
    "up": "Wait for the installer to answer",
    "verify": "Prove it is the installer",
}
DISK_STAGE_NAMES = {
    "partition": "Erase, partition, format and mount the disk",
    "nixos-install": "Install NixOS (nixos-install)",
}


class StageList(QTreeWidget):
    """The install stages with their state and how long each took (or is taking)."""

    def __init__(self, parent: QWidget | None = None, names: dict[str, str] | None = None) -> None:
        super().__init__(parent)
        self.names = names or STAGE_NAMES
        self.setColumnCount(3)
        self.setHeaderLabels(["Stage", "State", "Time"])
        self.setRootIsDecorated(False)
        self.setAccessibleName("Install stages")
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        header = self.header()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.items: dict[str, QTreeWidgetItem] = {}
        self.started: dict[str, float] = {}
        self.stage_state: dict[str, str] = {}
        self.deadlines: dict[str, float] = {}
        for key, name in self.names.items():
            item = QTreeWidgetItem([name, "waiting", ""])
            item.setIcon(0, std_icon(self, "pending"))
            self.addTopLevelItem(item)
            self.items[key] = item
            self.stage_state[key] = "waiting"

    def set_state(
        self,
        stage: str,
        state: str,
        seconds: float | None = None,
        deadline: float | None = None,
    ) -> None:
        """Mark ``stage`` as start/done/failed/cancelled (a start with its deadline)."""
        item = self.items.get(stage)
        if item is None:
            return
        label = {"start": "running", "done": "done", "failed": "failed", "cancelled": "cancelled"}
        self.stage_state[stage] = label.get(state, state)
        item.setText(1, self.stage_state[stage])
        icon = {"start": "running", "done": "ok", "failed": "stop", "cancelled": "cancelled"}
        item.setIcon(0, std_icon(self, icon.get(state, "pending")))
        if state == "start":
            self.started[stage] = time.monotonic()
            if deadline:
                self.deadlines[stage] = deadline
        if seconds is not None:
            item.setText(2, f"{seconds:.1f} s")

    def running(self) -> str | None:
        """The stage running now, if any."""
        return next((s for s, st in self.stage_state.items() if st == "running"), None)

    def elapsed(self, stage: str) -> str:
        """How long ``stage`` has run, with its deadline: "12 s of at most 60 s"."""
        took = f"{time.monotonic() - self.started.get(stage, time.monotonic()):.0f} s"
        limit = self.deadlines.get(stage)
        return f"{took} of at most {limit:.0f} s" if limit else took

    def tick(self) -> None:
        """Refresh the timer of the running stage."""
        for stage in self.started:
            if self.stage_state.get(stage) == "running":
                self.items[stage].setText(2, self.elapsed(stage))

    def detail(self, stage: str, text: str) -> None:
        """Show a short detail (attempts, bytes) in the stage's state column."""
        item = self.items.get(stage)
        if item is not None and self.stage_state.get(stage) == "running":
            item.setText(1, text)


class ErrorPanel(QFrame):
    """A failure in three parts: what happened, why it matters, what to do."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setObjectName("errorPanel")
        layout = QHBoxLayout(self)
        self.icon = QLabel(self)
        self.icon.setAlignment(Qt.AlignmentFlag.AlignTop)
        layout.addWidget(self.icon)
        self.text = wrap_label("", rich=True)
        self.text.setAccessibleName("Error message")
        layout.addWidget(self.text, 1)
        self.error: WizardError | None = None
        self.hide()

    def show_error(self, error: WizardError, level: str = "stop") -> None:
        """Display ``error``."""
        self.error = error
        self.icon.setPixmap(std_icon(self, level).pixmap(32, 32))
        parts = [f"<b>{html.escape(error.what)}</b>"]
        if error.why:
            parts.append(html.escape(error.why).replace("\n", "<br>"))
        if error.fix:
            parts.append(f"<i>What to do:</i> {html.escape(error.fix)}")
        self.text.setText("<br><br>".join(parts))
        self.show()

    def clear(self) -> None:
        """Hide the panel."""
        self.error = None
        self.text.clear()
        self.hide()


def show_progress(bar: QProgressBar, e: ProgressEvent) -> str:
    """Put a byte-progress event on ``bar``; returns the text: done, total, rate and time left."""
    if e.total:
        bar.setRange(0, 1000)
        bar.setValue(int(1000 * e.done / e.total))
    text = f"{e.done / 1e6:.0f} of {e.total / 1e6:.0f} MB" if e.total else f"{e.done / 1e6:.0f} MB"
    text += f" at {e.rate / 1e6:.1f} MB/s"
    if e.eta is not None:
        text += f", {int(e.eta)} s left"
    return text


def ask(
    parent: QWidget, title: str, text: str, on_answer: Callable[[int], None], yes: str = ""
) -> QMessageBox:
    """A non-blocking question (Yes / Cancel, Cancel by default); ``on_answer`` gets the button."""
    box = QMessageBox(
        QMessageBox.Icon.Question,
        title,
        text,
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
        parent,
    )
    if yes:
        box.button(QMessageBox.StandardButton.Yes).setText(yes)
    box.setDefaultButton(QMessageBox.StandardButton.Cancel)
    box.finished.connect(on_answer)
    box.open()
    return box


def terminal_or_clipboard(ssh: Sequence[str]) -> str:
    """Open a terminal running ``ssh``; where that cannot be (no terminal, the Flatpak
    sandbox), put the command on the clipboard instead. Returns what happened, for the user."""
    why_not = open_terminal(ssh)
    if why_not is None:
        return "Opened a terminal."
    QGuiApplication.clipboard().setText(shlex.join(ssh))
    return (
        f"Could not open a terminal: {why_not}. The SSH command is on the clipboard: paste it "
        "into your terminal."
    )

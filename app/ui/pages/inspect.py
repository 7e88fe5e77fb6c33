"""Inspect page: the probe runs by itself; verdicts, facts and the network preview."""

from __future__ import annotations

import html
from dataclasses import dataclass

from PySide6.QtCore import Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from app.core.errors import LoginRestricted, WizardError
from app.core.events import CancelToken, EventSink
from app.core.kinds import PrivilegeKind
from app.core.preflight import GiB, Level
from app.core.probe import Facts
from app.core.questions import Answers, SudoPasswordRequired
from app.core.run import HostRun, Inspection, Step
from app.ui.context import AppContext, WizardState
from app.ui.pages.base import BasePage, PageId
from app.ui.pages.connect import ConnectPage
from app.ui.widgets import Checklist, ErrorPanel, wrap_label


@dataclass(frozen=True)
class _Inspected:
    """What the inspect job found: the inspection, and the sudo question if one came up."""

    found: Inspection
    sudo: SudoPasswordRequired | None = None


class InspectPage(BasePage):
    """Probes the server in one round trip and judges whether kexec will work."""

    def __init__(self, ctx: AppContext, state: WizardState) -> None:
        super().__init__(ctx, state)
        self.setTitle("Inspect")
        self.setSubTitle("What the server is, and whether the kexec installer will work there.")
        self.status = wrap_label("")
        self.status.setAccessibleName("Inspection status")
        self.again = QPushButton("Check &again", self)
        self.again.setAccessibleName("Check again")
        self.again.clicked.connect(self.start_probe)
        self.banner = ErrorPanel(self)
        self.checklist = Checklist(self)
        self.facts_box = QGroupBox("The server", self)
        self.facts_form = QFormLayout(self.facts_box)
        self.net_box = QGroupBox("After the kexec, the installer's network", self)
        self.net_label = wrap_label("", rich=True)
        self.net_label.setAccessibleName("Network preview")
        net_layout = QVBoxLayout(self.net_box)
        net_layout.addWidget(self.net_label)
        net_layout.addStretch(1)

        self.sudo_row = QWidget(self)
        sudo = QHBoxLayout(self.sudo_row)
        sudo.setContentsMargins(0, 0, 0, 0)
        self.sudo_password = QLineEdit(self)
        self.sudo_password.setEchoMode(QLineEdit.EchoMode.Password)
        self.sudo_password.setAccessibleName("sudo password")
        self.sudo_password.setPlaceholderText("your password for sudo")
        self.sudo_button = QPushButton("Use for &sudo", self)
        self.sudo_button.setAccessibleName("Use for sudo")
        self.sudo_button.clicked.connect(self._use_sudo)
        self.sudo_password.returnPressed.connect(self._use_sudo)
        sudo.addWidget(QLabel("sudo password:", self))
        sudo.addWidget(self.sudo_password, 1)
        sudo.addWidget(self.sudo_button)
        self.sudo_row.hide()

        self.override = QCheckBox(
            "I know what I'm doing: continue despite the warnings above", self
        )
        self.override.setAccessibleName("Continue despite warnings")
        self.override.toggled.connect(self.completeChanged)
        self.override.hide()

        # A cloud image's root login that only says "login as the user X": offer exactly X.
        self.switch_user = QPushButton(self)
        self.switch_user.setAccessibleName("Log in as the user the server asks for")
        self.switch_user.clicked.connect(self._switch_user)
        self.switch_user.hide()

        inner = QWidget(self)
        body = QVBoxLayout(inner)
        body.addWidget(self.banner)
        switch_row = QHBoxLayout()
        switch_row.addWidget(self.switch_user)
        switch_row.addStretch(1)
        body.addLayout(switch_row)
        body.addWidget(self.checklist)
        body.addWidget(self.sudo_row)
        body.addWidget(self.override)
        cols = QHBoxLayout()
        cols.addWidget(self.facts_box, 1)
        cols.addWidget(self.net_box, 1)
        body.addLayout(cols)
        body.addStretch(1)
        scroll = QScrollArea(self)
        scroll.setWidgetResizable(True)
        scroll.setWidget(inner)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        top = QHBoxLayout()
        top.addWidget(self.status, 1)
        top.addWidget(self.again)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(scroll, 1)

    def initializePage(self) -> None:
        run = self.state.run
        if run is not None and run.inspection is None:
            self.start_probe()

    def cleanupPage(self) -> None:
        self.cancel_job()

    # -- probing ------------------------------------------------------------------------

    @Slot()
    def start_probe(self) -> None:
        """Inspect, and (when no password has to be asked) become root, in the background;
        the run remembers the server in its profile there too (a keyring may be slow)."""
        run = self.state.run
        if run is None:
            return
        if run.outcome is not None:  # checking again after a stop: a fresh run connects anew
            run = self.state.run = run.again()
        self.banner.clear()
        self.switch_user.hide()
        self.checklist.set_verdicts([])
        self.override.setChecked(False)
        answers = self.state.answers

        def work(emit: EventSink, cancel: CancelToken) -> _Inspected:
            return _inspect(run, answers, emit, cancel)

        self.run("probe", work, self._probed, failed=self._probe_failed, ended=self._ended)
        self.status.setText(f"Inspecting {run.host.target.label}…")
        self.again.setEnabled(False)
        self.completeChanged.emit()

    def _ended(self) -> None:
        self.again.setEnabled(True)
        self.completeChanged.emit()

    def _probe_failed(self, err: WizardError) -> None:
        self.status.setText("The inspection failed.")
        self.banner.show_error(err)
        if isinstance(err, LoginRestricted) and err.suggested_user:
            self.switch_user.setText(f"Log in as {err.suggested_user} &instead")
            self.switch_user.setProperty("user", err.suggested_user)
            self.switch_user.show()

    def _probed(self, done: _Inspected) -> None:
        if done.found.facts.is_installer and self.state.run is not None:
            self.state.info = self.state.run.info  # nothing to install: on to Done
        self._show(done.found)
        if done.sudo is not None and done.sudo.wrong:
            self.banner.show_error(done.sudo, "warn")
        self.completeChanged.emit()

    @Slot()
    def _switch_user(self) -> None:
        """Back to Connect with the user the server asked for, connecting again at once."""
        user = str(self.switch_user.property("user") or "")
        if not user:
            return
        self.switch_user.hide()
        self.state.drop_session()
        connect_page = self.wizard().page(int(PageId.CONNECT))
        assert isinstance(connect_page, ConnectPage)
        self.wizard().back()
        connect_page.use_user(user)

    def _show(self, found: Inspection) -> None:
        facts, verdicts = found.facts, found.verdicts
        self.checklist.set_verdicts(verdicts)
        stops = [v for v in verdicts if v.level is Level.STOP]
        warns = [v for v in verdicts if v.level is Level.WARN]
        if facts.is_installer:
            self.status.setText("This server already runs the NixOS installer.")
            self.banner.show_error(
                WizardError(
                    "The NixOS installer is already running here.",
                    "The kexec happened before; there is nothing to install.",
                    "Click Next to see how to connect to it.",
                ),
                "info",
            )
        elif stops:
            self.status.setText(
                f"{len(stops)} problem(s) stop the kexec. Fix them, then check again."
            )
        elif warns:
            self.status.setText(f"Ready, with {len(warns)} warning(s).")
        else:
            self.status.setText("Everything the kexec needs is in place.")
        self.override.setVisible(bool(warns) and not stops and not facts.is_installer)
        rooted = self.state.run is not None and self.state.run.rooted
        need_sudo = facts.privilege == PrivilegeKind.SUDO_PASSWORD and not rooted
        self.sudo_row.setVisible(need_sudo and not stops)
        self._fill_facts(facts)
        pv = found.network
        lines = [f"✔ {html.escape(s)}" for s in pv.keeps] + [
            f"✘ {html.escape(s)}" for s in pv.loses
        ]
        self.net_label.setText("<br>".join(lines) or "Nothing to show.")

    def _fill_facts(self, f: Facts) -> None:
        while self.facts_form.rowCount():
            self.facts_form.removeRow(0)
        mem = f"{f.mem_total / GiB:.1f} GiB" if f.mem_total else "unknown"
        if f.swap_total:
            mem += f" (+{f.swap_total / GiB:.1f} GiB swap, which does not count)"
        rows = [
            ("System", f.os_name),
            ("Kernel", f"{f.kernel} ({f.machine})"),
            ("Memory", mem),
            ("Virtualisation", f.virt or "unknown"),
            ("User", f"{f.user} ({f.privilege})"),
            ("Staging folder", f.staging.path),
            ("Host name", f.hostname),
        ]
        for label, value in rows:
            v = wrap_label(value)
            v.setAccessibleName(label)
            self.facts_form.addRow(f"{label}:", v)

    # -- sudo ---------------------------------------------------------------------------

    @Slot()
    def _use_sudo(self) -> None:
        run = self.state.run
        if run is None or run.inspection is None:
            return
        secret = self.sudo_password.text()
        self.ctx.redact.add(secret)
        answers = self.state.answers
        answers.sudo_passwords[run.label] = secret

        def work(emit: EventSink, cancel: CancelToken) -> _Inspected:
            return _inspect(run, answers, emit, cancel)

        self.run(
            "sudo", work, self._sudo_tried, failed=self.banner.show_error, ended=self._sudo_ended
        )
        self.sudo_button.setEnabled(False)

    def _sudo_ended(self) -> None:
        self.sudo_button.setEnabled(True)
        self.completeChanged.emit()

    def _sudo_tried(self, done: _Inspected) -> None:
        if done.sudo is not None:
            self.banner.show_error(done.sudo)
            return
        self.sudo_row.hide()
        self.banner.clear()
        self.status.setText("sudo works with that password.")

    # -- leaving ------------------------------------------------------------------------

    def isComplete(self) -> bool:
        run = self.state.run
        found = run.inspection if run is not None else None
        if run is None or found is None or self.busy:
            return False
        if found.facts.is_installer:
            return True
        levels = {v.level for v in found.verdicts}
        if Level.STOP in levels or not run.rooted:
            return False
        return Level.WARN not in levels or self.override.isChecked()

    def validatePage(self) -> bool:
        self.state.answers.go_ahead = self.override.isChecked()  # the warnings' go-ahead
        return True

    def nextId(self) -> int:
        if self.state.facts is not None and self.state.facts.is_installer:
            return int(PageId.DONE)
        return int(PageId.IMAGE)


def _inspect(run: HostRun, answers: Answers, emit: EventSink, cancel: CancelToken) -> _Inspected:
    """Take the run as far as root; a stop shows as verdicts, any other failure as an error."""
    try:
        outcome = run.go(answers, emit, cancel, until=Step.ROOT)
    except SudoPasswordRequired as question:
        assert run.inspection is not None
        return _Inspected(run.inspection, question)
    if run.inspection is None or (outcome is not None and outcome.error is not None
                                  and outcome.outcome != "preflight"):  # fmt: skip
        assert outcome is not None and outcome.error is not None
        raise outcome.error
    return _Inspected(run.inspection)

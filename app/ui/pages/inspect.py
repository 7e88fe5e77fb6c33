"""Inspect page: the probe runs by itself; verdicts, facts and the network preview."""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, replace

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

from app.core.errors import LoginRestricted, PrivilegeError, WizardError
from app.core.events import CancelToken, EventSink
from app.core.flow import Inspection, already_installer, become_root, inspect, record
from app.core.preflight import GiB, Level
from app.core.probe import Facts
from app.core.result import InstallerInfo
from app.ui.context import AppContext, Flow
from app.ui.pages.base import BasePage, PageId
from app.ui.pages.connect import ConnectPage
from app.ui.widgets import Checklist, ErrorPanel, wrap_label


@dataclass(frozen=True)
class _Inspected:
    """What the inspect job found: the inspection, whether root works, the saved profile."""

    found: Inspection
    privileged: bool
    installer: InstallerInfo | None
    profile_note: str | None
    sudo_refused: WizardError | None = None


class InspectPage(BasePage):
    """Probes the server in one round trip and judges whether kexec will work."""

    def __init__(self, ctx: AppContext, flow: Flow) -> None:
        super().__init__(ctx, flow)
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
        if self.flow.facts is None:
            self.start_probe()

    def cleanupPage(self) -> None:
        self.cancel_job()

    # -- probing ------------------------------------------------------------------------

    @Slot()
    def start_probe(self) -> None:
        """Inspect, and (when no password has to be asked) become root, in the background;
        the server is remembered in its profile there too (a keyring may be slow)."""
        session = self.flow.session
        if session is None:
            return
        self.flow.facts = None
        self.flow.privileged = False
        self.banner.clear()
        self.switch_user.hide()
        self.checklist.set_verdicts([])
        self.override.setChecked(False)
        settings, creds, save = self.ctx.settings, self.flow.creds, self._saver()

        def work(emit: EventSink, cancel: CancelToken) -> _Inspected:
            found = inspect(session, settings, emit=emit, cancel=cancel)
            facts = found.facts
            info = already_installer(session, facts) if facts.is_installer else None
            note = save(facts, info)
            if facts.is_installer or facts.privilege == "none":
                return _Inspected(found, False, info, note, None)
            try:
                return _Inspected(found, become_root(session, facts, creds, settings), info, note)
            except PrivilegeError as exc:
                if facts.privilege != "sudo-password":
                    raise
                return _Inspected(found, False, info, note, exc)  # ask for the right one

        self.run("probe", work, self._probed, failed=self._probe_failed, ended=self._ended)
        self.status.setText(f"Inspecting {session.target.label}…")
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
        facts = done.found.facts
        self.flow.facts = facts
        self.flow.privileged = done.privileged
        self.flow.verdicts = done.found.verdicts
        if done.installer is not None:
            self.flow.info = done.installer
        if done.profile_note:
            self.ctx.note("profile", done.profile_note)
        self._show(done.found)
        if done.sudo_refused is not None:
            self.banner.show_error(done.sudo_refused, "warn")
        self.completeChanged.emit()

    def _saver(self) -> Callable[[Facts, InstallerInfo | None], str | None]:
        """Remember the server in its profile (from the job): the choices copied now."""
        session, target, name = self.flow.session, self.flow.target, self.flow.profile_name
        ctx, creds, remember = self.ctx, self.flow.creds, self.flow.remember_password

        def save(facts: Facts, info: InstallerInfo | None) -> str | None:
            if session is None or target is None or not name:
                return None
            try:
                _profile, warning = record(
                    ctx.profiles, ctx.secrets, name, target=target, creds=creds,
                    host_key=session.host_key_line, facts=facts, installer=info,
                    remember=remember,
                )  # fmt: skip
            except (WizardError, ValueError) as exc:
                return f"not saved: {exc}"
            return warning

        return save

    @Slot()
    def _switch_user(self) -> None:
        """Back to Connect with the user the server asked for, connecting again at once."""
        user = str(self.switch_user.property("user") or "")
        if not user:
            return
        self.switch_user.hide()
        self.flow.drop_session()
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
        need_sudo = facts.privilege == "sudo-password" and not self.flow.privileged
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
        session, facts = self.flow.session, self.flow.facts
        if session is None or facts is None:
            return
        secret = self.sudo_password.text()
        self.ctx.redact.add(secret)
        settings, creds = self.ctx.settings, replace(self.flow.creds, sudo_password=secret)

        def work(_emit: EventSink, _cancel: CancelToken) -> str:
            become_root(session, facts, creds, settings)
            return secret

        self.run(
            "sudo", work, self._sudo_works, failed=self.banner.show_error, ended=self._sudo_ended
        )
        self.sudo_button.setEnabled(False)

    def _sudo_ended(self) -> None:
        self.sudo_button.setEnabled(True)
        self.completeChanged.emit()

    def _sudo_works(self, secret: str) -> None:
        self.flow.privileged = True
        self.flow.creds.sudo_password = secret
        self.sudo_row.hide()
        self.banner.clear()
        self.status.setText("sudo works with that password.")

    # -- leaving ------------------------------------------------------------------------

    def isComplete(self) -> bool:
        facts = self.flow.facts
        if facts is None or self.busy:
            return False
        if facts.is_installer:
            return True
        levels = {v.level for v in self.flow.verdicts}
        if Level.STOP in levels or not self.flow.privileged:
            return False
        return Level.WARN not in levels or self.override.isChecked()

    def nextId(self) -> int:
        if self.flow.facts is not None and self.flow.facts.is_installer:
            return int(PageId.DONE)
        return int(PageId.IMAGE)

"""Inspect page: the probe runs by itself; verdicts, facts and the network preview."""

from __future__ import annotations

import html

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
from app.core.install import establish_privilege, known_sudo_password, run_probe
from app.core.netpreview import preview
from app.core.preflight import GiB, Level, evaluate
from app.core.probe import Facts
from app.core.workflow import installer_info_from_session, save_profile
from app.ui.context import AppContext, Flow
from app.ui.jobs import JobResult
from app.ui.pages.base import BasePage, PageId
from app.ui.pages.connect import ConnectPage
from app.ui.widgets import Checklist, ErrorPanel, wrap_label


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
        """Run the probe (and, when no password is needed, become root) in the background."""
        session = self.flow.session
        if session is None:
            return
        self.flow.facts = None
        self.flow.privileged = False
        self.banner.clear()
        self.switch_user.hide()
        self.checklist.set_verdicts([])
        self.override.setChecked(False)
        settings = self.ctx.settings
        creds = self.flow.creds

        def work(_emit: EventSink, cancel: CancelToken) -> tuple[Facts, bool]:
            facts = run_probe(session, settings, cancel=cancel)
            if facts.is_installer or facts.privilege == "none":
                return facts, False
            sudo_password = known_sudo_password(facts, creds)
            if facts.privilege == "sudo-password" and sudo_password is None:
                return facts, False  # asked for on the page
            try:
                establish_privilege(session, facts, sudo_password, settings)
            except PrivilegeError:
                if facts.privilege != "sudo-password":
                    raise
                return facts, False
            return facts, True

        job = self.start_job("probe", work)
        job.finished.connect(self._probed)
        job.start()
        self.status.setText(f"Inspecting {session.target.label}…")
        self.again.setEnabled(False)
        self.completeChanged.emit()

    @Slot(object)
    def _probed(self, result: JobResult) -> None:
        self.again.setEnabled(True)
        if not result.ok:
            self.status.setText("The inspection failed.")
            if not result.cancelled and result.wizard_error:
                self.banner.show_error(result.wizard_error)
            err = result.error
            if isinstance(err, LoginRestricted) and err.suggested_user:
                self.switch_user.setText(f"Log in as {err.suggested_user} &instead")
                self.switch_user.setProperty("user", err.suggested_user)
                self.switch_user.show()
            self.completeChanged.emit()
            return
        facts, privileged = result.value
        self.flow.facts = facts
        self.flow.privileged = privileged
        self.flow.verdicts = evaluate(facts)
        self._show(facts)
        self._save_profile(facts)
        self.completeChanged.emit()

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

    def _show(self, facts: Facts) -> None:
        verdicts = self.flow.verdicts
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
        pv = preview(facts)
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

    def _save_profile(self, facts: Facts) -> None:
        session, target = self.flow.session, self.flow.target
        if session is None or target is None or not self.flow.profile_name:
            return
        info = installer_info_from_session(session, facts) if facts.is_installer else None
        if info is not None:
            self.flow.info = info
        try:
            _profile, warning = save_profile(
                self.ctx.profiles,
                self.ctx.secrets,
                self.flow.profile_name,
                target=target,
                creds=self.flow.creds,
                host_key=session.host_key_line,
                facts=facts,
                installer=info,
                remember=self.flow.remember_password,
            )
        except (WizardError, ValueError) as exc:
            self.ctx.note("profile", f"not saved: {exc}")
            return
        if warning:
            self.ctx.note("profile", warning)

    # -- sudo ---------------------------------------------------------------------------

    @Slot()
    def _use_sudo(self) -> None:
        session, facts = self.flow.session, self.flow.facts
        if session is None or facts is None:
            return
        secret = self.sudo_password.text()
        self.ctx.redact.add(secret)
        settings = self.ctx.settings

        def work(_emit: EventSink, _cancel: CancelToken) -> str:
            establish_privilege(session, facts, secret, settings)
            return secret

        job = self.start_job("sudo", work)
        job.finished.connect(self._sudo_checked)
        job.start()
        self.sudo_button.setEnabled(False)

    @Slot(object)
    def _sudo_checked(self, result: JobResult) -> None:
        self.sudo_button.setEnabled(True)
        if result.ok:
            self.flow.privileged = True
            self.flow.creds.sudo_password = result.value
            self.sudo_row.hide()
            self.banner.clear()
            self.status.setText("sudo works with that password.")
        elif result.wizard_error and not result.cancelled:
            self.banner.show_error(result.wizard_error)
        self.completeChanged.emit()

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

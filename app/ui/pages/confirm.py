"""Confirm page (the commit page): what will and will not happen; type the host name to go on."""

from __future__ import annotations

import html

from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
    QWizard,
)

from app.core.errors import WizardError
from app.core.events import CancelToken
from app.core.imagecheck import bundle_note
from app.core.kinds import ImageKind, Transfer
from app.core.plan import (
    DEAD_MAN_MAX,
    DEAD_MAN_MIN,
    DEFAULT_DEAD_MAN_MINUTES,
    DEFAULT_STAGING,
    InstallRequest,
    check_kexec_flags,
    dead_man_choice,
)
from app.core.run import RunRequest
from app.ui.context import AppContext, WizardState
from app.ui.pages.base import BasePage, PageId
from app.ui.widgets import wrap_label


class ConfirmPage(BasePage):
    """Sums up the plan; Install is enabled only when the host name is typed."""

    def __init__(self, ctx: AppContext, state: WizardState) -> None:
        super().__init__(ctx, state)
        self.setTitle("Confirm")
        self.setSubTitle("Read what will happen. This is the step that changes the server.")
        self.setCommitPage(True)
        self.setButtonText(QWizard.WizardButton.CommitButton, "&Install")
        self.summary = wrap_label("", rich=True)
        self.summary.setAccessibleName("Summary")
        self.prompt = wrap_label("")
        self.typed = QLineEdit(self)
        self.typed.setAccessibleName("Type the host name to confirm")
        self.typed.textChanged.connect(self._typed)

        # The dead-man switch (--dead-man): on by default, its deadline beside it.
        self.dead_man = QCheckBox(
            "&Dead-man switch: if the app cannot reach the installer within", self
        )
        self.dead_man.setChecked(True)
        self.dead_man.setAccessibleName("Dead-man switch")
        self.dead_man_minutes = QSpinBox(self)
        self.dead_man_minutes.setRange(int(DEAD_MAN_MIN), int(DEAD_MAN_MAX))
        self.dead_man_minutes.setValue(int(DEFAULT_DEAD_MAN_MINUTES))
        self.dead_man_minutes.setSuffix(" min")
        self.dead_man_minutes.setAccessibleName("Dead-man switch deadline in minutes")
        self.dead_man.toggled.connect(self.dead_man_minutes.setEnabled)
        self.dead_man_rest = wrap_label(
            "of its boot, the server restarts into its old system by itself."
        )
        self.dead_man_row = QWidget(self)
        row = QHBoxLayout(self.dead_man_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.dead_man)
        row.addWidget(self.dead_man_minutes)
        row.addWidget(self.dead_man_rest, 1)
        self.dead_man_limits = wrap_label("")  # what it cannot cover (set per image)

        # The choices the command line has too (--installer-port, --kexec-extra-flags).
        self.advanced = QToolButton(self)
        self.advanced.setText("&Advanced options")
        self.advanced.setCheckable(True)
        self.advanced.setArrowType(Qt.ArrowType.RightArrow)
        self.advanced.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced.setAutoRaise(True)
        self.advanced.toggled.connect(self._toggle_advanced)
        self.advanced_box = QWidget(self)
        form = QFormLayout(self.advanced_box)
        self.installer_port = QSpinBox(self)
        self.installer_port.setRange(0, 65535)
        self.installer_port.setSpecialValueText("only the server's SSH port and 22")
        self.installer_port.setAccessibleName("Also try this port for the installer")
        self.kexec_flags = QLineEdit(self)
        self.kexec_flags.setPlaceholderText("for example -c when kexec_file_load fails")
        self.kexec_flags.setAccessibleName("Extra flags for kexec")
        self.kexec_flags.textChanged.connect(self._typed)
        self.flags_error = wrap_label("")
        self.flags_error.hide()
        form.addRow("Also try &port:", self.installer_port)
        form.addRow("kexec e&xtra flags:", self.kexec_flags)
        form.addRow(self.flags_error)
        self.advanced_box.hide()

        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addWidget(self.dead_man_row)
        layout.addWidget(self.dead_man_limits)
        layout.addWidget(self.advanced)
        layout.addWidget(self.advanced_box)
        layout.addWidget(self.prompt)
        layout.addWidget(self.typed)
        layout.addStretch(1)

    @property
    def host(self) -> str:
        """The name the user must type."""
        return self.state.target.host if self.state.target else ""

    def initializePage(self) -> None:
        f, t = self.state.facts, self.state.target
        if f is None or t is None:
            return
        asset = self.state.choice.asset if self.state.choice else None
        image = asset.name if asset else (self.state.image.info.name if self.state.image else "?")
        how = (
            "the server downloads it and checks its sha256"
            if self.state.transfer == Transfer.REMOTE
            else "this computer uploads it; the server checks its sha256"
        )
        esc = html.escape
        bundle = self.state.image_kind == ImageKind.BUNDLE
        steps = (
            "<li>The bundle is placed in the staging folder and its checksum checked.</li>"
            "<li>It runs as root: it unpacks itself and replaces the running system with NixOS "
            "<b>in RAM</b>. Programs running now stop without a clean shutdown.</li>"
            "<li>The app waits for NixOS to answer and logs in with your keys. It will have a "
            "<b>new host key</b> and an address from DHCP.</li></ol>"
            f"<p><b>Legacy image</b></p><p>{esc(bundle_note())}</p>"
            if bundle
            else "<li>The app makes sure the installer will accept a key you hold.</li>"
            "<li>The image is placed in the staging folder and its checksum checked.</li>"
            "<li><code>kexec/run</code> runs as root: the running system is replaced by the "
            "NixOS installer <b>in RAM</b>. Programs running now stop without a clean "
            "shutdown.</li>"
            "<li>The app waits for the installer and checks it has the same host key.</li></ol>"
        )
        self.summary.setText(
            f"<p><b>Server:</b> {esc(t.label)} — {esc(f.os_name)}, {esc(f.machine)}<br>"
            f"<b>Image:</b> {esc(image)}<br><b>Transfer:</b> {esc(how)}<br>"
            f"<b>Staging folder:</b> {esc(f.staging.path or DEFAULT_STAGING)}</p>"
            "<p><b>What will happen</b></p><ol>" + steps + "<p><b>What will not happen</b></p><ul>"
            "<li>The disks are not touched: a power cycle brings the old system back.</li>"
            "<li>Until the kexec starts you can cancel, and the server is left as it was.</li></ul>"
        )
        # The switch as this server's profile last had it (a value it cannot read: the default).
        kept = self.state.profile.dead_man if self.state.profile else ""
        try:
            minutes = dead_man_choice(kept or None)[0]
        except WizardError:
            minutes = DEFAULT_DEAD_MAN_MINUTES
        self.dead_man.setChecked(minutes is not None)
        self.dead_man_minutes.setValue(round(minutes or DEFAULT_DEAD_MAN_MINUTES))
        # A bundle cannot carry the switch: it has no `run` to add the words to.
        self.dead_man_row.setVisible(not bundle)
        self.dead_man_limits.setText(
            "A kexec-bundle cannot carry the dead-man switch: if its system does not answer, "
            "a power cycle in the provider's panel brings the old system back."
            if bundle
            else "The switch cannot help if the installer's kernel hangs before it starts, if "
            "the firmware does not boot the disk, or in a provider's rescue mode."
        )
        self.prompt.setText(f"Type the host name “{self.host}” to enable Install:")
        self.typed.clear()
        self.typed.setFocus()

    @Slot(bool)
    def _toggle_advanced(self, shown: bool) -> None:
        self.advanced_box.setVisible(shown)
        self.advanced.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)

    @Slot()
    def _typed(self) -> None:
        self.completeChanged.emit()

    def _flags_problem(self) -> str:
        try:
            check_kexec_flags(self.kexec_flags.text().strip())
        except WizardError as exc:
            return f"{exc.what} {exc.why}"
        return ""

    def isComplete(self) -> bool:
        problem = self._flags_problem()
        self.flags_error.setText(problem)
        self.flags_error.setVisible(bool(problem))
        return bool(self.host) and self.typed.text().strip() == self.host and not problem

    def request(self) -> InstallRequest:
        """The install's choices on this page, as the engine takes them."""
        return InstallRequest(
            transfer=self.state.transfer,
            installer_port=self.installer_port.value() or None,
            kexec_extra_flags=self.kexec_flags.text().strip(),
            dead_man_minutes=(
                float(self.dead_man_minutes.value()) if self.dead_man.isChecked() else None
            ),
        )

    def validatePage(self) -> bool:
        """The run's one plan, from the choices of every page (its image is already here, so
        nothing waits); then the Install page boots it."""
        run, image = self.state.run, self.state.image_request
        if run is None or image is None:
            return False
        request = RunRequest(image, self.request(), self.state.catalog)
        try:
            run.prepare(request, self.state.answers, self.ctx.record, CancelToken())
        except WizardError as exc:
            self.prompt.setText(f"{exc.what} {exc.fix}")
            return False
        self.state.answers.confirmed = True
        self.ctx.note("confirm", f"confirmed the install on {run.host.target.label}")
        return True

    def nextId(self) -> int:
        return int(PageId.INSTALL)

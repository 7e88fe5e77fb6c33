"""Confirm page (the commit page): what will and will not happen; type the host name to go on."""

from __future__ import annotations

import html

from PySide6.QtCore import Slot
from PySide6.QtWidgets import QLineEdit, QVBoxLayout, QWizard

from app.core.download import bundle_note
from app.core.install import DEFAULT_STAGING, InstallPlan
from app.core.workflow import image_kind
from app.ui.context import AppContext, Flow
from app.ui.pages.base import BasePage, PageId
from app.ui.widgets import wrap_label


class ConfirmPage(BasePage):
    """Sums up the plan; Install is enabled only when the host name is typed."""

    def __init__(self, ctx: AppContext, flow: Flow) -> None:
        super().__init__(ctx, flow)
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
        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addWidget(self.prompt)
        layout.addWidget(self.typed)
        layout.addStretch(1)

    @property
    def host(self) -> str:
        """The name the user must type."""
        return self.flow.target.host if self.flow.target else ""

    def initializePage(self) -> None:
        f, t = self.flow.facts, self.flow.target
        if f is None or t is None:
            return
        image = (
            self.flow.asset.name
            if self.flow.asset
            else (self.flow.image.info.name if self.flow.image else "?")
        )
        how = (
            "the server downloads it and checks its sha256"
            if self.flow.transfer == "remote"
            else "this computer uploads it; the server checks its sha256"
        )
        esc = html.escape
        bundle = image_kind(self.flow.asset, self.flow.image_meta, self.flow.image) == "bundle"
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
        self.prompt.setText(f"Type the host name “{self.host}” to enable Install:")
        self.typed.clear()
        self.typed.setFocus()

    @Slot()
    def _typed(self) -> None:
        self.completeChanged.emit()

    def isComplete(self) -> bool:
        return bool(self.host) and self.typed.text().strip() == self.host

    def validatePage(self) -> bool:
        f, t = self.flow.facts, self.flow.target
        if f is None or t is None:
            return False
        self.flow.plan = InstallPlan(
            target=t,
            image=self.flow.image,
            asset=self.flow.asset,
            transfer=self.flow.transfer,
            staging_dir=f.staging.path or DEFAULT_STAGING,
            key_name=self.flow.profile_name or t.host,
            kind=image_kind(self.flow.asset, self.flow.image_meta, self.flow.image),
        )
        self.ctx.note("confirm", f"confirmed the install on {t.label}")
        return True

    def nextId(self) -> int:
        return int(PageId.INSTALL)

"""Start page: saved servers with their last known state; new, resume, reconnect, edit, forget."""

from __future__ import annotations

import time

from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import (
    QHBoxLayout,
    QHeaderView,
    QMessageBox,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
)

from app.core.errors import WizardError
from app.core.events import CancelToken, EventSink
from app.core.handoff import installer_ssh_command, open_terminal, profile_installer
from app.core.profiles import Profile, forget_profile
from app.core.ssh import load_ssh_config, ssh_config_hosts
from app.ui.context import AppContext, Batch, WizardState
from app.ui.dialogs import SeveralServersDialog
from app.ui.pages.base import BasePage, PageId
from app.ui.widgets import ErrorPanel, ask, wrap_label

STATE_TEXT = {
    "original": "Original OS",
    "installer": "NixOS installer",
    "installed": "NixOS on its disk (reboot to start it)",
    "unknown": "Unknown",
}


class ServersPage(BasePage):
    """Lists profiles; Next (or a double-click) continues with the selected one."""

    def __init__(self, ctx: AppContext, state: WizardState) -> None:
        super().__init__(ctx, state)
        self.setTitle("Servers")
        self.setSubTitle(
            "Boot the NixOS installer into RAM on a Linux server you reach over SSH. "
            "Pick a saved server or start with a new one."
        )
        self.tree = QTreeWidget(self)
        self.tree.setHeaderLabels(["Name", "Address", "State", "Last contact"])
        self.tree.setRootIsDecorated(False)
        self.tree.setAccessibleName("Saved servers")
        self.tree.header().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.tree.setSelectionMode(QTreeWidget.SelectionMode.ExtendedSelection)
        self.tree.itemSelectionChanged.connect(self._selection_changed)
        self.tree.itemDoubleClicked.connect(self._double_clicked)
        self.empty = wrap_label("No saved servers yet. Click “New server” to begin.")
        self.notice = ErrorPanel(self)
        self.new_button = QPushButton("New ser&ver", self)
        self.several_button = QPushButton("Add &several…", self)
        self.several_button.setToolTip(
            "Inspect and install several new servers at once: paste user@host lines or pick "
            "~/.ssh/config hosts"
        )
        self.several_button.clicked.connect(self._several)
        self.batch_note = wrap_label("")
        self.reconnect_button = QPushButton("&Reconnect", self)
        self.reconnect_button.setToolTip("Open a terminal on this server's NixOS installer")
        self.edit_button = QPushButton("&Edit", self)
        self.forget_button = QPushButton("&Forget", self)
        for b in (self.new_button, self.several_button, self.reconnect_button, self.edit_button,
                  self.forget_button):  # fmt: skip
            b.setAccessibleName(b.text().replace("&", ""))
        self.new_button.clicked.connect(self._new)
        self.reconnect_button.clicked.connect(self._reconnect)
        self.edit_button.clicked.connect(self._edit)
        self.forget_button.clicked.connect(self._forget)
        buttons = QHBoxLayout()
        buttons.addWidget(self.new_button)
        buttons.addWidget(self.several_button)
        buttons.addStretch(1)
        buttons.addWidget(self.reconnect_button)
        buttons.addWidget(self.edit_button)
        buttons.addWidget(self.forget_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.notice)
        layout.addWidget(self.tree, 1)
        layout.addWidget(self.empty)
        layout.addWidget(self.batch_note)
        layout.addLayout(buttons)
        self.confirm_forget: QMessageBox | None = None
        self.several_dialog: SeveralServersDialog | None = None
        self.profiles: dict[str, Profile] = {}

    def initializePage(self) -> None:
        self.reload()

    def reload(self) -> None:
        """Read the profiles file again."""
        self.tree.clear()
        try:
            self.profiles = self.ctx.profiles.load()
        except WizardError as exc:
            self.notice.show_error(exc)
            self.profiles = {}
        if self.ctx.profiles.notice:
            self.notice.show_error(
                WizardError(self.ctx.profiles.notice, "", "Nothing else is needed."), "warn"
            )
        for p in sorted(self.profiles.values(), key=lambda p: -(p.last_contact or 0)):
            when = (
                time.strftime("%Y-%m-%d %H:%M", time.localtime(p.last_contact))
                if p.last_contact
                else "never"
            )
            port = f":{p.port}" if p.port != 22 else ""
            item = QTreeWidgetItem([p.name, f"{p.user}@{p.host}{port}", STATE_TEXT[p.state], when])
            item.setData(0, Qt.ItemDataRole.UserRole, p.name)
            self.tree.addTopLevelItem(item)
        self.empty.setVisible(not self.profiles)
        self.tree.setVisible(bool(self.profiles))
        first = self.tree.topLevelItem(0)
        if first is not None:
            self.tree.setCurrentItem(first)
        self._selection_changed()

    def selected_profiles(self) -> list[Profile]:
        """Every highlighted profile, in the list's order."""
        names = [str(i.data(0, Qt.ItemDataRole.UserRole)) for i in self.tree.selectedItems()]
        return [self.profiles[n] for n in names if n in self.profiles]

    def selected(self) -> Profile | None:
        """The highlighted profile, when exactly one is."""
        picked = self.selected_profiles()
        return picked[0] if len(picked) == 1 else None

    @Slot()
    def _selection_changed(self) -> None:
        picked = self.selected_profiles()
        p = self.selected()
        self.edit_button.setEnabled(p is not None)
        self.forget_button.setEnabled(p is not None)
        self.reconnect_button.setEnabled(p is not None and bool(p.installer))
        self.state.profile = p
        self.state.batch = Batch(profiles=picked) if len(picked) > 1 else None
        self.batch_note.setText(
            f"{len(picked)} servers selected: Next inspects them all at once."
            if len(picked) > 1
            else ("Select several servers (Ctrl or Shift) to install on them at once."
                  if len(self.profiles) > 1 else "")
        )  # fmt: skip

    @Slot()
    def _several(self) -> None:
        def work(_emit: EventSink, _cancel: CancelToken) -> list[str]:
            return ssh_config_hosts(load_ssh_config())  # off the GUI thread, as on Connect

        self.run("ssh-config", work, self._open_several, failed=lambda _e: self._open_several([]))

    def _open_several(self, hosts: list[str]) -> None:
        dialog = SeveralServersDialog(hosts, self)
        dialog.accepted.connect(self._several_given)
        self.several_dialog = dialog
        dialog.open()

    @Slot()
    def _several_given(self) -> None:
        dialog, self.several_dialog = self.several_dialog, None
        if dialog is None:
            return
        specs = dialog.targets()
        if not specs:
            return
        self.state.profile = None
        self.state.batch = Batch(profiles=self.selected_profiles(), specs=specs)
        self.wizard().next()

    @Slot()
    def _new(self) -> None:
        self.tree.clearSelection()
        self.state.profile = None
        self.state.batch = None
        self.wizard().next()

    @Slot()
    def _edit(self) -> None:
        self.wizard().next()

    @Slot(QTreeWidgetItem, int)
    def _double_clicked(self, _item: QTreeWidgetItem, _column: int) -> None:
        self.wizard().next()

    @Slot()
    def _reconnect(self) -> None:
        p = self.selected()
        if p is None:
            return
        try:
            info, jump = profile_installer(p)
        except WizardError as exc:
            self.notice.show_error(exc)
            return
        cmd = installer_ssh_command(info, jump, self.ctx.known_hosts.app_file)
        why_not = open_terminal(cmd)
        if why_not is not None:
            import shlex

            self.notice.show_error(
                WizardError(
                    f"Could not open a terminal: {why_not}.",
                    "Run this command in a terminal instead:\n" + shlex.join(cmd),
                    "Or set $TERMINAL to your terminal program.",
                ),
                "warn",
            )

    @Slot()
    def _forget(self) -> None:
        p = self.selected()
        if p is None:
            return
        self.confirm_forget = ask(
            self,
            "Forget server",
            f"Forget {p.name} ({p.user}@{p.host})?\n\nIts profile and any password remembered "
            "in the keyring are removed. Nothing changes on the server.",
            self._forget_answered,
        )

    @Slot(int)
    def _forget_answered(self, answer: int) -> None:
        p = self.selected()
        self.confirm_forget = None
        if p is None or answer != QMessageBox.StandardButton.Yes:
            return
        profiles, secrets, name = self.ctx.profiles, self.ctx.secrets, p.name

        def work(_emit: EventSink, _cancel: CancelToken) -> bool:
            return forget_profile(profiles, secrets, name)  # the keyring may be slow

        self.run("forget", work, lambda _gone: self.reload(), failed=self.notice.show_error)

    def nextId(self) -> int:
        return int(PageId.BATCH_INSPECT if self.state.batch is not None else PageId.CONNECT)

"""Dialogs: trusting host keys, asking for a secret, several servers, and the settings."""

from __future__ import annotations

import html

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core.errors import ConfigError, HostKeyUnknown
from app.core.fleet import servers, targets_of_text
from app.core.settings import Settings
from app.ui.widgets import std_icon, wrap_label


class HostKeyDialog(QDialog):
    """Asks whether to trust an unknown host key, showing its type and SHA256 fingerprint."""

    def __init__(self, error: HostKeyUnknown, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.error = error
        first = type(error) is HostKeyUnknown
        self.setWindowTitle("Unknown host key" if first else "Unverified host key")
        layout = QVBoxLayout(self)
        top = QHBoxLayout()
        icon = QLabel(self)
        icon.setPixmap(std_icon(self, "warn").pixmap(40, 40))
        top.addWidget(icon, 0, Qt.AlignmentFlag.AlignTop)
        headline = (
            f"<b>First connection to {html.escape(error.host)} (port {error.port}).</b><br><br>"
            f"Its {html.escape(error.key_type)} host key has the fingerprint:"
            if first
            # Keys of other types are known, or a kexec-bundle's system has new keys: say so.
            else f"<b>{html.escape(error.what)}</b><br><br>{html.escape(error.why)}<br><br>"
            f"The {html.escape(error.key_type)} key it presents has the fingerprint:"
        )
        text = wrap_label(headline, rich=True)
        top.addWidget(text, 1)
        layout.addLayout(top)
        self.fingerprint = QLineEdit(error.fingerprint, self)
        self.fingerprint.setReadOnly(True)
        self.fingerprint.setAccessibleName("Host key fingerprint")
        font = self.fingerprint.font()
        font.setFamily("monospace")
        self.fingerprint.setFont(font)
        layout.addWidget(self.fingerprint)
        layout.addWidget(
            wrap_label(
                "Compare it with the fingerprint your provider shows, or with the output of "
                "“ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub” on the server's console. "
                "Trust it only if they match: a wrong key lets someone in the middle read what "
                "you send."
            )
        )
        buttons = QDialogButtonBox(self)
        self.trust = buttons.addButton("Trust this key", QDialogButtonBox.ButtonRole.AcceptRole)
        self.reject_button = buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        self.reject_button.setDefault(True)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.setMinimumWidth(520)


class SecretDialog(QDialog):
    """Asks for a password or passphrase; the text never leaves memory."""

    def __init__(self, title: str, prompt: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        layout = QVBoxLayout(self)
        layout.addWidget(wrap_label(prompt))
        self.field = QLineEdit(self)
        self.field.setEchoMode(QLineEdit.EchoMode.Password)
        self.field.setAccessibleName(title)
        layout.addWidget(self.field)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.setMinimumWidth(420)

    @property
    def secret(self) -> str:
        """What was typed."""
        return self.field.text()


class SettingsDialog(QDialog):
    """Cache folder, releases API and download URLs, and the main deadlines."""

    def __init__(
        self, settings: Settings, default_cache: str, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.settings = settings
        form = QFormLayout()
        cache_row = QHBoxLayout()
        self.cache = QLineEdit(settings.cache_dir, self)
        self.cache.setPlaceholderText(default_cache)
        self.cache.setAccessibleName("Cache folder")
        browse = QPushButton("Browse…", self)
        browse.clicked.connect(self._browse)
        cache_row.addWidget(self.cache, 1)
        cache_row.addWidget(browse)
        form.addRow("Image &cache folder:", cache_row)
        self.api = QLineEdit(settings.api_url, self)
        self.api.setAccessibleName("Releases API URL")
        form.addRow("Releases &API URL:", self.api)
        self.download = QLineEdit(settings.download_url, self)
        self.download.setAccessibleName("Download URL")
        form.addRow("&Download URL:", self.download)
        self.allow_http = QCheckBox(
            "Allow plain http (only for a mirror on your own network)", self
        )
        self.allow_http.setChecked(settings.allow_http)
        form.addRow("", self.allow_http)
        self.connect_timeout = self._seconds(settings.connect_timeout, 1, 120, "Connection timeout")
        form.addRow("C&onnection timeout:", self.connect_timeout)
        self.up_timeout = self._seconds(settings.up_timeout, 30, 3600, "Installer wait timeout")
        form.addRow("&Wait for the installer up to:", self.up_timeout)
        self.error = wrap_label("")
        self.error.setStyleSheet(
            "color: palette(highlighted-text); background: #b3261e; padding: 4px;"
        )
        self.error.hide()
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.error)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel, self
        )
        buttons.accepted.connect(self._save)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.setMinimumWidth(560)

    def _seconds(self, value: float, low: float, high: float, name: str) -> QDoubleSpinBox:
        box = QDoubleSpinBox(self)
        box.setRange(low, high)
        box.setDecimals(0)
        box.setSuffix(" s")
        box.setValue(value)
        box.setAccessibleName(name)
        return box

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Image cache folder", self.cache.text())
        if path:
            self.cache.setText(path)

    def result_settings(self) -> Settings:
        """The settings as edited (validated)."""
        from dataclasses import replace

        s = replace(
            self.settings,
            cache_dir=self.cache.text().strip(),
            api_url=self.api.text().strip(),
            download_url=self.download.text().strip(),
            allow_http=self.allow_http.isChecked(),
            connect_timeout=self.connect_timeout.value(),
            up_timeout=self.up_timeout.value(),
        )
        s.check_url(s.api_url, "releases API URL")
        s.check_url(s.download_url, "download URL")
        return s

    def _save(self) -> None:
        try:
            self.settings = self.result_settings()
        except ConfigError as exc:
            self.error.setText(exc.explain())
            self.error.show()
            return
        self.accept()


class HostKeysDialog(QDialog):
    """The unknown host keys of several servers in one question: each with its fingerprint."""

    def __init__(self, questions: list[tuple[str, HostKeyUnknown]], parent: QWidget | None = None
                 ) -> None:  # fmt: skip
        super().__init__(parent)
        self.questions = questions
        self.setWindowTitle("Unknown host keys")
        layout = QVBoxLayout(self)
        layout.addWidget(
            wrap_label(
                f"<b>{servers(len(questions))} {'has' if len(questions) == 1 else 'have'} a "
                "host key this app does not know.</b>",
                rich=True,
            )
        )
        self.table = QTreeWidget(self)
        # The key belongs to the machine that answered (a jump hop, or the address a profile
        # or ~/.ssh/config alias leads to), which is not always the name the user typed.
        self.table.setHeaderLabels(["Server", "Host with this key", "Key", "Fingerprint"])
        self.table.setRootIsDecorated(False)
        self.table.setAccessibleName("Unknown host keys")
        mono = self.table.font()
        mono.setFamily("monospace")
        for label, q in questions:
            host = f"[{q.host}]" if ":" in q.host else q.host  # an IPv6 address, bracketed
            item = QTreeWidgetItem([label, f"{host}:{q.port}", q.key_type, q.fingerprint])
            item.setFont(3, mono)
            self.table.addTopLevelItem(item)
        for col in range(4):
            self.table.resizeColumnToContents(col)
        layout.addWidget(self.table, 1)
        layout.addWidget(
            wrap_label(
                "Compare each with the fingerprint your provider shows, or with “ssh-keygen -lf "
                "/etc/ssh/ssh_host_ed25519_key.pub” on the server's console. Trust them only if "
                "they all match; a server whose key you do not trust is left out."
            )
        )
        buttons = QDialogButtonBox(self)
        self.trust = buttons.addButton(
            f"Trust these {len(questions)} keys", QDialogButtonBox.ButtonRole.AcceptRole
        )
        self.reject_button = buttons.addButton(
            "Leave them out", QDialogButtonBox.ButtonRole.RejectRole
        )
        self.reject_button.setDefault(True)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.setMinimumSize(720, 320)


class SeveralServersDialog(QDialog):
    """Several new servers in one go: pasted targets, or aliases from ~/.ssh/config."""

    def __init__(self, aliases: list[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Several servers")
        layout = QVBoxLayout(self)
        layout.addWidget(
            wrap_label(
                "One server per line, as [user@]host[:port] (the user is root unless given); "
                "“#” starts a comment. They log in with your SSH agent or keys (a saved server "
                "can use a remembered password)."
            )
        )
        self.text = QPlainTextEdit(self)
        self.text.setPlaceholderText("root@203.0.113.10\ndeploy@203.0.113.11:2222\n")
        self.text.setAccessibleName("Servers, one per line")
        layout.addWidget(self.text, 2)
        self.aliases = QListWidget(self)
        self.aliases.setAccessibleName("Hosts from ~/.ssh/config")
        for alias in aliases:
            item = QListWidgetItem(alias, self.aliases)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Unchecked)
        if aliases:
            layout.addWidget(wrap_label("Or pick hosts from your ~/.ssh/config:"))
            layout.addWidget(self.aliases, 1)
        else:
            self.aliases.hide()
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self
        )
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Inspect them")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.setMinimumSize(520, 420)

    def targets(self) -> list[str]:
        """The pasted targets, then the picked aliases, each once."""
        picked = [
            self.aliases.item(i).text()
            for i in range(self.aliases.count())
            if self.aliases.item(i).checkState() == Qt.CheckState.Checked
        ]
        return list(dict.fromkeys([*targets_of_text(self.text.toPlainText()), *picked]))

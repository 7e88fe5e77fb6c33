"""Dialogs: trusting a host key, asking for a secret, and the settings."""

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
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.core.errors import ConfigError, HostKeyUnknown
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

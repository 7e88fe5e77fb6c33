"""Connect page: address, port, user, jump host and login; a real connection enables Next."""

from __future__ import annotations

from PySide6.QtCore import Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QCompleter,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.core.errors import ConfigError, HostKeyUnknown, WizardError
from app.core.events import CancelToken, EventSink
from app.core.profiles import check_name
from app.core.secrets import password_key, sudo_key
from app.core.ssh import (
    ConnectOptions,
    Credentials,
    PassphraseRequired,
    PasswordRequired,
    Session,
    Target,
    connect,
    load_ssh_config,
    parse_target,
    ssh_config_hosts,
)
from app.ui.context import AppContext, Flow
from app.ui.dialogs import HostKeyDialog, SecretDialog
from app.ui.jobs import JobResult
from app.ui.pages.base import BasePage, PageId
from app.ui.widgets import ErrorPanel, wrap_label

AUTH_METHODS = [
    ("auto", "Automatic: SSH agent and key files, then password"),
    ("agent", "SSH agent"),
    ("key", "Key file"),
    ("password", "Password"),
]


class ConnectPage(BasePage):
    """Collects how to reach the server and proves it by connecting off the GUI thread."""

    def __init__(self, ctx: AppContext, flow: Flow) -> None:
        super().__init__(ctx, flow)
        self.setTitle("Connect")
        self.setSubTitle("How do you reach the server over SSH? The app connects to check.")
        self.passphrases: dict[str, str] = {}
        self.host_key_dialog: HostKeyDialog | None = None
        self.accepted_keys: tuple[tuple[str, int, str], ...] = ()
        self.remembered_sudo: str | None = None
        self.secret_dialog: SecretDialog | None = None
        self._loaded_profile: str | None = None

        self.address = QLineEdit(self)
        self.address.setPlaceholderText("host name, IP address or ~/.ssh/config alias")
        self.port = QSpinBox(self)
        self.port.setRange(1, 65535)
        self.port.setValue(22)
        self.user = QLineEdit(self)
        self.user.setPlaceholderText("root")
        self.jump = QLineEdit(self)
        self.jump.setPlaceholderText("optional: user@bastion:22")
        self.auth = QComboBox(self)
        for key, text in AUTH_METHODS:
            self.auth.addItem(text, key)
        self.key_path = QLineEdit(self)
        self.key_path.setPlaceholderText("optional: ~/.ssh/id_ed25519")
        browse = QPushButton("Browse…", self)
        browse.clicked.connect(self._browse)
        self.key_row = QWidget(self)
        key_layout = QHBoxLayout(self.key_row)
        key_layout.setContentsMargins(0, 0, 0, 0)
        key_layout.addWidget(self.key_path, 1)
        key_layout.addWidget(browse)
        self.password = QLineEdit(self)
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        self.remember = QCheckBox(self)
        self._looked_around = False  # ~/.ssh/config and the keyring: read when first shown
        self.profile_name = QLineEdit(self)
        self.profile_name.setPlaceholderText("the host name")
        names = {
            self.address: "Server address",
            self.port: "SSH port",
            self.user: "User name",
            self.jump: "Jump host",
            self.auth: "Authentication method",
            self.key_path: "Key file",
            self.password: "Password",
            self.remember: "Remember password",
            self.profile_name: "Save as profile",
        }
        for widget, name in names.items():
            widget.setAccessibleName(name)

        form = QFormLayout()
        form.addRow("&Address:", self.address)
        form.addRow("&Port:", self.port)
        form.addRow("&User:", self.user)
        form.addRow("&Jump host:", self.jump)
        form.addRow("Log in &with:", self.auth)
        form.addRow("&Key file:", self.key_row)
        form.addRow("Passw&ord:", self.password)
        form.addRow("", self.remember)
        form.addRow("&Save as:", self.profile_name)
        self.form = form

        self.connect_button = QPushButton("&Connect", self)
        self.connect_button.setAccessibleName("Connect")
        self.connect_button.setDefault(True)
        self.connect_button.clicked.connect(self.start_connect)
        self.status = wrap_label("")
        self.status.setAccessibleName("Connection status")
        self.error = ErrorPanel(self)
        row = QHBoxLayout()
        row.addWidget(self.connect_button)
        row.addWidget(self.status, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(row)
        layout.addWidget(self.error)
        layout.addStretch(1)

        for w in (self.address, self.user, self.jump, self.key_path, self.password):
            w.textEdited.connect(self._changed)
        self.port.valueChanged.connect(self._changed)
        self.auth.currentIndexChanged.connect(self._auth_changed)
        self.address.returnPressed.connect(self.start_connect)
        self.password.returnPressed.connect(self.start_connect)
        self._auth_changed()

    # -- filling in ---------------------------------------------------------------------

    def _look_around(self) -> None:
        """Read ~/.ssh/config and find the keyring, once: not at start-up, which they slow."""
        self._looked_around = True
        hosts = ssh_config_hosts(load_ssh_config())
        if hosts:
            self.address.setCompleter(QCompleter(hosts, self))
        if self.ctx.secrets.available:
            self.remember.setText(f"Remember the password in {self.ctx.secrets.where()}")
        else:
            self.remember.setText(
                "The password cannot be remembered: no system keyring is available, "
                "so you will be asked each time"
            )
            self.remember.setEnabled(False)

    def initializePage(self) -> None:
        if not self._looked_around:
            self._look_around()
        p = self.flow.profile
        name = p.name if p else None
        if name == self._loaded_profile and (p is None or self.address.text()):
            return
        self._loaded_profile = name
        self._changed()
        if p is None:
            for w in (self.address, self.user, self.jump, self.key_path, self.password):
                w.clear()
            self.port.setValue(22)
            self.profile_name.clear()
            self.auth.setCurrentIndex(0)
            self.remember.setChecked(False)
            self.remembered_sudo = None
            return
        self.address.setText(p.host)
        self.port.setValue(p.port)
        self.user.setText(p.user)
        self.jump.setText(p.jump)
        self.key_path.setText(p.key_path)
        self.auth.setCurrentIndex(max(0, self.auth.findData(p.auth)))
        self.profile_name.setText(p.name)
        self.remember.setChecked(p.remember_password and self.remember.isEnabled())
        remembered = self.ctx.secrets.get(password_key(p.name)) if p.remember_password else None
        self.password.setText(remembered or "")
        # The remembered sudo password is used as the command line uses it.
        self.remembered_sudo = (
            self.ctx.secrets.get(sudo_key(p.name)) if p.remember_password else None
        )

    @Slot()
    def _auth_changed(self) -> None:
        method = self.auth.currentData()
        self.form.setRowVisible(self.key_row, method in ("auto", "key"))
        self.form.setRowVisible(self.password, method in ("auto", "password"))
        self.form.setRowVisible(self.remember, method in ("auto", "password"))
        self._changed()

    @Slot()
    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Private key", str(self.key_path.text()))
        if path:
            self.key_path.setText(path)
            self._changed()

    @Slot()
    def _changed(self) -> None:
        """Any edit invalidates the connection: Next waits for a new one."""
        if self.busy:
            self.cancel_job()
        if self.flow.session is not None:
            self.flow.drop_session()
            self.status.setText("")
        self.error.clear()
        self.completeChanged.emit()

    # -- connecting ---------------------------------------------------------------------

    def _target(self) -> Target:
        key = self.key_path.text().strip()
        jump = self.jump.text().strip()
        return parse_target(
            self.address.text().strip(),
            port=self.port.value() if self.port.value() != 22 else None,
            user=self.user.text().strip() or None,
            identity=[key] if key and self.auth.currentData() in ("auto", "key") else [],
            jump=jump or None,
            config=load_ssh_config(),
        )

    def use_user(self, user: str) -> None:
        """Log in again as ``user`` (the one the server asked for), keeping everything else."""
        self.user.setText(user)
        self.start_connect()

    @Slot()
    def start_connect(self) -> None:
        """Connect in the background; questions (host key, passphrase) come back as dialogs."""
        self._changed()
        if not self.address.text().strip():
            self.error.show_error(
                WizardError("Enter the server's address.", "", "A host name, IP or alias.")
            )
            return
        try:
            target = self._target()
        except WizardError as exc:
            self.error.show_error(exc)
            return
        password = self.password.text() or None
        self.ctx.redact.add(password)
        self.ctx.redact.add(self.remembered_sudo)
        creds = Credentials(
            method=str(self.auth.currentData()),
            password=password,
            passphrases=dict(self.passphrases),
            sudo_password=self.remembered_sudo,
        )
        opts = ConnectOptions(timeout=self.ctx.settings.connect_timeout, trusted=self.accepted_keys)
        known = self.ctx.known_hosts

        def work(_emit: EventSink, cancel: CancelToken) -> tuple[Session, Target, Credentials]:
            return connect(target, creds, known, opts, cancel=cancel), target, creds

        job = self.start_job("connect", work)
        job.finished.connect(self._connected)
        job.start()
        self.status.setText(f"Connecting to {target.label}…")
        self.connect_button.setEnabled(False)

    @Slot(object)
    def _connected(self, result: JobResult) -> None:
        self.connect_button.setEnabled(True)
        if result.ok:
            session, target, creds = result.value
            self.flow.session, self.flow.target, self.flow.creds = session, target, creds
            self.status.setText(
                f"Connected as {target.label}. Host key {session.host_key_fingerprint}."
            )
            if not self.profile_name.text().strip():
                self.profile_name.setText(target.alias or target.host)
            self.completeChanged.emit()
            return
        self.status.setText("")
        err = result.error
        if result.cancelled:
            return
        if isinstance(err, HostKeyUnknown):
            key_dialog = HostKeyDialog(err, self)
            key_dialog.accepted.connect(self._trusted)
            self.host_key_dialog = key_dialog
            key_dialog.open()
            return
        if isinstance(err, PassphraseRequired):
            secret_dialog = SecretDialog(
                "Key passphrase",
                f"The key {err.path} "
                + (
                    "did not accept that passphrase. Try again:"
                    if err.wrong
                    else "is encrypted. Its passphrase:"
                ),
                self,
            )
            secret_dialog.accepted.connect(self._passphrase_given)
            secret_dialog.setProperty("path", err.path)
            self.secret_dialog = secret_dialog
            secret_dialog.open()
            return
        if isinstance(err, PasswordRequired):
            if self.auth.currentData() not in ("auto", "password"):
                self.auth.setCurrentIndex(self.auth.findData("password"))
            self.password.setFocus()
        wizard_error = result.wizard_error
        assert wizard_error is not None
        self.error.show_error(wizard_error)

    @Slot()
    def _trusted(self) -> None:
        dialog = self.host_key_dialog
        self.host_key_dialog = None
        if dialog is not None:
            err = dialog.error
            # Each accepted key sticks for its own host: a jump hop is not asked again.
            self.accepted_keys = (*self.accepted_keys, (err.host, err.port, err.fingerprint))
            self.start_connect()

    @Slot()
    def _passphrase_given(self) -> None:
        dialog = self.secret_dialog
        self.secret_dialog = None
        if dialog is not None:
            self.ctx.redact.add(dialog.secret)
            self.passphrases[str(dialog.property("path"))] = dialog.secret
            self.start_connect()

    # -- leaving ------------------------------------------------------------------------

    def isComplete(self) -> bool:
        return self.flow.session is not None and self.flow.session.active

    def validatePage(self) -> bool:
        try:
            name = check_name(
                self.profile_name.text() or (self.flow.target.host if self.flow.target else "")
            )
        except ConfigError as exc:
            self.error.show_error(exc)
            return False
        self.flow.profile_name = name
        self.flow.remember_password = self.remember.isChecked()
        return True

    def nextId(self) -> int:
        return int(PageId.INSPECT)

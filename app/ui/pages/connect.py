"""Connect page: address, port, user, jump host and login; a real connection enables Next."""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QTimer, Slot
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
from app.core.kinds import AuthMethod
from app.core.questions import Answers, Question
from app.core.run import Host, HostRun
from app.core.secrets import password_key, sudo_key
from app.core.ssh import (
    Credentials,
    PassphraseRequired,
    PasswordRequired,
    Target,
    load_ssh_config,
    parse_target,
    ssh_config_hosts,
)
from app.ui.context import AppContext, WizardState
from app.ui.dialogs import HostKeyDialog, SecretDialog
from app.ui.jobs import Job
from app.ui.pages.base import BasePage, PageId
from app.ui.widgets import ErrorPanel, wrap_label

AUTH_METHODS = [
    ("auto", "Automatic: SSH agent and key files, then password"),
    ("agent", "SSH agent"),
    ("key", "Key file"),
    ("password", "Password"),
]


@dataclass(frozen=True)
class _TargetSpec:
    """What the fields say, copied on the GUI thread; parsed (with ~/.ssh/config) in the job."""

    address: str
    port: int | None
    user: str | None
    key: str
    jump: str

    def parse(self) -> Target:
        return parse_target(
            self.address,
            port=self.port,
            user=self.user,
            identity=[self.key] if self.key else [],
            jump=self.jump or None,
            config=load_ssh_config(),
        )


@dataclass(frozen=True)
class _LookedAround:
    """What the background look-around found: ssh_config hosts, the keyring, saved secrets."""

    hosts: list[str] | None
    where: str | None  # where secrets go, or None without a keyring
    password: str | None
    sudo_password: str | None


class ConnectPage(BasePage):
    """Collects how to reach the server and proves it by connecting off the GUI thread."""

    def __init__(self, ctx: AppContext, state: WizardState) -> None:
        super().__init__(ctx, state)
        self.setTitle("Connect")
        self.setSubTitle("How do you reach the server over SSH? The app connects to check.")
        self.host_key_dialog: HostKeyDialog | None = None
        self.remembered_sudo: str | None = None
        self.secret_dialog: SecretDialog | None = None
        self._loaded_profile: str | None = None
        self._connect_queued = False
        self._look_job: Job | None = None

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

    def initializePage(self) -> None:
        p = self.state.profile
        name = p.name if p else None
        if name == self._loaded_profile and (p is None or self.address.text()):
            if not self._looked_around:
                self._look_around(None)
            return
        self._loaded_profile = name
        self.state.answers = Answers()  # another server: nothing answered for it yet
        self._changed()
        self.remembered_sudo = None
        self.password.clear()
        if p is None:
            for w in (self.address, self.user, self.jump, self.key_path):
                w.clear()
            self.port.setValue(22)
            self.profile_name.clear()
            self.auth.setCurrentIndex(0)
            self.remember.setChecked(False)
        else:
            self.address.setText(p.host)
            self.port.setValue(p.port)
            self.user.setText(p.user)
            self.jump.setText(p.jump)
            self.key_path.setText(p.key_path)
            self.auth.setCurrentIndex(max(0, self.auth.findData(p.auth)))
            self.profile_name.setText(p.name)
            self.remember.setChecked(p.remember_password)
        if not self._looked_around or (p is not None and p.remember_password):
            self._look_around(p.name if p is not None and p.remember_password else None)

    def _look_around(self, profile: str | None) -> None:
        """Read ~/.ssh/config, find the keyring and read a profile's remembered passwords, in
        the background: a keyring may wait for an unlock prompt, and the GUI must not."""
        secrets, first = self.ctx.secrets, not self._looked_around
        self._looked_around = True

        def work(_emit: EventSink, _cancel: CancelToken) -> _LookedAround:
            hosts = ssh_config_hosts(load_ssh_config()) if first else None
            where = secrets.where() if secrets.available else None
            if profile is None or where is None:
                return _LookedAround(hosts, where, None, None)
            return _LookedAround(
                hosts, where, secrets.get(password_key(profile)), secrets.get(sudo_key(profile))
            )

        self._connect_queued = False
        self._look_job = self.run(
            "keyring",
            work,
            self._looked,
            failed=self._look_failed,
            ended=lambda: self.status.setText(""),
            cancelled=self._look_cancelled,
        )
        self.status.setText("Reading your keyring…" if profile else "")

    def _connect_if_queued(self) -> None:
        queued, self._connect_queued = self._connect_queued, False
        if (
            queued and self._look_job is not None and not self._look_job.cancel_token.cancelled
        ):  # not while closing
            QTimer.singleShot(0, self.start_connect)  # after this job's own slots have run

    def _look_failed(self, err: WizardError) -> None:
        self.show_error(err)
        self._connect_if_queued()  # without the remembered password: it will be asked

    def _look_cancelled(self) -> None:
        self._connect_queued = False  # closing or leaving the page: no connect behind its back

    def _looked(self, found: _LookedAround) -> None:
        self._fill_from(found)
        self._connect_if_queued()

    def _fill_from(self, found: _LookedAround) -> None:
        if found.hosts:
            self.address.setCompleter(QCompleter(found.hosts, self))
        if found.where is not None:
            self.remember.setText(f"Remember the password in {found.where}")
            self.remember.setEnabled(True)
        else:
            self.remember.setText(
                "The password cannot be remembered: no system keyring is available, "
                "so you will be asked each time"
            )
            self.remember.setChecked(False)
            self.remember.setEnabled(False)
        if found.password is not None and not self.password.text():
            self.password.setText(found.password)
        # The remembered sudo password is used as the command line uses it.
        self.remembered_sudo = found.sudo_password

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
        if self.busy and self.job is not None and self.job.name == "connect":
            self.cancel_job()  # the keyring look-around goes on: it fills only empty fields
        if self.state.run is not None:
            self.state.drop_session()
            self.status.setText("")
        self.error.clear()
        self.completeChanged.emit()

    # -- connecting ---------------------------------------------------------------------

    def use_user(self, user: str) -> None:
        """Log in again as ``user`` (the one the server asked for), keeping everything else."""
        self.user.setText(user)
        self.start_connect()

    @Slot()
    def start_connect(self) -> None:
        """Connect in the background; questions (host key, passphrase) come back as dialogs."""
        if self.busy and self.job is not None and self.job.name == "keyring":
            self._connect_queued = True  # the remembered password is on its way: then connect
            self.status.setText("Reading your keyring, then connecting…")
            return
        self._changed()
        if not self.address.text().strip():
            self.error.show_error(
                WizardError("Enter the server's address.", "", "A host name, IP or alias.")
            )
            return
        password = self.password.text() or None
        self.ctx.redact.add(password)
        self.ctx.redact.add(self.remembered_sudo)
        creds = Credentials(
            method=AuthMethod(self.auth.currentData()),
            password=password,
            sudo_password=self.remembered_sudo,
        )
        env, answers = self.ctx.run_env(), self.state.answers
        spec = _TargetSpec(
            self.address.text().strip(),
            self.port.value() if self.port.value() != 22 else None,
            self.user.text().strip() or None,
            self.key_path.text().strip() if self.auth.currentData() in ("auto", "key") else "",
            self.jump.text().strip(),
        )

        def work(_emit: EventSink, cancel: CancelToken) -> HostRun:
            target = spec.parse()  # reads ~/.ssh/config, so not on the GUI thread
            run = HostRun(Host(target.label, target, creds), env)
            run.connect(answers, cancel)
            return run

        self.run("connect", work, self._connected, failed=self._not_connected, ended=self._ended)
        self.status.setText(f"Connecting to {spec.address}…")
        self.connect_button.setEnabled(False)

    def _ended(self) -> None:
        self.connect_button.setEnabled(True)
        self.status.setText("")

    def _connected(self, run: HostRun) -> None:
        self.state.run = run
        target = run.host.target
        fingerprint = run.session.host_key_fingerprint if run.session is not None else "?"
        self.status.setText(f"Connected as {target.label}. Host key {fingerprint}.")
        if not self.profile_name.text().strip():
            self.profile_name.setText(target.alias or target.host)
        self.completeChanged.emit()

    def _not_connected(self, err: WizardError) -> None:
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
            secret_dialog.setProperty("error", err)
            self.secret_dialog = secret_dialog
            secret_dialog.open()
            return
        if isinstance(err, PasswordRequired):
            if self.auth.currentData() not in ("auto", "password"):
                self.auth.setCurrentIndex(self.auth.findData("password"))
            self.password.setFocus()
        self.error.show_error(err)

    def _answered(self, question: Question, answer: str) -> None:
        """Keep the answer where the next attempt finds it, then connect again."""
        # Each accepted key sticks for its own host: a jump hop is not asked again.
        self.state.answers.give(question, answer)
        self.start_connect()

    @Slot()
    def _trusted(self) -> None:
        dialog = self.host_key_dialog
        self.host_key_dialog = None
        if dialog is not None:
            self._answered(dialog.error, dialog.error.fingerprint)

    @Slot()
    def _passphrase_given(self) -> None:
        dialog = self.secret_dialog
        self.secret_dialog = None
        if dialog is not None:
            self.ctx.redact.add(dialog.secret)
            self._answered(dialog.property("error"), dialog.secret)

    # -- leaving ------------------------------------------------------------------------

    def isComplete(self) -> bool:
        run = self.state.run
        return run is not None and run.session is not None and run.session.active

    def validatePage(self) -> bool:
        run = self.state.run
        if run is None:
            return False
        try:
            run.keep_as(self.profile_name.text() or run.host.target.host, self.remember.isChecked())
        except ConfigError as exc:
            self.error.show_error(exc)
            return False
        return True

    def nextId(self) -> int:
        return int(PageId.INSPECT)

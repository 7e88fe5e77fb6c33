"""The "Other ways to boot" dialog: the iPXE chain URL, and a netboot server with its log."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.core.catalog import (
    ARCHES,
    DEFAULT_VARIANT,
    Catalog,
    CatalogClient,
    environ_arch,
    release_of,
)
from app.core.download import Downloader
from app.core.errors import WizardError
from app.core.events import CancelToken, Event, EventSink, ProgressEvent
from app.core.netboot import (
    DEFAULT_BIND,
    NetbootServer,
    NetbootSource,
    ServedRequest,
    chain_url,
    default_key_files,
    kexec_source,
    parse_bind,
    read_public_keys,
    release_source,
)
from app.core.plan import ImageRequest
from app.core.run import image_alone
from app.ui.context import AppContext
from app.ui.jobs import Job, JobFn, JobResult
from app.ui.widgets import ErrorPanel, show_progress, wrap_label

CONSOLE_NOTE = (
    "Use this for a machine that boots from the network, or a provider that lets you chain an "
    "iPXE URL. The netboot image is the plain NixOS installer: <b>root has no password and no "
    "SSH key</b>, so you need the machine's console to log in, then set a password or add a "
    "key."
)


class _RequestBridge(QObject):
    """Carries the server thread's request records into the GUI thread."""

    served = Signal(object)


class NetbootDialog(QDialog):
    """Chain the release's iPXE script, or serve a netboot image from this computer."""

    def __init__(
        self,
        ctx: AppContext,
        catalog: Catalog | None,
        channel: str | None = None,
        arch: str | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.catalog = catalog
        self.server: NetbootServer | None = None
        self.job: Job | None = None  # getting the files ready to serve
        self.catalog_job: Job | None = None
        self._closing_result = 0  # what done() was called with while jobs were cancelled
        self.bridge = _RequestBridge(self)
        self.bridge.served.connect(self._served)
        self.setWindowTitle("Other ways to boot")
        self.setMinimumSize(760, 640)

        self.channel = QComboBox(self)
        self.channel.setAccessibleName("Channel")
        self.arch = QComboBox(self)
        self.arch.setAccessibleName("Architecture")
        for a in ARCHES:
            self.arch.addItem(a, a)
        self.arch.setCurrentIndex(max(0, self.arch.findData(arch or environ_arch())))
        self._wanted_channel = channel
        pick = QFormLayout()
        pick.addRow("C&hannel:", self.channel)
        pick.addRow("&Architecture:", self.arch)

        # -- chain -------------------------------------------------------------------------
        chain_box = QGroupBox("Chain the release's iPXE script", self)
        self.chain = QLineEdit(self)
        self.chain.setReadOnly(True)
        self.chain.setAccessibleName("iPXE chain command")
        font = self.chain.font()
        font.setFamily("monospace")
        self.chain.setFont(font)
        self.copy_chain = QPushButton("&Copy", self)
        self.copy_chain.clicked.connect(lambda: self._copy(self.chain.text()))
        row = QHBoxLayout()
        row.addWidget(self.chain, 1)
        row.addWidget(self.copy_chain)
        cl = QVBoxLayout(chain_box)
        cl.addWidget(wrap_label("At an iPXE prompt, or in your provider's custom iPXE field:"))
        cl.addLayout(row)
        cl.addWidget(wrap_label(CONSOLE_NOTE, rich=True))

        # -- serve -------------------------------------------------------------------------
        serve_box = QGroupBox("Serve it from this computer", self)
        self.what = QButtonGroup(self)
        self.serve_kexec = QRadioButton(
            "The &kexec installer with your SSH keys: log in over SSH at once", self
        )
        self.serve_release = QRadioButton(
            "The release's &netboot image: log in on the console", self
        )
        for i, b in enumerate((self.serve_kexec, self.serve_release)):
            self.what.addButton(b, i)
            b.setAccessibleName(b.text().replace("&", ""))
        self.serve_kexec.setChecked(True)
        self.keys = QLineEdit(self)
        self.keys.setAccessibleName("Public key files")
        found = default_key_files(Path.home() / ".ssh", ctx.paths.keys_dir)
        self.keys.setText("; ".join(str(f) for f in found))
        self.keys.setPlaceholderText("~/.ssh/id_ed25519.pub")
        browse = QPushButton("&Browse…", self)
        browse.clicked.connect(self._browse_keys)
        keys_row = QHBoxLayout()
        keys_row.addWidget(self.keys, 1)
        keys_row.addWidget(browse)
        self.address = QLineEdit(DEFAULT_BIND[0], self)
        self.address.setAccessibleName("Address to serve on")
        self.port = QSpinBox(self)
        self.port.setRange(1, 65535)
        self.port.setValue(DEFAULT_BIND[1])
        self.port.setAccessibleName("Port")
        bind_row = QHBoxLayout()
        bind_row.addWidget(self.address, 1)
        bind_row.addWidget(QLabel("Port:", self))
        bind_row.addWidget(self.port)
        self.kernel_args = QLineEdit(self)
        self.kernel_args.setAccessibleName("Extra kernel arguments")
        self.kernel_args.setPlaceholderText("e.g. console=ttyS0,115200")
        form = QFormLayout()
        for text, buddy, field in (
            ("&Public keys:", self.keys, keys_row),
            ("Serve &on:", self.address, bind_row),
            ("Kernel ar&guments:", self.kernel_args, self.kernel_args),
        ):
            label = QLabel(text, self)
            label.setBuddy(buddy)
            form.addRow(label, field)
        self.start_button = QPushButton("&Start serving", self)
        self.start_button.clicked.connect(self._start_or_stop)
        self.status = wrap_label("", rich=True)
        self.status.setAccessibleName("Server status")
        self.progress = QProgressBar(self)
        self.progress.setAccessibleName("Download progress")
        self.progress.hide()
        self.served_chain = QLineEdit(self)
        self.served_chain.setReadOnly(True)
        self.served_chain.setFont(font)
        self.served_chain.setAccessibleName("Served chain command")
        self.copy_served = QPushButton("Cop&y", self)
        self.copy_served.clicked.connect(lambda: self._copy(self.served_chain.text()))
        served_row = QHBoxLayout()
        served_row.addWidget(self.served_chain, 1)
        served_row.addWidget(self.copy_served)
        self.served_widget = QWidget(self)
        self.served_widget.setLayout(served_row)
        served_row.setContentsMargins(0, 0, 0, 0)
        self.served_widget.hide()
        self.log = QPlainTextEdit(self)
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(1000)
        self.log.setAccessibleName("Request log")
        self.log.setPlaceholderText("Requests from the machine appear here.")
        self.log.setFont(font)
        sl = QVBoxLayout(serve_box)
        sl.addWidget(self.serve_kexec)
        sl.addWidget(self.serve_release)
        sl.addLayout(form)
        sl.addWidget(
            wrap_label(
                "127.0.0.1 serves only this computer (and virtual machines on it). For another "
                "machine on your network, use this computer's address on that network."
            )
        )
        start_row = QHBoxLayout()
        start_row.addWidget(self.start_button)
        start_row.addWidget(self.status, 1)
        sl.addLayout(start_row)
        sl.addWidget(self.progress)
        sl.addWidget(self.served_widget)
        sl.addWidget(self.log, 1)

        self.error = ErrorPanel(self)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(pick)
        layout.addWidget(chain_box)
        layout.addWidget(serve_box, 1)
        layout.addWidget(self.error)
        layout.addWidget(buttons)

        self.what.idToggled.connect(self._what_changed)
        self.channel.currentIndexChanged.connect(self._update_chain)
        self.arch.currentIndexChanged.connect(self._update_chain)
        self._what_changed()
        if catalog is None:
            self._load_catalog()
        else:
            self._fill_channels(catalog)

    # -- the catalog and the chain URL ------------------------------------------------------

    def _load_catalog(self) -> None:
        settings, cache = self.ctx.settings, self.ctx.paths.catalog_cache

        def work(_emit: EventSink, _cancel: CancelToken) -> Catalog:
            return CatalogClient(settings, cache).load()

        self.catalog_job = Job(work, "catalog", self)
        self.catalog_job.finished.connect(self._catalog_loaded)
        self.catalog_job.start()
        self.chain.setText("Reading the list of releases…")

    @Slot(object)
    def _catalog_loaded(self, result: JobResult) -> None:
        if result.ok:
            self._fill_channels(result.value)
        elif result.wizard_error:
            self.error.show_error(result.wizard_error)

    def _fill_channels(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.channel.blockSignals(True)
        self.channel.clear()
        for r in catalog.releases:
            self.channel.addItem(r.channel, r.channel)
        wanted = self._wanted_channel or catalog.default_channel()
        self.channel.setCurrentIndex(max(0, self.channel.findData(wanted)))
        self.channel.blockSignals(False)
        self._update_chain()

    @Slot()
    def _update_chain(self) -> None:
        channel, arch = self.channel.currentData(), str(self.arch.currentData())
        if not channel:
            return
        url = chain_url(self.ctx.settings, str(channel), arch)
        self.chain.setText(f"chain {url}")
        release = self.catalog.release(str(channel)) if self.catalog else None
        missing = release is not None and release.netboot(arch) is None
        if missing and self.catalog is not None and self.catalog.source != "builtin":
            self.chain.setToolTip(f"{channel} lists no netboot image for {arch}.")
            self.serve_release.setEnabled(False)
            self.serve_kexec.setChecked(True)
        else:
            self.chain.setToolTip("")
            self.serve_release.setEnabled(True)

    def _copy(self, text: str) -> None:
        QGuiApplication.clipboard().setText(text)
        self.status.setText("Copied to the clipboard.")

    # -- serving ----------------------------------------------------------------------------

    @Slot()
    def _what_changed(self) -> None:
        self.keys.setEnabled(self.serve_kexec.isChecked())

    @Slot()
    def _browse_keys(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(
            self, "Public SSH keys", str(Path.home() / ".ssh"), "Public keys (*.pub);;All (*)"
        )
        if paths:
            self.keys.setText("; ".join(paths))

    @Slot()
    def _start_or_stop(self) -> None:
        if self.server is not None or (self.job is not None and self.job.running):
            self.stop()
            return
        self.error.clear()
        try:
            host, port = parse_bind(f"{self._host_text()}:{self.port.value()}")
            source_fn = self._source_fn()
        except WizardError as exc:
            self.error.show_error(exc, "warn")
            return
        job = Job(source_fn, "netboot", self)
        job.message.connect(self._preparing)
        job.finished.connect(lambda r, j=job: self._prepared(j, r, host, port))
        self.job = job.start()
        self.start_button.setText("&Stop")
        self.status.setText("Getting the kernel and initrd ready…")
        self.progress.setRange(0, 0)
        self.progress.show()

    def _host_text(self) -> str:
        host = self.address.text().strip()
        return f"[{host}]" if ":" in host and not host.startswith("[") else host

    def _source_fn(self) -> JobFn:
        if self.catalog is None:
            raise WizardError("The list of releases is still loading.")
        catalog, settings, cache = self.catalog, self.ctx.settings, self.ctx.image_cache
        channel, arch = str(self.channel.currentData()), str(self.arch.currentData())
        work_dir = self.ctx.paths.netboot_dir
        if self.serve_release.isChecked():
            release = release_of(catalog, channel)

            def from_release(emit: EventSink, cancel: CancelToken) -> NetbootSource:
                return release_source(
                    Downloader(settings, cache), release, arch, emit=emit, cancel=cancel
                )

            return from_release
        files = [Path(p.strip()).expanduser() for p in self.keys.text().split(";") if p.strip()]
        keys = read_public_keys(files)
        request = ImageRequest(channel=channel, arch=arch, variant=DEFAULT_VARIANT)
        images = self.ctx.images

        def from_kexec(emit: EventSink, cancel: CancelToken) -> NetbootSource:
            image = image_alone(request, catalog, settings, images, emit, cancel)
            return kexec_source(image, work_dir, keys, cancel)

        return from_kexec

    @Slot(object)
    def _preparing(self, event: Event) -> None:
        self.ctx.record(event)
        if isinstance(event, ProgressEvent):
            self.status.setText("Downloading: " + show_progress(self.progress, event))

    def _prepared(self, job: Job, result: JobResult, host: str, port: int) -> None:
        if job is not self.job:
            return
        self.progress.hide()
        if not result.ok:
            self._idle()
            if result.wizard_error and not result.cancelled:
                self.error.show_error(result.wizard_error)
            return
        source: NetbootSource = result.value
        server = NetbootServer(
            source, host, port, self.kernel_args.text().strip(), self.bridge.served.emit
        )
        try:
            server.start()
        except WizardError as exc:
            self._idle()
            self.error.show_error(exc)
            return
        self.server = server
        self.served_chain.setText(server.chain_command)
        self.served_widget.show()
        self.status.setText(f"Serving {source.description} at {server.url}.")
        self.log.appendPlainText(f"Serving on {server.url}; type this at the iPXE prompt.")
        self.ctx.note("netboot", f"serving {source.description} at {server.url}")

    @Slot(object)
    def _served(self, req: ServedRequest) -> None:
        self.log.appendPlainText(req.line())
        self.ctx.note("netboot", req.line())

    def stop(self) -> None:
        """Stop serving (and any download getting ready for it)."""
        if self.job is not None and self.job.running:
            self.job.cancel()
        if self.server is not None:
            self.server.stop()
            self.log.appendPlainText(f"Stopped after {len(self.server.requests)} request(s).")
            self.server = None
        self._idle()

    def _idle(self) -> None:
        self.start_button.setText("&Start serving")
        self.served_widget.hide()
        self.status.setText("")

    def done(self, result: int) -> None:
        """Closing the dialog stops the server: nothing keeps serving unseen."""
        self.stop()
        running = [j for j in (self.job, self.catalog_job) if j is not None and j.running]
        if not running:
            super().done(result)
            return
        # Cancel, and close when they have reported: the GUI thread never waits on a job.
        self._closing_result = result
        self.setEnabled(False)
        for job in running:
            job.finished.connect(self._job_gone)
            job.cancel()

    @Slot(object)
    def _job_gone(self, _result: JobResult) -> None:
        if not any(j is not None and j.running for j in (self.job, self.catalog_job)):
            self.done(self._closing_result)

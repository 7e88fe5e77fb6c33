"""Image page: channel, variant, arch and transfer, or a local file or URL; downloads start here."""

from __future__ import annotations

import html

from PySide6.QtCore import Slot
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from app.core.catalog import (
    ARCHES,
    DEFAULT_VARIANT,
    STILL_LOADING,
    Asset,
    Catalog,
    CatalogClient,
)
from app.core.download import CachedImage
from app.core.errors import WizardError
from app.core.events import CancelToken, Event, EventSink, ProgressEvent
from app.core.imagecheck import bundle_note
from app.core.kinds import ImageKind, Transfer
from app.core.plan import ImageChoice, ImageRequest, InstallRequest
from app.core.run import RunRequest
from app.ui.context import AppContext, WizardState
from app.ui.jobs import Job, JobResult
from app.ui.pages.base import BasePage, PageId
from app.ui.widgets import ErrorPanel, fill_channels, show_progress, wrap_label

VARIANT_TEXT = {
    "noninteractive": "Small (recommended): what nixos-anywhere uses",
    "full": "Full: the interactive installer, larger",
    "kexec-bundle": "Legacy kexec-bundle (only releases frozen before 2023)",
}
TRANSFER_TEXT = {
    Transfer.AUTO: "Automatic",
    Transfer.REMOTE: "The server downloads it",
    Transfer.UPLOAD: "Upload it from this computer",
}


def _mb(n: int | None) -> str:
    return "unknown size" if n is None else f"{n / 1e6:.0f} MB"


class ImagePage(BasePage):
    """Chooses the image and how it reaches the server; Next waits for what upload needs."""

    def __init__(self, ctx: AppContext, state: WizardState) -> None:
        super().__init__(ctx, state)
        self.setTitle("Image")
        self.setSubTitle("Which NixOS installer to boot, and how it gets to the server.")
        self.download_job: Job | None = None
        self._download_key: str | None = None
        self.catalog_note = wrap_label("")

        self.source = QButtonGroup(self)
        self.use_release = QRadioButton("A &release", self)
        self.use_file = QRadioButton("A file on this &computer", self)
        self.use_url = QRadioButton("A f&ile at a URL", self)
        for i, b in enumerate((self.use_release, self.use_file, self.use_url)):
            self.source.addButton(b, i)
            b.setAccessibleName(b.text().replace("&", ""))
        self.use_release.setChecked(True)
        self.channel = QComboBox(self)
        self.variant = QComboBox(self)
        for key, text in VARIANT_TEXT.items():
            self.variant.addItem(text, key)
        self.arch = QComboBox(self)
        for a in ARCHES:
            self.arch.addItem(a, a)
        self.file_row = QWidget(self)
        fr = QHBoxLayout(self.file_row)
        fr.setContentsMargins(0, 0, 0, 0)
        self.file = QLineEdit(self)
        self.file.setPlaceholderText("nixos-kexec-installer-….tar.gz")
        browse = QPushButton("Browse…", self)
        browse.clicked.connect(self._browse)
        fr.addWidget(self.file, 1)
        fr.addWidget(browse)
        self.url = QLineEdit(self)
        self.url.setPlaceholderText(
            "https://…/nixos-kexec-installer-noninteractive-x86_64-linux.tar.gz"
        )
        self.transfer = QComboBox(self)
        for key, text in TRANSFER_TEXT.items():
            self.transfer.addItem(text, key)
        self.transfer_reason = wrap_label("")
        self.details = wrap_label("", rich=True)
        self.details.setAccessibleName("Image details")
        self.progress = QProgressBar(self)
        self.progress.setAccessibleName("Download progress")
        self.progress.hide()
        self.progress_text = QLabel(self)
        self.cancel_download = QPushButton("Stop download", self)
        self.cancel_download.clicked.connect(self._stop_download)
        self.cancel_download.hide()
        self.error = ErrorPanel(self)
        names = {
            self.channel: "Channel",
            self.variant: "Variant",
            self.arch: "Architecture",
            self.file: "Local tarball",
            self.url: "Image URL",
            self.transfer: "Transfer",
        }
        for w, n in names.items():
            w.setAccessibleName(n)

        form = QFormLayout()
        src = QHBoxLayout()
        for b in (self.use_release, self.use_file, self.use_url):
            src.addWidget(b)
        src.addStretch(1)
        form.addRow("Boot:", src)
        form.addRow("C&hannel:", self.channel)
        form.addRow("&Variant:", self.variant)
        form.addRow("&Architecture:", self.arch)
        form.addRow("&File:", self.file_row)
        form.addRow("&URL:", self.url)
        form.addRow("Transf&er:", self.transfer)
        self.form = form
        prog = QHBoxLayout()
        prog.addWidget(self.progress, 1)
        prog.addWidget(self.cancel_download)
        layout = QVBoxLayout(self)
        layout.addWidget(self.catalog_note)
        layout.addLayout(form)
        layout.addWidget(self.transfer_reason)
        layout.addWidget(self.details)
        layout.addLayout(prog)
        layout.addWidget(self.progress_text)
        layout.addWidget(self.error)
        layout.addStretch(1)

        self.source.idToggled.connect(self._source_changed)
        for combo in (self.channel, self.variant, self.arch, self.transfer):
            combo.currentIndexChanged.connect(self.update_choice)
        self.file.editingFinished.connect(self.update_choice)
        self.url.editingFinished.connect(self.update_choice)
        self._source_changed()

    # -- catalog --------------------------------------------------------------------------

    def initializePage(self) -> None:
        facts = self.state.facts
        if facts is not None and facts.arch:
            self.arch.setCurrentIndex(max(0, self.arch.findData(facts.arch)))
        if self.state.catalog is None:
            settings, cache = self.ctx.settings, self.ctx.paths.catalog_cache

            def work(_emit: EventSink, _cancel: CancelToken) -> Catalog:
                return CatalogClient(settings, cache).load()

            self.run("catalog", work, self._catalog_loaded, failed=self.error.show_error)
            self.catalog_note.setText("Reading the list of releases…")
        else:
            self.update_choice()

    def _catalog_loaded(self, catalog: Catalog) -> None:
        self.state.catalog = catalog
        source = {
            "api": "the GitHub releases API",
            "cache": "the list saved from the releases API",
            "builtin": "the app's built-in list",
        }[catalog.source]
        self.catalog_note.setText(
            f"Releases from {source}" + (f" ({catalog.note})." if catalog.note else ".")
        )
        fill_channels(self.channel, catalog)
        self.update_choice()

    # -- choosing -------------------------------------------------------------------------

    @Slot()
    def _source_changed(self) -> None:
        which = self.source.checkedId()
        for row, visible in (
            (self.channel, which == 0),
            (self.variant, which == 0),
            (self.file_row, which == 1),
            (self.url, which == 2),
        ):
            self.form.setRowVisible(row, visible)
        self.update_choice()

    @Slot()
    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self,
            "Kexec installer tarball or kexec-bundle",
            "",
            "Kexec images (*.tar.gz *.tgz kexec-bundle*);;All files (*)",
        )
        if path:
            self.file.setText(path)
            self.update_choice()

    def _request(self) -> ImageRequest:
        """The widgets' answers, as the engine takes them."""
        which = self.source.checkedId()
        source = {1: self.file.text(), 2: self.url.text()}.get(which, "")
        return ImageRequest(
            channel=self.channel.currentData() if which == 0 else None,
            arch=str(self.arch.currentData()),
            variant=str(self.variant.currentData()) if which == 0 else DEFAULT_VARIANT,
            source=source.strip(),
        )

    @Slot()
    def update_choice(self) -> None:
        """Work out the image and transfer; start the download when an upload needs one."""
        self.error.clear()
        self.state.image = None
        self.state.choice = self.state.image_request = None
        run = self.state.run
        try:
            if self.source.checkedId() == 1 and not self.file.text().strip():
                raise WizardError("Choose the tarball (or kexec-bundle) file.")
            if self.source.checkedId() == 2 and not self.url.text().strip():
                raise WizardError("Enter the image's URL.")
            if run is None:
                raise WizardError("Connect to the server first.")
            request = self._request()
            install = InstallRequest(transfer=Transfer(self.transfer.currentData()))
            choice, mode, reason = run.choose(RunRequest(request, install, self.state.catalog))
        except WizardError as exc:
            self._stop_download()
            self.details.setText("")
            self.transfer_reason.setText("")
            if exc.what != STILL_LOADING:
                self.error.show_error(exc, "warn")
            self.completeChanged.emit()
            return
        asset = choice.asset
        self.state.choice, self.state.image_request = choice, request
        self.state.transfer = mode
        self.transfer_reason.setText(
            (
                "→ The server will download it"
                if mode == Transfer.REMOTE
                else "→ This computer will upload it"
            )
            + f": {reason}."
        )
        self._show_details(asset)
        if mode == Transfer.UPLOAD:
            self._ensure_local(choice)
        else:
            self._stop_download()
        self.completeChanged.emit()

    def _show_details(self, asset: Asset | None) -> None:
        legacy = ""
        image = self.state.image
        kind = image.info.kind if image else self.state.image_kind
        if kind == ImageKind.BUNDLE:
            legacy = f"<br><br><b>Legacy image.</b> {html.escape(bundle_note())}"
        if asset is None:
            # The one place the page says what checking a local file can and cannot prove.
            self.details.setText(
                "A file on this computer: its layout (kexec tarball or kexec-bundle) is checked "
                "and it is hashed here, and the server checks that hash. Nobody published a "
                "checksum for it, so whether it is genuine is up to you." + legacy
            )
            return
        parts = [f"<b>{html.escape(asset.name)}</b>", _mb(asset.size)]
        if asset.updated_at:
            parts.append(f"built {asset.updated_at[:10]}")
        check = asset.checksum_note
        parts.append(check if asset.digest else f"<b>{html.escape(check)}</b>")
        if self.state.transfer == Transfer.UPLOAD:
            parts.append("on this computer" if image else "being fetched")
        self.details.setText(" · ".join(parts) + legacy)

    # -- getting the file ---------------------------------------------------------------

    def _ensure_local(self, choice: ImageChoice) -> None:
        asset = choice.asset
        key = asset.url if asset else f"file:{choice.local}"
        if (
            self.download_job is not None
            and self.download_job.running
            and self._download_key == key
        ):
            return
        self._stop_download()
        self._download_key = key
        run = self.state.run
        assert run is not None

        def work(emit: EventSink, cancel: CancelToken) -> CachedImage:
            return run.fetch(choice, emit, cancel)

        job = Job(work, "download", self)
        job.message.connect(self._download_event)
        job.message.connect(self._record)
        job.finished.connect(self._downloaded)
        self.download_job = job
        self.progress.setRange(0, 0)
        self.progress.show()
        self.cancel_download.show()
        self.progress_text.setText("Checking the file…" if asset is None else "Downloading…")
        self.ctx.inhibitor.acquire("Downloading the NixOS installer")
        job.start()

    @Slot(object)
    def _download_event(self, event: Event) -> None:
        if isinstance(event, ProgressEvent):
            self.progress_text.setText(show_progress(self.progress, event))

    @Slot(object)
    def _downloaded(self, result: JobResult) -> None:
        job = self.sender()
        if isinstance(job, Job):
            job.deleteLater()
        if job is not self.download_job:
            return
        self.download_job = None
        self.ctx.inhibitor.release()
        self.cancel_download.hide()
        self.progress.hide()
        if result.ok:
            image: CachedImage = result.value
            self.state.image = image
            # What the check proved is said once, above; a digest match is worth naming here.
            verified = image.info.verification == "digest"
            self.progress_text.setText(
                f"Ready: {image.verification_note}." if verified else "Ready: checked as above."
            )
            self._show_details(self.state.choice.asset if self.state.choice else None)
        elif result.cancelled:
            self.progress_text.setText("Download stopped; it resumes where it stopped.")
        elif result.wizard_error:
            self.progress_text.setText("")
            self.error.show_error(result.wizard_error)
        self.completeChanged.emit()

    @Slot()
    def _stop_download(self) -> None:
        if self.download_job is not None and self.download_job.running:
            self.download_job.cancel()
        self.cancel_download.hide()

    def cancel_job(self, wait_ms: int = 0) -> bool:
        done = super().cancel_job(wait_ms)
        job = self.download_job
        if job is not None and job.running:
            job.cancel()
            return job.wait(wait_ms) if wait_ms else False
        return done

    @property
    def busy(self) -> bool:
        return super().busy or (self.download_job is not None and self.download_job.running)

    # -- leaving --------------------------------------------------------------------------

    def isComplete(self) -> bool:
        if self.error.error is not None:
            return False
        if self.state.transfer == Transfer.REMOTE:
            return self.state.choice is not None and self.state.choice.asset is not None
        return self.state.image is not None

    def nextId(self) -> int:
        return int(PageId.CONFIRM)

"""Several servers at once: inspect all, confirm once, install all, every installer at the end."""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass

from PySide6.QtCore import QTimer, Slot
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
    QWizard,
)

from app.core.catalog import DEFAULT_VARIANT, Catalog, CatalogClient, channel_asset
from app.core.errors import WizardError
from app.core.events import (
    AttemptEvent,
    CancelToken,
    Event,
    EventSink,
    LogEvent,
    ProgressEvent,
    ResultEvent,
    StageEvent,
)
from app.core.fleet import DEFAULT_PARALLEL, Asked, Fleet, host_of_profile, host_of_spec, servers
from app.core.handoff import installer_ssh_command, ssh_config_snippet
from app.core.kinds import Transfer
from app.core.plan import ImageRequest, InstallRequest, check_kexec_flags
from app.core.preflight import Level
from app.core.result import InstallerInfo, Outcome
from app.core.run import Host, HostRun, RunRequest, Step
from app.core.ssh import load_ssh_config
from app.ui.context import AppContext, Batch, WizardState
from app.ui.dialogs import HostKeysDialog
from app.ui.pages.asking import BatchQuestions
from app.ui.pages.base import BasePage, PageId
from app.ui.widgets import (
    STAGE_NAMES,
    Checklist,
    ErrorPanel,
    fill_channels,
    plain_tip,
    std_icon,
    terminal_or_clipboard,
    wrap_label,
)

COLUMNS_INSPECT = ["Server", "System", "Verdict"]
COLUMNS_INSTALL = ["Server", "Stage", "Progress", "Time", "Outcome", ""]
LEVEL_ICON = {Level.OK: "ok", Level.WARN: "warn", Level.STOP: "stop"}


def _table(parent: QWidget, columns: list[str], name: str) -> QTreeWidget:
    tree = QTreeWidget(parent)
    tree.setHeaderLabels(columns)
    tree.setRootIsDecorated(False)
    tree.setAccessibleName(name)
    tree.header().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
    tree.header().setStretchLastSection(True)
    return tree


@dataclass
class _Started:
    fleet: Fleet
    refused: dict[str, WizardError]  # pasted targets that name no server
    asked: list[Asked]


class BatchInspectPage(BasePage):
    """Connects to and inspects every server at once; a row each with its verdict."""

    def __init__(self, ctx: AppContext, state: WizardState) -> None:
        super().__init__(ctx, state)
        self.setTitle("Inspect the servers")
        self.setSubTitle(
            "Every server is inspected at the same time. A stopped server is left out; "
            "warnings need your go-ahead, as for one server."
        )
        self.status = wrap_label("")
        self.table = _table(self, COLUMNS_INSPECT, "Servers and their verdicts")
        self.table.header().setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        self.table.itemSelectionChanged.connect(self._show_details)
        self.details = Checklist(self)
        self.details_title = wrap_label("")
        self.override = QCheckBox(self)
        self.override.setAccessibleName("Go on despite the warnings")
        self.override.toggled.connect(self.completeChanged)
        self.override.hide()
        self.error = ErrorPanel(self)
        layout = QVBoxLayout(self)
        layout.addWidget(self.status)
        layout.addWidget(self.table, 2)
        layout.addWidget(self.details_title)
        scroll = QScrollArea(self)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setWidget(self.details)
        layout.addWidget(scroll, 3)
        layout.addWidget(self.override)
        layout.addWidget(self.error)
        self.asker: BatchQuestions | None = None
        self.rows: dict[str, QTreeWidgetItem] = {}
        self.found: dict[str, HostRun] = {}
        self.ended: dict[str, Outcome] = {}
        self.needs_go_ahead = False  # some server has warnings: the checkbox must be ticked

    @property
    def batch(self) -> Batch:
        """The run's state (the Servers page made it)."""
        assert self.state.batch is not None
        return self.state.batch

    @property
    def keys_dialog(self) -> HostKeysDialog | None:
        """The list of new host keys, while it is open."""
        dialog = self.asker.dialog if self.asker is not None else None
        return dialog if isinstance(dialog, HostKeysDialog) else None

    def initializePage(self) -> None:
        if self.state.batch is None or self.batch.fleet is not None:
            return
        self.table.clear()
        self.rows, self.found, self.ended = {}, {}, {}
        self.override.setChecked(False)
        self.override.hide()
        self.needs_go_ahead = False
        batch, ctx = self.batch, self.ctx
        profiles, specs, secrets = list(batch.profiles), list(batch.specs), ctx.secrets
        answers, env = batch.answers, ctx.run_env()
        for label in [p.name for p in profiles] + specs:
            item = QTreeWidgetItem([label, "connecting…", ""])
            item.setIcon(2, std_icon(self, "running"))
            self.table.addTopLevelItem(item)
            self.rows[label] = item

        def work(emit: EventSink, cancel: CancelToken) -> _Started:
            config = load_ssh_config()  # and the keyring: both off the GUI thread
            hosts = [host_of_profile(p, secrets, config) for p in profiles]
            for h in hosts:  # remembered passwords never reach a log
                ctx.redact.add(h.creds.password)
                ctx.redact.add(h.creds.sudo_password)
            refused: dict[str, WizardError] = {}
            for spec in specs:
                try:
                    hosts.append(host_of_spec(spec, config))
                except WizardError as exc:
                    refused[spec] = exc
            fleet = Fleet(hosts, env, CancelToken(), DEFAULT_PARALLEL, named=True,
                          logs=ctx.paths.logs, redact=ctx.redact)  # fmt: skip
            cancel.on_cancel(fleet.cancel.cancel)
            return _Started(fleet, refused, fleet.advance(answers, Step.CHECKED, emit))

        self.status.setText(f"Connecting to {batch.size} servers…")
        self.run("batch-connect", work, self._started, failed=self._not_started)

    def cleanupPage(self) -> None:
        self.cancel_job()
        if self.state.batch is not None:
            self.batch.close()
            self.batch.fleet = None

    def _not_started(self, err: WizardError) -> None:
        self.status.setText("The servers cannot be installed together.")
        self.error.show_error(err)

    def _started(self, got: _Started) -> None:
        self.batch.fleet = got.fleet
        for spec, exc in got.refused.items():
            self._left_out(spec, Outcome.failed(spec, exc))
        self._round(got.asked)

    def _round(self, asked: list[Asked]) -> None:
        """After a round: ask what it asked, then go on; or show the servers inspected."""
        self._show_ended()
        if asked:
            self.asker = BatchQuestions(self, self.batch, asked, self._advance)
            self.asker.start()
        else:
            self.asker = None
            self._inspected()

    def _advance(self) -> None:
        fleet, answers = self.batch.fleet, self.batch.answers
        if fleet is None:
            return

        def work(emit: EventSink, _cancel: CancelToken) -> list[Asked]:
            return fleet.advance(answers, Step.CHECKED, emit)

        self.status.setText(f"Inspecting {servers(len(fleet.going))}…")
        self.run("batch-inspect", work, self._round)

    def _inspected(self) -> None:
        inspected = self.batch.inspected
        for run in inspected:
            assert run.inspection is not None
            self.found[run.label] = run
            f, level = run.inspection.facts, run.inspection.level
            row = self.rows[run.label]
            row.setText(1, f"{f.os_name}, {f.machine}")
            row.setText(2, "ok" if level is Level.OK else "warnings: " + ", ".join(
                v.title for v in run.inspection.verdicts if v.level is Level.WARN))  # fmt: skip
            row.setIcon(2, std_icon(self, LEVEL_ICON[level]))
            said = [
                f"{v.title}: {v.reason}" for v in run.inspection.verdicts if v.level is not Level.OK
            ]
            row.setToolTip(2, plain_tip("\n".join(said)))
        warned = [r for r in inspected if r.inspection and r.inspection.level is Level.WARN]
        self.override.setText(
            f"I have read the warnings for {servers(len(warned))} and want to go on anyway"
        )
        self.needs_go_ahead = bool(warned)
        self.override.setVisible(self.needs_go_ahead)
        left = self.batch.size - len(inspected)
        self.status.setText(
            f"{len(inspected)} of {self.batch.size} servers can go on"
            + (f"; {left} left out (see their rows)." if left else ".")
        )
        first = self.table.topLevelItem(0)
        if self.table.currentItem() is None and first is not None:
            self.table.setCurrentItem(first)
        self._show_details()
        self.completeChanged.emit()

    def _show_ended(self) -> None:
        fleet = self.batch.fleet if self.state.batch is not None else None
        if fleet is None:
            return
        for run in fleet.runs:
            if run.outcome is not None:
                self._left_out(run.label, run.outcome)
        self._show_details()

    def _left_out(self, label: str, outcome: Outcome) -> None:
        row = self.rows.get(label)
        if row is None or label in self.ended:
            return
        self.ended[label] = outcome
        err = outcome.error
        row.setText(1, "left out" if not outcome.ok else "already the installer")
        row.setText(2, err.what if err is not None else outcome.outcome)
        row.setIcon(2, std_icon(self, "stop" if not outcome.ok else "ok"))
        if err is not None:
            row.setToolTip(2, plain_tip(f"{err.what}\n{err.why}\nWhat to do: {err.fix}"))

    @Slot()
    def _show_details(self) -> None:
        item = self.table.currentItem()
        label = item.text(0) if item is not None else ""
        found = self.found[label].inspection if label in self.found else None
        if found is not None:
            self.details_title.setText(f"{label}:")
            self.details.set_verdicts(found.verdicts)
        elif label in self.ended and self.ended[label].error is not None:
            err = self.ended[label].error
            assert err is not None
            self.details_title.setText(f"{label}: {err.what} {err.why} What to do: {err.fix}")
            self.details.set_verdicts([])
        else:
            self.details_title.setText("")
            self.details.set_verdicts([])

    def isComplete(self) -> bool:
        if self.busy or self.asker is not None or self.state.batch is None:
            return False
        if not self.batch.inspected:
            return False
        return not self.needs_go_ahead or self.override.isChecked()

    def validatePage(self) -> bool:
        self.batch.answers.go_ahead = self.override.isChecked()  # the warnings' go-ahead
        return True

    def nextId(self) -> int:
        return int(PageId.BATCH_CONFIRM)


class BatchConfirmPage(BasePage):
    """One image choice (the right tarball per arch), what will happen; type the count."""

    def __init__(self, ctx: AppContext, state: WizardState) -> None:
        super().__init__(ctx, state)
        self.setTitle("Confirm")
        self.setSubTitle("Read what will happen. This is the step that changes the servers.")
        self.setCommitPage(True)
        self.setButtonText(QWizard.WizardButton.CommitButton, "&Install")
        self.channel = QComboBox(self)
        self.channel.setAccessibleName("Channel")
        self.channel.currentIndexChanged.connect(self._show_images)
        self.transfer = QComboBox(self)
        self.transfer.setAccessibleName("Transfer")
        self.transfer.addItem("Automatic (each server downloads it where it can)", Transfer.AUTO)
        self.transfer.addItem("Upload it from this computer", Transfer.UPLOAD)
        self.transfer.addItem("The servers download it", Transfer.REMOTE)
        self.images = wrap_label("", rich=True)
        self.summary = wrap_label("", rich=True)
        self.installer_port = QSpinBox(self)
        self.installer_port.setRange(0, 65535)
        self.installer_port.setSpecialValueText("only each server's SSH port and 22")
        self.installer_port.setAccessibleName("Also try this port for the installers")
        self.kexec_flags = QLineEdit(self)
        self.kexec_flags.setPlaceholderText("for example -c when kexec_file_load fails")
        self.kexec_flags.setAccessibleName("Extra flags for kexec")
        self.kexec_flags.textChanged.connect(self.completeChanged)
        self.prompt = wrap_label("")
        self.typed = QLineEdit(self)
        self.typed.setAccessibleName("Type the number of servers to confirm")
        self.typed.textChanged.connect(self.completeChanged)
        self.error = ErrorPanel(self)
        form = QFormLayout()
        form.addRow("&Channel:", self.channel)
        form.addRow("T&ransfer:", self.transfer)
        form.addRow("Images:", self.images)
        form.addRow("Also try &port:", self.installer_port)
        form.addRow("kexec e&xtra flags:", self.kexec_flags)
        self.flags_error = wrap_label("")
        self.flags_error.hide()
        form.addRow("", self.flags_error)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.summary)
        layout.addWidget(self.prompt)
        layout.addWidget(self.typed)
        layout.addWidget(self.error)
        layout.addStretch(1)

    @property
    def count(self) -> int:
        """How many servers go on: the number to type."""
        return len(self.state.batch.inspected) if self.state.batch is not None else 0

    def initializePage(self) -> None:
        self.typed.clear()
        n = self.count
        self.prompt.setText(f"Type the number of servers ({n}) to enable Install:")
        self.summary.setText(
            f"<p><b>What will happen</b>, on each of the {n} servers at once (at most "
            f"{DEFAULT_PARALLEL} at a time): the app makes sure the installer will accept a key "
            "you hold, places the image and checks its checksum, runs <code>kexec/run</code> as "
            "root (the running system is replaced by the NixOS installer <b>in RAM</b>), then "
            "waits for the installer and checks it has the same host key.</p>"
            "<p><b>What will not happen</b>: the disks are not touched, a power cycle brings "
            "each old system back, and one server's failure does not stop the others.</p>"
        )
        if self.state.catalog is None:
            settings, cache = self.ctx.settings, self.ctx.paths.catalog_cache

            def work(_emit: EventSink, _cancel: CancelToken) -> Catalog:
                return CatalogClient(settings, cache).load()

            self.images.setText("Reading the list of releases…")
            self.run("catalog", work, self._catalog_loaded, failed=self.error.show_error)
        else:
            self._catalog_loaded(self.state.catalog)

    def _catalog_loaded(self, catalog: Catalog) -> None:
        self.state.catalog = catalog
        fill_channels(self.channel, catalog)
        self._show_images()
        self.completeChanged.emit()

    @Slot()
    def _show_images(self) -> None:
        """Per arch, the tarball its servers get."""
        catalog, batch = self.state.catalog, self.state.batch
        if catalog is None or batch is None:
            return
        by_arch: dict[str, list[str]] = {}
        for run in batch.inspected:
            arch = run.inspection.facts.arch if run.inspection else None
            by_arch.setdefault(arch or "?", []).append(run.label)
        lines = []
        for arch, labels in sorted(by_arch.items()):
            try:
                asset, _meta = channel_asset(catalog, self.channel.currentData(), DEFAULT_VARIANT,
                                             arch)  # fmt: skip
                what = asset.name
            except WizardError as exc:
                what = f"none: {exc.what}"
            lines.append(f"<b>{arch}</b> ({servers(len(labels))}): {what}")
        self.images.setText("<br>".join(lines))

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
        return (
            self.count > 0
            and self.state.catalog is not None
            and self.typed.text().strip() == str(self.count)
            and not problem
        )

    def validatePage(self) -> bool:
        batch = self.state.batch
        if batch is None or batch.fleet is None:
            return False
        batch.request = RunRequest(
            ImageRequest(channel=self.channel.currentData(), variant=DEFAULT_VARIANT),
            InstallRequest(
                transfer=Transfer(self.transfer.currentData()),
                installer_port=self.installer_port.value() or None,
                kexec_extra_flags=self.kexec_flags.text().strip(),
            ),
            self.state.catalog,
        )
        batch.answers.confirmed = True
        self.ctx.note("confirm", f"confirmed the install on {self.count} servers")
        return True

    def nextId(self) -> int:
        return int(PageId.BATCH_INSTALL)


@dataclass
class _Row:
    item: QTreeWidgetItem
    cancel: QPushButton
    stage: str = ""
    since: float = 0.0  # when the server's first stage started: its time is the whole run's
    safe: bool = True
    done: bool = False
    timed: bool = False


class BatchInstallPage(BasePage):
    """One row per server: its stage, progress, timer and outcome; cancel one or all."""

    def __init__(self, ctx: AppContext, state: WizardState) -> None:
        super().__init__(ctx, state)
        self.setTitle("Install")
        self.setSubTitle("Booting the NixOS installer on every server. Every wait has a deadline.")
        self.table = _table(self, COLUMNS_INSTALL, "Servers being installed")
        header = self.table.header()
        header.setStretchLastSection(False)
        for col in (1, 2, 3, 5):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(4, QHeaderView.ResizeMode.Stretch)
        self.status = wrap_label("")
        self.cancel_all = QPushButton("&Cancel all", self)
        self.cancel_all.setToolTip("Cancel every server: those not yet changed stay as they were")
        self.cancel_all.clicked.connect(self._cancel_all)
        bottom = QHBoxLayout()
        bottom.addWidget(self.status, 1)
        bottom.addWidget(self.cancel_all)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table, 1)
        layout.addLayout(bottom)
        self.rows: dict[str, _Row] = {}
        self.asker: BatchQuestions | None = None
        self.timer = QTimer(self)
        self.timer.setInterval(1000)
        self.timer.timeout.connect(self._tick)

    def initializePage(self) -> None:
        batch = self.state.batch
        if batch is None or batch.fleet is None:
            return
        going = list(batch.inspected)
        self.table.clear()
        self.rows = {}
        for run in going:
            item = QTreeWidgetItem([run.label, "waiting", "", "", ""])
            item.setIcon(1, std_icon(self, "pending"))
            self.table.addTopLevelItem(item)
            button = QPushButton("Cancel", self.table)
            button.setToolTip("Safe: this server has not been changed yet")
            button.clicked.connect(lambda _c=False, label=run.label: self._cancel(label))
            self.table.setItemWidget(item, 5, button)
            self.rows[run.label] = _Row(item, button)
        self.table.resizeColumnToContents(0)
        self.ctx.inhibitor.acquire(f"Booting the NixOS installer on {len(going)} servers")
        self.status.setText(f"Installing on {len(going)} servers…")
        self.cancel_all.setEnabled(True)
        self.timer.start()
        self._advance()

    def _advance(self) -> None:
        """Every server as far as it goes: root, image, plan, install; then its questions."""
        batch = self.state.batch
        if batch is None or batch.fleet is None or batch.request is None:
            return
        fleet, answers, request = batch.fleet, batch.answers, batch.request

        def work(emit: EventSink, cancel: CancelToken) -> list[Asked]:
            cancel.on_cancel(fleet.cancel.cancel)  # closing the window cancels every server
            return fleet.advance(answers, Step.DONE, emit, request)

        job = self.run("batch-install", work, self._round, ended=self.completeChanged.emit)
        job.message.connect(self._event)
        self.completeChanged.emit()

    def _round(self, asked: list[Asked]) -> None:
        batch = self.state.batch
        if batch is None:
            return
        if asked:
            self.asker = BatchQuestions(self, batch, asked, self._advance)
            self.asker.start()
            return
        self.asker = None
        self._finished()

    @Slot(object)
    def _event(self, e: Event) -> None:
        row = self.rows.get(e.host)
        if row is None:
            return
        item = row.item
        if isinstance(e, StageEvent):
            if e.state == "start":
                row.stage, row.since = e.stage, row.since or time.monotonic()
                item.setText(1, STAGE_NAMES.get(e.stage, e.stage))
                item.setIcon(1, std_icon(self, "running"))
                item.setText(2, "")
            elif e.state != "done":
                item.setIcon(1, std_icon(self, "stop" if e.state == "failed" else "cancelled"))
            self._tick()
        elif isinstance(e, ProgressEvent) and e.total:
            item.setText(2, f"{int(e.done * 100 / e.total)}%  {e.rate / 1e6:.1f} MB/s")
        elif isinstance(e, AttemptEvent):
            item.setText(2, f"attempt {e.attempts}")
        elif isinstance(e, LogEvent) and e.safe_to_cancel is False:
            row.safe = False
            row.cancel.setText("Stop waiting")
            row.cancel.setToolTip("Too late to cancel: this server is rebooting into the installer")
        elif isinstance(e, ResultEvent):
            row.done = True
            ok = bool(e.payload.get("ok"))
            item.setIcon(4, std_icon(self, "ok" if ok else "stop"))
            what = (e.payload.get("error") or {}).get("what", "")
            item.setText(4, "installer ready" if ok else what or str(e.payload.get("outcome")))
            item.setToolTip(4, plain_tip(item.text(4)))
            self._tick()
            self.table.removeItemWidget(item, 5)  # nothing left to cancel on this server
            ended = sum(1 for r in self.rows.values() if r.done)
            self.status.setText(f"{ended} of {len(self.rows)} servers finished…")
            if ok:
                item.setIcon(1, std_icon(self, "ok"))
                item.setText(1, "done")

    @Slot()
    def _tick(self) -> None:
        now = time.monotonic()
        for row in self.rows.values():
            if row.since and not row.timed:
                row.item.setText(3, f"{now - row.since:.0f} s")
                row.timed = row.done  # the time stays as it was when the server ended

    def _cancel(self, label: str) -> None:
        batch = self.state.batch
        row = self.rows.get(label)
        if batch is None or batch.fleet is None or row is None:
            return
        if row.done:
            return
        row.cancel.setEnabled(False)
        row.cancel.setText("Cancelling…" if row.safe else "Stopping…")
        batch.fleet.cancel_run(label)

    @Slot()
    def _cancel_all(self) -> None:
        self.cancel_all.setEnabled(False)
        for label, row in self.rows.items():
            if not row.done:
                self._cancel(label)
        self.cancel_job()

    def _finished(self) -> None:
        self.timer.stop()
        self._tick()
        self.ctx.inhibitor.release()
        self.cancel_all.setEnabled(False)
        batch = self.state.batch
        if batch is None or batch.fleet is None:
            return
        batch.outcomes = batch.fleet.outcomes()
        here = [o for o in batch.outcomes if o.host in self.rows]  # the servers installed here
        ok = sum(1 for o in here if o.ok)
        self.status.setText(f"The NixOS installer runs on {ok} of {servers(len(here))}.")
        self.completeChanged.emit()

    def isComplete(self) -> bool:
        return not self.busy and bool(self.state.batch and self.state.batch.outcomes)

    def nextId(self) -> int:
        return int(PageId.BATCH_DONE)


class BatchDonePage(BasePage):
    """Every server's outcome; each installer with Open terminal / Copy SSH command; Copy all."""

    def __init__(self, ctx: AppContext, state: WizardState) -> None:
        super().__init__(ctx, state)
        self.setTitle("Done")
        self.setSubTitle("The installers that run, and what happened on the other servers.")
        self.table = _table(self, ["Server", "Outcome", ""], "Outcome per server")
        self.copy_all = QPushButton("Copy &all as ~/.ssh/config", self)
        self.copy_all.setToolTip(
            "A Host entry per installer, NAME-installer, to paste into ~/.ssh/config"
        )
        self.copy_all.clicked.connect(self._copy_all)
        self.note = wrap_label("")
        layout = QVBoxLayout(self)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.note)
        layout.addWidget(self.copy_all)
        self.installers: list[tuple[str, InstallerInfo, Host]] = []

    def initializePage(self) -> None:
        batch = self.state.batch
        self.table.clear()
        self.installers = []
        if batch is None or batch.fleet is None:
            return
        hosts = {run.label: run.host for run in batch.fleet.runs}
        for o in batch.outcomes:
            item = QTreeWidgetItem([o.host, ""])
            self.table.addTopLevelItem(item)
            if o.ok and "installer" in o.payload and o.host in hosts:
                info = InstallerInfo.from_json(o.payload["installer"], o.host)
                self.installers.append((o.host, info, hosts[o.host]))
                item.setText(1, f"installer at root@{info.host}:{info.port}")
                item.setIcon(1, std_icon(self, "ok"))
                self.table.setItemWidget(item, 2, self._actions(info, hosts[o.host]))
            else:
                err = o.error
                item.setText(1, f"{o.outcome}: {err.what}" if err else o.outcome)
                item.setIcon(1, std_icon(self, "stop"))
                if err is not None:
                    item.setToolTip(1, plain_tip(f"{err.what}\n{err.why}\nWhat to do: {err.fix}"))
        self.table.resizeColumnToContents(0)
        self.table.resizeColumnToContents(1)
        self.copy_all.setEnabled(bool(self.installers))
        self.note.setText(
            f"The NixOS installer runs on {len(self.installers)} of "
            f"{servers(len(batch.outcomes))}. "
            "Hover over a failed server for what happened and what to do."
        )

    def _actions(self, info: InstallerInfo, host: Host) -> QWidget:
        box = QWidget(self.table)
        row = QHBoxLayout(box)
        row.setContentsMargins(0, 0, 0, 0)
        cmd = installer_ssh_command(info, host.target.jump, self.ctx.known_hosts.app_file)
        term = QPushButton("Open terminal", box)
        term.clicked.connect(lambda: self.note.setText(terminal_or_clipboard(cmd)))
        copy = QPushButton("Copy SSH command", box)
        copy.clicked.connect(lambda: QGuiApplication.clipboard().setText(shlex.join(cmd)))
        row.addWidget(term)
        row.addWidget(copy)
        row.addStretch(1)
        return box

    def ssh_config(self) -> str:
        """The ~/.ssh/config snippet for every installer."""
        return ssh_config_snippet(
            [(name, info, host.target.jump) for name, info, host in self.installers],
            self.ctx.known_hosts.app_file,
        )

    @Slot()
    def _copy_all(self) -> None:
        QGuiApplication.clipboard().setText(self.ssh_config())
        self.note.setText("Copied: a Host entry per installer, ready for ~/.ssh/config.")

    def nextId(self) -> int:
        return -1

"""Drive the real wizard through every page against a loopback machine and save a PNG of each."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PySide6.QtCore import QSize  # noqa: E402
from PySide6.QtWidgets import QApplication, QWidget, QWizard  # noqa: E402

from app.core.catalog import netboot_names  # noqa: E402
from app.core.paths import AppPaths  # noqa: E402
from app.core.profiles import Profile  # noqa: E402
from app.core.settings import Settings  # noqa: E402
from app.ui.context import AppContext  # noqa: E402
from app.ui.main import make_app  # noqa: E402
from app.ui.pages.base import PageId  # noqa: E402
from app.ui.wizard import KexecWizard  # noqa: E402
from tests.support.machine import Machine  # noqa: E402
from tests.support.releases import ReleasesServer  # noqa: E402
from tests.support.sshd import free_port, keygen  # noqa: E402
from tests.support.tarballs import standin_tarball  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
ASSET = "nixos-kexec-installer-noninteractive-x86_64-linux.tar.gz"


def wait(app: QApplication, cond: Callable[[], bool], timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError("the wizard did not get there in time")
        app.processEvents()
        time.sleep(0.02)


def shot(app: QApplication, widget: QWidget, name: str) -> None:
    for _ in range(20):
        app.processEvents()
        time.sleep(0.01)
    widget.grab().save(str(OUT / f"{name}.png"))
    print(f"saved docs/screenshots/{name}.png")


def main() -> int:
    if os.geteuid() != 0:
        sys.exit("scripts/screenshots.py runs a loopback machine in namespaces: run it as root")
    work = Path(tempfile.mkdtemp(prefix="nkw-shots-", dir="/var/tmp"))
    os.chmod(work, 0o755)
    releases = ReleasesServer()
    machine: Machine | None = None
    try:
        key = keygen(work / "id_ed25519")
        host = [keygen(work / "ssh_host_ed25519_key"), keygen(work / "ssh_host_rsa_key", "rsa")]
        data = standin_tarball(work / ASSET, size=24 << 20).read_bytes()
        for tag, when in (
            ("nixos-unstable", "2026-11-22"),
            ("nixos-26.05", "2026-11-21"),
            ("nixos-25.11", "2026-05-30"),
        ):
            releases.add(tag, ASSET, data, updated_at=f"{when}T10:00:00Z")
        head = b"#!/bin/sh\n# kexec-bundle: unpacks itself, runs kexec-boot\n"
        bundle = head + os.urandom(1 << 20)
        releases.add("nixos-22.05", "kexec-bundle-x86_64", bundle, digest=False,
                     updated_at="2022-11-30T10:00:00Z")  # fmt: skip
        netboot = netboot_names("x86_64")
        releases.add("nixos-26.05", netboot.kernel, os.urandom(12 << 20))
        releases.add("nixos-26.05", netboot.initrd, os.urandom(8 << 20))
        init = "init=/nix/store/5bq5x4p6m2c0w1sk3v3a0y2-nixos-system-nixos-installer-26.05/init"
        script = (
            f"#!ipxe\nkernel {netboot.kernel} {init} initrd={netboot.initrd}\n"
            f"initrd {netboot.initrd}\nboot\n"
        )
        releases.add("nixos-26.05", netboot.script, script.encode())
        releases.start()
        machine = Machine(
            work / "machine", free_port(), host, [key.with_suffix(".pub")], boot_delay=2.0
        )
        (work / "machine").mkdir()
        machine.start()
        os.environ["HOME"] = str(work / "home")
        (work / "home" / ".ssh").mkdir(parents=True)
        shutil.copy(key.with_suffix(".pub"), work / "home" / ".ssh" / "id_ed25519.pub")
        settings = Settings(
            api_url=releases.api_url, download_url=releases.download_url, allow_http=True,
            up_timeout=60, down_timeout=30, poll_interval=0.3,
        )  # fmt: skip
        code = drive(work, settings, machine, key)
        return code or drive_batch(work, settings, host, key)
    finally:
        if machine is not None:
            machine.stop()
        releases.stop()
        shutil.rmtree(work, ignore_errors=True)


def drive(work: Path, settings: Settings, machine: Machine, key: Path) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    app = make_app(["nixos-kexec-wizard"])
    ctx = AppContext(AppPaths.resolve(work / "app"), settings)
    now = time.time()
    ctx.profiles.put(
        Profile("db-2", "198.51.100.23", 22, "root", state="original", last_contact=now - 86400 * 3)
    )
    ctx.profiles.put(
        Profile(
            "build-box",
            "ci.example.org",
            2222,
            "admin",
            state="unknown",
            last_contact=now - 3600 * 5,
        )
    )
    w = KexecWizard(ctx, app.windowIcon())
    w.resize(QSize(900, 700))
    w.show()
    wait(app, w.isVisible)
    shot(app, w, "1-servers")

    w.page_of(PageId.SERVERS).new_button.click()  # type: ignore[attr-defined]
    c = w.page_of(PageId.CONNECT)
    c.address.setText("127.0.0.1")  # type: ignore[attr-defined]
    c.port.setValue(machine.port)  # type: ignore[attr-defined]
    c.user.setText("root")  # type: ignore[attr-defined]
    c.key_path.setText(str(key))  # type: ignore[attr-defined]
    c.profile_name.setText("web-1")  # type: ignore[attr-defined]
    c.connect_button.click()  # type: ignore[attr-defined]
    wait(app, lambda: c.host_key_dialog is not None)  # type: ignore[attr-defined]
    shot(app, c.host_key_dialog, "2-host-key")  # type: ignore[attr-defined]
    c.host_key_dialog.trust.click()  # type: ignore[attr-defined]
    wait(app, c.isComplete)
    shot(app, w, "3-connect")

    w.next()
    wait(app, lambda: w.state.facts is not None and not w.currentPage().busy)
    inspect = w.page_of(PageId.INSPECT)
    if inspect.override.isVisible():  # type: ignore[attr-defined]
        inspect.override.setChecked(True)  # type: ignore[attr-defined]
    shot(app, w, "4-inspect")

    w.next()
    image = w.page_of(PageId.IMAGE)
    wait(app, image.isComplete)
    shot(app, w, "5-image")
    # The legacy kexec-bundle of a frozen release, with its explanation; then back.
    image.channel.setCurrentIndex(image.channel.findData("nixos-22.05"))  # type: ignore[attr-defined]
    image.variant.setCurrentIndex(image.variant.findData("kexec-bundle"))  # type: ignore[attr-defined]
    wait(app, image.isComplete)
    shot(app, w, "5b-image-bundle")
    image.channel.setCurrentIndex(image.channel.findData("nixos-26.05"))  # type: ignore[attr-defined]
    image.variant.setCurrentIndex(0)  # type: ignore[attr-defined]
    wait(app, image.isComplete)

    w.next()
    w.currentPage().typed.setText("127.0.0.1")  # type: ignore[attr-defined]
    shot(app, w, "6-confirm")

    w.button(QWizard.WizardButton.CommitButton).click()
    install = w.page_of(PageId.INSTALL)
    wait(app, lambda: install.stages.stage_state.get("up") == "running")  # type: ignore[attr-defined]
    time.sleep(0.8)
    shot(app, w, "7-install")
    wait(app, lambda: w.currentId() == PageId.DONE, timeout=90)
    shot(app, w, "8-done")
    netboot_shot(app, w)
    w._closing = True
    w.reject()
    app.processEvents()
    return 0


def drive_batch(work: Path, settings: Settings, host: list[Path], key: Path) -> int:
    """Several servers at once: three fresh loopback machines, one wizard run over them."""
    app = QApplication.instance()
    assert isinstance(app, QApplication)
    machines = []
    try:
        for i, delay in enumerate((1.0, 3.0, 5.0)):
            m = Machine(work / f"fleet-{i}", free_port(), host, [key.with_suffix(".pub")],
                        boot_delay=delay)  # fmt: skip
            (work / f"fleet-{i}").mkdir()
            m.start()
            machines.append(m)
        ctx = AppContext(AppPaths.resolve(work / "app-batch"), settings)
        now = time.time()
        for i, m in enumerate(machines):
            when = now - 600 * (i + 1)
            p = Profile(f"web-{i + 2}", "127.0.0.1", m.port, "root", auth="key", key_path=str(key))
            ctx.profiles.put(replace(p, last_contact=when))
        ctx.profiles.put(
            Profile("db-2", "198.51.100.23", 22, "root", state="original", last_contact=now - 86400)
        )
        w = KexecWizard(ctx, app.windowIcon())
        w.resize(QSize(900, 700))
        w.show()
        wait(app, w.isVisible)
        servers = w.page_of(PageId.SERVERS)
        tree = servers.tree  # type: ignore[attr-defined]
        for row in range(3):
            item = tree.topLevelItem(row)
            assert item is not None
            item.setSelected(True)
        shot(app, w, "10-servers-several")
        w.next()
        page = w.page_of(PageId.BATCH_INSPECT)
        wait(app, lambda: page.keys_dialog is not None)  # type: ignore[attr-defined]
        shot(app, page.keys_dialog, "11-batch-host-keys")  # type: ignore[attr-defined]
        page.keys_dialog.trust.click()  # type: ignore[attr-defined]
        wait(app, lambda: page.isComplete() or page.override.isVisible())  # type: ignore[attr-defined]
        if page.override.isVisible():  # type: ignore[attr-defined]
            page.override.setChecked(True)  # type: ignore[attr-defined]
        shot(app, w, "12-batch-inspect")
        w.next()
        confirm = w.page_of(PageId.BATCH_CONFIRM)
        wait(app, lambda: w.state.catalog is not None)
        confirm.transfer.setCurrentIndex(confirm.transfer.findData("upload"))  # type: ignore[attr-defined]
        confirm.typed.setText("3")  # type: ignore[attr-defined]
        shot(app, w, "13-batch-confirm")
        w.button(QWizard.WizardButton.CommitButton).click()
        install = w.page_of(PageId.BATCH_INSTALL)
        rows = install.rows  # type: ignore[attr-defined]
        wait(app, lambda: any(r.done for r in rows.values()))
        shot(app, w, "14-batch-install")
        wait(app, install.isComplete, timeout=120)
        w.next()
        shot(app, w, "15-batch-done")
        w._closing = True
        w.reject()
        app.processEvents()
        return 0
    finally:
        for m in machines:
            m.stop()


def netboot_shot(app: QApplication, w: KexecWizard) -> None:
    """Other ways to boot: serving the kexec installer, with a machine's requests in the log."""
    import requests

    d = w.open_netboot()
    d.port.setValue(free_port())
    d.start_button.click()
    wait(app, lambda: d.server is not None)
    assert d.server is not None
    for name in ("netboot.ipxe", "bzImage", "initrd", "keys.cpio.gz"):
        requests.get(f"{d.server.url}/{name}", timeout=10)
    wait(app, lambda: d.log.blockCount() >= 5)
    shot(app, d, "9-netboot")
    d.reject()


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # Skip interpreter teardown: PySide objects collected after QApplication can crash it.
    os._exit(code)

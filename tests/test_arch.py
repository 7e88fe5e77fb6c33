"""An image's kernel is read for its arch: another arch than the server's is refused early."""

from __future__ import annotations

import json
import platform
import threading
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from app.core.catalog import Asset
from app.core.download import Downloader, ImageCache
from app.core.errors import IntegrityError, PreflightStop
from app.core.events import CancelToken, discard
from app.core.fleet import SharedImages
from app.core.imagecheck import check_tarball, kernel_arch
from app.core.plan import ImageChoice
from app.core.settings import Settings
from app.ui.wizard import KexecWizard
from tests.support.machine import Machine
from tests.support.releases import ASSET, ReleasesServer
from tests.support.sshd import SSHEnv
from tests.support.tarballs import kernel_image, standin_tarball
from tests.test_cli import cli
from tests.test_gui import NEXT, ctx, reach_image_page, wizard  # noqa: F401  (fixtures)

HERE = "aarch64" if platform.machine() == "aarch64" else "x86_64"  # this machine's arch
OTHER = "x86_64" if HERE == "aarch64" else "aarch64"


@pytest.mark.parametrize("efi", [True, False], ids=["efi-stub", "bare"])
@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_a_kernels_own_header_names_its_arch(arch: str, efi: bool) -> None:
    assert kernel_arch(kernel_image(arch, efi=efi)) == arch


def test_bytes_that_are_no_kernel_name_no_arch() -> None:
    assert kernel_arch(b"\x00" * 8192) == ""
    assert kernel_arch(b"MZ" + b"\x00" * 100) == ""  # a PE offset pointing at nothing
    assert kernel_arch(b"") == ""


def test_the_tarball_check_reports_its_kernels_arch(tmp_path: Path) -> None:
    arm = standin_tarball(tmp_path / "arm.tar.gz", kernel=kernel_image("aarch64"))
    assert check_tarball(arm) == "aarch64"
    assert check_tarball(standin_tarball(tmp_path / "plain.tar.gz")) == ""


@pytest.mark.fault
def test_a_local_image_for_another_arch_is_refused_before_anything_is_sent(
    ssh_env: SSHEnv, machine: Machine, tmp_path: Path
) -> None:
    tar = standin_tarball(tmp_path / "other.tar.gz", kernel=kernel_image(OTHER))
    r = cli(
        "install", "--json", "--yes", "--accept-new-host-key", f"root@127.0.0.1:{machine.port}",
        "-i", str(ssh_env.key), "--image", str(tar), "--transfer", "upload",
    )  # fmt: skip
    assert r.code == 30, r.stdout[-3000:] + r.stderr[-2000:]
    err = r.result["error"]
    assert f"holds a kernel for {OTHER}; the server is {HERE}" in err["what"]
    assert f"nixos-kexec-installer-noninteractive-{HERE}-linux.tar.gz" in err["fix"]
    stages = {e["stage"] for e in r.events if e["event"] == "stage"}
    assert not stages & {"key", "transfer", "run"}, stages
    assert machine.state != "installer"


@pytest.mark.fault
def test_a_release_whose_kernel_contradicts_its_name_is_refused_and_not_cached(
    releases: ReleasesServer, settings: Settings, tmp_path: Path
) -> None:
    data = standin_tarball(tmp_path / "lie.tar.gz", kernel=kernel_image("aarch64")).read_bytes()
    sha = releases.add("nixos-lie", ASSET, data)  # named x86_64, holds an arm64 kernel
    asset = Asset(ASSET, releases.url("nixos-lie", ASSET), size=len(data), digest=sha)
    cache = ImageCache(tmp_path / "images")
    with pytest.raises(IntegrityError) as ei:
        Downloader(settings, cache, retries=0).fetch(asset, arch="x86_64")
    assert "published as the x86_64 image, but its kernel is built for aarch64" in ei.value.what
    assert cache.entries() == [] and not list((tmp_path / "images").rglob("*.tar.gz*"))


def test_an_index_entry_from_before_kernels_were_read_is_read_once(
    releases: ReleasesServer, settings: Settings, tmp_path: Path
) -> None:
    data = standin_tarball(tmp_path / "x.tar.gz", kernel=kernel_image("x86_64")).read_bytes()
    sha = releases.add("nixos-read", ASSET, data)
    asset = Asset(ASSET, releases.url("nixos-read", ASSET), size=len(data), digest=sha)
    cache = ImageCache(tmp_path / "images")
    assert Downloader(settings, cache).fetch(asset, arch="x86_64").info.kernel_arch == "x86_64"
    index = next((tmp_path / "images").rglob("index.json"))
    doc = json.loads(index.read_text())
    for entry in doc["entries"]:
        del entry["kernel_arch"]  # as an older version wrote it
    index.write_text(json.dumps(doc))
    again = Downloader(settings, cache).fetch(asset, arch="x86_64")
    assert not again.downloaded and again.info.kernel_arch == "x86_64"


def test_one_local_file_in_a_mixed_batch_is_refused_only_for_the_other_arch(
    tmp_path: Path, settings: Settings
) -> None:
    tar = standin_tarball(tmp_path / "x86.tar.gz", kernel=kernel_image("x86_64"))
    shared = SharedImages(ImageCache(tmp_path / "images"), settings)
    results: dict[str, object] = {}

    def get(arch: str) -> None:
        try:
            results[arch] = shared.get(
                ImageChoice(None, {"arch": arch}, tar), discard, CancelToken()
            )
        except PreflightStop as exc:
            results[arch] = exc

    threads = [threading.Thread(target=get, args=(a,)) for a in ("x86_64", "aarch64")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not isinstance(results["x86_64"], Exception)
    assert isinstance(results["aarch64"], PreflightStop)
    assert "holds a kernel for x86_64; the server is aarch64" in results["aarch64"].what


def test_the_image_page_refuses_a_local_file_for_another_arch(
    qtbot: QtBot, wizard: KexecWizard, machine: Machine, ssh_env: SSHEnv, tmp_path: Path,  # noqa: F811
) -> None:  # fmt: skip
    image = reach_image_page(qtbot, wizard, machine, ssh_env)
    tar = standin_tarball(tmp_path / "other.tar.gz", kernel=kernel_image(OTHER))
    image.use_file.setChecked(True)
    image.file.setText(str(tar))
    image.update_choice()
    qtbot.waitUntil(lambda: "holds a kernel for" in image.error.text.text(), timeout=20_000)
    assert f"the server is {HERE}" in image.error.text.text()
    assert wizard.state.image is None and not wizard.button(NEXT).isEnabled()

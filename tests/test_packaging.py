"""Every way to ship the app, built and started for real: resources, wheel, bundle, AppImage, Nix."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import time
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import APP_ID, APP_NAME, __version__
from tests.support.sshd import SSHEnv

ROOT = Path(__file__).resolve().parent.parent
RES = ROOT / "resources"
DESKTOP = RES / f"{APP_ID}.desktop"
METAINFO = RES / f"{APP_ID}.metainfo.xml"
ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)


def _run(*cmd: str | Path, timeout: float = 120, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw
    )  # type: ignore[call-overload,no-any-return]


def _desktop_entry(path: Path) -> dict[str, str]:
    cp = configparser.ConfigParser(interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read(path)
    return dict(cp["Desktop Entry"])


# -- resources ----------------------------------------------------------------------------


def test_the_desktop_file_is_valid() -> None:
    r = _run("desktop-file-validate", DESKTOP)
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr


def test_the_metainfo_is_valid() -> None:
    r = _run("appstreamcli", "validate", "--no-net", "--explain", METAINFO)
    assert r.returncode == 0, r.stdout + r.stderr


def test_desktop_file_icon_and_metainfo_name_the_same_app() -> None:
    entry = _desktop_entry(DESKTOP)
    assert entry["Icon"] == APP_ID and entry["Exec"] == APP_NAME
    assert entry["StartupWMClass"] == APP_NAME  # the WM_CLASS class Qt sets from applicationName
    assert f"<id>{APP_ID}</id>" in METAINFO.read_text()
    assert f"{APP_ID}.desktop" in METAINFO.read_text()
    for shot in ("1-servers", "4-inspect", "7-install"):
        assert (ROOT / "docs" / "screenshots" / f"{shot}.png").exists()
        assert f"docs/screenshots/{shot}.png" in METAINFO.read_text()


def test_icons_are_generated_from_the_one_svg() -> None:
    source = (ROOT / "app" / "ui" / "assets" / "nixos-kexec-wizard.svg").read_bytes()
    hicolor = RES / "icons" / "hicolor"
    assert (hicolor / "scalable" / "apps" / f"{APP_ID}.svg").read_bytes() == source
    for n in ICON_SIZES:
        png = (hicolor / f"{n}x{n}" / "apps" / f"{APP_ID}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert (width, height) == (n, n)


def test_the_window_carries_the_class_the_desktop_file_names(tmp_path: Path) -> None:
    display = f":{90 + os.getpid() % 9}"
    xvfb = subprocess.Popen(["Xvfb", display, "-screen", "0", "1280x1000x24", "-nolisten", "tcp"])
    env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
    app = None
    try:
        time.sleep(0.5)
        app = subprocess.Popen(
            [sys.executable, "-m", "app", "--home", str(tmp_path)], cwd=ROOT, env=env
        )
        deadline = time.monotonic() + 30
        wid = None
        while wid is None and time.monotonic() < deadline:
            tree = _run("xwininfo", "-root", "-children", env=env).stdout
            # The top-level window (Qt also maps a 1x1 helper window with the same title).
            wid = next(
                (ln.split()[0] for ln in tree.splitlines()
                 if '"NixOS Kexec Wizard' in ln and '("' in ln),
                None,
            )  # fmt: skip
            time.sleep(0.2)
        assert wid is not None, "no wizard window appeared within 30 s"
        wm_class = _run("xprop", "-id", wid, "WM_CLASS", env=env).stdout
        assert wm_class.split("=", 1)[1].split(",")[1].strip().strip('"') == APP_NAME
        assert _desktop_entry(DESKTOP)["StartupWMClass"] == APP_NAME
    finally:
        if app is not None:
            app.send_signal(signal.SIGTERM)
            app.wait(10)
        xvfb.terminate()
        xvfb.wait(10)


def test_install_desktop_puts_launcher_and_icons_in_the_users_menu(tmp_path: Path) -> None:
    fake = tmp_path / "bin" / APP_NAME
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "share"), "HOME": str(tmp_path)}
    env["PATH"] = f"{fake.parent}:{env['PATH']}"
    r = _run("make", "-s", "install-desktop", cwd=ROOT, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    installed = tmp_path / "share" / "applications" / f"{APP_ID}.desktop"
    assert _desktop_entry(installed)["Exec"] == str(fake)
    assert _run("desktop-file-validate", installed).returncode == 0
    for n in ICON_SIZES:
        assert (
            tmp_path / "share" / "icons" / "hicolor" / f"{n}x{n}" / "apps" / f"{APP_ID}.png"
        ).exists()
    r = _run(ROOT / "packaging" / "install-desktop.sh", "--remove", env=env)
    assert r.returncode == 0 and not installed.exists()


def test_install_desktop_without_the_command_says_what_to_do(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "XDG_DATA_HOME": str(tmp_path), "HOME": str(tmp_path)}
    r = _run(ROOT / "packaging" / "install-desktop.sh", env=env)
    assert r.returncode == 1 and "pipx install" in r.stderr
    assert not (tmp_path / "applications").exists()


# -- pip / pipx: the wheel in a fresh virtualenv --------------------------------------------


def test_the_wheel_installs_into_a_fresh_venv_and_starts(tmp_path: Path) -> None:
    r = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "-w", tmp_path / "wheels", ROOT, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next((tmp_path / "wheels").glob("nixos_kexec_wizard-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    # Dependencies from the lock (pip's cache has them after the first run), then the wheel.
    r = _run(py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r",
             ROOT / "requirements.lock", wheel, timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    exe = env_dir / "bin" / APP_NAME
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    r = _run(exe, "--version", env=env, cwd=tmp_path)
    assert r.stdout.strip() == f"{APP_NAME} {__version__}"
    r = _run(exe, "--smoke-test", "--home", tmp_path / "home", env=env, cwd=tmp_path, timeout=60)
    assert r.returncode == 0 and "wizard shown" in r.stdout, r.stdout + r.stderr


# -- the PyInstaller bundle -----------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle() -> Iterator[Path]:
    """Build the one-dir bundle and tarball once (`make bundle`), unpacked into a temp dir."""
    r = _run("make", "-s", "bundle", cwd=ROOT, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    tarball = next((ROOT / "dist").glob(f"{APP_NAME}-{__version__}-linux-*.tar.gz"))
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"nkw-bundle-{os.getpid()}"
    shutil.rmtree(out, ignore_errors=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(out, filter="tar")
    yield next(out.iterdir())
    shutil.rmtree(out, ignore_errors=True)


def test_the_bundle_starts_the_wizard(bundle: Path, tmp_path: Path) -> None:
    exe = bundle / "app" / APP_NAME
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["QT_QPA_PLATFORM"] = "offscreen"
    t0 = time.monotonic()
    r = _run(exe, "--smoke-test", "--home", tmp_path, env=env, cwd=tmp_path, timeout=60)
    assert r.returncode == 0 and "wizard shown" in r.stdout, r.stdout + r.stderr
    assert time.monotonic() - t0 < 30
    assert (bundle / "install.sh").exists() and (bundle / "resources" / DESKTOP.name).exists()


def test_the_bundle_probes_a_real_server(bundle: Path, ssh_env: SSHEnv, tmp_path: Path) -> None:
    """paramiko, cryptography and keyring frozen: a headless probe over real SSH."""
    exe = bundle / "app" / APP_NAME
    env = {**os.environ, "NIXOS_KEXEC_WIZARD_HOME": str(tmp_path)}
    r = _run(exe, "probe", "--json", "--accept-new-host-key", f"nkw-nopw@127.0.0.1:{ssh_env.port}",
             "-i", ssh_env.key, env=env, cwd=tmp_path, timeout=120)  # fmt: skip
    assert '"event": "result"' in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert '"privilege": "sudo"' in r.stdout.replace("'", '"')
    assert "keyring" not in r.stderr.lower()


def test_the_bundle_installs_into_the_users_menu(bundle: Path, tmp_path: Path) -> None:
    env = {
        **os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "share"),
        "NKW_PREFIX": str(tmp_path / "opt"), "NKW_BIN": str(tmp_path / "bin"),
    }  # fmt: skip
    r = _run(bundle / "install.sh", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    entry = _desktop_entry(tmp_path / "share" / "applications" / DESKTOP.name)
    assert entry["Exec"] == str(tmp_path / "opt" / APP_NAME / APP_NAME)
    r = _run(tmp_path / "bin" / APP_NAME, "--version")
    assert r.stdout.strip() == f"{APP_NAME} {__version__}"
    assert _run(bundle / "install.sh", "--remove", env=env).returncode == 0
    assert not (tmp_path / "opt" / APP_NAME).exists()


# -- the glibc floor: what the bundle needs, as the README states it ------------------------


def _readme_glibc_floor() -> str:
    m = re.search(r"needs glibc (\d+\.\d+) or newer", (ROOT / "README.md").read_text())
    assert m, "the README's Install section states no glibc floor"
    return m.group(1)


def test_the_bundle_needs_no_newer_glibc_than_the_readme_states(bundle: Path) -> None:
    """objdump -T over every ELF in the bundle: the highest GLIBC_ version any of them imports."""
    stated = _readme_glibc_floor()
    r = _run("bash", ROOT / "packaging" / "glibc-floor.sh", bundle / "app", stated)
    assert r.returncode == 0, r.stdout + r.stderr
    floor = re.search(r"glibc floor of \S+: (\S+) \((\d+) ELF files\)", r.stdout)
    assert floor and int(floor.group(2)) > 100, r.stdout
    assert floor.group(1) == stated, f"the README says {stated}, the bundle needs {floor.group(1)}"


# -- the AppImage: our runtime in front of a squashfs of the AppDir --------------------------

FALLBACK = "running it from a temporary extraction instead"


@pytest.fixture(scope="module")
def appimage(bundle: Path) -> Path:
    """`make appimage-wrap` over the bundle just built (`make appimage` builds both)."""
    r = _run("make", "-s", "appimage-wrap", cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return ROOT / "dist" / f"NixOS_Kexec_Wizard-{__version__}-{os.uname().machine}.AppImage"


@pytest.fixture(scope="module")
def xvfb() -> Iterator[str]:
    display = f":{80 + os.getpid() % 9}"
    proc = subprocess.Popen(["Xvfb", display, "-screen", "0", "1280x1000x24", "-nolisten", "tcp"])
    time.sleep(0.5)
    yield display
    proc.terminate()
    proc.wait(10)


def _smoke(cmd: list[str | Path], display: str, tmp: Path, **env: str) -> str:
    """Runs the wizard's --smoke-test on the X server with TMPDIR=tmp/t; returns stderr."""
    (tmp / "t").mkdir()
    full = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    full.update(DISPLAY=display, QT_QPA_PLATFORM="xcb", TMPDIR=str(tmp / "t"), **env)
    r = _run(*cmd, "--smoke-test", "--home", tmp / "home", env=full, cwd=tmp, timeout=90)
    assert r.returncode == 0 and "wizard shown" in r.stdout, r.stdout + r.stderr
    # Whichever way it ran, nothing is left behind: no mount point, no extraction, no mount.
    # (The FUSE server unmounts as soon as the app has exited: give it a moment.)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        list((tmp / "t").iterdir()) or "appimage" in Path("/proc/self/mounts").read_text()
    ):
        time.sleep(0.05)
    assert list((tmp / "t").iterdir()) == []
    assert "appimage" not in Path("/proc/self/mounts").read_text()
    return r.stderr


def _fuse_works() -> bool:
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError:
        return False
    return os.geteuid() == 0 or shutil.which("fusermount3") is not None


def test_the_appimage_is_one_elf_with_the_squashfs_at_its_end(appimage: Path) -> None:
    data = appimage.read_bytes()
    assert data[:4] == b"\x7fELF" and data[8:11] == b"AI\x02"  # type-2 magic at offset 8
    shoff, = struct.unpack_from("<Q", data, 0x28)  # fmt: skip
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    elf_end = shoff + shentsize * shnum
    r = _run(appimage, "--appimage-offset")
    assert r.returncode == 0 and int(r.stdout) == elf_end, r.stdout + r.stderr
    assert data[elf_end : elf_end + 4] == b"hsqs"  # the squashfs superblock's magic
    assert len(data) <= 75 * 2**20, f"{len(data) / 2**20:.0f} MB"
    r = _run(appimage, "--appimage-version")
    assert r.returncode == 0 and r.stdout.startswith("AppImage runtime")
    r = _run(appimage, "--appimage-nonsense")
    assert r.returncode == 2 and "--appimage-help" in r.stderr


def test_appimage_extract_gives_the_appdir(appimage: Path, tmp_path: Path) -> None:
    r = _run(appimage, "--appimage-extract", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    root = tmp_path / "squashfs-root"
    assert os.access(root / "AppRun", os.X_OK)
    assert os.access(root / "usr" / "lib" / APP_NAME / APP_NAME, os.X_OK)
    assert (root / ".DirIcon").resolve() == root / f"{APP_ID}.png"
    assert _desktop_entry(root / DESKTOP.name) == _desktop_entry(DESKTOP)
    assert _run("desktop-file-validate", root / DESKTOP.name).returncode == 0
    metainfo = root / "usr" / "share" / "metainfo" / METAINFO.name
    r = _run("appstreamcli", "validate", "--no-net", "--explain", metainfo)
    assert r.returncode == 0, r.stdout + r.stderr
    for n in ICON_SIZES:
        assert (root / f"usr/share/icons/hicolor/{n}x{n}/apps/{APP_ID}.png").exists()
    # A glob extracts only what matches.
    (tmp_path / "t2").mkdir()
    r = _run(appimage, "--appimage-extract", "usr/share/metainfo/*", cwd=tmp_path / "t2")
    assert r.returncode == 0, r.stderr
    assert [p.name for p in (tmp_path / "t2" / "squashfs-root").rglob("*") if p.is_file()] == [
        METAINFO.name
    ]


@pytest.mark.skipif(not _fuse_works(), reason="needs a usable /dev/fuse (and fusermount3)")
def test_the_appimage_starts_the_wizard_mounted(appimage: Path, xvfb: str, tmp_path: Path) -> None:
    assert FALLBACK not in _smoke([appimage], xvfb, tmp_path)


@pytest.mark.parametrize("how", ["variable", "option"])
def test_the_appimage_starts_the_wizard_extracted(
    appimage: Path, xvfb: str, tmp_path: Path, how: str
) -> None:
    if how == "variable":
        stderr = _smoke([appimage], xvfb, tmp_path, APPIMAGE_EXTRACT_AND_RUN="1")
    else:
        stderr = _smoke([appimage, "--appimage-extract-and-run"], xvfb, tmp_path)
    assert FALLBACK not in stderr


@pytest.mark.fault
@pytest.mark.skipif(os.geteuid() != 0, reason="hides /dev/fuse in a mount namespace: needs root")
def test_without_fuse_the_appimage_extracts_and_runs_by_itself(
    appimage: Path, xvfb: str, tmp_path: Path
) -> None:
    """A container without FUSE: /dev/fuse is an empty file in the app's mount namespace."""
    (tmp_path / "not-a-device").touch()
    hide = f'mount --bind {tmp_path / "not-a-device"} /dev/fuse && exec "$@"'
    cmd: list[str | Path] = ["unshare", "--mount", "--propagation", "private", "sh", "-c", hide,
                             "sh", appimage]  # fmt: skip
    stderr = _smoke(cmd, xvfb, tmp_path)
    assert FALLBACK in stderr and "/dev/fuse is not a device" in stderr, stderr


# -- Debian 11: the bundle and AppImage built in a bullseye root start there ------------------


@pytest.mark.skipif(
    os.environ.get("NKW_BULLSEYE") != "1" or os.geteuid() != 0,
    reason="set NKW_BULLSEYE=1, as root: debootstrap, CPython and PyInstaller take ~5 minutes",
)
def test_the_bullseye_appimage_starts_inside_debian_11() -> None:
    """make appimage-bullseye, then the AppImage mounted and extracted in the Debian 11 root."""
    r = _run("make", "-s", "appimage-bullseye", cwd=ROOT, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    bull = ROOT / "build" / "bullseye"
    r = _run("bash", ROOT / "packaging" / "glibc-floor.sh", bull / "dist" / APP_NAME, "2.31")
    assert r.returncode == 0, r.stdout + r.stderr
    root = bull / "root"
    assert (root / "etc" / "debian_version").read_text().startswith("11.")
    image = next(bull.glob("NixOS_Kexec_Wizard-*.AppImage"))
    shutil.copy(image, root / "tmp" / "nkw.AppImage")
    for extra in ("", "APPIMAGE_EXTRACT_AND_RUN=1"):
        # /proc and /dev for the chroot, in a mount namespace that takes them away afterwards.
        script = (
            f"mount -t proc proc {root}/proc && mount --bind /dev {root}/dev && "
            f"chroot {root} env -i PATH=/usr/bin:/bin HOME=/tmp LANG=C.UTF-8 "
            f"QT_QPA_PLATFORM=offscreen {extra} /tmp/nkw.AppImage --smoke-test --home /tmp/h"
        )
        r = _run("unshare", "--mount", "--propagation", "private", "sh", "-c", script, timeout=120)
        assert r.returncode == 0 and "wizard shown" in r.stdout, r.stdout + r.stderr[-3000:]


# -- Flatpak: the manifest, checked offline (its runtimes come only from Flathub) ------------

FLATPAK = ROOT / "packaging" / "flatpak" / f"{APP_ID}.yml"


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_the_flatpak_manifest_parses_without_a_warning(tmp_path: Path) -> None:
    """flatpak-builder reads it (an unknown key or a typo is a warning, made fatal here)."""
    env = {**os.environ, "G_DEBUG": "fatal-warnings"}
    # (in tmp_path: flatpak-builder leaves its state directory in the working directory)
    r = _run("flatpak-builder", "--show-manifest", FLATPAK, env=env, cwd=tmp_path)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    m = json.loads(r.stdout)
    assert m["id"] == APP_ID and m["command"] == APP_NAME
    # The PySide base app of the Qt the lock pins, on the KDE runtime of the same Qt.
    qt = ".".join(_lock()["pyside6-essentials"].split(".")[:2])
    assert (m["runtime"], m["runtime-version"]) == ("org.kde.Platform", qt)
    assert (m["base"], m["base-version"]) == ("io.qt.PySide.BaseApp", qt)
    assert {"--share=network", "--socket=ssh-auth", "--filesystem=~/.ssh:ro",
            "--talk-name=org.freedesktop.secrets"} <= set(m["finish-args"])  # fmt: skip
    assert not any("home" in a or "host" in a or "Flatpak" in a for a in m["finish-args"])


def test_the_flatpaks_python_wheels_are_the_locked_versions_with_hashes() -> None:
    deps = json.loads((FLATPAK.parent / "python-deps.json").read_text())
    pins, seen = _lock(), set()
    for src in deps["sources"]:
        wheel = src["url"].rsplit("/", 1)[1]
        name, version = wheel.split("-")[:2]
        key = re.sub(r"[-_.]+", "-", name).lower()
        assert pins.get(key) == version, f"{wheel}: requirements.lock pins {pins.get(key)}"
        assert re.fullmatch(r"[0-9a-f]{64}", src["sha256"]) and wheel.endswith(".whl")
        seen.add(key)
    assert {"paramiko", "cryptography", "keyring", "secretstorage", "platformdirs"} <= seen
    assert not seen & {"pyside6-essentials", "shiboken6"}  # the base app brings PySide6


# -- Nix: parse and evaluate what needs no nixpkgs -------------------------------------------


def _nix(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NIX_STATE_DIR": "/tmp/nkw-nix-state", "NIX_CONF_DIR": "/tmp/nkw-nix-conf"}
    return _run("nix-instantiate", *args, env=env)


@pytest.mark.parametrize(
    "path",
    [
        "flake.nix",
        "nix/package.nix",
        "nix/custom-kexec/flake.nix",
        "nix/custom-kexec/authorized-keys.nix",
    ],
)
def test_nix_files_parse(path: str) -> None:
    r = _nix("--parse", str(ROOT / path))
    assert r.returncode == 0, r.stderr


def test_nix_expressions_evaluate_as_far_as_they_can_without_nixpkgs() -> None:
    r = _nix("--eval", "--strict", "--expr", f"""
      let flake = import {ROOT}/flake.nix;
          custom = import {ROOT}/nix/custom-kexec/flake.nix;
      in {{
        description = flake.description;
        outputs = builtins.attrNames (builtins.functionArgs flake.outputs);
        packageArgs = builtins.attrNames (builtins.functionArgs (import {ROOT}/nix/package.nix));
        customInputs = builtins.attrNames custom.inputs;
        keys = import {ROOT}/nix/custom-kexec/authorized-keys.nix;
      }}""")  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert 'outputs = [ "nixpkgs" "self" ]' in out
    assert '"python3Packages"' in out and '"qt6"' in out and '"makeDesktopItem"' in out
    assert 'customInputs = [ "nixos-images" "nixpkgs" ]' in out and "keys = [ ]" in out

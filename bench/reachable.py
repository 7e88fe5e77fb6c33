"""Probe round trip and installer detection, on the loopback machine whose kexec 'reboots' it.

Each run installs the stand-in image on a fresh loopback machine; the machine boots its
installer sshd after a random delay (so the app's polls meet it at every phase). The latency
is from the moment that sshd sends its banner to the app's "the server answers" event.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from app.core.catalog import Asset
from app.core.download import CachedImage, Downloader, ImageCache, sha256_file
from app.core.events import CancelToken, Event
from app.core.inspect import run_probe
from app.core.install import Installer
from app.core.plan import InstallPlan
from app.core.privilege import establish_privilege
from app.core.settings import Settings
from app.core.ssh import ConnectOptions, Credentials, KnownHosts, Target, connect
from bench.common import Row, main_for, median, need_root, workdir
from tests.support.machine import Machine
from tests.support.releases import ReleasesServer
from tests.support.sshd import free_port, keygen
from tests.support.tarballs import standin_tarball

ASSET = "nixos-kexec-installer-noninteractive-x86_64-linux.tar.gz"


def measure(runs: int = 7) -> list[Row]:
    """Install on fresh loopback machines; time the probe and the installer detection."""
    need_root("bench/reachable.py")
    with workdir() as work:
        client = keygen(work / "client")
        host = keygen(work / "ssh_host_ed25519_key")
        tar = standin_tarball(work / ASSET)
        releases = ReleasesServer()
        releases.add("nixos-26.05", ASSET, tar.read_bytes())
        releases.start()
        try:
            settings = Settings(
                api_url=releases.api_url, download_url=releases.download_url, allow_http=True
            )
            asset = Asset(ASSET, releases.url("nixos-26.05", ASSET), digest=sha256_file(tar))
            image = Downloader(settings, ImageCache(work / "images")).fetch(asset)
            probes, latencies = [], []
            for i in range(runs):
                m = Machine(work / f"m{i}", free_port(), [host], [client.with_suffix(".pub")])
                m.boot_delay = random.uniform(1.0, 2.0)
                m.start()
                try:
                    p, lat = _install(m, client, work / f"kh{i}", settings, asset, image)
                finally:
                    m.stop()
                probes.append(p)
                latencies.append(lat)
        finally:
            releases.stop()
    lat_list = ", ".join(f"{x:.2f}" for x in sorted(latencies))
    return [
        Row(
            "probe: one round trip for all facts (loopback machine)",
            "-",
            f"{median(probes):.2f} s median (max {max(probes):.2f})",
            "<= 1.5 s",
            median(probes) <= 1.5,
        ),
        Row(
            "installer's sshd answering -> the app reports it reachable",
            "-",
            f"{median(latencies):.2f} s median of {runs} ({lat_list})",
            "<= 1 s median",
            median(latencies) <= 1.0,
        ),
    ]


def _install(
    m: Machine, key: Path, kh: Path, settings: Settings, asset: Asset, image: CachedImage
) -> tuple[float, float]:
    target = Target("127.0.0.1", m.port, "root", identity_files=(str(key),))
    known = KnownHosts(kh, kh)
    creds = Credentials(method="key")
    reachable: list[float] = []

    def on_event(e: Event) -> None:
        if e.type == "log" and e.stage == "up" and "answers on port" in e.message:
            reachable.append(time.monotonic())

    session = connect(target, creds, known, ConnectOptions(accept_new_host_key=True))
    t0 = time.perf_counter()
    facts = run_probe(session, settings)
    probe = time.perf_counter() - t0
    establish_privilege(session, facts, None, settings)
    plan = InstallPlan(target=target, image=image, asset=asset, transfer="upload")
    inst = Installer(plan, session, facts, creds, known, settings, m.workdir / "keys")
    inst.run(on_event, CancelToken())
    answered = next(t for t, what in m.events if what == "installer")
    return probe, reachable[0] - answered


if __name__ == "__main__":
    raise SystemExit(main_for(measure, __doc__, runs=7))

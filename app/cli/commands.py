"""The command line's subcommands: thin, over the run, the fleet and one request builder."""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from app.core.catalog import ARCHES, VARIANTS, Asset, CatalogClient, environ_arch, release_of
from app.core.download import Downloader
from app.core.errors import ConfigError, UsageError
from app.core.fleet import Fleet, SharedImages, exit_code
from app.core.handoff import installer_ssh_command, open_terminal, profile_installer
from app.core.netboot import (
    NetbootServer,
    NetbootSource,
    ServedRequest,
    chain_explanation,
    chain_url,
    default_key_files,
    kexec_source,
    parse_bind,
    read_public_keys,
    release_source,
)
from app.core.plan import check_kexec_flags
from app.core.preflight import Level
from app.core.profiles import forget_profile
from app.core.run import Host, HostRun, Step, image_alone

from .context import Context
from .prompts import Prompts
from .report import terminal_writer


def cmd_images(ctx: Context) -> int:
    """List channels and their kexec tarballs."""
    client = CatalogClient(ctx.settings, ctx.paths.catalog_cache)
    cat = client.load(offline=ctx.args.offline, refresh=ctx.args.refresh)
    if ctx.args.json:
        ctx.report.result(True, "catalog", catalog=cat.to_json())
        return 0
    out = sys.stdout
    out.write(f"Source: {cat.source}" + (f" ({cat.note})" if cat.note else "") + "\n")
    default = cat.default_channel()
    for r in cat.releases:
        mark = "rebuilt weekly" if r.rebuilt else f"frozen, last build {(r.last_build or '?')[:10]}"
        star = " (default)" if r.channel == default else ""
        out.write(f"\n{r.channel}{star}: {mark}\n")
        for arch in ARCHES:
            for variant in VARIANTS:
                a = r.kexec_asset(variant, arch)
                if a is None:
                    continue
                out.write(_asset_row(variant, arch, a))
        for arch in ARCHES:
            parts = r.netboot(arch)
            if parts is not None:
                kernel, initrd, _script = parts
                size = (kernel.size or 0) + (initrd.size or 0)
                out.write(_asset_row("netboot", arch, replace(initrd, size=size or None)))
            bundle = r.bundle_asset(arch)
            if bundle is not None:
                out.write(_asset_row("kexec-bundle", arch, bundle) + "    (legacy)\n")
    return 0


def _asset_row(label: str, arch: str, a: Asset) -> str:
    size = f"{a.size / 1e6:.0f} MB" if a.size else "size unknown"
    return f"  {label:15} {arch:8} {size:>12}  {a.checksum_note}\n"


def cmd_download(ctx: Context) -> int:
    """Download (or find in the cache) and verify an image."""
    ctx.start_log("download")
    request = ctx.image_request()
    images = SharedImages(ctx.image_cache, ctx.settings)
    images.check_early(request.source)
    img = image_alone(request, ctx.catalog(request), ctx.settings, images, ctx.report, ctx.cancel)
    ctx.report.info(f"{img.path}: {img.verification_note}")
    ctx.report.result(
        True,
        "downloaded" if img.downloaded else "cached",
        path=str(img.path),
        sha256=img.info.sha256,
        size=img.info.size,
        verification=img.info.verification,
    )
    if not ctx.args.json:
        print(img.path)
    return 0


def _print_facts(ctx: Context, runs: Sequence[HostRun]) -> None:
    """What the probe found and what it means, for the person (a single server)."""
    found = runs[0].inspection if len(runs) == 1 else None
    if ctx.args.json or found is None:
        return
    facts, verdicts, pv = found.facts, found.verdicts, found.network
    w = terminal_writer(sys.stdout)  # the facts are what the server said: escaped
    mem = f"{facts.mem_total / 1024**3:.1f} GiB" if facts.mem_total else "unknown"
    w(f"{facts.os_name}, kernel {facts.kernel} ({facts.machine}), {mem} RAM, ")
    w(f"virt {facts.virt or 'unknown'}, user {facts.user} ({facts.privilege})\n\n")
    for v in verdicts:
        w(f"  [{v.level.value.upper():4}] {v.title}\n")
        if v.level is not Level.OK:
            w(f"         {v.reason}\n         Fix: {v.fix}\n")
    w("\nAfter the kexec the installer will:\n")
    for s in pv.keeps:
        w(f"  + {s}\n")
    for s in pv.loses:
        w(f"  - {s}\n")


def cmd_probe(ctx: Context) -> int:
    """Connect, inspect and judge a server; change nothing (saved only with --save-profile)."""
    ctx.start_log("probe")
    host = replace(ctx.hosts()[0], profile=ctx.args.save_profile or None)
    fleet = _fleet(ctx, [host])
    run = fleet.runs[0]
    answers = ctx.answers([host])
    fleet.drive(answers, Prompts(ctx, fleet, answers), None, ctx.report, steps=[Step.INSPECTED])
    if run.outcome is not None and not run.outcome.ok:
        return run.outcome.exit_code  # its result line, with what to do, is written
    found = run.inspection
    if found is None or run.session is None:
        raise UsageError("The server was not inspected.", "", "Try again.")
    run.close()
    _print_facts(ctx, [run])
    ctx.report.result(
        True,
        f"preflight-{found.level.value}",
        host=run.host.target.host,
        port=run.host.target.port,
        host_key_fingerprint=run.session.host_key_fingerprint,
        facts=found.facts.to_json(),
        verdicts=[v.to_json() for v in found.verdicts],
        network=found.network.to_json(),
    )
    return 0


def _fleet(
    ctx: Context, hosts: list[Host], many: bool = False, images: SharedImages | None = None
) -> Fleet:
    """The servers' runs; a batch names each server in its events and keeps a log for each."""
    images = images or SharedImages(ctx.image_cache, ctx.settings)
    parallel = getattr(ctx.args, "parallel", 1)
    return Fleet(
        hosts, ctx.run_env(images), ctx.cancel, parallel, named=many,
        logs=ctx.paths.logs if many else None, redact=ctx.report.redact,
    )  # fmt: skip


def cmd_install(ctx: Context) -> int:
    """The whole install on one server or many: connect and inspect all, plan all, one
    confirmation, install all; one server's failure never stops another."""
    a = ctx.args
    hosts = ctx.hosts()
    many = len(hosts) > 1 or bool(a.targets) or bool(a.from_profiles)
    ctx.start_log("install-many" if many else "install")
    check_kexec_flags(a.kexec_extra_flags or "")  # before anything is asked or sent
    images = SharedImages(ctx.image_cache, ctx.settings)
    fleet = _fleet(ctx, hosts, many, images)  # refuses a batch that makes no sense, first
    request = ctx.run_request()
    images.check_early(request.image.source)  # beside the connections and the probes
    answers = ctx.answers(hosts)
    if many:
        ctx.report.start_board([r.label for r in fleet.runs])
    try:
        outcomes = fleet.drive(
            answers, Prompts(ctx, fleet, answers), request, ctx.report,
            inspected=None if many else lambda runs: _print_facts(ctx, runs),
        )  # fmt: skip
    finally:
        ctx.report.end_board()
    if many:
        ctx.report.summary(outcomes, {r.label: fleet.log_of(r) for r in fleet.runs})
    return exit_code(outcomes)


def cmd_install_nixos(ctx: Context) -> int:
    """NixOS onto the disk of each server that runs the installer: look at all, pick each
    disk, the typed confirmation of every wipe, then the installs; nothing reboots."""
    a = ctx.args
    hosts = ctx.hosts()
    many = len(hosts) > 1 or bool(a.targets) or bool(a.from_profiles)
    ctx.start_log("install-nixos-many" if many else "install-nixos")
    fleet = _fleet(ctx, hosts, many)
    request = ctx.disk_request()
    answers = ctx.answers(hosts)
    if many:
        ctx.report.start_board([r.label for r in fleet.runs])
    try:
        outcomes = fleet.drive(answers, Prompts(ctx, fleet, answers), request, ctx.report)
    finally:
        ctx.report.end_board()
    if many:
        ctx.report.summary(outcomes, {r.label: fleet.log_of(r) for r in fleet.runs})
    return exit_code(outcomes)


def cmd_netboot(ctx: Context) -> int:
    """Show the release's iPXE chain URL, or serve a netboot image from this computer."""
    a = ctx.args
    arch = a.arch or environ_arch()
    if not a.serve:
        if a.from_kexec:
            raise UsageError(
                "--from-kexec needs --serve ADDR:PORT.",
                "The kexec installer is not published as a netboot image: this computer has to "
                "serve its kernel and initrd.",
                "Add --serve, e.g. --serve 192.168.1.10:8080.",
            )
        cat = CatalogClient(ctx.settings, ctx.paths.catalog_cache).load(offline=a.offline)
        release = release_of(cat, a.channel)
        channel = release.channel
        url = chain_url(ctx.settings, channel, arch)
        if cat.source != "builtin" and release.netboot(arch) is None:
            ctx.report.info(f"{channel} lists no netboot image for {arch}.", level="warn")
        ctx.report.info(chain_explanation(url))
        ctx.report.result(True, "chain-url", url=url, command=f"chain {url}", channel=channel)
        return 0
    ctx.start_log("netboot")
    host, port = parse_bind(a.serve)
    source = _netboot_source(ctx, arch)
    server = NetbootServer(source, host, port, a.kernel_args or "", _request_reporter(ctx))
    server.start()
    ctx.report.info(
        f"Serving {source.description} at {server.url} for {a.serve_for:g} s (Ctrl-C stops).",
        chain_url=server.chain_url,
    )
    ctx.report.info(f"At the machine's iPXE prompt: {server.chain_command}")
    try:
        ctx.cancel.wait(a.serve_for)
        outcome = "served"
    except KeyboardInterrupt:
        outcome = "stopped"
    finally:
        server.stop()
    ctx.report.info(f"Stopped serving after {len(server.requests)} request(s).")
    ctx.report.result(True, outcome, requests=len(server.requests), chain_url=server.chain_url)
    return 0


def _netboot_source(ctx: Context, arch: str) -> NetbootSource:
    a = ctx.args
    if a.from_kexec:
        request = ctx.image_request(arch)
        images = SharedImages(ctx.image_cache, ctx.settings)
        images.check_early(request.source)
        image = image_alone(
            request, ctx.catalog(request), ctx.settings, images, ctx.report, ctx.cancel
        )
        files = [Path(f).expanduser() for f in a.authorized_keys or []]
        files = files or default_key_files(Path.home() / ".ssh", ctx.paths.keys_dir)
        keys = read_public_keys(files)
        ctx.report.info(
            f"The installer will accept {len(keys)} key(s) from " + ", ".join(str(f) for f in files)
        )
        return kexec_source(image, ctx.paths.netboot_dir, keys, ctx.cancel)
    cat = CatalogClient(ctx.settings, ctx.paths.catalog_cache).load(offline=a.offline)
    release = release_of(cat, a.channel)
    return release_source(
        Downloader(ctx.settings, ctx.image_cache),
        release,
        arch,
        emit=ctx.report,
        cancel=ctx.cancel,
    )


def _request_reporter(ctx: Context) -> Callable[[ServedRequest], None]:
    def report(req: ServedRequest) -> None:
        ctx.report.info(req.line(), request=req.path, status=req.status, sent=req.sent)

    return report


def cmd_reconnect(ctx: Context) -> int:
    """Open a terminal with the exact ssh command for a profile's installer."""
    info, jump = profile_installer(ctx.profiles.get(ctx.args.name))
    cmd = installer_ssh_command(info, jump, ctx.known_hosts.app_file)
    line = shlex.join(cmd)
    if ctx.args.print or ctx.args.json:
        ctx.report.result(True, "ssh-command", command=cmd, line=line)
        if not ctx.args.json:
            print(line)
        return 0
    why_not = open_terminal(cmd)
    if why_not is not None:
        print(line)
        return 0
    ctx.report.info(f"Opened a terminal: {line}")
    return 0


def cmd_profiles(ctx: Context) -> int:
    """List, show or delete profiles."""
    a = ctx.args
    if a.action == "list":
        profiles = ctx.profiles.load()
        if ctx.profiles.notice:
            ctx.report.info(ctx.profiles.notice, level="warn")
        if a.json:
            ctx.report.result(True, "profiles", profiles=[p.to_json() for p in profiles.values()])
            return 0
        if not profiles:
            print("No saved profiles.")
        for p in profiles.values():
            when = (
                time.strftime("%Y-%m-%d %H:%M", time.localtime(p.last_contact))
                if p.last_contact
                else "never"
            )
            print(f"{p.name:20} {p.user}@{p.host}:{p.port:<6} {p.state:10} last contact {when}")
        return 0
    if not a.name:
        raise UsageError(f"`profiles {a.action}` needs a profile name.", "", "Add the name.")
    if a.action == "show":
        p = ctx.profiles.get(a.name)
        if a.json:
            ctx.report.result(True, "profile", profile=p.to_json())
        else:
            print(json.dumps(p.to_json(), indent=2))
        return 0
    if a.action == "delete":
        if not forget_profile(ctx.profiles, ctx.secrets, a.name):
            raise ConfigError(f"There is no profile named {a.name!r}.", "", "Check the name.")
        if ctx.secrets.kept:  # a failing keyring: the profile is gone, its passwords may not be
            ctx.report.info(ctx.secrets.kept_note(), level="warn")
        ctx.report.result(True, "deleted", name=a.name)
        if not a.json:
            print(f"Deleted profile {a.name!r}.")
        return 0
    raise UsageError(f"Unknown profiles action {a.action!r}.")


COMMANDS: dict[str, Callable[[Context], int]] = {
    "images": cmd_images,
    "download": cmd_download,
    "probe": cmd_probe,
    "install": cmd_install,
    "install-nixos": cmd_install_nixos,
    "netboot": cmd_netboot,
    "reconnect": cmd_reconnect,
    "profiles": cmd_profiles,
}

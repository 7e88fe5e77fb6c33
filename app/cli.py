"""The command-line face: subcommands over the engine, human output or JSON lines."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import re
import shlex
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from app import __version__
from app.core import flow
from app.core.catalog import (
    ARCHES,
    DEFAULT_VARIANT,
    VARIANTS,
    Asset,
    CatalogClient,
    environ_arch,
    release_of,
)
from app.core.download import CachedImage, Downloader, ImageCache, bundle_note
from app.core.errors import (
    Cancelled,
    ConfigError,
    ExitCode,
    HostKeyOtherType,
    HostKeyUnknown,
    NewSystemHostKey,
    UsageError,
    WizardError,
)
from app.core.events import (
    AttemptEvent,
    CancelToken,
    Event,
    InfoEvent,
    LogEvent,
    OutputEvent,
    PlanEvent,
    ProgressEvent,
    ResultEvent,
    StageEvent,
    TimingsEvent,
)
from app.core.fleet import (
    DEFAULT_PARALLEL,
    Fleet,
    FleetEnv,
    Host,
    Outcome,
    Prepared,
    check_labels,
    exit_code,
    failed,
    installed,
    summary,
    targets_of_text,
)
from app.core.fleet import servers as fleet_servers
from app.core.flow import (
    already_installer,
    choose_image,
    fetch_image,
    installer_for,
    make_plan,
    record,
    transfer_for,
)
from app.core.handoff import installer_ssh_command, open_terminal, profile_installer
from app.core.install import Installer
from app.core.kinds import AuthMethod, Transfer
from app.core.netboot import (
    DEFAULT_SERVE_FOR,
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
from app.core.paths import AppPaths
from app.core.plan import (
    BUNDLE_VARIANT,
    DEFAULT_STAGING,
    ImageChoice,
    ImageRequest,
    InstallRequest,
    check_kexec_flags,
)
from app.core.preflight import Level
from app.core.probe import Facts
from app.core.profiles import Profile, ProfileStore, forget_profile
from app.core.result import InstallerInfo, leftover_note
from app.core.runlog import Redactor, RunLog
from app.core.secrets import SecretStore, password_key, sudo_key
from app.core.settings import Settings
from app.core.ssh import (
    ConnectOptions,
    Credentials,
    KnownHosts,
    PassphraseRequired,
    PasswordRequired,
    Session,
    Target,
    load_ssh_config,
    parse_target,
)

# ---------------------------------------------------------------------------------------------
# Output


class Reporter:
    """Renders events: JSON lines on stdout, or readable lines and progress bars on stderr."""

    def __init__(self, json_mode: bool, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
        self.json = json_mode
        self.out = out
        self.err = err
        self.tty = err.isatty()
        self.redact = Redactor()
        self.log: RunLog | None = None
        self._bar_open = False
        self._last_pct: dict[str, int] = {}
        self._lock = threading.RLock()  # many servers' threads report at once
        self._board: dict[str, str] = {}  # a run on many: one live line per server
        self._drawn = 0
        self._paused = False

    def __call__(self, event: Event) -> None:
        with self._lock:
            if self.log is not None:
                self.log.write(event)
            if self.json:
                self.out.write(json.dumps(self.redact.scrub(event.to_json())) + "\n")
                self.out.flush()
            elif event.host:
                self._host_event(event)
            else:
                self._human(event)

    def _line(self, text: str) -> None:
        with self._lock:
            if self._bar_open:
                self.err.write("\n")
                self._bar_open = False
            board = self._drawn
            if board:  # above the live lines, which are drawn again below it
                self.err.write(f"\033[{board}A\r")
                self._drawn = 0
            self.err.write(self.redact(text) + ("\033[K\n" if board else "\n"))
            if board:
                self._draw()
            self.err.flush()

    # -- many servers: one live line each (on a terminal), or a line per step -------------

    def start_board(self, hosts: Sequence[str]) -> None:
        """Show one line per server from now on (a terminal only)."""
        with self._lock:
            self._board = dict.fromkeys(hosts, "waiting")
            self._draw()

    def end_board(self) -> None:
        """Stop drawing the live lines; they stay as they are."""
        with self._lock:
            self._drawn = 0
            self._board = {}

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the live lines alone while the person is asked something below them."""
        with self._lock:
            self._paused, self._drawn = True, 0
        try:
            yield
        finally:
            with self._lock:
                self._paused = False
                self._draw()

    def _draw(self) -> None:
        if self.json or not self.tty or self._paused or not self._board:
            return
        if self._drawn:
            self.err.write(f"\033[{self._drawn}A")
        width = max(len(h) for h in self._board)
        for host, status in self._board.items():
            self.err.write(f"\r  {self.redact(host):<{width}}  {self.redact(status)}\033[K\n")
        self._drawn = len(self._board)
        self.err.flush()

    def _host_event(self, e: Event) -> None:
        status, worth_a_line = _host_status(e)
        if status is None:
            return
        if self.tty and e.host in self._board:
            if worth_a_line and isinstance(e, LogEvent):
                self._line(f"[{e.host}] {status}")
                return
            if self._board[e.host] != status:
                self._board[e.host] = status
                self._draw()
        elif worth_a_line:
            self._line(f"[{e.host}] {status}")

    def summary(self, outcomes: Sequence[Outcome], logs: Mapping[str, Path | None]) -> None:
        """The last line of a run on many servers, or a table for the person."""
        event = summary(outcomes)
        if self.log is not None:
            self.log.write(event)
        if self.json:
            with self._lock:
                self.out.write(json.dumps(self.redact.scrub(event.to_json())) + "\n")
                self.out.flush()
            return
        ok = sum(1 for o in outcomes if o.ok)
        self._line(f"\nThe NixOS installer runs on {ok} of {fleet_servers(len(outcomes))}.")
        width = max((len(o.host) for o in outcomes), default=0)
        for o in outcomes:
            if o.ok:
                cmd = o.payload.get("ssh_command")
                self._line(f"  ok    {o.host:<{width}}  " + (shlex.join(cmd) if cmd else o.outcome))
                continue
            err = o.error
            self._line(f"  FAIL  {o.host:<{width}}  {o.outcome} (exit {o.exit_code})")
            if err is not None:
                pad = " " * (width + 8)
                self._line(f"{pad}{err.what}")
                if err.fix:
                    self._line(f"{pad}What to do: {err.fix}")
            if logs.get(o.host):
                self._line(f"{' ' * (width + 8)}Log: {logs[o.host]}")

    def _human(self, e: Event) -> None:
        if isinstance(e, StageEvent):
            if e.state == "start":
                self._line(f"==> {e.stage}")
            elif e.state != "done":
                self._line(f"    {e.stage} {e.state} after {e.seconds or 0:.1f} s")
            else:
                self._line(f"    {e.stage} done in {e.seconds or 0:.1f} s")
        elif isinstance(e, ProgressEvent):
            self._bar(e)
        elif isinstance(e, AttemptEvent):
            if self.tty:
                self._line(f"    {e.message}")
        elif isinstance(e, OutputEvent):
            self._line(f"    | {e.message}")
        elif isinstance(e, LogEvent):
            prefix = "    ! " if e.level == "warn" else "    "
            self._line(prefix + e.message)

    def _bar(self, e: ProgressEvent) -> None:
        done, total = e.done, e.total
        pct = int(done * 100 / total) if total else -1
        text = f"    {_mb(done)}" + (f" / {_mb(total)} ({pct}%)" if total else "")
        text += f"  {e.rate / 1e6:.1f} MB/s"
        text += f"  ETA {int(e.eta)} s" if e.eta is not None else ""
        if self.tty:
            width = 30
            filled = int(width * pct / 100) if pct >= 0 else 0
            self.err.write(f"\r    [{'#' * filled}{'.' * (width - filled)}]{text}\033[K")
            self._bar_open = True
            if e.final:
                self.err.write("\n")
                self._bar_open = False
            self.err.flush()
        elif e.final or pct // 10 != self._last_pct.get(e.stage, -1) // 10:
            self._last_pct[e.stage] = pct
            self._line(text.strip())

    def info(self, message: str, level: str = "", **extra: Any) -> None:
        """A message for the person (or an ``info`` event in JSON mode)."""
        self(InfoEvent("", message, level=level, extra=extra))

    def result(self, ok: bool, outcome: str, **data: Any) -> None:
        """The final line: ``{"event": "result", ...}`` or a human summary."""
        event = ResultEvent(payload={"ok": ok, "outcome": outcome, **data})
        if self.log is not None:
            self.log.write(event)
        if self.json:
            self.out.write(json.dumps(self.redact.scrub(event.to_json())) + "\n")
            self.out.flush()

    def error(self, exc: WizardError) -> None:
        """A failure in three parts."""
        if self.json:
            self.result(False, exc.kind, error=exc.as_dict(), exit_code=int(exc.exit_code))
            return
        if self.log is not None:
            self.log.write(ResultEvent(payload={"ok": False, "error": exc.as_dict()}))
        self._line("")
        self._line(f"Error: {exc.what}")
        if exc.why:
            self._line(exc.why)
        if exc.fix:
            self._line(f"What to do: {exc.fix}")


def _host_status(e: Event) -> tuple[str | None, bool]:
    """A server's live line after this event, and whether it is worth a line of its own."""
    if isinstance(e, ResultEvent):
        if e.payload.get("ok"):
            return f"ok: {e.payload.get('outcome')}", True
        what = (e.payload.get("error") or {}).get("what", "")
        return f"FAILED ({e.payload.get('outcome')}): {what}", True
    if isinstance(e, StageEvent):
        if e.state == "start":
            return f"{e.stage}…", True
        return f"{e.stage} {e.state} ({e.seconds or 0:.1f} s)", e.state != "done"
    if isinstance(e, AttemptEvent):
        return f"{e.stage}: waiting for the installer (attempt {e.attempts})", False
    if isinstance(e, ProgressEvent) and e.total:
        return f"{e.stage} {int(e.done * 100 / e.total)}%  {e.rate / 1e6:.1f} MB/s", False
    if isinstance(e, LogEvent) and e.level == "warn":
        return f"! {e.message}", True
    return None, False


def _mb(n: int | float | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f} MB"


# ---------------------------------------------------------------------------------------------
# Context shared by the subcommands


class Context:
    """Paths, settings, stores and the reporter for one invocation."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.paths = AppPaths.resolve(args.home)
        self.paths.ensure()
        self.settings = Settings.from_env(
            self.paths.settings_file,
            api_url=args.api_url,
            download_url=args.download_url,
            allow_http=True if args.allow_http else None,
            connect_timeout=getattr(args, "connect_timeout", None),
            up_timeout=getattr(args, "timeout", None),
            down_timeout=getattr(args, "down_timeout", None),
        )
        self.report = Reporter(args.json)
        self.profiles = ProfileStore(self.paths.profiles_file)
        self.secrets = SecretStore()
        self.cancel = CancelToken()
        known = Path(args.known_hosts) if getattr(args, "known_hosts", None) else None
        self.known_hosts = KnownHosts(known or self.paths.known_hosts)
        self.interactive = sys.stdin.isatty() and not args.json

    def start_log(self, name: str) -> None:
        """Record this run's events in a log file."""
        self.report.log = RunLog(self.paths.logs, self.report.redact, name)


def _env_secret(var: str | None, what: str) -> str | None:
    if not var:
        return None
    if var not in os.environ:
        raise UsageError(
            f"The environment variable {var} (given for the {what}) is not set.",
            "The secret is read from the environment so it never shows in the process list.",
            f"Export {var} before running the command.",
        )
    return os.environ[var]


def _profile_for(ctx: Context) -> Profile | None:
    name = getattr(ctx.args, "profile", None)
    if not name:
        return None
    p = ctx.profiles.get(name)
    if ctx.profiles.notice:
        ctx.report.info(ctx.profiles.notice, level="warn")
    return p


def _target(ctx: Context, profile: Profile | None, given: str | None = None) -> Target:
    a = ctx.args
    given = given or a.target
    spec = given or (profile.host if profile else None)
    if not spec:
        raise UsageError(
            "No server given.",
            "The command needs to know which server to connect to.",
            "Name it as [user@]host[:port] or an ~/.ssh/config alias, or use --profile NAME.",
        )
    identity = list(a.identity or ([profile.key_path] if profile and profile.key_path else []))
    return parse_target(
        spec,
        port=a.port or (profile.port if profile and not given else None),
        user=a.user or (profile.user if profile and not given else None),
        identity=identity,
        jump=a.jump or (profile.jump if profile and profile.jump else None),
        config=load_ssh_config(),
    )


def _credentials(ctx: Context, profile: Profile | None) -> Credentials:
    a = ctx.args
    password = _env_secret(a.password_env, "login password")
    sudo_password = _env_secret(a.sudo_password_env, "sudo password")
    if profile is not None and profile.remember_password:
        password = password or ctx.secrets.get(password_key(profile.name))
        sudo_password = sudo_password or ctx.secrets.get(sudo_key(profile.name))
    method = AuthMethod(a.auth or (profile.auth if profile else AuthMethod.AUTO))
    ctx.report.redact.add(password)
    ctx.report.redact.add(sudo_password)
    return Credentials(method=method, password=password, sudo_password=sudo_password)


def _accepted_keys(ctx: Context, target: Target) -> tuple[tuple[str, int, str], ...]:
    """The fingerprints named by --accept-host-key, for the target and each of its hops."""
    fps = getattr(ctx.args, "accept_host_key", None) or []
    hops: list[Target] = []
    t: Target | None = target
    while t is not None:
        hops.append(t)
        t = t.jump
    return tuple((h.host, h.port, fp) for h in hops for fp in fps)


def _ask_host_key(ctx: Context, exc: HostKeyUnknown) -> None:
    """Ask whether to trust exactly this key; raises when the answer is no (or cannot be asked)."""
    if not ctx.interactive:
        if isinstance(exc, HostKeyOtherType | NewSystemHostKey):
            exc.fix += f" From the command line: --accept-host-key {exc.fingerprint}"
        else:
            exc.fix += " Or pass --accept-new-host-key to trust it from the command line."
        raise exc
    sys.stderr.write(f"{exc.what}\n{exc.why}\n")
    answer = input("Trust this key and continue? [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise Cancelled("Host key not trusted; nothing was sent to the server.") from exc


def _connect(ctx: Context, target: Target, creds: Credentials) -> Session:
    """Connect, turning host-key and secret questions into prompts when interactive."""
    opts = ConnectOptions(
        timeout=ctx.settings.connect_timeout,
        accept_new_host_key=bool(ctx.args.accept_new_host_key),
        trusted=_accepted_keys(ctx, target),
    )
    # One question per hop and secret at the most; an answer sticks for its own host.
    for _ in range(12):
        try:
            return flow.connect(target, creds, ctx.known_hosts, opts, cancel=ctx.cancel)
        except HostKeyUnknown as exc:
            _ask_host_key(ctx, exc)
            opts = flow.answer_question(exc, exc.fingerprint, target, creds, opts)
        except (PassphraseRequired, PasswordRequired) as exc:
            if not ctx.interactive:
                raise
            what = exc.path if isinstance(exc, PassphraseRequired) else exc.label
            kind = "Passphrase" if isinstance(exc, PassphraseRequired) else "Password"
            secret = getpass.getpass(f"{kind} for {what}: ")
            ctx.report.redact.add(secret)
            opts = flow.answer_question(exc, secret, target, creds, opts)
    raise Cancelled("Too many attempts.")


def _become_root(ctx: Context, session: Session, facts: Facts, creds: Credentials) -> None:
    """Become root by the flow's policy, asking for the sudo password when one is needed."""
    if flow.become_root(session, facts, creds, ctx.settings, can_ask=ctx.interactive):
        return
    secret = getpass.getpass(f"sudo password for {facts.user}: ")
    ctx.report.redact.add(secret)
    creds.sudo_password = secret
    flow.become_root(session, facts, creds, ctx.settings)


# ---------------------------------------------------------------------------------------------
# Subcommands


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


def _choose(ctx: Context, facts: Facts | None, arch: str | None = None) -> ImageChoice:
    """The image for --channel/--arch/--variant/--bundle or --image, through the flow."""
    a = ctx.args
    bundle = getattr(a, "bundle", False) and not a.image
    request = ImageRequest(
        channel=a.channel,
        arch=a.arch or arch,
        variant=BUNDLE_VARIANT if bundle else (a.variant or DEFAULT_VARIANT),
        source=a.image or "",
    )
    catalog = None
    if not request.source:
        catalog = CatalogClient(ctx.settings, ctx.paths.catalog_cache).load(offline=a.offline)
        if catalog.note:
            ctx.report.info(f"Image list: {catalog.note}", level="warn")
    return choose_image(request, facts, ctx.settings, catalog)


def _image_cache(ctx: Context) -> ImageCache:
    return ImageCache(ctx.paths.images_dir_for(ctx.settings.cache_dir))


def _fetch_image(
    ctx: Context, choice: ImageChoice, early: flow.EarlyCheck | None = None
) -> CachedImage:
    cache = _image_cache(ctx)
    asset = choice.asset
    if asset is not None and not asset.digest:
        ctx.report.info(
            f"WARNING: {asset.name} has no published checksum; {asset.checksum_note}.",
            level="warn",
        )
    return fetch_image(choice, cache, ctx.settings, emit=ctx.report, cancel=ctx.cancel, early=early)


def cmd_download(ctx: Context) -> int:
    """Download (or find in the cache) and verify an image."""
    ctx.start_log("download")
    img = _fetch_image(ctx, _choose(ctx, None))
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


def _inspect(ctx: Context, session: Session) -> flow.Inspection:
    a = ctx.args
    staging = a.staging_dir or DEFAULT_STAGING
    transfer = getattr(a, "transfer", None)  # `probe` has none: it reports everything
    reach = transfer is None or flow.reach_matters(
        Transfer(transfer), getattr(a, "image", "") or ""
    )
    return flow.inspect(
        session, ctx.settings, staging, emit=ctx.report, cancel=ctx.cancel, reach=reach
    )


def _print_facts(ctx: Context, found: flow.Inspection) -> None:
    if ctx.args.json:
        return
    facts, verdicts, pv = found.facts, found.verdicts, found.network
    w = sys.stdout.write
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
    """Connect, inspect and judge a server; change nothing."""
    ctx.start_log("probe")
    profile = _profile_for(ctx)
    target = _target(ctx, profile)
    creds = _credentials(ctx, profile)
    with _connect(ctx, target, creds) as session:
        found = _inspect(ctx, session)
        if ctx.args.save_profile:
            _record(ctx, ctx.args.save_profile, target, creds, session, found.facts, None, None)
    _print_facts(ctx, found)
    ctx.report.result(
        True,
        f"preflight-{found.level.value}",
        host=target.host,
        port=target.port,
        host_key_fingerprint=session.host_key_fingerprint,
        facts=found.facts.to_json(),
        verdicts=[v.to_json() for v in found.verdicts],
        network=found.network.to_json(),
    )
    return 0


def _confirm(ctx: Context, target: Target, summary: str) -> None:
    if ctx.args.yes:
        return
    if not ctx.interactive:
        raise UsageError(
            "The install needs a confirmation.",
            "kexec replaces the running system (in RAM only; disks are untouched).",
            "Pass --yes to confirm from a script.",
        )
    sys.stderr.write(summary + "\n")
    answer = input(f"Type the host name ({target.host}) to boot the installer: ").strip()
    if answer != target.host:
        raise Cancelled("Not confirmed; nothing was changed on the server.")


def cmd_install(ctx: Context) -> int:
    """The whole flow: connect, probe, preflight, image, confirm, install, verify."""
    a = ctx.args
    hosts = _fleet_hosts(ctx)
    if hosts is not None:
        return cmd_install_many(ctx, hosts)
    a.target = a.target[0] if a.target else None
    ctx.start_log("install")
    check_kexec_flags(a.kexec_extra_flags or "")  # before anything is asked or sent
    profile = _profile_for(ctx)
    target = _target(ctx, profile)
    creds = _credentials(ctx, profile)
    early = flow.check_early(a.image or "", _image_cache(ctx))  # beside connect and probe
    session = _connect(ctx, target, creds)
    try:
        found = _inspect(ctx, session)
        facts = found.facts
        _print_facts(ctx, found)
        if facts.is_installer:
            info = already_installer(session, facts)
            _record_after(ctx, profile, target, creds, session, facts, None, info)
            ctx.report.info(f"{target.host} already runs the NixOS installer; nothing to do.")
            ctx.report.result(True, "already-installer", installer=info.to_json())
            return 0
        # Remember the server now, so a stop below still leaves a profile to come back to.
        _record_after(ctx, profile, target, creds, session, facts, None, None)
        found.raise_first_stop()
        choice = _choose(ctx, facts)
        meta = choice.meta
        _become_root(ctx, session, facts, creds)
        request = InstallRequest(
            transfer=Transfer(a.transfer),
            installer_port=a.installer_port,
            kexec_extra_flags=a.kexec_extra_flags or "",
            key_name=(a.save_profile or (profile.name if profile else target.host)),
            accept_host_keys=tuple(a.accept_host_key or ()),
        )
        mode, reason = transfer_for(request, facts, choice)
        image = None
        if mode == "upload":
            image = _fetch_image(ctx, choice, early)
            ctx.report.info(f"Image: {image.path.name}: {image.verification_note}")
        plan = make_plan(target, facts, choice, mode, image, request)
        if plan.bundle:
            ctx.report.info(bundle_note(), level="warn")
        ctx.report(PlanEvent(plan=plan.summary()))
        summary = (
            f"\nAbout to boot the NixOS installer on {target.label} ({facts.os_name}).\n"
            f"Image: {plan.file_name}; transfer: {mode} ({reason}).\n"
            "The disks are not touched; a power cycle brings the old system back.\n"
        )
        _confirm(ctx, target, summary)
        installer = installer_for(
            plan, session, facts, creds, ctx.known_hosts, ctx.settings, ctx.paths.keys_dir,
        )  # fmt: skip
        try:
            info = _run_installer(ctx, installer)
        except WizardError:
            state = "unknown" if installer.point_of_no_return else "original"
            _record_after(ctx, profile, target, creds, session, facts, meta, None, state)
            ctx.report(TimingsEvent(timings=installer.timings.stages))
            raise
        _record_after(ctx, profile, target, creds, session, facts, meta, info)
        proof = "" if info.host_key_verified else " (accepted by you, not verified)"
        ctx.report.info(
            f"NixOS installer is running at root@{info.host} (port {info.port}), "
            f"host key {info.fingerprint}{proof}."
        )
        note = leftover_note(info)
        if note:
            ctx.report.info(note, level="warn")
        done = installed(
            target.label, info, installer.timings.stages, target.jump, ctx.known_hosts.app_file
        )
        ctx.report.result(True, done.outcome, **done.payload)  # a run on many writes the same
        return 0
    finally:
        session.close()


def _fleet_hosts(ctx: Context) -> list[Host] | None:
    """The servers of a run on many (None: one server, the usual install)."""
    a = ctx.args
    specs = list(a.target or [])
    if a.targets:
        specs += _read_targets(a.targets)
    names = list(a.from_profiles or [])
    if len(specs) <= 1 and not names and not a.targets:
        return None
    a.target = None  # each host's own target below
    if a.profile or a.save_profile:
        raise UsageError(
            "--profile and --save-profile name one server; this run has several.",
            "Each server of a run on many is saved under its own profile.",
            "Use --from-profiles NAME... for saved servers; new targets are not saved (probe "
            "or install them once with --save-profile to make a profile each).",
        )
    hosts = []
    for name in names:
        profile = ctx.profiles.get(name)
        hosts.append(Host(name, _target(ctx, profile), _credentials(ctx, profile), name))
    hosts += [Host(spec, _target(ctx, None, spec), _credentials(ctx, None)) for spec in specs]
    if not hosts:
        raise UsageError(
            f"{a.targets} names no server.",
            "Every line is empty or a comment, so there is nothing to install on.",
            "Put one [user@]host[:port] per line.",
        )
    check_labels(hosts)
    return hosts


def _read_targets(path: str) -> list[str]:
    """One target per line of ``path`` (``-``: stdin); ``#`` starts a comment."""
    try:
        text = sys.stdin.read(1 << 20) if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"Cannot read the targets file {path}: {exc}.",
            "It lists the servers to install on.",
            "Check the path; it holds one [user@]host[:port] per line.",
        ) from exc
    return targets_of_text(text)


def cmd_install_many(ctx: Context, hosts: list[Host]) -> int:
    """The flow on many servers at once: connect all, inspect and plan all, confirm once,
    install all; one host's failure never stops the others. Ends with a summary line."""
    a = ctx.args
    ctx.start_log("install-many")
    check_kexec_flags(a.kexec_extra_flags or "")
    request = InstallRequest(
        transfer=Transfer(a.transfer),
        installer_port=a.installer_port,
        kexec_extra_flags=a.kexec_extra_flags or "",
        accept_host_keys=tuple(a.accept_host_key or ()),
    )
    image = ImageRequest(
        channel=a.channel,
        arch=a.arch,
        variant=BUNDLE_VARIANT if a.bundle and not a.image else (a.variant or DEFAULT_VARIANT),
        source=a.image or "",
    )
    catalog = None
    if not image.source:
        catalog = CatalogClient(ctx.settings, ctx.paths.catalog_cache).load(offline=a.offline)
        if catalog.note:
            ctx.report.info(f"Image list: {catalog.note}", level="warn")
    trusted = tuple(fp for h in hosts for fp in _accepted_keys(ctx, h.target))
    env = FleetEnv(
        settings=ctx.settings, known_hosts=ctx.known_hosts, profiles=ctx.profiles,
        secrets=ctx.secrets, keys_dir=ctx.paths.keys_dir,
        cache=_image_cache(ctx), catalog=catalog,
        image=image, request=request,
        options=ConnectOptions(timeout=ctx.settings.connect_timeout,
                               accept_new_host_key=bool(a.accept_new_host_key), trusted=trusted),
        staging=a.staging_dir or DEFAULT_STAGING, remember=bool(a.remember_password),
        logs=ctx.paths.logs, redact=ctx.report.redact,
    )  # fmt: skip
    fleet = Fleet(env, ctx.report, ctx.cancel, a.parallel)
    ctx.report.start_board([h.label for h in hosts])
    try:
        sessions, questions, _failed = fleet.connect(hosts)
        options = env.options
        for _ in range(4):  # a jump hop's key, then the server's: one question round each
            if not questions:
                break
            options, accepted = _ask_host_keys(ctx, fleet, questions, options)
            more, questions, _failed = fleet.connect(accepted, options)
            sessions.update(more)
        for h, exc in questions:
            fleet.end(failed(h.label, exc))
        inspected, _ended = fleet.inspect(hosts, sessions)
        ready, _ended = fleet.plan(inspected)
        if ready:
            try:
                _confirm_many(ctx, ready)
            except WizardError as exc:
                fleet.drop(ready, exc)
            else:
                fleet.boot(ready)
    finally:
        ctx.report.end_board()
    outcomes = fleet.ordered(hosts)
    ctx.report.summary(outcomes, {h.label: fleet.log_of(h) for h in hosts})
    return exit_code(outcomes)


def _ask_host_keys(
    ctx: Context, fleet: Fleet, questions: list[tuple[Host, HostKeyUnknown]],
    options: ConnectOptions,
) -> tuple[ConnectOptions, list[Host]]:  # fmt: skip
    """Every new host key of the run in one question; a host whose key is not trusted ends
    there (nothing was sent to it). The options trusting the accepted keys, and their hosts."""
    if not ctx.interactive:
        for h, exc in questions:
            if isinstance(exc, HostKeyOtherType | NewSystemHostKey):
                exc.fix += f" From the command line: --accept-host-key {exc.fingerprint}"
            else:
                exc.fix += " Or pass --accept-new-host-key to trust it from the command line."
            fleet.end(failed(h.label, exc))
        return options, []
    with ctx.report.paused():
        n = len(questions)
        have = "has" if n == 1 else "have"
        sys.stderr.write(f"\n{fleet_servers(n)} {have} a host key this app does not know:\n")
        width = max(len(h.label) for h, _ in questions)
        for h, exc in questions:
            hop = (h.target.host, h.target.port) != (exc.host, exc.port)
            via = f"  (its jump host {exc.host}:{exc.port})" if hop else ""
            sys.stderr.write(f"  {h.label:<{width}}  {exc.fingerprint}{via}\n")
        sys.stderr.write("Compare them with the servers' consoles or your provider's panel.\n")
        answer = input(f"Trust these {len(questions)} key(s) and go on? [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        for h, exc in questions:
            fleet.end(failed(h.label, Cancelled("Host key not trusted; nothing was sent to "
                                                f"{exc.host}.")))  # fmt: skip
        return options, []
    for h, exc in questions:
        options = flow.answer_question(exc, exc.fingerprint, h.target, h.creds, options)
    return options, [h for h, _ in questions]


def _confirm_many(ctx: Context, ready: list[Prepared]) -> None:
    if ctx.args.yes:
        return
    if not ctx.interactive:
        raise UsageError(
            "The install needs a confirmation.",
            "kexec replaces the running system (in RAM only; disks are untouched).",
            "Pass --yes to confirm from a script.",
        )
    n = len(ready)
    with ctx.report.paused():
        sys.stderr.write(f"\nAbout to boot the NixOS installer on {fleet_servers(n)}:\n")
        width = max(len(p.host.label) for p in ready)
        system = max(len(p.found.facts.os_name) for p in ready)
        for p in ready:
            facts = p.found.facts
            sys.stderr.write(
                f"  {p.host.label:<{width}}  {facts.os_name:<{system}}  {p.plan.file_name}\n"
            )
        sys.stderr.write("The disks are not touched; a power cycle brings each old system back.\n")
        answer = input(f"Type the number of servers ({n}) to boot the installer: ").strip()
    if answer != str(n):
        raise Cancelled("Not confirmed; nothing was changed on the servers.")


def _run_installer(ctx: Context, installer: Installer) -> InstallerInfo:
    """Run the install; a bundle's new host key is asked about, then the wait goes on."""
    try:
        return flow.install(installer, ctx.report, ctx.cancel)
    except NewSystemHostKey as exc:
        question = exc
    for _ in range(3):
        _ask_host_key(ctx, question)
        try:
            return flow.rewait(installer, ctx.report, ctx.cancel, question.fingerprint)
        except NewSystemHostKey as exc:
            question = exc
    raise question


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
        image = _fetch_image(ctx, _choose(ctx, None, arch))
        files = [Path(f).expanduser() for f in a.authorized_keys or []]
        files = files or default_key_files(Path.home() / ".ssh", ctx.paths.keys_dir)
        keys = read_public_keys(files)
        ctx.report.info(
            f"The installer will accept {len(keys)} key(s) from " + ", ".join(str(f) for f in files)
        )
        return kexec_source(image, ctx.paths.netboot_dir, keys, ctx.cancel)
    cat = CatalogClient(ctx.settings, ctx.paths.catalog_cache).load(offline=a.offline)
    release = release_of(cat, a.channel)
    cache = _image_cache(ctx)
    return release_source(
        Downloader(ctx.settings, cache), release, arch, emit=ctx.report, cancel=ctx.cancel
    )


def _request_reporter(ctx: Context) -> Callable[[ServedRequest], None]:
    def report(req: ServedRequest) -> None:
        ctx.report.info(req.line(), request=req.path, status=req.status, sent=req.sent)

    return report


def _record_after(
    ctx: Context,
    profile: Profile | None,
    target: Target,
    creds: Credentials,
    session: Session,
    facts: Facts,
    meta: dict[str, str] | None,
    info: InstallerInfo | None,
    state: str | None = None,
) -> None:
    name = ctx.args.save_profile or (profile.name if profile else None)
    if name:
        _record(ctx, name, target, creds, session, facts, meta, info, state)


def _record(
    ctx: Context,
    name: str,
    target: Target,
    creds: Credentials,
    session: Session,
    facts: Facts,
    meta: dict[str, str] | None,
    info: InstallerInfo | None,
    state: str | None = None,
) -> None:
    profile, warning = record(
        ctx.profiles,
        ctx.secrets,
        name,
        target=target,
        creds=creds,
        host_key=session.host_key_line,
        facts=facts,
        image=meta,
        installer=info,
        state=state,
        remember=bool(getattr(ctx.args, "remember_password", False)),
    )
    if warning:
        ctx.report.info(warning, level="warn")
    ctx.report.info(f"Saved profile {profile.name!r} ({profile.state}).")


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
        ctx.report.result(True, "deleted", name=a.name)
        if not a.json:
            print(f"Deleted profile {a.name!r}.")
        return 0
    raise UsageError(f"Unknown profiles action {a.action!r}.")


# ---------------------------------------------------------------------------------------------
# Parser


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("app")
    g.add_argument(
        "--home", metavar="DIR", help="keep all state under DIR (or $NIXOS_KEXEC_WIZARD_HOME)"
    )
    g.add_argument("--json", action="store_true", help="one JSON object per line on stdout")
    g.add_argument(
        "--api-url", metavar="URL", help="releases API base (or $NIXOS_KEXEC_WIZARD_API_URL)"
    )
    g.add_argument(
        "--download-url",
        metavar="URL",
        help="release download base (or $NIXOS_KEXEC_WIZARD_DOWNLOAD_URL)",
    )
    g.add_argument(
        "--allow-http", action="store_true", help="allow plain http URLs (local mirrors and tests)"
    )


def _add_ssh(p: argparse.ArgumentParser, many: bool = False) -> None:
    p.add_argument(
        "target",
        nargs="*" if many else "?",
        help="[user@]host[:port] or an ~/.ssh/config alias"
        + (" (several at once)" if many else ""),
    )
    g = p.add_argument_group("ssh")
    g.add_argument("-p", "--port", type=int)
    g.add_argument("-l", "--user")
    g.add_argument(
        "-i", "--identity", action="append", metavar="FILE", help="private key file (repeatable)"
    )
    g.add_argument(
        "-J", "--jump", metavar="[USER@]HOST[:PORT]", help="jump host(s), comma-separated"
    )
    g.add_argument("--auth", choices=["auto", "agent", "key", "password"])
    g.add_argument("--password-env", metavar="VAR", help="read the login password from $VAR")
    g.add_argument("--sudo-password-env", metavar="VAR", help="read the sudo password from $VAR")
    g.add_argument(
        "--known-hosts", metavar="FILE", help="the app's known_hosts file to read and update"
    )
    g.add_argument(
        "--accept-new-host-key",
        action="store_true",
        help="trust the key of a host with no known key (never a changed one, nor another type)",
    )
    p.add_argument(
        "--accept-host-key",
        action="append",
        metavar="SHA256:...",
        help="trust exactly this host key fingerprint (repeatable), e.g. after comparing it on "
        "the console",
    )
    g.add_argument("--connect-timeout", type=float, metavar="S")
    g.add_argument("--profile", metavar="NAME", help="connect with a saved profile")
    g.add_argument("--save-profile", metavar="NAME", help="save this server as a profile")
    g.add_argument(
        "--remember-password", action="store_true", help="store passwords in the system keyring"
    )
    g.add_argument(
        "--staging-dir", metavar="DIR", help=f"folder on the server (default {DEFAULT_STAGING})"
    )


def _add_image(p: argparse.ArgumentParser, bundle: bool = True) -> None:
    g = p.add_argument_group("image")
    g.add_argument("--channel", help="nixos-YY.MM or nixos-unstable (default: newest stable)")
    g.add_argument("--arch", choices=ARCHES, help="default: the server's (or this computer's)")
    g.add_argument("--variant", choices=VARIANTS, help=f"default: {DEFAULT_VARIANT}")
    g.add_argument(
        "--image", metavar="PATH|URL", help="a local tarball or a URL instead of a channel"
    )
    g.add_argument("--offline", action="store_true", help="do not ask the releases API")
    if not bundle:
        return
    g.add_argument(
        "--bundle",
        action="store_true",
        help="the channel's legacy kexec-bundle (releases frozen before 2023) instead",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    p = argparse.ArgumentParser(
        prog="nixos-kexec-wizard",
        description="Boot the NixOS installer into RAM on a Linux server over SSH.",
        epilog="Without a subcommand the wizard window opens. `COMMAND --help` shows each "
        "command's options.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--home", dest="gui_home", metavar="DIR", help="keep all state under DIR")
    p.add_argument(
        "--smoke-test", action="store_true", help="open the wizard, then quit (for tests)"
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("images", help="list channels and images")
    _add_common(s)
    s.add_argument("--refresh", action="store_true", help="ignore the cached answer")
    s.add_argument("--offline", action="store_true", help="do not ask the releases API")
    s.set_defaults(func=cmd_images)

    s = sub.add_parser("download", help="download and verify an image into the cache")
    _add_common(s)
    _add_image(s)
    s.set_defaults(func=cmd_download)

    s = sub.add_parser("probe", help="inspect a server and judge whether kexec will work")
    _add_common(s)
    _add_ssh(s)
    s.set_defaults(func=cmd_probe)

    s = sub.add_parser("install", help="boot the NixOS installer on a server (or many)")
    _add_common(s)
    _add_ssh(s, many=True)
    _add_image(s)
    g = s.add_argument_group("many servers")
    g.add_argument(
        "--from-profiles", nargs="+", metavar="NAME", help="the saved profiles to install on"
    )
    g.add_argument(
        "--targets", metavar="FILE", help="one target per line ('#' starts a comment; - is stdin)"
    )
    g.add_argument(
        "--parallel",
        type=int,
        default=DEFAULT_PARALLEL,
        metavar="N",
        help=f"servers worked on at the same time (default {DEFAULT_PARALLEL})",
    )
    g = s.add_argument_group("install")
    g.add_argument("--transfer", choices=["auto", "upload", "remote"], default="auto")
    g.add_argument(
        "--installer-port", type=int, metavar="PORT", help="also try this port after the kexec"
    )
    g.add_argument("--kexec-extra-flags", metavar="FLAGS", help="passed to kexec/run (e.g. -c)")
    g.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="how long to wait for the installer (default 300)",
    )
    g.add_argument(
        "--down-timeout",
        type=float,
        metavar="S",
        help="how long to wait for the old system to stop (default 60)",
    )
    g.add_argument("-y", "--yes", action="store_true", help="confirm the kexec without a prompt")
    s.set_defaults(func=cmd_install)

    s = sub.add_parser(
        "netboot",
        help="the release's iPXE chain URL, or serve a netboot image to a machine on the LAN",
    )
    _add_common(s)
    _add_image(s, bundle=False)
    g = s.add_argument_group("netboot")
    g.add_argument(
        "--serve",
        metavar="ADDR:PORT",
        help="serve kernel, initrd and an iPXE script from this computer (e.g. 127.0.0.1:8080)",
    )
    g.add_argument(
        "--serve-for",
        type=float,
        default=DEFAULT_SERVE_FOR,
        metavar="S",
        help=f"stop serving after S seconds (default {DEFAULT_SERVE_FOR:g})",
    )
    g.add_argument(
        "--from-kexec",
        action="store_true",
        help="serve the kexec installer with your SSH keys (reachable over SSH, no console)",
    )
    g.add_argument(
        "--authorized-keys",
        action="append",
        metavar="FILE",
        help="public keys for --from-kexec (default: ~/.ssh/*.pub and the app's keys)",
    )
    g.add_argument(
        "--kernel-args", metavar="ARGS", help="extra kernel arguments, e.g. console=ttyS0"
    )
    s.set_defaults(func=cmd_netboot)

    s = sub.add_parser("reconnect", help="open a terminal on a profile's installer")
    _add_common(s)
    s.add_argument("name", help="profile name")
    s.add_argument("--print", action="store_true", help="print the ssh command instead")
    s.add_argument("--known-hosts", metavar="FILE")
    s.set_defaults(func=cmd_reconnect)

    s = sub.add_parser("profiles", help="list, show or delete saved profiles")
    _add_common(s)
    s.add_argument("action", choices=["list", "show", "delete"])
    s.add_argument("name", nargs="?")
    s.set_defaults(func=cmd_profiles)
    return p


def display_problem(env: Mapping[str, str] | None = None) -> str | None:
    """Why no window could be shown here, or None (checked before Qt, which would abort).

    Only on Linux and the BSDs, and only when no Qt platform was chosen explicitly
    (``QT_QPA_PLATFORM=offscreen`` needs no display).
    """
    env = os.environ if env is None else env
    if not sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        return None
    if env.get("QT_QPA_PLATFORM"):
        return None
    wayland, x11 = env.get("WAYLAND_DISPLAY", ""), env.get("DISPLAY", "")
    if wayland:
        runtime = env.get("XDG_RUNTIME_DIR", "")
        path = Path(wayland) if wayland.startswith("/") else Path(runtime) / wayland
        if path.is_socket():
            return None
        if not x11:
            return f"the Wayland display {wayland!r} cannot be opened (no socket at {path})"
    if not x11:
        return "there is no graphical display here (neither DISPLAY nor WAYLAND_DISPLAY is set)"
    m = re.fullmatch(r"(?:unix)?:(\d+)(?:\.\d+)?", x11)
    if m:  # a local X server listens on its socket (the abstract one on Linux, or the file)
        sock_dir = "/tmp/.X11-unix"  # noqa: S108  (X11's fixed place, only connected to)
        for address in (f"\0{sock_dir}/X{m.group(1)}", f"{sock_dir}/X{m.group(1)}"):
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2)
                sock.connect(address)
                return None
        return f"the X display {x11!r} cannot be opened (no X server answers there)"
    return None  # a forwarded or remote display: Qt tries it


def _gui(home: str | None, smoke_test: bool) -> int:
    problem = display_problem()
    if problem is not None:
        sys.stderr.write(
            f"The wizard window cannot open: {problem}.\n"
            "Start it from a desktop session (or with ssh -X), or use the command line, which "
            "does everything the wizard does, for example:\n"
            "  nixos-kexec-wizard probe root@SERVER\n"
            "  nixos-kexec-wizard install root@SERVER\n"
            "See `nixos-kexec-wizard --help`.\n"
        )
        return int(ExitCode.USAGE)
    try:
        from app.ui.main import run_gui
    except ImportError as exc:
        sys.stderr.write(
            f"The wizard window cannot start: {exc}.\n"
            "Qt needs a few system libraries (on Debian/Ubuntu: libegl1 libxkbcommon-x11-0 "
            "libxcb-cursor0 libfontconfig1). Every feature is also available from the command "
            "line: see `nixos-kexec-wizard --help`.\n"
        )
        return int(ExitCode.CONFIG)
    return run_gui(home, smoke_test)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nixos-kexec-wizard``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        return _gui(args.gui_home, args.smoke_test)
    if getattr(args, "home", None) is None and args.gui_home:
        args.home = args.gui_home  # `--home DIR` before the subcommand counts too
    ctx: Context | None = None
    try:
        ctx = Context(args)
        return int(args.func(ctx))
    except WizardError as exc:
        if ctx is not None:
            ctx.report.error(exc)
        else:
            sys.stderr.write(exc.explain() + "\n")
        return int(exc.exit_code)
    except Exception as exc:  # a bug: say so plainly, keep the details in the log
        import traceback

        detail = traceback.format_exc()
        where = ""
        if ctx is not None and ctx.report.log is not None:
            ctx.report.log.write(LogEvent("internal", ctx.report.redact(detail)))
            where = f" Details are in {ctx.report.log.path}."
        err = WizardError(
            f"Internal error: {type(exc).__name__}: {exc}",
            "This is a bug in nixos-kexec-wizard, not something you did." + where,
            "Please report it with the log file; the server was left as the last message said.",
        )
        if ctx is not None:
            ctx.report.error(err)
        else:
            sys.stderr.write(err.explain() + "\n")
        return int(ExitCode.INTERNAL)
    except KeyboardInterrupt:
        if ctx is not None:
            ctx.cancel.cancel()
            ctx.report.error(Cancelled("Interrupted."))
        return int(ExitCode.CANCELLED)

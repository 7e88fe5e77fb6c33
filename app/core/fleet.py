"""Many servers at once: the same flow per host in a bounded pool, one image per arch."""

# A fleet run has four rounds, each over every host in a bounded pool (DEFAULT_PARALLEL):
#   connect  - host-key questions of every new host come back together, for one answer;
#   inspect  - probe, judge and record (a stop ends the host there; warnings: the face asks);
#   plan     - root, image (fetched once per source, shared), plan;
#   boot     - the install itself, then the outcome recorded in the host's profile.
# Before boot the face asks for one confirmation (the CLI after plan, with the plans shown;
# the wizard before it, on the Confirm page that also takes the image choice). A host that
# fails leaves the run with its own result; it never stops the others. Every host keeps its own
# deadlines (its Installer's), run log and host-key pinning (the one KnownHosts is locked).

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from app.core import flow
from app.core.catalog import Catalog
from app.core.download import CachedImage, ImageCache
from app.core.errors import Cancelled, HostKeyUnknown, UsageError, WizardError
from app.core.events import (
    WAKE_SLICE,
    CancelToken,
    Event,
    EventSink,
    InfoEvent,
    PlanEvent,
    ResultEvent,
    SummaryEvent,
    TimingsEvent,
    tagged,
)
from app.core.handoff import installer_ssh_command
from app.core.keys import slug
from app.core.kinds import AuthMethod, Transfer
from app.core.plan import DEFAULT_STAGING, ImageChoice, ImageRequest, InstallPlan, InstallRequest
from app.core.profiles import Profile, ProfileStore
from app.core.result import InstallerInfo, leftover_command, leftover_note
from app.core.runlog import Redactor, RunLog
from app.core.secrets import SecretStore, password_key, sudo_key
from app.core.settings import Settings
from app.core.ssh import ConnectOptions, Credentials, KnownHosts, Session, Target, parse_target

if TYPE_CHECKING:
    import paramiko

DEFAULT_PARALLEL = 4
MAX_PARALLEL = 64

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Host:
    """One server of the run: how it is named in events, reached and remembered."""

    label: str  # the profile's name, or the target as given
    target: Target
    creds: Credentials
    profile: str | None = None  # the profile updated after each step (None: not saved)


def servers(n: int) -> str:
    """Count servers as a sentence does: "1 server", "3 servers" (the faces' batch texts)."""
    return f"{n} server" if n == 1 else f"{n} servers"


def host_of_profile(profile: Profile, secrets: SecretStore, config: paramiko.SSHConfig) -> Host:
    """A saved server as a host of the run, with its remembered passwords (the keyring may be
    slow: call this off the GUI thread)."""
    target = parse_target(
        profile.host, port=profile.port, user=profile.user,
        identity=[profile.key_path] if profile.key_path else [], jump=profile.jump or None,
        config=config,
    )  # fmt: skip
    creds = Credentials(method=AuthMethod(profile.auth))
    if profile.remember_password:
        creds.password = secrets.get(password_key(profile.name))
        creds.sudo_password = secrets.get(sudo_key(profile.name))
    return Host(profile.name, target, creds, profile.name)


def host_of_spec(spec: str, config: paramiko.SSHConfig) -> Host:
    """A target typed or pasted (``[user@]host[:port]`` or an ``~/.ssh/config`` alias)."""
    return Host(spec, parse_target(spec, config=config), Credentials())


def targets_of_text(text: str) -> list[str]:
    """The targets in a pasted text or a targets file: one per line, ``#`` starts a comment."""
    return [t for t in (line.split("#", 1)[0].strip() for line in text.splitlines()) if t]


@dataclass(frozen=True)
class Outcome:
    """How one host's run ended: its ``result`` line, exactly as a single install writes it."""

    host: str
    ok: bool
    outcome: str
    exit_code: int
    payload: dict[str, Any] = field(default_factory=dict)
    error: WizardError | None = None

    def event(self) -> ResultEvent:
        """The host's own ``result`` line (with ``"host"``)."""
        body: dict[str, Any] = {"ok": self.ok, "outcome": self.outcome, **self.payload}
        if self.error is not None:
            body.update(error=self.error.as_dict(), exit_code=self.exit_code)
        return ResultEvent(payload=body, host=self.host)

    def row(self) -> dict[str, Any]:
        """The host's entry in the summary line."""
        out: dict[str, Any] = {
            "host": self.host,
            "ok": self.ok,
            "outcome": self.outcome,
            "exit_code": self.exit_code,
        }
        if self.error is not None:
            out["error"] = self.error.what
        return out


def failed(host: str, exc: WizardError) -> Outcome:
    """The outcome of a host whose run raised ``exc``."""
    return Outcome(host, False, exc.kind, int(exc.exit_code), error=exc)


def installed(host: str, info: InstallerInfo, timings: dict[str, float], jump: Target | None,
              app_known_hosts: Path) -> Outcome:  # fmt: skip
    """The outcome of a host whose installer answered and proved itself."""
    note = leftover_note(info)
    payload = {
        "leftovers": [{"file": info.key_left_in, "remove": leftover_command(info)}] if note else [],
        "installer": info.to_json(),
        "timings": timings,
        "ssh_command": installer_ssh_command(info, jump, app_known_hosts),
    }
    return Outcome(host, True, "installer-ready", 0, payload)


def summary(outcomes: Sequence[Outcome]) -> SummaryEvent:
    """The run's last line: every host's outcome and the run's exit code."""
    return SummaryEvent(
        ok=all(o.ok for o in outcomes),
        exit_code=exit_code(outcomes),
        hosts=[o.row() for o in outcomes],
    )


def exit_code(outcomes: Iterable[Outcome]) -> int:
    """0 when every host succeeded, else the highest of the failed hosts' codes (the codes grow
    with how far an install got, so that is the host that most needs a look)."""
    return max((o.exit_code for o in outcomes if not o.ok), default=0)


def check_parallel(n: int) -> int:
    """The pool size, refused when it makes no sense."""
    if not 1 <= n <= MAX_PARALLEL:
        raise UsageError(
            f"--parallel {n} is out of range.",
            "It is how many servers are worked on at the same time.",
            f"Give a number from 1 to {MAX_PARALLEL} (default {DEFAULT_PARALLEL}).",
        )
    return n


def check_labels(hosts: Sequence[Host]) -> None:
    """Refuse a run that names one server twice (two installs would race on it)."""
    seen: dict[tuple[str, int], str] = {}
    for h in hosts:
        key = (h.target.host, h.target.port)
        if key in seen:
            raise UsageError(
                f"{h.label} and {seen[key]} are the same server ({h.target.label}).",
                "Two installs on one server at once would race each other.",
                "Name each server once.",
            )
        seen[key] = h.label


def pool(items: Sequence[T], work: Callable[[T], R], parallel: int, cancel: CancelToken
         ) -> list[R]:  # fmt: skip
    """``work(item)`` for every item, at most ``parallel`` at a time, results in order. An
    interrupt (Ctrl-C) cancels every item and still waits for them to report."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(parallel, len(items)), thread_name_prefix="host") as ex:
        try:
            futures = [ex.submit(work, item) for item in items]
            while wait(futures, timeout=WAKE_SLICE).not_done:
                pass  # woken in slices so a Ctrl-C handed to a worker thread is seen here
            return [f.result() for f in futures]
        except BaseException:
            cancel.cancel()
            raise


class SharedImages:
    """Each image fetched and checked once per run, however many hosts need it."""

    def __init__(
        self, cache: ImageCache, settings: Settings, early: flow.EarlyCheck | None = None
    ) -> None:
        self.cache = cache
        self.settings = settings
        self.early = early  # a local file's check, started with the run
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def get(self, choice: ImageChoice, emit: EventSink, cancel: CancelToken) -> CachedImage:
        """The verified image for ``choice``: the first host downloads, the others wait."""
        # Per arch too: one local file is fine for one arch's servers and refused for another's.
        where = choice.asset.url if choice.asset is not None else str(choice.local)
        key = f"{choice.meta.get('arch', '')} {where}"
        with self._lock:
            entry = self._entries.get(key)
            first = entry is None
            if entry is None:
                entry = self._entries[key] = _Entry()
        if first:
            try:
                entry.image = flow.fetch_image(
                    choice, self.cache, self.settings, emit=emit, cancel=cancel, early=self.early
                )
            except WizardError as exc:
                entry.error = exc
            finally:
                entry.ready.set()
        while not entry.ready.wait(0.2):
            if cancel.cancelled:
                raise Cancelled("Cancelled while another server's download of the image ran.")
        if entry.error is not None:
            raise entry.error
        assert entry.image is not None
        return entry.image


@dataclass
class _Entry:
    ready: threading.Event = field(default_factory=threading.Event)
    image: CachedImage | None = None
    error: WizardError | None = None


@dataclass
class Inspected:
    """A host that was inspected and may go on: no stop, perhaps warnings (the face decides)."""

    host: Host
    session: Session
    found: flow.Inspection


@dataclass
class Prepared:
    """A host ready to boot: its session, facts and plan (nothing changed on it yet)."""

    host: Host
    session: Session
    found: flow.Inspection
    choice: ImageChoice
    plan: InstallPlan
    reason: str


@dataclass
class FleetEnv:
    """What every host's flow shares: settings, stores, the cache, the catalog, the request."""

    settings: Settings
    known_hosts: KnownHosts
    profiles: ProfileStore
    secrets: SecretStore
    keys_dir: Path
    cache: ImageCache
    catalog: Catalog | None
    image: ImageRequest
    request: InstallRequest
    options: ConnectOptions
    staging: str = DEFAULT_STAGING
    remember: bool = False
    logs: Path | None = None  # a run log per host here (None: none)
    redact: Redactor = field(default_factory=Redactor)


class Fleet:
    """One run over many hosts; the face calls connect, inspect, plan and boot in turn."""

    def __init__(self, env: FleetEnv, emit: EventSink, cancel: CancelToken,
                 parallel: int = DEFAULT_PARALLEL) -> None:  # fmt: skip
        self.env = env
        self.cancel = cancel
        self.parallel = check_parallel(parallel)
        early = flow.check_early(env.image.source, env.cache)  # beside connect and probe
        self.images = SharedImages(env.cache, env.settings, early)
        self.emit = emit  # where every host's events go (marked with its name)
        self._logs: dict[str, RunLog] = {}
        self._lock = threading.Lock()
        self._hosts: list[Host] = []
        self._tokens: dict[str, CancelToken] = {}
        self.outcomes: dict[str, Outcome] = {}  # in the order the hosts ended

    def end(self, outcome: Outcome) -> Outcome:
        """A host's run is over: its ``result`` line goes out now, the others go on."""
        with self._lock:
            self.outcomes[outcome.host] = outcome
        host = next((h for h in self._hosts if h.label == outcome.host), None)
        (self.sink(host) if host is not None else self.emit)(outcome.event())
        return outcome

    def ordered(self, hosts: Sequence[Host]) -> list[Outcome]:
        """Every host's outcome in the order the hosts were given (a host without one, which
        would be a bug, is reported as such rather than left out)."""
        lost = WizardError(
            "The run ended without an outcome for this server.",
            "This is a bug in the app; the server may or may not have been changed.",
            "Check the server, and report the bug with the run's log files.",
        )
        return [self.outcomes.get(h.label) or failed(h.label, lost) for h in hosts]

    def token(self, host: Host) -> CancelToken:
        """The host's own cancel: set by :meth:`cancel_host`, or when the whole run is."""
        with self._lock:
            tok = self._tokens.get(host.label)
            if tok is None:
                tok = self._tokens[host.label] = CancelToken()
                self.cancel.on_cancel(tok.cancel)
            return tok

    def cancel_host(self, label: str) -> None:
        """Cancel one host's run; the others go on."""
        host = next((h for h in self._hosts if h.label == label), None)
        if host is not None:
            self.token(host).cancel()

    def sink(self, host: Host) -> EventSink:
        """The host's events: marked with its label, and kept in its own run log."""
        out = tagged(self.emit, host.label)
        if self.env.logs is None:
            return out
        log = self._logs.get(host.label)
        if log is None:
            name = f"install-{slug(host.label)}"
            log = self._logs[host.label] = RunLog(self.env.logs, self.env.redact, name)

        def both(event: Event) -> None:
            log.write(event)
            out(event)

        return both

    def log_of(self, host: Host) -> Path | None:
        """Where the host's run log is, once it has one."""
        log = self._logs.get(host.label)
        return log.path if log is not None else None

    # -- 1. connect -------------------------------------------------------------------------

    def connect(
        self, hosts: Sequence[Host], options: ConnectOptions | None = None
    ) -> tuple[dict[str, Session], list[tuple[Host, HostKeyUnknown]], list[Outcome]]:
        """Log in to every host: the sessions, the host-key questions (asked together by the
        face, then this is called again for those hosts with the answers), the failures."""
        opts = options or self.env.options
        for h in hosts:  # the sinks (and run logs) are made here, on one thread
            if h not in self._hosts:
                self._hosts.append(h)
            self.sink(h)

        def one(h: Host) -> Session | WizardError:
            try:
                return flow.connect(h.target, h.creds, self.env.known_hosts, opts,
                                    cancel=self.token(h))  # fmt: skip
            except WizardError as exc:
                return exc

        sessions: dict[str, Session] = {}
        questions: list[tuple[Host, HostKeyUnknown]] = []
        failures: list[Outcome] = []
        for h, got in zip(hosts, pool(hosts, one, self.parallel, self.cancel), strict=True):
            if isinstance(got, Session):
                sessions[h.label] = got
            elif isinstance(got, HostKeyUnknown):
                questions.append((h, got))
            else:
                failures.append(self.end(failed(h.label, got)))
        return sessions, questions, failures

    # -- 2. inspect, then plan ----------------------------------------------------------------

    def inspect(self, hosts: Sequence[Host], sessions: dict[str, Session]
                ) -> tuple[list[Inspected], list[Outcome]]:  # fmt: skip
        """Probe and judge every connected host, and remember it in its profile; a host that
        already runs the installer, or that a check stops, ends here (its session closed)."""

        def one(h: Host) -> Inspected | Outcome:
            session = sessions[h.label]
            try:
                reach = flow.reach_matters(self.env.request.transfer, self.env.image.source)
                found = flow.inspect(session, self.env.settings, self.env.staging,
                                     emit=self.sink(h), cancel=self.token(h),
                                     reach=reach)  # fmt: skip
                facts = found.facts
                if facts.is_installer:
                    info = flow.already_installer(session, facts)
                    self._record(h, session, found, None, info)
                    session.close()
                    payload = {"installer": info.to_json()}
                    return self.end(Outcome(h.label, True, "already-installer", 0, payload))
                self._record(h, session, found, None, None)  # a stop still leaves a profile
                found.raise_first_stop()
            except WizardError as exc:
                session.close()
                return self.end(failed(h.label, exc))
            return Inspected(h, session, found)

        todo = [h for h in hosts if h.label in sessions]
        got = pool(todo, one, self.parallel, self.cancel)
        return [g for g in got if isinstance(g, Inspected)], [
            g for g in got if isinstance(g, Outcome)
        ]

    def plan(self, inspected: Sequence[Inspected]) -> tuple[list[Prepared], list[Outcome]]:
        """Root, image (each fetched once and shared) and plan for every inspected host."""

        def one(i: Inspected) -> Prepared | Outcome:
            try:
                return self._plan(i)
            except WizardError as exc:
                i.session.close()
                return self.end(failed(i.host.label, exc))

        got = pool(inspected, one, self.parallel, self.cancel)
        return [g for g in got if isinstance(g, Prepared)], [
            g for g in got if isinstance(g, Outcome)
        ]

    def _plan(self, i: Inspected) -> Prepared:
        env, h, session, facts = self.env, i.host, i.session, i.found.facts
        emit, cancel = self.sink(h), self.token(h)
        cancel.check()
        choice = flow.choose_image(env.image, facts, env.settings, env.catalog)
        flow.become_root(session, facts, h.creds, env.settings, can_ask=False)
        request = replace(env.request, key_name=h.profile or h.target.host)
        mode, reason = flow.transfer_for(request, facts, choice)
        image = self.images.get(choice, emit, cancel) if mode == Transfer.UPLOAD else None
        plan = flow.make_plan(h.target, facts, choice, mode, image, request)
        emit(PlanEvent(plan=plan.summary()))
        return Prepared(h, session, i.found, choice, plan, reason)

    # -- 3. boot ------------------------------------------------------------------------------

    def boot(self, ready: Sequence[Prepared]) -> list[Outcome]:
        """Install on every prepared host at once (bounded); each ends with its outcome."""
        return pool(ready, self._boot, self.parallel, self.cancel)

    def drop(self, ready: Sequence[Prepared], why: WizardError) -> list[Outcome]:
        """End prepared hosts without touching them (not confirmed, or cancelled)."""
        for p in ready:
            p.session.close()
        return [self.end(failed(p.host.label, why)) for p in ready]

    def _boot(self, p: Prepared) -> Outcome:
        return self.end(self._install(p))

    def _install(self, p: Prepared) -> Outcome:
        env, h, emit = self.env, p.host, self.sink(p.host)
        facts = p.found.facts
        try:
            installer = flow.installer_for(
                p.plan, p.session, facts, h.creds, env.known_hosts, env.settings, env.keys_dir,
            )  # fmt: skip
            try:
                info = flow.install(installer, emit, self.token(h))
            except WizardError:
                state = "unknown" if installer.point_of_no_return else "original"
                self._record(h, p.session, p.found, p.choice.meta, None, state)
                emit(TimingsEvent(timings=installer.timings.stages))
                raise
            self._record(h, p.session, p.found, p.choice.meta, info)
            return installed(h.label, info, installer.timings.stages, h.target.jump,
                             env.known_hosts.app_file)  # fmt: skip
        except WizardError as exc:
            return failed(h.label, exc)
        finally:
            p.session.close()

    def _record(self, h: Host, session: Session, found: flow.Inspection,
                meta: dict[str, str] | None, info: InstallerInfo | None,
                state: str | None = None) -> None:  # fmt: skip
        if not h.profile:
            return
        _profile, warning = flow.record(
            self.env.profiles, self.env.secrets, h.profile, target=h.target, creds=h.creds,
            host_key=session.host_key_line, facts=found.facts, image=meta, installer=info,
            state=state, remember=self.env.remember,
        )  # fmt: skip
        if warning:
            self.sink(h)(InfoEvent("", warning, level="warn"))

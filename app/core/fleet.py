"""Many servers at once: a bounded pool of runs, one question for several, one image each."""

# A fleet holds what is about many: the pool (DEFAULT_PARALLEL runs at a time), each run's
# events marked with its name and kept in its own log, the questions of several runs asked
# together, each image downloaded once (and cancelled only when no run waits for it any more),
# and the outcomes in the order the servers were given. Everything about one server is in
# app.core.run. `install X` is a fleet of one: its events carry no server name.

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from app.core import flow
from app.core.download import CachedImage, ImageCache
from app.core.errors import Cancelled, UsageError, WizardError
from app.core.events import (
    WAKE_SLICE,
    CancelToken,
    Event,
    EventSink,
    ResultEvent,
    SummaryEvent,
    tagged,
)
from app.core.keys import slug
from app.core.kinds import AuthMethod
from app.core.plan import ImageChoice
from app.core.profiles import Profile
from app.core.questions import QUESTIONS, Answers, Question, unanswered
from app.core.result import Outcome
from app.core.run import Host, HostRun, RunEnv, RunRequest, Step, internal_error
from app.core.runlog import Redactor, RunLog
from app.core.secrets import SecretStore, password_key, sudo_key
from app.core.settings import Settings
from app.core.ssh import Credentials, Target, parse_target

if TYPE_CHECKING:
    import paramiko

DEFAULT_PARALLEL = 4
MAX_PARALLEL = 64
RESOLVE_TIMEOUT = 5.0  # seconds to find the addresses of every server before connecting

T = TypeVar("T")
R = TypeVar("R")
Asked = tuple[HostRun, Question]


def servers(n: int) -> str:
    """Count servers as a sentence does: "1 server", "3 servers" (the faces' batch texts)."""
    return f"{n} server" if n == 1 else f"{n} servers"


def host_of_profile(profile: Profile, secrets: SecretStore, config: paramiko.SSHConfig) -> Host:
    """A saved server, with its remembered passwords (the keyring may be slow: call this off
    the GUI thread)."""
    target = parse_target(
        profile.host, port=profile.port, user=profile.user,
        identity=[profile.key_path] if profile.key_path else [], jump=profile.jump or None,
        config=config,
    )  # fmt: skip
    creds = Credentials(method=AuthMethod(profile.auth))
    if profile.remember_password:
        creds.password = secrets.get(password_key(profile.name))
        creds.sudo_password = secrets.get(sudo_key(profile.name))
    return Host(profile.name, target, creds, profile.name, profile.remember_password)


def host_of_spec(spec: str, config: paramiko.SSHConfig) -> Host:
    """A target typed or pasted (``[user@]host[:port]`` or an ``~/.ssh/config`` alias)."""
    return Host(spec, parse_target(spec, config=config), Credentials())


def targets_of_text(text: str) -> list[str]:
    """The targets in a pasted text or a targets file: one per line, ``#`` starts a comment."""
    return [t for t in (line.split("#", 1)[0].strip() for line in text.splitlines()) if t]


def summary(outcomes: Sequence[Outcome]) -> SummaryEvent:
    """The batch's last line: every server's outcome and the run's exit code."""
    return SummaryEvent(
        ok=all(o.ok for o in outcomes),
        exit_code=exit_code(outcomes),
        hosts=[o.row() for o in outcomes],
    )


def exit_code(outcomes: Iterable[Outcome]) -> int:
    """0 when every server succeeded, else the highest of the failed ones' codes (the codes
    grow with how far an install got, so that is the server that most needs a look)."""
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


def _where(target: Target, timeout: float) -> set[str]:
    """Where a target really is: its jump hosts and the addresses its name resolves to (the
    name itself when it does not resolve: the connection will say why)."""
    via = f"{_where_text(target.jump)} -> " if target.jump is not None else ""
    if target.jump is not None:  # the name is resolved on the jump host: compare it as given
        return {f"{via}{target.host.lower()}:{target.port}"}
    found: list[set[str]] = []

    def resolve() -> None:
        with contextlib.suppress(OSError, UnicodeError):
            infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
            found.append({f"{info[4][0]}:{target.port}" for info in infos})

    worker = threading.Thread(target=resolve, name="resolve", daemon=True)
    worker.start()
    worker.join(timeout)
    return found[0] if found else {f"{target.host.lower()}:{target.port}"}


def _where_text(target: Target) -> str:
    via = f"{_where_text(target.jump)} -> " if target.jump is not None else ""
    return f"{via}{target.user}@{target.host.lower()}:{target.port}"


def check_hosts(hosts: Sequence[Host], timeout: float = RESOLVE_TIMEOUT) -> None:
    """Refuse a batch that names one server twice (two installs on it would race, and one
    would clean up the other's files), or two servers by one name, before anything connects."""
    labels: dict[str, Host] = {}
    for h in hosts:
        other = labels.setdefault(h.label, h)
        if other is not h:
            raise UsageError(
                f"Two entries of this batch are both called {h.label!r} ({other.target.label} "
                f"and {h.target.label}).",
                "Each server's events, result and profile are kept under its name.",
                "Name each server once; save one under another profile name.",
            )
    seen: dict[str, Host] = {}
    for h in hosts:
        for place in _where(h.target, timeout):
            other = seen.setdefault(place, h)
            if other is not h:
                raise UsageError(
                    f"{other.label} and {h.label} are the same server ({place}).",
                    "Two installs on one server at once would race each other.",
                    "Name each server once.",
                )


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
    """Each image fetched and checked once, however many runs need it; a download stops only
    when every run that waits for it was cancelled."""

    def __init__(self, cache: ImageCache, settings: Settings) -> None:
        self.cache = cache
        self.settings = settings
        self.early: flow.EarlyCheck | None = None  # a local file's check, started early
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def check_early(self, source: str) -> None:
        """Start checking ``source`` now when it is a file on this computer (it is read whole:
        seconds for a real image), so that it runs beside the connections and the probes."""
        self.early = flow.check_early(source, self.cache)

    def get(self, choice: ImageChoice, emit: EventSink, cancel: CancelToken) -> CachedImage:
        """The verified image for ``choice``; its download's events go to every run waiting."""
        # Per arch too: one local file is fine for one arch's servers and refused for another's.
        where = choice.asset.url if choice.asset is not None else str(choice.local)
        key = f"{choice.meta.get('arch', '')} {where}"
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.abandoned:
                entry = self._entries[key] = _Entry()
                threading.Thread(
                    target=self._fetch, args=(entry, choice), name="image", daemon=True
                ).start()
            entry.sinks.append(emit)
        try:
            while not entry.ready.wait(WAKE_SLICE):
                if cancel.cancelled:
                    raise Cancelled("Cancelled while the image was being downloaded.")
        finally:
            with self._lock:
                entry.sinks.remove(emit)
                if not entry.sinks and not entry.ready.is_set():
                    entry.cancel.cancel()  # nobody waits for it any more
        if entry.error is not None:
            raise entry.error
        assert entry.image is not None
        return entry.image

    def _fetch(self, entry: _Entry, choice: ImageChoice) -> None:
        def every_waiter(event: Event) -> None:
            with self._lock:
                sinks = list(entry.sinks)
            for sink in sinks:
                sink(event)

        try:
            entry.image = flow.fetch_image(
                choice, self.cache, self.settings, emit=every_waiter, cancel=entry.cancel,
                early=self.early,
            )  # fmt: skip
        except WizardError as exc:
            entry.error = exc
        except Exception as exc:  # reported to every run that waits, as a bug
            entry.error = internal_error(exc)
        finally:
            entry.ready.set()


@dataclass
class _Entry:
    ready: threading.Event = field(default_factory=threading.Event)
    cancel: CancelToken = field(default_factory=CancelToken)
    sinks: list[EventSink] = field(default_factory=list)
    image: CachedImage | None = None
    error: WizardError | None = None

    @property
    def abandoned(self) -> bool:
        """Ended because every run waiting for it was cancelled: a new request starts anew."""
        return self.ready.is_set() and isinstance(self.error, Cancelled)


class Fleet:
    """The runs of one invocation: advanced together in a bounded pool, outcomes in order."""

    def __init__(
        self,
        hosts: Sequence[Host],
        env: RunEnv,
        cancel: CancelToken,
        parallel: int = DEFAULT_PARALLEL,
        *,
        named: bool | None = None,
        logs: Path | None = None,
        redact: Redactor | None = None,
    ) -> None:
        self.parallel = check_parallel(parallel)
        check_hosts(hosts, min(RESOLVE_TIMEOUT, env.settings.connect_timeout))
        self.runs = [HostRun(h, env) for h in hosts]
        self.cancel = cancel
        # A fleet of one writes as a single install does: no server name in its events.
        self.named = len(self.runs) > 1 if named is None else named
        self._log: dict[str, RunLog] = {}
        if logs is not None:
            for run in self.runs:
                name = f"install-{slug(run.label)}"
                self._log[run.label] = RunLog(logs, redact or Redactor(), name)
        self._tokens: dict[str, CancelToken] = {}
        self._reported: set[str] = set()
        self._lock = threading.Lock()
        for run in self.runs:
            self._tokens[run.label] = token = CancelToken()
            cancel.on_cancel(token.cancel)

    def sink(self, run: HostRun, emit: EventSink) -> EventSink:
        """The run's events to ``emit``: marked with its name in a batch, and kept in its log."""
        out = tagged(emit, run.label) if self.named else emit
        log = self._log.get(run.label)
        if log is None:
            return out

        def both(event: Event) -> None:
            log.write(event)
            out(event)

        return both

    def token(self, run: HostRun) -> CancelToken:
        """The run's own cancel: set by :meth:`cancel_run`, or when the whole fleet is."""
        return self._tokens[run.label]

    def log_of(self, run: HostRun) -> Path | None:
        """Where the run's log is, if it has one."""
        log = self._log.get(run.label)
        return log.path if log is not None else None

    def cancel_run(self, label: str) -> None:
        """Cancel one server's run; the others go on."""
        token = self._tokens.get(label)
        if token is not None:
            token.cancel()

    @property
    def going(self) -> list[HostRun]:
        """The runs that have not ended."""
        return [r for r in self.runs if r.outcome is None]

    # -- advancing ----------------------------------------------------------------------------

    def advance(
        self, answers: Answers, until: Step, emit: EventSink, request: RunRequest | None = None
    ) -> list[Asked]:
        """Take every run that has not ended as far as ``until`` (at most ``parallel`` at a
        time), its events to ``emit``; the questions they raised come back together, for the
        face to ask at once."""

        def one(run: HostRun) -> Question | None:
            sink = self.sink(run, emit)
            try:
                run.go(answers, sink, self.token(run), request=request, until=until)
            except QUESTIONS as question:
                return question
            self._report(run, sink)
            return None

        going = self.going
        got = pool(going, one, self.parallel, self.cancel)
        return [(run, q) for run, q in zip(going, got, strict=True) if q is not None]

    def end(self, run: HostRun, exc: WizardError, emit: EventSink) -> None:
        """End one run without going on (a question it asked was declined or cannot be asked)."""
        run.end(exc)
        self._report(run, self.sink(run, emit))

    def _report(self, run: HostRun, sink: EventSink) -> None:
        """A run that ended writes its result line now; the others go on."""
        with self._lock:
            if run.outcome is None or run.label in self._reported:
                return
            self._reported.add(run.label)
        sink(ResultEvent(payload=run.outcome.body()))

    def outcomes(self) -> list[Outcome]:
        """Every run's outcome in the order the servers were given (a run without one, which
        would be a bug, is reported as such rather than left out)."""
        lost = WizardError(
            "The run ended without an outcome for this server.",
            "This is a bug in the app; the server may or may not have been changed.",
            "Check the server, and report the bug with the run's log files.",
        )
        return [r.outcome or Outcome.failed(r.label, lost) for r in self.runs]

    def drive(
        self,
        answers: Answers,
        ask: Callable[[list[Asked]], None],
        request: RunRequest | None,
        emit: EventSink,
        *,
        inspected: Callable[[Sequence[HostRun]], None] | None = None,
        steps: Sequence[Step] = (Step.INSPECTED, Step.CHECKED, Step.PREPARED, Step.DONE),
        rounds: int = 12,
    ) -> list[Outcome]:
        """Every server as far as the last of ``steps``, in rounds (for an install: connect
        and inspect all, then ``inspected`` shows them; end those a check stops; prepare all;
        then the one confirmation and the installs). After each round ``ask`` answers the
        questions raised (in ``answers``, or by ending the runs it cannot go on with)."""
        for until in steps:
            asked = self.advance(answers, until, emit, request)
            for _ in range(rounds):
                if not asked:
                    break
                ask(asked)
                asked = self.advance(answers, until, emit, request)
            for run, question in asked:  # still asking after every round: it stays unanswered
                self.end(run, unanswered(question), emit)
            if until is Step.INSPECTED and inspected is not None:
                inspected(self.runs)
        return self.outcomes()

"""Holes closed: what the app once trusted unchecked, destroyed, or waited for past a deadline."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko
import pytest

from app.core.errors import Cancelled, RemoteCommandError
from app.core.events import CancelToken
from app.core.ssh import (
    LINE_LIMIT,
    OUTPUT_LIMIT,
    ConnectOptions,
    Credentials,
    KnownHosts,
    Session,
    Target,
    connect,
)
from tests.support.hostile_ssh import Behaviour, HostileSSH
from tests.support.sshd import keygen

pytestmark = pytest.mark.fault


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """A host key for hostile servers and a client key."""
    d = tmp_path / "hostile-keys"
    d.mkdir()
    return {"host": keygen(d / "host"), "client": keygen(d / "client")}


@pytest.fixture
def hostile(keys: dict[str, Path]) -> Callable[[Behaviour | None], HostileSSH]:
    servers: list[HostileSSH] = []

    def make(behaviour: Behaviour | None = None) -> HostileSSH:
        srv = HostileSSH(keys["host"], behaviour).__enter__()
        servers.append(srv)
        return srv

    yield make  # type: ignore[misc]
    for srv in servers:
        srv.__exit__()


def _login(srv: HostileSSH, keys: dict[str, Path], tmp_path: Path) -> Session:
    kh = tmp_path / "kh-hostile"
    kh.write_text(srv.known_hosts_line())
    key = paramiko.Ed25519Key.from_private_key_file(str(keys["client"]))
    return connect(
        Target("127.0.0.1", srv.port, "root"),
        Credentials(method="key", extra_keys=(key,), use_agent=False),
        KnownHosts(kh, user_file=tmp_path / "none"),
        ConnectOptions(timeout=5),
    )


def _within(seconds: float, fn: Callable[[], Any]) -> tuple[float, BaseException | None]:
    """Run ``fn`` on a thread; fail the test if it is still running after ``seconds``."""
    box: dict[str, BaseException] = {}

    def body() -> None:
        try:
            fn()
        except BaseException as exc:
            box["exc"] = exc

    t0 = time.monotonic()
    th = threading.Thread(target=body, daemon=True)
    th.start()
    th.join(seconds)
    assert not th.is_alive(), f"still blocked after {seconds} s"
    return time.monotonic() - t0, box.get("exc")


# -- 11: every remote call ends by its deadline --------------------------------------------


@pytest.mark.parametrize("freeze", ["channel open", "exec request"])
def test_run_ends_by_its_deadline_against_a_frozen_server(
    hostile: Callable[..., HostileSSH], keys: dict[str, Path], tmp_path: Path, freeze: str
) -> None:
    srv = hostile()
    with _login(srv, keys, tmp_path) as s:
        (srv.freeze_channels if freeze == "channel open" else srv.freeze_exec).set()
        took, exc = _within(8, lambda: s.run("true", timeout=2, what="the test command"))
    assert isinstance(exc, RemoteCommandError), exc
    assert "the test command ran past its 2 s deadline" in exc.what
    assert "stopped answering" in exc.why and exc.fix
    assert took < 3.5


def test_cancel_is_heard_while_the_channel_is_still_opening(
    hostile: Callable[..., HostileSSH], keys: dict[str, Path], tmp_path: Path
) -> None:
    srv = hostile()
    cancel = CancelToken()
    with _login(srv, keys, tmp_path) as s:
        srv.freeze_channels.set()
        threading.Timer(0.5, cancel.cancel).start()
        took, exc = _within(8, lambda: s.run("true", timeout=60, cancel=cancel))
    assert isinstance(exc, Cancelled)
    assert took < 2


# -- 12: what a flooding server sends is bounded ---------------------------------------------


def _flood(total: int, newline_every: int | None = None) -> Behaviour:
    def behave(chan: paramiko.Channel, cmd: str) -> None:
        block = b"x" * 65536
        if newline_every:
            block = (b"y" * (newline_every - 1) + b"\n") * (65536 // newline_every)
        sent = 0
        while sent < total:
            chan.sendall(block)
            chan.sendall_stderr(block[:1024])
            sent += len(block)

    return behave


def test_a_server_flooding_stdout_is_cut_to_its_tail(
    hostile: Callable[..., HostileSSH], keys: dict[str, Path], tmp_path: Path
) -> None:
    total = 3 * OUTPUT_LIMIT
    srv = hostile(_flood(total))
    lines: list[str] = []
    with _login(srv, keys, tmp_path) as s:
        res = s.run("flood", timeout=60, on_line=lambda _stream, ln: lines.append(ln))
    assert res.ok
    assert len(res.stdout) == OUTPUT_LIMIT and set(res.stdout) == {"x"}
    assert res.stdout_dropped == total - OUTPUT_LIMIT
    # A "line" with no newline at all reaches the sink in bounded pieces, never whole.
    assert lines and max(len(ln) for ln in lines) <= LINE_LIMIT


def test_output_under_the_bound_is_kept_whole_with_its_lines(
    hostile: Callable[..., HostileSSH], keys: dict[str, Path], tmp_path: Path
) -> None:
    srv = hostile(_flood(256 * 1024, newline_every=64))
    lines: list[str] = []
    with _login(srv, keys, tmp_path) as s:
        res = s.run("some", timeout=30, on_line=lambda stream, ln: lines.append(stream + ln))
    assert res.stdout_dropped == 0 and len(res.stdout) == 256 * 1024
    assert sum(1 for ln in lines if ln.startswith("stdout")) == 256 * 1024 // 64
    assert all(ln == "stdout" + "y" * 63 for ln in lines if ln.startswith("stdout"))

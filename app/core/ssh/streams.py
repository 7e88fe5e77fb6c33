"""What a command's channel carries: output within bounds, line by line; sudo's terminal."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from app.core.errors import PrivilegeError
from app.core.lazy import LazyModule

if TYPE_CHECKING:
    import paramiko
else:
    paramiko = LazyModule("paramiko")

# Remote output kept per stream and command: enough for the probe of a host with hundreds of
# interfaces; a server that floods is cut to its tail, never allowed to fill this computer.
OUTPUT_LIMIT = 4 * 1024 * 1024
LINE_LIMIT = 64 * 1024
# The terminal modes (RFC 4254 section 8) of the pty such a sudo gets: nothing typed is echoed
# (the password is never shown back), no signals and no line editing on what the app sends, and
# the output exactly as the command wrote it (no CR before each LF). Lines stay canonical, so
# the end-of-file byte after the password ends a second password prompt at once.
_NO = 255  # a special character disabled
_PTY_MODES = (
    (53, 0), (54, 0), (55, 0), (56, 0), (60, 0), (61, 0),  # ECHO, ECHOE, ECHOK, ECHONL, ...
    (50, 0), (59, 0), (51, 1),  # ISIG, IEXTEN off; ICANON on
    (34, 0), (35, 0), (36, 0), (38, 0), (40, 0), (33, 0),  # INLCR IGNCR ICRNL IXON IXOFF ISTRIP
    (70, 0), (72, 0),  # OPOST, ONLCR
    (3, _NO), (4, _NO), (13, _NO), (14, _NO), (12, _NO), (5, 4),  # VERASE...VREPRINT; VEOF ^D
)  # fmt: skip
PTY_MODES = b"".join(struct.pack(">BI", op, v) for op, v in _PTY_MODES) + b"\0"
END_OF_INPUT = b"\x04"  # VEOF at the start of a line: a read of the terminal returns nothing
# What sudo on a terminal is told to print when it wants the password (`sudo -p`; no `%`, which
# it would expand): the password is sent only once this shows, never typed ahead.
SUDO_PROMPT = "[nkw-sudo-password]"


class PromptReplies:
    """Answers a prompt in a terminal's output: its n-th showing gets the n-th reply, and
    nothing is sent at any other time (input typed ahead, or after the command started, is
    read by whoever reads the terminal then, or left pending when the command ends)."""

    def __init__(self, prompt: str, replies: list[bytes]) -> None:
        self.prompt = prompt.encode()
        self.replies = replies
        self._tail = b""  # the end of the output so far: a prompt split between two reads
        self._answered = 0

    def feed(self, data: bytes) -> bytes:
        """Take more output; return what to send now (nothing, or the replies due)."""
        seen = self._tail + data
        count = seen.count(self.prompt)
        rest = seen[seen.rfind(self.prompt) + len(self.prompt) :] if count else seen
        self._tail = rest[-(len(self.prompt) - 1) :]
        due, self.replies = self.replies[:count], self.replies[count:]
        self._answered += len(due)
        return b"".join(due)

    def clean(self, text: str) -> str:
        """``text`` without the prompts."""
        return text.replace(self.prompt.decode(), "")

    def clean_bytes(self, data: bytes) -> bytes:
        """``data`` without the prompts."""
        return data.replace(self.prompt, b"")

    @property
    def waiting(self) -> bool:
        """Nothing was answered yet: the prompt never showed."""
        return self._answered == 0

    def unanswered(self, what: str) -> PrivilegeError:
        """The deadline passed and sudo never showed the prompt the app answers."""
        return PrivilegeError(
            f"sudo never asked for the password the way the app answers ({what}).",
            "sudo was told to prompt with the app's own words (sudo -p); a PAM module that "
            "asks its own question (a one-time code, a differently worded password prompt) "
            "gets no answer, and nothing ran as root.",
            "Let this user use sudo without a password for the install (NOPASSWD in a file "
            "in /etc/sudoers.d/), or log in as root.",
        )

    def lines_to(self, sink: LineSink) -> LineSink:
        """``sink`` given the lines without the prompts (a line that was only one is left out)."""

        def cleaned(name: str, line: str) -> None:
            if (kept := self.clean(line)) or not line:
                sink(name, kept)

        return cleaned


@dataclass(frozen=True)
class CommandResult:
    """Exit status and output of one remote command (each stream's tail, within a bound)."""

    status: int
    stdout: str
    stderr: str
    stdout_dropped: int = 0  # bytes of stdout beyond the bound, counted and not kept
    stderr_dropped: int = 0
    # The kept stdout as it came (``stdout`` is decoded: a byte that is not UTF-8 there is
    # U+FFFD, three bytes), for whoever counts bytes.
    raw_stdout: bytes = field(default=b"", repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """True for exit status 0."""
        return self.status == 0


LineSink = Callable[[str, str], None]  # (stream name, line)


class TailBuffer:
    """The last ``limit`` bytes of a stream, and how many bytes before them were dropped."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.dropped = 0
        self._buf = bytearray()

    def add(self, data: bytes) -> None:
        """Append ``data``, dropping the oldest bytes past the bound."""
        self._buf += data
        extra = len(self._buf) - self.limit
        if extra > 0:
            del self._buf[:extra]
            self.dropped += extra

    def text(self) -> str:
        """What is kept, decoded (a cut multibyte character becomes U+FFFD)."""
        return self._buf.decode("utf-8", "replace")

    def data(self) -> bytes:
        """What is kept, as it came."""
        return bytes(self._buf)


class LineSplitter:
    """Feeds a stream's lines to a sink; a line longer than the bound is passed on in pieces."""

    def __init__(self, sink: LineSink | None, name: str, limit: int = LINE_LIMIT) -> None:
        self.sink = sink
        self.name = name
        self.limit = limit
        self._pending = bytearray()

    def feed(self, data: bytes) -> None:
        """Take more bytes and pass every complete line on."""
        if self.sink is None:
            return
        buf = self._pending
        buf += data
        while (nl := buf.find(b"\n")) >= 0 or len(buf) >= self.limit:
            cut = nl if 0 <= nl < self.limit else self.limit
            self.sink(self.name, buf[:cut].decode("utf-8", "replace").rstrip("\r"))
            del buf[: cut + 1 if cut == nl else cut]

    def flush(self) -> None:
        """Pass on a last line that had no newline."""
        if self.sink is not None and self._pending:
            self.sink(self.name, self._pending.decode("utf-8", "replace"))
            self._pending.clear()


def close_quietly(chan: paramiko.Channel) -> None:
    """Close a channel; on a dead link that raises, and must not hide the error being raised."""
    with contextlib.suppress(Exception):
        chan.close()


def request_pty(chan: paramiko.Channel) -> None:
    """``Channel.get_pty`` with PTY_MODES (paramiko's sends no modes, so the server's terminal
    would echo the password). Raises SSHException when the server refuses a terminal."""
    m = paramiko.Message()
    m.add_byte(bytes([98]))  # SSH_MSG_CHANNEL_REQUEST
    m.add_int(chan.remote_chanid)
    m.add_string("pty-req")
    m.add_boolean(True)
    m.add_string("dumb")
    for size in (200, 24, 0, 0):
        m.add_int(size)
    m.add_string(PTY_MODES)
    chan._event_pending()  # type: ignore[attr-defined]
    chan.transport._send_user_message(m)  # type: ignore[union-attr]
    chan._wait_for_event()  # type: ignore[attr-defined]


def send_all(chan: paramiko.Channel, view: memoryview) -> None:
    """``Channel.sendall`` without its copy of the unsent rest after every packet."""
    while view:
        sent = chan.send(view)  # type: ignore[arg-type]  # any buffer works
        if sent == 0:
            raise EOFError("the channel closed")
        view = view[sent:]


def tty_refused(user: str, host: str) -> PrivilegeError:
    """sudo requires a terminal and the SSH server gives this login none: the real cause."""
    return PrivilegeError(
        f"sudo on {host} runs only with a terminal, and the SSH server refuses one.",
        "Its sudoers say `Defaults requiretty` (as older RHEL/CentOS and Amazon Linux 1 do), "
        "so sudo runs nothing without a terminal, and sshd gives this login none "
        "(`PermitTTY no` in sshd_config, or `no-pty` on the key's authorized_keys line). "
        "Nothing was run as root.",
        f"Let {user} use sudo without a terminal (`Defaults:{user} !requiretty` in a file in "
        "/etc/sudoers.d/), or allow a terminal for this login, or log in as root.",
    )

"""Netboot: the release's iPXE chain URL, or serving a kernel, initrds and iPXE script."""

from __future__ import annotations

import contextlib
import errno
import gzip
import re
import socket
import stat
import tarfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from app import __version__
from app.core.catalog import Asset, Release, netboot_names
from app.core.download import CHUNK, CachedImage, Downloader
from app.core.errors import Cancelled, ConfigError, IntegrityError, UsageError
from app.core.events import CancelToken, EventSink, discard
from app.core.kinds import ImageKind
from app.core.lazy import LazyModule
from app.core.settings import Settings
from app.core.text import printable

if TYPE_CHECKING:
    import http.server as http_server
else:
    # Only serving needs it (with email and mimetypes behind it): not the wizard's start-up.
    http_server = LazyModule("http.server")

SCRIPT_NAME = "netboot.ipxe"
KEYS_NAME = "keys.cpio.gz"
DEFAULT_BIND = ("127.0.0.1", 8080)
DEFAULT_SERVE_FOR = 3600.0
# What `run` keeps of an authorized_keys line: the key itself, never its options.
PUBKEY_RE = re.compile(r"(?:ssh-|ecdsa-|sk-)[A-Za-z0-9@.-]+\s+[A-Za-z0-9+/]+={0,3}(?:\s+[^\s].*)?$")
RUN_CMDLINE_RE = re.compile(r"--command-line[= ]\s*([\"'])(.*?)\1", re.S)
# iPXE `kernel` options that take a value.
IPXE_VALUE_OPTS = {"--name", "-n", "--timeout", "-t"}


@dataclass(frozen=True)
class NetbootSource:
    """What to serve: the kernel, its initrds in order, and the kernel command line."""

    kernel: tuple[str, Path]  # (name served, file)
    initrds: tuple[tuple[str, Path | bytes], ...]
    args: str
    description: str

    def script(self, extra_args: str = "") -> str:
        """The iPXE script; names are relative, so it works at whatever address it is fetched."""
        initrd_args = " ".join(f"initrd={name}" for name, _ in self.initrds)
        args = " ".join(a for a in (initrd_args, self.args, extra_args.strip()) if a)
        lines = [
            "#!ipxe",
            f"# NixOS Kexec Wizard {__version__}: {self.description}",
            "# Image names are relative to this script's URL.",
            f"kernel {self.kernel[0]} {args} ${{cmdline}}",
            *(f"initrd {name}" for name, _ in self.initrds),
            "boot",
        ]
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The chain URL


def chain_url(settings: Settings, channel: str, arch: str) -> str:
    """The release's own iPXE script, which loads the kernel and initrd from the release."""
    return f"{settings.download_url.rstrip('/')}/{channel}/{netboot_names(arch).script}"


def chain_explanation(url: str) -> str:
    """When and how to use the chain URL, in words."""
    return (
        f'At an iPXE prompt (or in a provider\'s "custom iPXE" field) enter:\n'
        f"    chain {url}\n"
        "Use this for a machine that boots from the network, or a provider that can chain an "
        "iPXE URL. The netboot image is the plain NixOS installer: root has no password and no "
        "SSH key, so you need the machine's console (or serial console) to log in, set a "
        "password or add a key. To reach it over SSH right away, serve the kexec installer "
        "with your keys from this computer instead (--from-kexec --serve)."
    )


# ---------------------------------------------------------------------------------------------
# Sources


def kernel_args_from_ipxe(text: str) -> str:
    """The kernel command line of an iPXE script, without its image, initrd= and ${...} parts."""
    for line in text.splitlines():
        words = line.split()
        if not words or words[0] not in ("kernel", "chain", "imgexec", "boot") or len(words) < 2:
            continue
        i = 1
        while i < len(words) and words[i].startswith("-"):
            i += 2 if words[i] in IPXE_VALUE_OPTS else 1
        args = [w for w in words[i + 1 :] if not w.startswith("initrd=") and "${" not in w]
        if any(a.startswith("init=") for a in args):
            return " ".join(args)
    raise IntegrityError(
        "The release's iPXE script has no kernel line with init=.",
        "Without it the served kernel would not find the NixOS system in the initrd.",
        "Use another channel, or the kexec installer (--from-kexec).",
    )


def kernel_args_from_run(text: str) -> str:
    """The kernel command line the tarball's ``kexec/run`` passes to kexec."""
    m = RUN_CMDLINE_RE.search(text)
    if not m or "init=" not in m.group(2):
        raise IntegrityError(
            "The kexec tarball's run script has no --command-line with init=.",
            "Its kernel cannot be booted over the network without the same command line.",
            "Use a kexec installer tarball from the nixos-images releases.",
        )
    return " ".join(m.group(2).split())


def release_source(
    downloader: Downloader,
    release: Release,
    arch: str,
    *,
    emit: EventSink = discard,
    cancel: CancelToken | None = None,
) -> NetbootSource:
    """Download (or find cached) the release's netboot kernel, initrd and script, verified."""
    parts = release.netboot(arch)
    if parts is None:
        n = netboot_names(arch)
        raise UsageError(
            f"{release.channel} has no netboot image for {arch} ({n.kernel}, {n.initrd}, "
            f"{n.script}).",
            "Not every release carries every image.",
            "Choose another channel, or serve the kexec installer (--from-kexec).",
        )
    kernel, initrd, script = (
        _fetch_file(downloader, a, release.channel, arch, emit, cancel) for a in parts
    )
    args = kernel_args_from_ipxe(script.path.read_text(errors="replace"))
    return NetbootSource(
        (kernel.info.name, kernel.path),
        ((initrd.info.name, initrd.path),),
        args,
        f"the {release.channel} netboot image ({arch})",
    )


def _fetch_file(
    downloader: Downloader,
    asset: Asset,
    channel: str,
    arch: str,
    emit: EventSink,
    cancel: CancelToken | None,
) -> CachedImage:
    return downloader.fetch(
        asset,
        channel=channel,
        arch=arch,
        variant="netboot",
        emit=emit,
        cancel=cancel,
        kind=ImageKind.FILE,
    )


def kexec_source(
    image: CachedImage,
    work_dir: Path,
    public_keys: Iterable[str],
    cancel: CancelToken | None = None,
) -> NetbootSource:
    """The kexec tarball's kernel and initrd, plus a second initrd carrying ``public_keys``.

    The kexec installer reads ``ssh/authorized_keys`` from what is appended to its initrd (that
    is what ``run`` does on a server), so the netbooted installer accepts these keys.
    """
    keys = keys_initrd(public_keys)
    folder = work_dir / image.info.sha256[:32]
    members = {"kexec/bzImage": "bzImage", "kexec/initrd": "initrd", "kexec/run": "run"}
    if not (folder / "ready").exists():
        _extract(image.path, folder, members, cancel or CancelToken())
    args = kernel_args_from_run((folder / "run").read_text(errors="replace"))
    return NetbootSource(
        ("bzImage", folder / "bzImage"),
        (("initrd", folder / "initrd"), (KEYS_NAME, keys)),
        args,
        f"the kexec installer {image.info.name} with your SSH keys",
    )


def _extract(tarball: Path, folder: Path, members: dict[str, str], cancel: CancelToken) -> None:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    found: set[str] = set()
    try:
        with tarfile.open(tarball, mode="r|*", bufsize=CHUNK) as tar:
            for m in tar:
                name = "/".join(p for p in m.name.split("/") if p not in ("", "."))
                if name in members and m.isfile():
                    src = tar.extractfile(m)
                    assert src is not None
                    with (folder / (members[name] + ".part")).open("wb") as out:
                        while chunk := src.read(CHUNK):
                            if cancel.cancelled:
                                raise Cancelled("Stopped unpacking the kexec installer.")
                            out.write(chunk)
                    (folder / (members[name] + ".part")).replace(folder / members[name])
                    found.add(name)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise IntegrityError(
            f"{tarball.name} could not be unpacked for netboot ({exc}).",
            "The kernel and initrd inside it are what the machine would boot.",
            "Delete the cached image and download it again, or free disk space.",
        ) from exc
    missing = sorted(set(members) - found)
    if missing:
        raise IntegrityError(
            f"{tarball.name} lacks " + ", ".join(missing) + ".",
            "Netbooting the kexec installer needs its kernel, initrd and run script.",
            "Use a kexec installer tarball from the nixos-images releases.",
        )
    (folder / "ready").touch()


# ---------------------------------------------------------------------------------------------
# Keys


def read_public_keys(paths: Iterable[Path]) -> list[str]:
    """Every public key line in ``paths`` (authorized_keys or .pub files), options dropped."""
    out: list[str] = []
    for p in paths:
        try:
            text = p.read_text(errors="replace")
        except OSError as exc:
            raise UsageError(
                f"Cannot read {p}: {exc.strerror or exc}.",
                "The netbooted installer needs the public keys to let you log in.",
                "Give a readable public key file (e.g. ~/.ssh/id_ed25519.pub).",
            ) from exc
        out += clean_keys(text.splitlines())
    return list(dict.fromkeys(out))


def default_key_files(ssh_dir: Path, keys_dir: Path) -> list[Path]:
    """The user's ``~/.ssh/*.pub`` and the app's own generated keys."""
    files = sorted(ssh_dir.glob("*.pub")) + sorted(keys_dir.glob("*.pub"))
    return [f for f in files if f.is_file()]


def clean_keys(lines: Iterable[str]) -> list[str]:
    """The key part (type and base64) of each line that holds one, as ``run`` keeps it."""
    out = []
    for line in lines:
        m = re.search(r"(?:ssh-|ecdsa-|sk-)\S+\s+\S+", line)
        if m and PUBKEY_RE.match(m.group(0)):
            out.append(m.group(0))
    return out


def keys_initrd(public_keys: Iterable[str]) -> bytes:
    """A gzip'd newc cpio with ``ssh/authorized_keys``, as ``run`` appends to the initrd."""
    keys = list(dict.fromkeys(clean_keys(public_keys)))
    if not keys:
        raise UsageError(
            "No SSH public key to put into the installer.",
            "The netbooted installer lets root in with these keys only; without one you would "
            "need its console.",
            "Pass --authorized-keys ~/.ssh/id_ed25519.pub (or create a key with ssh-keygen).",
        )
    data = ("\n".join(keys) + "\n").encode()
    entries = [
        ("ssh", stat.S_IFDIR | 0o700, b""),
        ("ssh/authorized_keys", stat.S_IFREG | 0o600, data),
    ]
    return gzip.compress(newc(entries), compresslevel=6, mtime=0)


def newc(entries: Iterable[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of ``(name, mode, data)`` entries, directories included."""
    out = bytearray()
    trailer = ("TRAILER!!!", 0, b"")
    for ino, (name, mode, data) in enumerate([*entries, trailer], 1):
        raw = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(raw), 0)
        out += b"070701" + b"".join(b"%08X" % f for f in fields)
        out += raw + b"\0" * (-(110 + len(raw)) % 4)
        out += data + b"\0" * (-len(data) % 4)
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# Serving


def parse_bind(text: str) -> tuple[str, int]:
    """``ADDR:PORT``, ``[V6]:PORT`` or ``PORT`` (loopback) into a host and port."""
    t = text.strip()
    host, port_text = DEFAULT_BIND[0], t
    if t.startswith("["):
        host, _, rest = t[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif t.count(":") == 1:
        host, port_text = t.split(":")
    elif ":" in t:
        raise UsageError(
            f"{text!r} is not ADDR:PORT.",
            "An IPv6 address must be written in brackets so the port can be told apart.",
            "Write it as [ADDR]:PORT, e.g. [::1]:8080.",
        )
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not host or not 0 <= port < 65536:  # 0: any free port
        raise UsageError(
            f"{text!r} is not an address and port to serve on.",
            "The netboot server needs one address of this computer and a TCP port.",
            "Write ADDR:PORT, e.g. 127.0.0.1:8080 or 192.168.1.10:8080.",
        )
    return host, port


@dataclass(frozen=True)
class ServedRequest:
    """One request the netboot server answered."""

    at: float
    client: str
    method: str
    path: str
    status: int
    sent: int  # body bytes sent
    size: int  # body bytes it should have had

    def line(self) -> str:
        """A log line for people."""
        stamp = time.strftime("%H:%M:%S", time.localtime(self.at))
        done = "" if self.sent == self.size else f" (cut after {self.sent} of {self.size} bytes)"
        return f"{stamp} {self.client} {self.method} {self.path} {self.status} {self.sent} B{done}"


@dataclass
class NetbootServer:
    """Serves one source's files and its generated iPXE script; nothing else."""

    source: NetbootSource
    host: str = DEFAULT_BIND[0]
    port: int = DEFAULT_BIND[1]
    extra_args: str = ""
    on_request: Callable[[ServedRequest], None] = lambda _r: None
    requests: list[ServedRequest] = field(default_factory=list)
    # A request's line and headers must arrive within this; a transfer may stall this long.
    request_deadline: float = 10.0
    stall_timeout: float = 60.0
    _httpd: http_server.ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL, as this computer sees it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def chain_url(self) -> str:
        """The script's URL as this computer reaches it."""
        return f"{self.url}/{SCRIPT_NAME}"

    @property
    def chain_command(self) -> str:
        """What to type at the machine's iPXE prompt (a wildcard address cannot be typed)."""
        if self.host in ("0.0.0.0", "::"):
            host = "<this computer's address>"
            return f"chain http://{host}:{self.port}/{SCRIPT_NAME}"
        return f"chain {self.chain_url}"

    def files(self) -> dict[str, Path | bytes]:
        """Every name served and its content."""
        out: dict[str, Path | bytes] = {SCRIPT_NAME: self.source.script(self.extra_args).encode()}
        out[self.source.kernel[0]] = self.source.kernel[1]
        out.update(dict(self.source.initrds))
        return out

    def start(self) -> NetbootServer:
        """Bind and serve on a thread; a clear error when the address cannot be used."""
        files = self.files()
        handler = _handler(files, self._record, self.request_deadline, self.stall_timeout)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

        class Server(http_server.ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        try:
            self._httpd = Server((self.host, self.port), handler)
        except OSError as exc:
            raise _bind_error(self.host, self.port, exc) from exc
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._thread.start()
        return self

    def _record(self, req: ServedRequest) -> None:
        self.requests.append(req)
        self.on_request(req)

    def stop(self) -> None:
        """Stop serving and free the port (transfers in flight are cut)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


def _bind_error(host: str, port: int, exc: OSError) -> ConfigError:
    why = {
        errno.EADDRINUSE: f"port {port} is already in use on this computer",
        errno.EADDRNOTAVAIL: f"{host} is not an address of this computer",
        errno.EACCES: f"ports below 1024 need administrator rights (port {port})",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    return ConfigError(
        f"Cannot serve on {host}:{port}: {why}.",
        "The machine to netboot fetches its kernel and initrd from this address.",
        "Pick another port, or an address shown by `ip addr` on this computer "
        "(127.0.0.1 serves only this computer).",
    )


def _handler(
    files: dict[str, Path | bytes],
    record: Callable[[ServedRequest], None],
    request_deadline: float,
    stall_timeout: float,
) -> type[http_server.BaseHTTPRequestHandler]:
    class Handler(http_server.BaseHTTPRequestHandler):
        server_version = f"nixos-kexec-wizard/{__version__}"
        protocol_version = "HTTP/1.1"
        timeout = stall_timeout  # every read and write on the connection
        _timer: threading.Timer | None = None

        def handle_one_request(self) -> None:
            # The request line and headers have a deadline of their own: a client that
            # opens a connection and sends nothing (or a byte at a time) is cut off.
            self._timer = threading.Timer(request_deadline, self._cut)
            self._timer.daemon = True
            self._timer.start()
            try:
                super().handle_one_request()
            except (ConnectionError, TimeoutError):
                # A client that hangs up or stalls ends its connection; nothing to print.
                self.close_connection = True
            finally:
                self._timer.cancel()

        def _cut(self) -> None:
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

        def do_GET(self) -> None:
            self._answer(body=True)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def _answer(self, body: bool) -> None:
            if self._timer is not None:
                self._timer.cancel()  # the request arrived; the transfer has its stall timeout
            name = self.path.split("?", 1)[0].lstrip("/")
            content = files.get(name)
            if content is None:
                try:
                    self.send_error(404, "not served here")
                except OSError:  # the client hung up first: still logged
                    self.close_connection = True
                self._log(404, 0, 0)
                return
            size = content.stat().st_size if isinstance(content, Path) else len(content)
            self.send_response(200)
            ctype = (
                "text/plain; charset=utf-8" if name == SCRIPT_NAME else "application/octet-stream"
            )
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            sent = 0
            try:
                if body and isinstance(content, Path):
                    self.wfile.flush()
                    with content.open("rb") as f:
                        sent = self.connection.sendfile(f)
                elif body and isinstance(content, bytes):
                    self.wfile.write(content)
                    sent = size
            except OSError:
                self.close_connection = True
            self._log(200, sent if body else size, size)

        def _log(self, status: int, sent: int, size: int) -> None:
            client = self.client_address[0]
            name = printable(self.path.split("?", 1)[0])
            method = printable(self.command)
            record(ServedRequest(time.time(), client, method, name, status, sent, size))

        def log_message(self, format: str, *args: object) -> None:
            pass  # every request is recorded by _log instead

    return Handler

"""The remote facts, gathered by one POSIX sh script in one round trip, and their parsers."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import asdict, dataclass, field
from typing import Any

from app.core.catalog import machine_to_arch
from app.core.disk.disks import OLD_ROOT_SCRIPT, OldRoot, old_root_from_lines
from app.core.kinds import PrivilegeKind

MARK = "@@nkw "
TOOLS = (
    "cpio", "gzip", "tar", "find", "sort", "setsid", "curl", "wget", "sha256sum",
    "openssl", "sudo", "doas", "ip", "nohup", "mktemp", "dmesg", "systemd-detect-virt",
    "mkfifo", "tee",
)  # fmt: skip

# One round trip. Every section starts with a marker line; a failing command leaves its section
# empty instead of stopping the script. The reachability checks run in the background meanwhile.
PROBE_SCRIPT = r"""
printf '\n@@nkw begin %s\n' __TOKEN__
LC_ALL=C; PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"; export LC_ALL PATH
S() { printf '\n@@nkw %s\n' "$1"; }
STAGING=__STAGING__
URL=__URL__
T=$(mktemp -d 2>/dev/null || echo /tmp/nkw-probe.$$)
mkdir -p "$T" 2>/dev/null
reach() {
  if command -v curl >/dev/null 2>&1; then
    c=$(curl "$1" -sS -o /dev/null -m 4 -w '%{http_code}' "$URL" 2>/dev/null)
    case "$c" in ''|000) echo no;; *) echo yes;; esac
  elif command -v wget >/dev/null 2>&1; then
    wget "$1" -q -T 4 -t 1 -O /dev/null "$URL" >/dev/null 2>&1; r=$?
    if [ $r -eq 0 ] || [ $r -eq 8 ]; then echo yes; else echo no; fi
  else echo unknown; fi
}
if [ -n "$URL" ]; then
  (reach -4 > "$T/v4" 2>/dev/null) &
  (reach -6 > "$T/v6" 2>/dev/null) &
fi
S uname; uname -r; uname -m
S os-release; cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release 2>/dev/null
S hostname; cat /proc/sys/kernel/hostname 2>/dev/null
S boot-id; cat /proc/sys/kernel/random/boot_id 2>/dev/null
S meminfo; grep -E '^(MemTotal|MemAvailable|SwapTotal):' /proc/meminfo 2>/dev/null
S id; id -u; id -un; echo "$HOME"
S virt
command -v systemd-detect-virt >/dev/null 2>&1 && echo "virt=$(systemd-detect-virt 2>/dev/null)" \
  && echo "container=$(systemd-detect-virt --container 2>/dev/null)"
[ -e /proc/vz ] && [ ! -e /proc/bc ] && echo marker=openvz
[ -e /proc/vz ] && echo marker=proc-vz
[ -e /.dockerenv ] && echo marker=docker
[ -e /run/.containerenv ] && echo marker=podman
{ tr '\000' '\n' < /proc/1/environ; } 2>/dev/null | grep '^container=' | sed 's/^/env-/'
grep -q 'envID' /proc/self/status 2>/dev/null && echo marker=envid
S kexec; cat /proc/sys/kernel/kexec_load_disabled 2>/dev/null
S lockdown; cat /sys/kernel/security/lockdown 2>/dev/null
S tools
for t in __TOOLS__; do printf '%s=' "$t"; command -v "$t" 2>/dev/null || echo; done
printf '1.10\n1.9\n' | sort -V 2>/dev/null | { read -r v && echo "sort-v=$v"; }
setsid --wait true >/dev/null 2>&1 && echo setsid-wait=yes
n=$(nproc 2>/dev/null || grep -c '^processor' /proc/cpuinfo 2>/dev/null) && echo "cpus=$n"
S priv
if [ "$(id -u)" = 0 ]; then echo root
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then echo sudo
elif command -v doas >/dev/null 2>&1 && doas -n true 2>/dev/null; then echo doas
elif command -v sudo >/dev/null 2>&1; then echo sudo-password
else echo none; fi
S staging
d=$STAGING; case "$d" in "~"|"~/"*) d="$HOME${d#\~}";; esac
echo "path=$d"
e=$d
while [ ! -d "$e" ] && [ "$e" != / ]; do
  case "$e" in */*) e=${e%/*}; [ -n "$e" ] || e=/;; *) e=.;; esac
done
echo "existing=$e"
[ -w "$e" ] && echo writable=yes || echo writable=no
l=$(df -Pk "$e" 2>/dev/null | tail -n 1); [ -n "$l" ] && echo "$l"
m=${l##* }
[ -n "$m" ] && awk -v m="$m" '$2==m {x="mount=" $2 " " $3 " " $4} END {if (x) print x}' \
  /proc/mounts 2>/dev/null
S ip-addr; ip -d --json addr 2>/dev/null || ip --json addr 2>/dev/null || ip addr 2>/dev/null
S ip-route4; ip -4 --json route 2>/dev/null || ip -4 route 2>/dev/null
S ip-route6; ip -6 --json route 2>/dev/null || ip -6 route 2>/dev/null
S dns; grep -E '^nameserver' /etc/resolv.conf 2>/dev/null
S host-keys; ls /etc/ssh/ 2>/dev/null | grep -E '^ssh_host_.*_key(\.pub)?$'
S old-root; __OLDROOT__
S reach
wait
[ -f "$T/v4" ] && echo "v4=$(cat "$T/v4")"
[ -f "$T/v6" ] && echo "v6=$(cat "$T/v6")"
rm -rf "$T"
S end
"""


def probe_script(staging: str, reach_url: str, token: str = "0") -> str:
    """The probe script with the staging dir and reachability URL quoted in.

    All placeholders are filled in one pass, so a value that contains another placeholder's
    name stays literal instead of being filled in again inside its quotes.
    """
    values = {
        "TOKEN": shlex.quote(token),
        "STAGING": shlex.quote(staging),
        "URL": shlex.quote(reach_url),
        "TOOLS": " ".join(TOOLS),
        "OLDROOT": OLD_ROOT_SCRIPT,
    }
    return re.sub(
        r"__(TOKEN|STAGING|URL|TOOLS|OLDROOT)__", lambda m: values[m.group(1)], PROBE_SCRIPT
    )


CLOUD_USER_RE = re.compile(
    r"""Please\s+log\s*in\s+as\s+the\s+user\s+["']?([A-Za-z_][A-Za-z0-9_.-]{0,31})["']?"""
    r"""\s+rather\s+than""",
    re.IGNORECASE,
)


def own_output(stdout: str, token: str) -> str | None:
    """The probe's own output after its marker, or None when the marker never came.

    Whatever came before it (a banner or MOTD printed by the login shell) is dropped; a
    login whose commands never run (a forced command, nologin) has no marker at all.
    """
    begin = f"\n{MARK}begin {token}\n"
    at = ("\n" + stdout).find(begin)
    return None if at < 0 else ("\n" + stdout)[at + len(begin) :]


def asked_user(text: str) -> str | None:
    """The user a cloud image's forced command asks for ("Please login as the user X")."""
    m = CLOUD_USER_RE.search(text)
    return m.group(1) if m else None


# ---------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Address:
    """One IP address on an interface."""

    family: str  # "inet" or "inet6"
    local: str
    prefixlen: int
    scope: str = "global"
    dynamic: bool = False

    @property
    def cidr(self) -> str:
        """``addr/prefix``."""
        return f"{self.local}/{self.prefixlen}"


@dataclass(frozen=True)
class Interface:
    """One network interface as ``ip addr`` shows it."""

    name: str
    mac: str | None
    link_type: str = "ether"
    kind: str = ""  # from ip -d: bond, bridge, vlan, wireguard, ...
    master: str | None = None
    up: bool = True
    addresses: tuple[Address, ...] = ()


@dataclass(frozen=True)
class Route:
    """One route as ``ip route`` shows it."""

    family: str
    dst: str
    gateway: str | None = None
    dev: str | None = None
    protocol: str = "boot"
    onlink: bool = False


@dataclass(frozen=True)
class Staging:
    """The remote folder the image is unpacked into."""

    path: str = ""
    existing: str = ""
    writable: bool = False
    free_bytes: int | None = None
    mount_point: str = ""
    fstype: str = ""
    options: tuple[str, ...] = ()

    @property
    def noexec(self) -> bool:
        """Whether the mount forbids running programs."""
        return "noexec" in self.options


@dataclass(frozen=True)
class Facts:
    """Everything the probe learned about the server."""

    kernel: str = ""
    machine: str = ""
    os_release: dict[str, str] = field(default_factory=dict)
    hostname: str = ""
    boot_id: str = ""
    mem_total: int | None = None
    mem_available: int | None = None
    swap_total: int | None = None
    uid: int | None = None
    user: str = ""
    home: str = ""
    virt: str = ""
    container: str = ""
    kexec_load_disabled: bool | None = None
    lockdown: str | None = None
    tools: dict[str, str] = field(default_factory=dict)
    sort_v: bool = False
    setsid_wait: bool = False  # util-linux setsid; busybox's has no --wait
    cpus: int | None = None  # the CPUs the login may use (nproc), when the probe could tell
    privilege: PrivilegeKind = PrivilegeKind.NONE
    staging: Staging = field(default_factory=Staging)
    net_format: str = "none"  # json, text or none
    interfaces: tuple[Interface, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: tuple[str, ...] = ()
    host_key_files: tuple[str, ...] = ()
    reach_v4: bool | None = None
    reach_v6: bool | None = None
    # The disk(s) under / (the old system's root disk, which an install onto the disk wipes).
    old_root: OldRoot | None = None
    notes: tuple[str, ...] = ()

    @property
    def arch(self) -> str | None:
        """The image arch this machine needs, or None when no image exists for it."""
        return machine_to_arch(self.machine) if self.machine else None

    @property
    def is_installer(self) -> bool:
        """True when this already is the NixOS installer."""
        return (
            self.os_release.get("ID") == "nixos"
            and self.os_release.get("VARIANT_ID") == "installer"
        )

    @property
    def os_name(self) -> str:
        """A readable OS name."""
        r = self.os_release
        return (
            r.get("PRETTY_NAME")
            or " ".join(filter(None, [r.get("NAME"), r.get("VERSION")]))
            or "unknown OS"
        )

    def has(self, tool: str) -> bool:
        """Whether ``tool`` is on the server's PATH."""
        return tool in self.tools

    @property
    def public_host_keys(self) -> tuple[str, ...]:
        """Host key types with a public key file (``ed25519``, ``rsa``, ...)."""
        out = []
        for f in self.host_key_files:
            m = re.match(r"^ssh_host_(\w+)_key\.pub$", f)
            if m:
                out.append(m.group(1))
        return tuple(out)

    def summary(self) -> dict[str, Any]:
        """The short form a profile keeps."""
        return {
            "os": self.os_name,
            "kernel": self.kernel,
            "arch": self.machine,
            "mem_total": self.mem_total,
            "virt": self.virt or "none",
            "privilege": self.privilege,
            "installer": self.is_installer,
            "boot_id": self.boot_id,
        }

    def to_json(self) -> dict[str, Any]:
        """Every fact, JSON-ready."""
        d = asdict(self)
        d["arch"] = self.arch
        d["is_installer"] = self.is_installer
        return d


# ---------------------------------------------------------------------------------------------
# Parsers (pure)


def split_sections(text: str) -> dict[str, list[str]]:
    """Split probe output into its marked sections; lines before the first marker are dropped."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith(MARK):
            current = out.setdefault(line[len(MARK) :].strip(), [])
        elif current is not None:
            current.append(line)
    return {k: [ln for ln in v if ln.strip()] for k, v in out.items()}


def parse_os_release(lines: list[str]) -> dict[str, str]:
    """``KEY=value`` lines, with or without quotes (shell-style unquoting)."""
    out: dict[str, str] = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        if not re.fullmatch(r"[A-Z0-9_]+", key):
            continue
        try:
            parts = shlex.split(raw, posix=True)
            value = parts[0] if len(parts) == 1 else raw.strip("\"'")
        except ValueError:
            value = raw.strip("\"'")
        out[key] = value
    return out


def parse_meminfo(lines: list[str]) -> dict[str, int]:
    """``Key: N kB`` lines into bytes."""
    out = {}
    for line in lines:
        m = re.match(r"^(\w+):\s+(\d+)\s*(kB)?", line)
        if m:
            out[m.group(1)] = int(m.group(2)) * (1024 if m.group(3) else 1)
    return out


def parse_kv(lines: list[str]) -> dict[str, str]:
    """``key=value`` lines (the last value of a key wins)."""
    out = {}
    for line in lines:
        k, sep, v = line.partition("=")
        if sep:
            out[k.strip()] = v.strip()
    return out


def parse_lockdown(lines: list[str]) -> str | None:
    """The active mode in ``none [integrity] confidentiality``."""
    for line in lines:
        m = re.search(r"\[(\w+)\]", line)
        if m:
            return m.group(1)
    return None


def parse_ip_addr(lines: list[str]) -> tuple[str, tuple[Interface, ...]]:
    """``ip --json addr`` (or plain ``ip addr`` text, as busybox prints it)."""
    text = "\n".join(lines).strip()
    if not text:
        return "none", ()
    if text.startswith("["):
        try:
            data = json.loads(text)
        except ValueError:
            return "none", ()
        return "json", tuple(i for i in (_iface_from_json(d) for d in _list(data)) if i)
    return "text", _ifaces_from_text(lines)


def _list(data: object) -> list[dict[str, Any]]:
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []


def _iface_from_json(d: dict[str, Any]) -> Interface | None:
    name = d.get("ifname")
    if not isinstance(name, str):
        return None
    mac = d.get("address") if isinstance(d.get("address"), str) else None
    link_type = str(d.get("link_type", "ether"))
    if link_type not in ("ether", "infiniband") or mac in ("00:00:00:00:00:00", ""):
        mac = None if link_type != "ether" or mac == "00:00:00:00:00:00" else mac
    linkinfo = d.get("linkinfo") if isinstance(d.get("linkinfo"), dict) else {}
    kind = str(linkinfo.get("info_kind", "")) if linkinfo else ""
    flags: list[Any] = d["flags"] if isinstance(d.get("flags"), list) else []
    if not kind and "MASTER" in flags:
        kind = "bond-or-bridge"
    addrs = []
    for a in _list(d.get("addr_info")):
        fam, local, plen = a.get("family"), a.get("local"), a.get("prefixlen")
        if fam in ("inet", "inet6") and isinstance(local, str) and isinstance(plen, int):
            addrs.append(
                Address(fam, local, plen, str(a.get("scope", "global")), bool(a.get("dynamic")))
            )
    master = d.get("master") if isinstance(d.get("master"), str) else None
    return Interface(
        name=name.split("@")[0],
        mac=mac,
        link_type=link_type,
        kind=kind or ("vlan" if "@" in name and d.get("link") else ""),
        master=master,
        up="UP" in flags,
        addresses=tuple(addrs),
    )


def _ifaces_from_text(lines: list[str]) -> tuple[Interface, ...]:
    out: list[Interface] = []
    cur: dict[str, Any] | None = None

    def flush() -> None:
        if cur is not None:
            out.append(Interface(**cur))

    for line in lines:
        m = re.match(r"^\d+:\s+([^:\s]+):\s+<([^>]*)>(.*)$", line)
        if m:
            flush()
            name = m.group(1).split("@")[0]
            flags = m.group(2).split(",")
            master = re.search(r"\bmaster (\S+)", m.group(3))
            cur = {
                "name": name,
                "mac": None,
                "link_type": "ether",
                "kind": "vlan"
                if "@" in m.group(1)
                else ("bond-or-bridge" if "MASTER" in flags else ""),
                "master": master.group(1) if master else None,
                "up": "UP" in flags,
                "addresses": (),
            }
            continue
        if cur is None:
            continue
        s = line.strip().split()
        if not s:
            continue
        if s[0].startswith("link/"):
            cur["link_type"] = s[0][5:]
            if s[0] == "link/ether" and len(s) > 1 and s[1] != "00:00:00:00:00:00":
                cur["mac"] = s[1]
        elif s[0] in ("inet", "inet6") and len(s) > 1 and "/" in s[1]:
            local, _, plen = s[1].partition("/")
            if plen.isdigit():
                scope = s[s.index("scope") + 1] if "scope" in s[:-1] else "global"
                addr = Address(s[0], local, int(plen), scope, "dynamic" in s)
                cur["addresses"] = (*cur["addresses"], addr)
    flush()
    return tuple(out)


def parse_routes(lines: list[str], family: str) -> tuple[Route, ...]:
    """``ip --json route`` (or plain text) for one family."""
    text = "\n".join(lines).strip()
    if not text:
        return ()
    if text.startswith("["):
        try:
            data = json.loads(text)
        except ValueError:
            return ()
        out = []
        for r in _list(data):
            dst = r.get("dst")
            if not isinstance(dst, str):
                continue
            flags: list[Any] = r["flags"] if isinstance(r.get("flags"), list) else []
            gw = r.get("gateway")
            dev = r.get("dev")
            out.append(
                Route(
                    family,
                    dst,
                    gw if isinstance(gw, str) else None,
                    dev if isinstance(dev, str) else None,
                    str(r.get("protocol", "boot")),
                    "onlink" in flags,
                )
            )
        return tuple(out)
    routes = []
    for line in lines:
        s = line.split()
        if not s or s[0] in ("unreachable", "prohibit", "blackhole", "local", "broadcast"):
            continue

        def arg(word: str, s: list[str] = s) -> str | None:
            return s[s.index(word) + 1] if word in s[:-1] else None

        routes.append(
            Route(family, s[0], arg("via"), arg("dev"), arg("proto") or "boot", "onlink" in s)
        )
    return tuple(routes)


def parse_staging(lines: list[str]) -> Staging:
    """The staging section: path, existing ancestor, writability, ``df -Pk`` row and mount."""
    kv: dict[str, str] = {}
    free = None
    mount_point, fstype = "", ""
    options: tuple[str, ...] = ()
    for line in lines:
        if line.startswith("mount="):
            parts = line[6:].split()
            if len(parts) >= 3:
                mount_point, fstype, options = parts[0], parts[1], tuple(parts[2].split(","))
            continue
        k, sep, v = line.partition("=")
        if sep and k in ("path", "existing", "writable"):
            kv[k] = v
            continue
        cols = line.split()
        if len(cols) >= 6 and cols[3].isdigit():
            free = int(cols[3]) * 1024
    return Staging(
        path=kv.get("path", ""),
        existing=kv.get("existing", ""),
        writable=kv.get("writable") == "yes",
        free_bytes=free,
        mount_point=mount_point,
        fstype=fstype,
        options=options,
    )


def _tri(v: str | None) -> bool | None:
    return {"yes": True, "no": False}.get(v or "")


def parse_probe(text: str) -> Facts:
    """Build :class:`Facts` from the whole probe output; never raises on odd input."""
    sec = split_sections(text)
    notes: list[str] = []
    if "end" not in sec:
        notes.append("the probe output was cut short; some facts are missing")
    uname = sec.get("uname", [])
    mem = parse_meminfo(sec.get("meminfo", []))
    ident = sec.get("id", [])
    uid = int(ident[0]) if ident and ident[0].strip().isdigit() else None
    virt = parse_kv(sec.get("virt", []))
    markers = [ln.split("=", 1)[1] for ln in sec.get("virt", []) if ln.startswith("marker=")]
    container = virt.get("container", "")
    if container in ("none", ""):
        container = virt.get("env-container", "") or _container_from_markers(markers)
    kexec = sec.get("kexec", [])
    tools = parse_kv(sec.get("tools", []))
    sort_v = tools.pop("sort-v", "") == "1.9"
    setsid_wait = tools.pop("setsid-wait", "") == "yes"
    cpus_text = tools.pop("cpus", "").strip()
    tools = {name: path for name, path in tools.items() if path}  # "name=": not found
    cpus = int(cpus_text) if cpus_text.isdigit() and len(cpus_text) < 7 else None
    cpus = cpus or None  # nothing counted says nothing
    fmt, ifaces = parse_ip_addr(sec.get("ip-addr", []))
    if fmt == "text":
        notes.append("the server's ip has no --json; network facts come from its plain output")
    routes = parse_routes(sec.get("ip-route4", []), "inet") + parse_routes(
        sec.get("ip-route6", []), "inet6"
    )
    reach = parse_kv(sec.get("reach", []))
    dns = tuple(ln.split()[1] for ln in sec.get("dns", []) if len(ln.split()) > 1)
    priv_lines = sec.get("priv", [])
    said = priv_lines[0].strip() if priv_lines else ""
    privilege = PrivilegeKind(said) if said in set(PrivilegeKind) else PrivilegeKind.NONE
    os_release = parse_os_release(sec.get("os-release", []))
    old_root = old_root_from_lines(sec.get("old-root", []), os_release.get("PRETTY_NAME", ""))
    return Facts(
        kernel=uname[0].strip() if uname else "",
        machine=uname[1].strip() if len(uname) > 1 else "",
        os_release=os_release,
        hostname=(sec.get("hostname") or [""])[0].strip(),
        boot_id=(sec.get("boot-id") or [""])[0].strip(),
        mem_total=mem.get("MemTotal"),
        mem_available=mem.get("MemAvailable"),
        swap_total=mem.get("SwapTotal"),
        uid=uid,
        user=ident[1].strip() if len(ident) > 1 else "",
        home=ident[2].strip() if len(ident) > 2 else "",
        virt=virt.get("virt", ""),
        container=container,
        kexec_load_disabled=(kexec[0].strip() == "1")
        if kexec and kexec[0].strip() in "01"
        else None,
        lockdown=parse_lockdown(sec.get("lockdown", [])),
        tools=tools,
        sort_v=sort_v,
        setsid_wait=setsid_wait,
        cpus=cpus,
        privilege=privilege,
        staging=parse_staging(sec.get("staging", [])),
        net_format=fmt,
        interfaces=ifaces,
        routes=routes,
        dns=dns,
        host_key_files=tuple(sorted(ln.strip() for ln in sec.get("host-keys", []))),
        reach_v4=_tri(reach.get("v4")),
        reach_v6=_tri(reach.get("v6")),
        old_root=old_root,
        notes=tuple(notes),
    )


def _container_from_markers(markers: list[str]) -> str:
    for m in markers:
        if m in ("openvz", "docker", "podman"):
            return m
    return "openvz" if "proc-vz" in markers and "envid" in markers else ""

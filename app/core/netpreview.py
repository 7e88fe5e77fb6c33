"""What the installer will restore of the server's network, and what it will lose, in sentences."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.core.probe import Facts, Route


@dataclass(frozen=True)
class NetPreview:
    """Plain sentences for the user, and the addresses to look for after the kexec."""

    keeps: tuple[str, ...] = ()
    loses: tuple[str, ...] = ()
    expected_addresses: tuple[str, ...] = ()
    may_move: bool = False  # the address came from DHCP and may change
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "keeps": list(self.keeps),
            "loses": list(self.loses),
            "expected_addresses": list(self.expected_addresses),
            "may_move": self.may_move,
        }


KEPT_ROUTE_PROTOCOLS_EXCLUDED = ("dhcp", "kernel", "ra")


def preview(facts: Facts) -> NetPreview:
    """Mirror the installer's restore logic over the probed ``ip`` state."""
    if facts.net_format == "none" or not facts.interfaces:
        return NetPreview(
            loses=(
                "The server's network configuration could not be read, so nothing can be "
                "previewed. The installer saves it with its own `ip` anyway.",
            ),
        )
    keeps: list[str] = []
    loses: list[str] = []
    expected: list[str] = []
    may_move = False
    by_name = {i.name: i for i in facts.interfaces}
    for iface in facts.interfaces:
        if iface.link_type == "loopback" or iface.name == "lo":
            continue
        globals_ = [a for a in iface.addresses if a.scope == "global"]
        static = [a for a in globals_ if not a.dynamic]
        dynamic = [a for a in globals_ if a.dynamic]
        if iface.kind in ("bond", "bridge", "vlan", "bond-or-bridge", "team", "macvlan"):
            what = "bonds or bridges" if iface.kind == "bond-or-bridge" else f"{iface.kind}s"
            loses.append(
                f"{iface.name} is a {iface.kind.replace('-or-', ' or ')}: the installer does "
                f"not recreate {what}. Its addresses "
                f"({', '.join(a.cidr for a in globals_) or 'none'}) will not come back."
            )
            continue
        if iface.master and iface.master in by_name:
            loses.append(
                f"{iface.name} belongs to {iface.master}; it will come up on its own with DHCP."
            )
        if iface.mac is None:
            if globals_:
                loses.append(
                    f"{iface.name} has no MAC address ({iface.link_type}), so the installer "
                    f"cannot match it: {', '.join(a.cidr for a in globals_)} will be lost."
                )
            continue
        if iface.name.startswith(("wl", "wlan")):
            loses.append(f"{iface.name} looks like Wi-Fi, which the installer does not set up.")
            continue
        if static:
            keeps.append(
                f"{iface.name} ({iface.mac}) keeps its static address"
                f"{'es' if len(static) > 1 else ''} {', '.join(a.cidr for a in static)}."
            )
            expected += [a.local for a in static]
        if dynamic:
            may_move = True
            keeps.append(
                f"{iface.name} asks DHCP again, requesting its old lease "
                f"{', '.join(a.cidr for a in dynamic)}."
            )
            loses.append(
                f"{', '.join(a.local for a in dynamic)} came from DHCP or router "
                "advertisements: the installer may get another address."
            )
            expected += [a.local for a in dynamic]
        if not globals_ and iface.up:
            keeps.append(f"{iface.name} ({iface.mac}) will try DHCP.")
    for r in facts.routes:
        if r.protocol in KEPT_ROUTE_PROTOCOLS_EXCLUDED:
            continue
        dev = by_name.get(r.dev or "")
        if dev is None or dev.mac is None or dev.kind:
            continue
        if r.gateway or r.dst != "default":
            keeps.append(f"Route {_route_text(r)} is kept.")
    if facts.dns:
        loses.append(
            f"DNS servers ({', '.join(facts.dns)}) are not copied: the installer uses what "
            "DHCP or router advertisements give it."
        )
    return NetPreview(tuple(keeps), tuple(loses), tuple(dict.fromkeys(expected)), may_move)


def _route_text(r: Route) -> str:
    via = f" via {r.gateway}" if r.gateway else ""
    onlink = " (onlink)" if r.onlink else ""
    return f"{r.dst}{via} on {r.dev}{onlink}"

# Copyright: enclave.llm contributors
# Apache License 2.0 (see LICENSE)
"""The zone model of the enclave.llm firewall, without Ansible.

Zones are inventory groups ``zone_<name>`` with ``zone_cidrs``; flows say which
zone may reach which zone on which ports. Everything here is a pure function of
the inventory, so it can be validated (and unit-tested) before any host is
touched, and the auditor's matrix comes from the same data the rulesets do.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

try:
    import netaddr
    HAS_NETADDR = True
except ImportError:  # pragma: no cover - reported by require_netaddr()
    netaddr = None
    HAS_NETADDR = False

ZONE_PREFIX = "zone_"
KNOWN_ZONES = ("dmz", "app", "inference", "storage", "management")
ANY = "any"
PROTOS = ("tcp", "udp")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


class FirewallModelError(ValueError):
    """The inventory or a flow is invalid; ``errors`` holds one message per problem."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("; ".join(self.errors))


def require_netaddr() -> None:
    if not HAS_NETADDR:
        raise FirewallModelError(["the Python library netaddr is required on the controller (pip install netaddr)"])


def _as_list(value: Any) -> list:
    if value is None or value == "":
        return []
    if isinstance(value, (str, int)):
        return [value]
    if isinstance(value, (list, tuple, set)):
        return list(value)
    return [value]


# --------------------------------------------------------------------- ports --
def parse_ports(ports: Any, where: str) -> tuple[list[tuple[int, int]], list[str]]:
    """Ports as sorted, merged ``(first, last)`` ranges, and the errors found.

    Accepts ints, numeric strings and ``"first-last"`` ranges; each port must lie
    in 1-65535. ``where`` names the flow in the messages.
    """
    ranges: list[tuple[int, int]] = []
    errors: list[str] = []
    items = _as_list(ports)
    if not items:
        errors.append(f"{where}: ports is empty; give at least one port in 1-65535")
    for item in items:
        if isinstance(item, bool):
            errors.append(f"{where}: port {item!r} is not a number; give ports in 1-65535")
            continue
        first = last = None
        if isinstance(item, int):
            first = last = item
        elif isinstance(item, str):
            match = _RANGE.match(item)
            if match:
                first, last = int(match.group(1)), int(match.group(2))
            elif item.strip().isdigit():
                first = last = int(item.strip())
        if first is None or last is None:
            errors.append(f"{where}: port {item!r} is not a number or a 'first-last' range")
            continue
        if not (1 <= first <= 65535 and 1 <= last <= 65535):
            errors.append(f"{where}: port {item!r} is outside 1-65535")
            continue
        if first > last:
            errors.append(f"{where}: port range {item!r} runs backwards")
            continue
        ranges.append((first, last))
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(last, merged[-1][1]))
        else:
            merged.append((first, last))
    return merged, errors


def ports_text(ranges: list[tuple[int, int]]) -> str:
    """``22, 8000-8003`` - how nftables and the matrix write a port set."""
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def _overlap(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for a1, a2 in a:
        for b1, b2 in b:
            lo, hi = max(a1, b1), min(a2, b2)
            if lo <= hi:
                out.append((lo, hi))
    return out


# --------------------------------------------------------------------- zones --
def _get(vars_: Any, key: str, default: Any = None) -> Any:
    try:
        value = vars_.get(key, default) if isinstance(vars_, Mapping) or hasattr(vars_, "get") else default
    except Exception:  # an undefined variable in a lazy hostvars entry
        return default
    return default if value is None else value


def host_addresses(name: str, hvars: Any) -> tuple[list[str], list[str]]:
    """The firewall addresses of a host (``firewall_address``, else ``ansible_host``) and errors."""
    raw = _get(hvars, "firewall_address") or _get(hvars, "ansible_host") or name
    addresses, errors = [], []
    for item in _as_list(raw):
        try:
            addresses.append(str(netaddr.IPAddress(str(item).strip())))
        except (netaddr.AddrFormatError, ValueError, TypeError):
            errors.append(f"host {name}: address {item!r} is not an IP address; set firewall_address "
                          "to the host's address in its zone")
    return addresses, errors


def zone_model(hostvars: Mapping, groups: Mapping, zone_cidrs: Mapping | None = None) -> dict:
    """Validate the zones of the inventory and return the model.

    ``{'zones': {zone: {'cidrs': [...merged...], 'hosts': {host: [addresses]}}},
    'host_zone': {host: zone}}``. Zone CIDRs are the union of ``zone_cidrs`` of the
    zone's hosts (group variables) and ``zone_cidrs[zone]`` (for zones without
    hosts, such as management). Raises FirewallModelError naming each host or zone.
    """
    require_netaddr()
    errors: list[str] = []
    extra = dict(zone_cidrs or {})
    zone_groups = sorted(g[len(ZONE_PREFIX):] for g in groups if str(g).startswith(ZONE_PREFIX))
    for zone in list(zone_groups) + sorted(extra):
        if zone not in KNOWN_ZONES:
            errors.append(f"zone {zone!r} is not one of {', '.join(KNOWN_ZONES)} (group {ZONE_PREFIX}{zone})")
    zones: dict[str, dict] = {}
    host_zone: dict[str, str] = {}
    seen: dict[str, list[str]] = {}
    for zone in sorted(set(zone_groups)):
        for host in groups.get(ZONE_PREFIX + zone, []) or []:
            seen.setdefault(host, []).append(zone)
    for zone in sorted(set(zone_groups) | set(extra)):
        if zone not in KNOWN_ZONES:
            continue
        members = list(groups.get(ZONE_PREFIX + zone, []) or [])
        raw: list[tuple[str, Any]] = [(f"firewall_zone_cidrs[{zone}]", c) for c in _as_list(extra.get(zone))]
        for host in members:
            if len(seen[host]) > 1:
                continue  # its zone_cidrs belong to one of its groups only; reported below
            raw += [(f"zone_cidrs of host {host}", c) for c in _as_list(_get(hostvars.get(host, {}), "zone_cidrs"))]
        networks = []
        for source, cidr in raw:
            try:
                networks.append(netaddr.IPNetwork(str(cidr).strip()))
            except (netaddr.AddrFormatError, ValueError, TypeError):
                errors.append(f"zone {zone}: {source}: {cidr!r} is not a CIDR")
        if not networks:
            errors.append(f"zone {zone}: no CIDRs; set zone_cidrs in group_vars of {ZONE_PREFIX}{zone} "
                          f"(or firewall_zone_cidrs['{zone}'])")
        zones[zone] = {"cidrs": [str(n) for n in netaddr.cidr_merge(networks)], "hosts": {}}
    for host, host_zones in sorted(seen.items()):
        if len(host_zones) > 1:
            errors.append(f"host {host} is in more than one zone ({', '.join(ZONE_PREFIX + z for z in host_zones)}); "
                          "a host belongs to exactly one zone")
            continue
        zone = host_zones[0]
        host_zone[host] = zone
        addresses, address_errors = host_addresses(host, hostvars.get(host, {}))
        errors += address_errors
        cidrs = netaddr.IPSet(zones[zone]["cidrs"])
        for address in addresses:
            if zones[zone]["cidrs"] and address not in cidrs:
                errors.append(f"host {host}: address {address} is outside the CIDRs of zone {zone} "
                              f"({', '.join(zones[zone]['cidrs'])})")
        zones[zone]["hosts"][host] = addresses
    names = sorted(zones)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            common = netaddr.IPSet(zones[first]["cidrs"]) & netaddr.IPSet(zones[second]["cidrs"])
            if common:
                errors.append(f"zones {first} and {second} overlap in {', '.join(str(c) for c in common.iter_cidrs())}; "
                              "zone CIDRs must be disjoint")
    if errors:
        raise FirewallModelError(errors)
    return {"zones": zones, "host_zone": host_zone}


# --------------------------------------------------------------------- flows --
def default_flows(settings: Mapping) -> list[dict]:
    """The default zone policy as flows ``{name, proto, ports, from_zones, to_zones}``.

    ``settings`` keys (all optional): client_ports [443], app_ports [443, 4180, 8443],
    engine_ports [8000, 11434], storage_ports [2049], multinode (False),
    multinode_ports [6379, 8265, 29500, 29550], collector_tcp_ports [514, 2514],
    collector_udp_ports [514], ssh_port 22.
    """
    s = dict(settings or {})
    every = list(KNOWN_ZONES)
    flows = [
        {"name": "clients-to-edge", "proto": "tcp", "ports": s.get("client_ports", [443]),
         "from_zones": [ANY], "to_zones": ["dmz"]},
        {"name": "edge-to-app", "proto": "tcp", "ports": s.get("app_ports", [443, 4180, 8443]),
         "from_zones": ["dmz"], "to_zones": ["app"]},
        {"name": "app-to-engines", "proto": "tcp", "ports": s.get("engine_ports", [8000, 11434]),
         "from_zones": ["app"], "to_zones": ["inference"]},
    ]
    if _as_list(s.get("storage_ports", [2049])):
        flows.append({"name": "inference-to-storage", "proto": "tcp", "ports": s.get("storage_ports", [2049]),
                      "from_zones": ["inference"], "to_zones": ["storage"]})
    if s.get("multinode", False):
        flows.append({"name": "inference-multinode", "proto": "tcp",
                      "ports": s.get("multinode_ports", [6379, 8265, 29500, 29550]),
                      "from_zones": ["inference"], "to_zones": ["inference"]})
    if _as_list(s.get("collector_tcp_ports", [514, 2514])):
        flows.append({"name": "logs-to-collector", "proto": "tcp", "ports": s.get("collector_tcp_ports", [514, 2514]),
                      "from_zones": every, "to_zones": ["storage"]})
    if _as_list(s.get("collector_udp_ports", [514])):
        flows.append({"name": "syslog-udp-to-collector", "proto": "udp", "ports": s.get("collector_udp_ports", [514]),
                      "from_zones": every, "to_zones": ["storage"]})
    flows.append({"name": "management-ssh", "proto": "tcp", "ports": [s.get("ssh_port", 22)],
                  "from_zones": ["management"], "to_zones": every})
    return flows


def check_flow(flow: Any, known_zones: list[str], internal_ports: Any, origin: str,
               host_zone: str | None = None) -> tuple[dict | None, list[str]]:
    """Validate one flow or published rule and normalise it.

    A published rule (``<role>_firewall_rules``) has no ``to_zones``: it opens ports
    on the host that carries it (``host_zone``). A flow that opens an engine-internal
    port (``internal_ports``) to a zone other than inference is refused.
    """
    if not isinstance(flow, Mapping):
        return None, [f"{origin}: {flow!r} is not a mapping with name, proto, ports, from_zones"]
    name = flow.get("name")
    where = f"{origin} rule {name!r}"
    errors: list[str] = []
    if not isinstance(name, str) or not _NAME.match(name):
        errors.append(f"{where}: name must be [a-z0-9-], 1-63 characters")
    proto = str(flow.get("proto", "tcp")).lower()
    if proto not in PROTOS:
        errors.append(f"{where}: proto {flow.get('proto')!r} is not tcp or udp")
    ranges, port_errors = parse_ports(flow.get("ports"), where)
    errors += port_errors
    # Zones the design names but the inventory leaves empty are valid and
    # contribute no source; a name outside the design is a typo to report.
    valid = set(known_zones) | set(KNOWN_ZONES) | {ANY}
    from_zones = [str(z) for z in _as_list(flow.get("from_zones"))]
    if not from_zones:
        errors.append(f"{where}: from_zones is empty")
    for zone in from_zones:
        if zone not in valid:
            errors.append(f"{where}: unknown zone {zone!r} in from_zones (known: {', '.join(sorted(valid))})")
    to_zones = [str(z) for z in _as_list(flow.get("to_zones"))] if "to_zones" in flow else (
        [host_zone] if host_zone else [])
    for zone in to_zones:
        if zone not in valid or zone == ANY:
            errors.append(f"{where}: unknown zone {zone!r} in to_zones (known: {', '.join(sorted(known_zones))})")
    internal, _internal_errors = parse_ports(internal_ports, "engine-internal ports")
    if proto == "tcp" and "inference" in to_zones and _overlap(ranges, internal) and set(from_zones) - {"inference"}:
        errors.append(f"{where}: opens engine-internal port(s) {ports_text(_overlap(ranges, internal))} "
                      f"to {', '.join(sorted(set(from_zones) - {'inference'}))}; NCCL, Ray and vLLM's ZeroMQ ports "
                      "are reachable from the inference zone only")
    if errors:
        return None, errors
    return {"name": name, "proto": proto, "ports": ranges, "from_zones": from_zones,
            "to_zones": to_zones, "origin": origin}, []


def host_rules(model: Mapping, host: str, flows: Any, layers: Mapping[str, Any],
               internal_ports: Any = (6379, 8265, 29500, 29550)) -> list[dict]:
    """The accept rules of ``host``: the flows to its zone plus its published rules.

    ``layers`` maps an origin (``firewall_dependent_rules``, ``firewall_rules``...) to
    its list of rules; they open ports on this host. Each result carries the source
    CIDRs split by family (``saddr4``, ``saddr6``; both empty with ``any``).
    Raises FirewallModelError naming each bad flow or rule.
    """
    zones = model["zones"]
    zone = model["host_zone"].get(host)
    if zone is None:
        raise FirewallModelError([f"host {host} is in no zone; add it to one of "
                                  f"{', '.join(ZONE_PREFIX + z for z in KNOWN_ZONES)}"])
    known = sorted(zones)
    errors: list[str] = []
    checked: list[dict] = []
    for flow in _as_list(flows):
        if isinstance(flow, Mapping) and "to_zones" not in flow:
            flow = dict(flow, to_zones=[])
            errors.append(f"firewall flow {flow.get('name')!r}: to_zones is missing")
        rule, rule_errors = check_flow(flow, known, internal_ports, "firewall flow")
        errors += rule_errors
        if rule:
            checked.append(rule)
    for origin, rules in layers.items():
        for item in _as_list(rules):
            rule, rule_errors = check_flow(item, known, internal_ports, origin, host_zone=zone)
            errors += rule_errors
            if rule:
                checked.append(rule)
    names: dict[str, str] = {}
    for rule in checked:
        if rule["name"] in names and names[rule["name"]] != rule["origin"]:
            errors.append(f"{rule['origin']} rule {rule['name']!r}: name already used in {names[rule['name']]}")
        names.setdefault(rule["name"], rule["origin"])
    if errors:
        raise FirewallModelError(errors)
    out = []
    for rule in checked:
        if zone not in rule["to_zones"]:
            continue
        cidrs: list[str] = []
        for source in rule["from_zones"]:
            if source != ANY and source in zones:
                cidrs += zones[source]["cidrs"]
        merged = [] if ANY in rule["from_zones"] else [str(n) for n in netaddr.cidr_merge(cidrs)]
        if ANY not in rule["from_zones"] and not merged:
            continue  # its source zones are empty in this inventory: nothing to open
        out.append({"name": rule["name"], "proto": rule["proto"], "ports": ports_text(rule["ports"]),
                    "from_zones": rule["from_zones"], "origin": rule["origin"], "any": ANY in rule["from_zones"],
                    "saddr4": [c for c in merged if netaddr.IPNetwork(c).version == 4],
                    "saddr6": [c for c in merged if netaddr.IPNetwork(c).version == 6]})
    return out


def allows(rules: list[Mapping], address: str, port: int, proto: str = "tcp") -> bool:
    """Whether ``rules`` (from host_rules) accept a new connection from ``address`` to ``port``."""
    require_netaddr()
    try:
        ip = netaddr.IPAddress(address)
    except (netaddr.AddrFormatError, ValueError, TypeError) as exc:
        raise ValueError(f"{address!r} is not an IP address") from exc
    for rule in rules:
        if rule["proto"] != proto:
            continue
        ranges, _errors = parse_ports(rule["ports"].split(", "), "rule")
        if not any(a <= int(port) <= b for a, b in ranges):
            continue
        if rule["any"] or ip in netaddr.IPSet(rule["saddr4"] + rule["saddr6"]):
            return True
    return False


# -------------------------------------------------------------------- matrix --
def matrix_markdown(model: Mapping, per_host: Mapping[str, list[Mapping]]) -> str:
    """The auditor's table: every allowed flow, source zone to destination zone and hosts.

    Built from the per-host accept rules (what the rulesets contain), grouped by
    flow name, destination zone, protocol and ports.
    """
    rows: dict[tuple, list[str]] = {}
    for host in sorted(per_host):
        zone = model["host_zone"].get(host, "?")
        for rule in per_host[host]:
            sources = "any (clients)" if rule["any"] else ", ".join(rule["from_zones"])
            key = (sources, zone, rule["proto"], rule["ports"], rule["name"], rule["origin"])
            rows.setdefault(key, []).append(host)
    zone_hosts = {z: sorted(v["hosts"]) for z, v in model["zones"].items()}
    lines = ["| From | To zone | To hosts | Proto | Ports | Flow | Source |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    order = {z: i for i, z in enumerate(KNOWN_ZONES)}
    for key in sorted(rows, key=lambda k: (order.get(k[1], 99), k[4], k[2], k[0])):
        sources, zone, proto, ports, name, origin = key
        hosts = rows[key]
        to_hosts = "all" if hosts == zone_hosts.get(zone) else ", ".join(hosts)
        lines.append(f"| {sources} | {zone} | {to_hosts} | {proto} | {ports} | {name} | {origin} |")
    cidr_lines = ["| Zone | CIDRs | Hosts |", "| --- | --- | --- |"]
    for zone in sorted(model["zones"], key=lambda z: order.get(z, 99)):
        entry = model["zones"][zone]
        hosts = ", ".join(f"{h} ({', '.join(a)})" for h, a in sorted(entry["hosts"].items())) or "-"
        cidr_lines.append(f"| {zone} | {', '.join(entry['cidrs'])} | {hosts} |")
    tail = ("Everything not listed is dropped (new connections; replies to allowed ones pass as "
            "established/related), drops are logged at a limited rate. Loopback is allowed; ICMP/ICMPv6 "
            "echo is rate-limited, errors and IPv6 neighbour discovery pass.")
    return "\n".join(["### Zones", "", *cidr_lines, "", "### Allowed flows", "", *lines, "", tail, ""])

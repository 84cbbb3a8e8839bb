# Copyright: enclave.llm contributors
# Apache License 2.0 (see LICENSE)
"""Filters that wire the roles of site.yml to each other from the inventory."""
from __future__ import annotations

import ipaddress
from typing import Any

from ansible.errors import AnsibleFilterError


def _hosts(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        raise AnsibleFilterError(f"{field} must be a list of inventory host names, got {type(value).__name__}")
    hosts = list(value)
    for host in hosts:
        if not isinstance(host, str) or not host:
            raise AnsibleFilterError(f"{field}: {host!r} is not an inventory host name")
    return hosts


def site_address(host: Any, hostvars: Any) -> str:
    """The zone address of ``host``: ``firewall_address``, else ``ansible_host``, else its name."""
    if not isinstance(host, str) or not host:
        raise AnsibleFilterError(f"{host!r} is not an inventory host name")
    hvars = hostvars.get(host) if hasattr(hostvars, "get") else None
    if hvars is None:
        raise AnsibleFilterError(f"host {host!r} is not in hostvars")
    value = hvars.get("firewall_address") or hvars.get("ansible_host") or host
    value = str(value)
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if value.startswith("-") or any(c.isspace() or c in "/:@" for c in value):
        raise AnsibleFilterError(f"host {host}: address {value!r} is neither an IP address nor a host name; "
                                 "set firewall_address (or ansible_host) to its zone address")
    return value


def site_addresses(hosts: Any, hostvars: Any) -> list[str]:
    """Zone addresses of ``hosts``, in their order (see site_address)."""
    return [site_address(host, hostvars) for host in _hosts(hosts, "hosts")]


def site_endpoints(hosts: Any, hostvars: Any, port: Any) -> list[str]:
    """``address:port`` of each host (IPv6 addresses in brackets), in their order."""
    try:
        number = int(port)
    except (TypeError, ValueError):
        raise AnsibleFilterError(f"port {port!r} is not a number") from None
    if not 0 < number < 65536:
        raise AnsibleFilterError(f"port {number} is outside 1-65535")
    out = []
    for address in site_addresses(hosts, hostvars):
        out.append(f"[{address}]:{number}" if ":" in address else f"{address}:{number}")
    return out


def site_host_cidrs(hosts: Any, hostvars: Any) -> list[str]:
    """``address/32`` (or ``/128``) of each host, for lists of trusted peers; a host name is refused."""
    out = []
    for host in _hosts(hosts, "hosts"):
        address = site_address(host, hostvars)
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            raise AnsibleFilterError(f"host {host}: {address!r} is not an IP address; a trusted peer needs one "
                                     "(set firewall_address)") from None
        out.append(f"{parsed}/{parsed.max_prefixlen}")
    return out


def site_peer(host: Any, candidates: Any, clients: Any = None) -> str:
    """The member of ``candidates`` that ``host`` talks to.

    The host itself when it is a candidate (co-located service); otherwise the
    candidates are spread over ``clients`` round-robin by the host's position, so
    each client keeps the same peer from run to run. A host that is not among the
    clients gets the first candidate.
    """
    if not isinstance(host, str) or not host:
        raise AnsibleFilterError(f"{host!r} is not an inventory host name")
    pool = _hosts(candidates, "candidates")
    if not pool:
        raise AnsibleFilterError(f"host {host}: no candidate host to connect to (is the group empty?)")
    if host in pool:
        return host
    order = _hosts(clients, "clients")
    index = order.index(host) if host in order else 0
    return pool[index % len(pool)]


class FilterModule:
    """Filters that derive the cross-role wiring of site.yml from the inventory."""

    def filters(self) -> dict:
        return {
            "site_address": site_address,
            "site_addresses": site_addresses,
            "site_endpoints": site_endpoints,
            "site_host_cidrs": site_host_cidrs,
            "site_peer": site_peer,
        }

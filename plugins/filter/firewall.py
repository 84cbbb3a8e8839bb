# Copyright: enclave.llm contributors
# Apache License 2.0 (see LICENSE)
"""Filters of the enclave.llm firewall: the zone model, the default flows, each
host's accept rules, the controller-session check and the auditor's matrix.
The logic lives in plugins/module_utils/firewall.py."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

from ansible_collections.enclave.llm.plugins.module_utils import firewall as fw


def _wrap(func, *args):
    try:
        return func(*args)
    except fw.FirewallModelError as exc:
        raise AnsibleFilterError("invalid firewall zone model: " + "; ".join(exc.errors)) from None


def firewall_zone_model(hostvars: Mapping, groups: Mapping, zone_cidrs: Mapping | None = None) -> dict:
    """Validated zones: merged CIDRs and host addresses per zone, and each host's zone."""
    return _wrap(fw.zone_model, hostvars, groups, zone_cidrs or {})


def firewall_default_flows(settings: Mapping) -> list[dict]:
    """The default zone-to-zone policy as flows."""
    return fw.default_flows(settings)


def firewall_host_rules(model: Mapping, host: str, flows: Any, layers: Mapping | None = None,
                        internal_ports: Any = (6379, 8265, 29500, 29550)) -> list[dict]:
    """The accept rules of one host, with source CIDRs resolved."""
    return _wrap(fw.host_rules, model, host, flows, layers or {}, internal_ports)


def firewall_allows(rules: list, address: str, port: int, proto: str = "tcp") -> bool:
    """Whether the rules accept a new connection from address to port."""
    if not address:
        return True
    try:
        return fw.allows(rules, str(address), int(port), proto)
    except (ValueError, TypeError) as exc:
        raise AnsibleFilterError(f"firewall_allows: {address!r}:{port!r} is not an address and port: {exc}") from None


def firewall_matrix(model: Mapping, per_host: Mapping) -> str:
    """The auditor's markdown table of allowed flows."""
    return fw.matrix_markdown(model, per_host)


def firewall_engine_ports(hosts: Any, hostvars: Mapping, default: Any = (8000, 11434)) -> list[int]:
    """The inference API ports the inventory declares (vllm_models ports, ollama_port)."""
    ports: set[int] = set()
    for host in hosts or []:
        hvars = hostvars.get(host, {}) if hasattr(hostvars, "get") else {}
        for model in hvars.get("vllm_models", None) or []:
            if isinstance(model, Mapping) and model.get("port") is not None:
                ports.add(int(model["port"]))
        if hvars.get("ollama_models", None):
            ports.add(int(hvars.get("ollama_port", None) or 11434))
    return sorted(ports) if ports else [int(p) for p in default]


class FilterModule:
    """enclave.llm firewall filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "firewall_zone_model": firewall_zone_model,
            "firewall_default_flows": firewall_default_flows,
            "firewall_host_rules": firewall_host_rules,
            "firewall_allows": firewall_allows,
            "firewall_matrix": firewall_matrix,
            "firewall_engine_ports": firewall_engine_ports,
        }

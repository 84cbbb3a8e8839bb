# Copyright: enclave.llm contributors
# Apache License 2.0 (see LICENSE)
"""Filters that read what the inference hosts serve, for the balancer and rolling updates."""
from __future__ import annotations

import ipaddress
import re
from typing import Any

from ansible.errors import AnsibleFilterError

# What a served model name may contain: it becomes an HAProxy backend name, a
# map key and a header value, so letters, digits and . _ : / - only.
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
DEFAULT_OLLAMA_PORT = 11434


def model_name_error(name: Any) -> str | None:
    """Why ``name`` cannot be a served model name, or None when it can."""
    if not isinstance(name, str) or not name:
        return f"{name!r} is not a model name"
    if not _MODEL.match(name):
        return (f"model name {name!r} has characters outside letters, digits and . _ : / - "
                "(or does not start with a letter or digit, or is longer than 128 characters)")
    return None


def _port(value: Any, where: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise AnsibleFilterError(f"{where}: port {value!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise AnsibleFilterError(f"{where}: port {port} is outside 1-65535")
    return port


def _address(host: str, hostvars: dict) -> str:
    value = hostvars.get("inference_address") or hostvars.get("ansible_host") or host
    value = str(value).strip()
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not _HOSTNAME.match(value):
        raise AnsibleFilterError(f"host {host}: inference address {value!r} is neither an IP address nor a host name")
    return value


def inference_backends(hosts: Any, hostvars: Any, require: bool = True) -> list[dict]:
    """Group every (host, model) the inference hosts serve by model.

    ``hosts`` is a list of inventory names (``groups['zone_inference']``),
    ``hostvars`` the ``hostvars`` mapping. A host serves each entry of
    ``vllm_models`` (``name``, ``port``) and each name in ``ollama_models`` (at
    ``ollama_port``, 11434 by default). Returns
    ``[{model, servers: [{name, address, port, engine}]}]`` sorted by model, the
    servers in inventory order. Raises AnsibleFilterError naming the host and the
    field for odd model names, bad ports, two models on one vLLM port, and (when
    ``require``) when no host serves any model.
    """
    if hosts is None:
        hosts = []
    if isinstance(hosts, str):
        hosts = [hosts]
    if not isinstance(hosts, (list, tuple)):
        raise AnsibleFilterError(f"inference_backends expects a list of host names, got {type(hosts).__name__}")
    models: dict[str, list[dict]] = {}
    for host in hosts:
        hvars = hostvars.get(host) if hasattr(hostvars, "get") else None
        if hvars is None:
            raise AnsibleFilterError(f"host {host!r} is not in hostvars")
        address = _address(host, hvars)
        used_ports: dict[int, str] = {}
        entries: list[tuple[str, int, str]] = []
        vllm = hvars.get("vllm_models") or []
        if not isinstance(vllm, (list, tuple)):
            raise AnsibleFilterError(f"host {host}: vllm_models must be a list of {{name, model, port}}")
        for index, entry in enumerate(vllm):
            where = f"host {host}: vllm_models[{index}]"
            if not isinstance(entry, dict) or "name" not in entry:
                raise AnsibleFilterError(f"{where} needs a 'name' (the served model name)")
            if "port" not in entry:
                raise AnsibleFilterError(f"{where} ({entry['name']}) needs a 'port'")
            port = _port(entry["port"], where)
            if port in used_ports:
                raise AnsibleFilterError(f"{where}: port {port} is already used by model {used_ports[port]!r}")
            used_ports[port] = entry["name"]
            entries.append((entry["name"], port, "vllm"))
        ollama = hvars.get("ollama_models") or []
        if isinstance(ollama, str):
            ollama = [ollama]
        if not isinstance(ollama, (list, tuple)):
            raise AnsibleFilterError(f"host {host}: ollama_models must be a list of model names")
        if ollama:
            port = _port(hvars.get("ollama_port", DEFAULT_OLLAMA_PORT), f"host {host}: ollama_port")
            if port in used_ports:
                raise AnsibleFilterError(f"host {host}: ollama_port {port} is also a vllm_models port")
            for name in ollama:
                entries.append((name.get("name") if isinstance(name, dict) else name, port, "ollama"))
        for name, port, engine in entries:
            error = model_name_error(name)
            if error:
                raise AnsibleFilterError(f"host {host}: {error}")
            servers = models.setdefault(name, [])
            if any(s["name"] == host for s in servers):
                raise AnsibleFilterError(f"host {host} serves model {name!r} twice")
            servers.append({"name": host, "address": address, "port": port, "engine": engine})
    if require and not models:
        raise AnsibleFilterError(
            "no inference backends: no host of the given group declares vllm_models or ollama_models "
            f"(hosts: {', '.join(map(str, hosts)) or 'none'}); add hosts to zone_inference with served models")
    return [{"model": name, "servers": models[name]} for name in sorted(models)]


class FilterModule:
    def filters(self) -> dict:
        return {"inference_backends": inference_backends}

# Copyright: enclave.llm contributors
# Apache License 2.0 (see LICENSE)
"""Filters that read what the inference hosts serve, for the balancer and rolling updates."""
from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from typing import Any

from ansible.errors import AnsibleFilterError

# What a served model name may contain: it becomes an HAProxy backend name, a
# map key and a header value, so letters, digits and . _ : / - only.
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
DEFAULT_OLLAMA_PORT = 11434
# enclave.llm.vllm's default vllm_api_key_file: every vLLM it runs needs that key on /v1/*.
DEFAULT_VLLM_API_KEY_FILE = "/etc/vllm/api-key"
# What an API key may contain to travel in "Authorization: Bearer <key>" and in an
# HAProxy map line: printable ASCII without spaces (vLLM compares it verbatim).
_API_KEY = re.compile(r"^[\x21-\x7e]{1,4096}$")


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


def _api_key_file(host: str, hvars: dict) -> str | None:
    """The vLLM API key file on ``host`` (``vllm_api_key_file``), or None when it runs without a key."""
    value = hvars.get("vllm_api_key_file", DEFAULT_VLLM_API_KEY_FILE)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.startswith("/") or any(c in value for c in "\n\r\t "):
        raise AnsibleFilterError(f"host {host}: vllm_api_key_file {value!r} must be an absolute path "
                                 "(or empty when its vLLM runs without --api-key)")
    return value


def inference_backends(hosts: Any, hostvars: Any, require: bool = True) -> list[dict]:
    """Group every (host, model) the inference hosts serve by model.

    ``hosts`` is a list of inventory names (``groups['zone_inference']``),
    ``hostvars`` the ``hostvars`` mapping. A host serves each entry of
    ``vllm_models`` (``name``, ``port``) and each name in ``ollama_models`` (at
    ``ollama_port``, 11434 by default). Returns
    ``[{model, servers: [{name, address, port, engine, api_key_file}]}]`` sorted by
    model, the servers in inventory order. ``api_key_file`` is the host's
    ``vllm_api_key_file`` (default ``/etc/vllm/api-key``, empty for a vLLM without
    a key) for vLLM servers and None for Ollama, which has no API key. Raises AnsibleFilterError naming the host and the
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
        key_file = None
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
        if entries:
            key_file = _api_key_file(host, hvars)
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
            servers.append({"name": host, "address": address, "port": port, "engine": engine,
                            "api_key_file": key_file if engine == "vllm" else None})
    if require and not models:
        raise AnsibleFilterError(
            "no inference backends: no host of the given group declares vllm_models or ollama_models "
            f"(hosts: {', '.join(map(str, hosts)) or 'none'}); add hosts to zone_inference with served models")
    return [{"model": name, "servers": models[name]} for name in sorted(models)]


def inference_backend_name(model: Any, index: Any) -> str:
    """HAProxy's name for the backend of ``model`` at 1-based position ``index``.

    HAProxy names allow letters, digits and ``- _ . :`` only; the index keeps
    them unique (``Qwen/Qwen2.5`` and ``Qwen_Qwen2.5`` differ by index).
    """
    if not isinstance(model, str) or not model:
        raise AnsibleFilterError(f"inference_backend_name: {model!r} is not a model name")
    return f"model{int(index)}_{re.sub(r'[^A-Za-z0-9_.:-]', '_', model)}"


def _decode_key(entry: dict, where: str) -> str:
    content = entry.get("content")
    if not isinstance(content, str):
        raise AnsibleFilterError(f"{where}: the key file was not read (no content)")
    try:
        text = base64.b64decode(content, validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise AnsibleFilterError(f"{where}: the key file is not UTF-8 text") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise AnsibleFilterError(f"{where}: the key file must hold exactly one line with the key, "
                                 f"it holds {len(lines)} non-empty lines")
    if not _API_KEY.match(lines[0]):
        # Never the key itself in a message: say what is wrong with it.
        raise AnsibleFilterError(f"{where}: the key has spaces, control or non-ASCII characters, or is longer "
                                 "than 4096 characters; it cannot travel in an Authorization header")
    return lines[0]


def inference_check_keys(backends: Any, key_files: Any) -> str:
    """The HAProxy map that gives each health check its ``Authorization`` value.

    ``backends`` is the balancer's backend list (``inference_backends``' result,
    backend ``index`` = position + 1). ``key_files`` are the results of
    ``ansible.builtin.slurp`` looped over ``{name, api_key_file}``: each has
    ``item`` (``name``: inventory host, ``api_key_file``: path there) and
    ``content`` (base64). Returns one line ``<backend>/<server> Bearer <key>``
    per server with an ``api_key_file``, sorted, ending with a newline (empty
    text when no server needs a key). Raises AnsibleFilterError naming the host
    and the file, never the key, when a key is missing or unusable.
    """
    if not isinstance(backends, (list, tuple)):
        raise AnsibleFilterError("inference_check_keys expects the list of backends")
    keys: dict[tuple[str, str], str] = {}
    for entry in key_files or []:
        item = entry.get("item") if isinstance(entry, dict) else None
        if isinstance(item, (list, tuple)) and len(item) == 2:
            item = {"name": item[0], "api_key_file": item[1]}
        if not isinstance(item, dict) or "name" not in item or "api_key_file" not in item:
            raise AnsibleFilterError("inference_check_keys expects slurp results looped over {name, api_key_file} "
                                     "or [name, api_key_file]")
        where = f"host {item['name']}: API key file {item['api_key_file']}"
        if entry.get("failed") or entry.get("skipped"):
            continue
        keys[(item["name"], item["api_key_file"])] = _decode_key(entry, where)
    lines = []
    for index, backend in enumerate(backends, start=1):
        name = inference_backend_name(backend.get("model"), index)
        for server in backend.get("servers") or []:
            key_file = server.get("api_key_file")
            if not key_file:
                continue
            key = keys.get((server["name"], key_file))
            if key is None:
                raise AnsibleFilterError(f"host {server['name']}: API key file {key_file} (model "
                                         f"{backend.get('model')}) was not read; the balancer needs it for the "
                                         "/v1/models health check")
            lines.append(f"{name}/{server['name']} Bearer {key}")
    return "".join(line + "\n" for line in sorted(lines))


def inference_host_servers(backends: Any, host: Any) -> list[dict]:
    """The balancer's servers that are ``host``: ``[{backend, server, model, port, engine}]``.

    ``backends`` is the balancer's backend list (``inference_backends``' result,
    backend ``index`` = position + 1); the rolling update drains and re-enables
    exactly these through HAProxy's runtime API.
    """
    if not isinstance(backends, (list, tuple)):
        raise AnsibleFilterError("inference_host_servers expects the list of backends")
    if not isinstance(host, str) or not host:
        raise AnsibleFilterError(f"inference_host_servers: {host!r} is not an inventory host name")
    found = []
    for index, backend in enumerate(backends, start=1):
        name = inference_backend_name(backend.get("model"), index)
        for server in backend.get("servers") or []:
            if server.get("name") == host:
                found.append({"backend": name, "server": host, "model": backend["model"],
                              "port": server.get("port"), "engine": server.get("engine")})
    return found


class FilterModule:
    def filters(self) -> dict:
        return {"inference_backends": inference_backends, "inference_backend_name": inference_backend_name,
                "inference_check_keys": inference_check_keys, "inference_host_servers": inference_host_servers}

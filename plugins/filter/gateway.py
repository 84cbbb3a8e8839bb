# Copyright: enclave.llm contributors
# Apache License 2.0 (see LICENSE)
"""Filters of the gateway role: the keys document (hashes only) from the inventory."""
from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Any

from ansible.errors import AnsibleFilterError

_KEY_ID = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DLP_ACTIONS = ("block", "log", "pseudonymize")
_MIN_SECRET = 16


def _where(index: int, entry: Any) -> str:
    name = entry.get("id") if isinstance(entry, dict) else None
    return f"gateway_api_keys[{index}]" + (f" (id {name})" if name else "")


def _expiry(value: Any, where: str) -> str | None:
    if value in (None, ""):
        return None
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise AnsibleFilterError(f"{where}: expires {text!r} is not an ISO 8601 date or time "
                                 "(e.g. 2026-12-31 or 2026-12-31T23:59:59Z)") from None
    if parsed.tzinfo is None:
        return parsed.strftime("%Y-%m-%dT%H:%M:%S") + "Z"
    return parsed.isoformat()


def gateway_keys_document(keys: Any) -> dict:
    """The gateway's keys file: per key id the sha256 of the whole key and its limits, never the key.

    Each entry gives either ``key`` (the full ``ek-<id>-<secret>``, from vault or a root-only file)
    or ``sha256`` (from ``enclave-gateway hash-key``).
    """
    if not isinstance(keys, list):
        raise AnsibleFilterError(f"gateway_api_keys must be a list, got {type(keys).__name__}")
    out, seen = [], set()
    for index, entry in enumerate(keys):
        where = _where(index, entry)
        if not isinstance(entry, dict):
            raise AnsibleFilterError(f"{where}: each key is a mapping with id, owner, models and key or sha256")
        key_id = entry.get("id")
        if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
            raise AnsibleFilterError(f"{where}: id must be 1-64 letters, digits or underscores (no '-')")
        if key_id in seen:
            raise AnsibleFilterError(f"{where}: id {key_id} is used twice")
        seen.add(key_id)
        secret, digest = entry.get("key"), entry.get("sha256")
        if bool(secret) == bool(digest):
            raise AnsibleFilterError(f"{where}: give exactly one of key (vault or a root-only file) or sha256")
        if secret:
            secret = str(secret).strip()
            prefix = f"ek-{key_id}-"
            if not secret.startswith(prefix) or len(secret) - len(prefix) < _MIN_SECRET:
                raise AnsibleFilterError(f"{where}: the key must read {prefix}<secret> with a secret of at least "
                                         f"{_MIN_SECRET} characters (the key itself is not shown)")
            digest = hashlib.sha256(secret.encode("utf-8")).hexdigest()
        digest = str(digest).lower()
        if not _SHA256.match(digest):
            raise AnsibleFilterError(f"{where}: sha256 must be 64 hex characters")
        models = entry.get("models")
        if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
            raise AnsibleFilterError(f"{where}: models must be a non-empty list of model names (or ['*'])")
        record = {"id": key_id, "sha256": digest, "owner": str(entry.get("owner") or key_id), "models": models,
                  "expires": _expiry(entry.get("expires"), where), "revoked": bool(entry.get("revoked", False))}
        for name in ("rate_per_minute", "token_quota"):
            value = entry.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise AnsibleFilterError(f"{where}: {name} must be a number >= 0 (0: unlimited)")
            record[name] = value
        action = entry.get("dlp_action")
        if action is not None:
            if action not in _DLP_ACTIONS:
                raise AnsibleFilterError(f"{where}: dlp_action must be one of {', '.join(_DLP_ACTIONS)}")
            record["dlp_action"] = action
        out.append(record)
    return {"keys": out}


class FilterModule:
    """enclave.llm gateway filters."""

    def filters(self) -> dict[str, Any]:
        return {"gateway_keys_document": gateway_keys_document}

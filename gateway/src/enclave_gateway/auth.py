"""API keys (sha256 only), SSO identity from trusted proxies, rate and token quota.

Keys have the form ``ek-<key id>-<secret>``; the keys file holds, per key id, the
sha256 of the whole key, the owner, the allowed models, an expiry, a rate (requests
per minute) and a token quota (tokens per quota period). The secret never reaches
the gateway's disk.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

KEY_PREFIX = "ek-"


@dataclass
class ApiKey:
    id: str
    sha256: str
    owner: str
    models: list[str]
    expires: float | None = None          # epoch seconds
    rate_per_minute: float = 0            # 0: unlimited
    token_quota: int = 0                  # 0: unlimited
    revoked: bool = False
    dlp_action: str | None = None


@dataclass
class Identity:
    kind: str                 # api_key | sso
    user: str
    key_id: str | None = None
    email: str | None = None
    groups: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    rate_per_minute: float = 0
    token_quota: int = 0
    dlp_action: str | None = None

    @property
    def subject(self) -> str:
        return f"key:{self.key_id}" if self.kind == "api_key" else f"sso:{self.user}"

    def audit(self) -> dict:
        out = {"kind": self.kind, "user": self.user}
        if self.key_id:
            out["key_id"] = self.key_id
        if self.email:
            out["email"] = self.email
        if self.groups:
            out["groups"] = self.groups
        return out


class AuthError(Exception):
    def __init__(self, status: int, code: str, message: str, reason: str):
        super().__init__(message)
        self.status, self.code, self.message, self.reason = status, code, message, reason


def _epoch(value) -> float | None:
    if value in (None, "", 0):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).replace("Z", "+00:00")
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def load_keys(path: str) -> dict[str, ApiKey]:
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    keys = {}
    for entry in data.get("keys", []):
        key = ApiKey(id=str(entry["id"]), sha256=str(entry["sha256"]).lower(), owner=str(entry.get("owner", "")),
                     models=list(entry.get("models", [])), expires=_epoch(entry.get("expires")),
                     rate_per_minute=float(entry.get("rate_per_minute") or 0),
                     token_quota=int(entry.get("token_quota") or 0), revoked=bool(entry.get("revoked", False)),
                     dlp_action=entry.get("dlp_action"))
        if "-" in key.id or not key.id:
            raise ValueError(f"key id {key.id!r} must be non-empty and contain no '-'")
        if len(key.sha256) != 64:
            raise ValueError(f"key {key.id}: sha256 must be 64 hex characters")
        keys[key.id] = key
    return keys


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class Networks:
    def __init__(self, cidrs: list[str]):
        self.networks = [ipaddress.ip_network(c, strict=False) for c in cidrs]

    def __contains__(self, address: str | None) -> bool:
        if not address:
            return False
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)


IDENTITY_HEADERS = ("x-forwarded-user", "x-forwarded-email", "x-forwarded-groups",
                    "x-forwarded-preferred-username")


class Authenticator:
    def __init__(self, keys: dict[str, ApiKey], trusted_proxies: list[str], sso_models: list[str],
                 sso_rate_per_minute: float = 0, sso_token_quota: int = 0, sso_group_models: dict | None = None):
        self.keys = keys
        self.trusted = Networks(trusted_proxies)
        self.sso_models = sso_models
        self.sso_group_models = sso_group_models or {}
        self.sso_rate = sso_rate_per_minute
        self.sso_quota = sso_token_quota

    def authenticate(self, headers, peer: str | None, now: float | None = None) -> Identity:
        now = time.time() if now is None else now
        authorization = headers.get("authorization", "")
        bearer = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
        if bearer.startswith(KEY_PREFIX):
            return self._api_key(bearer, now)
        has_identity = any(h in headers for h in IDENTITY_HEADERS)
        if has_identity and peer in self.trusted:
            user = headers.get("x-forwarded-user", "").strip() or headers.get("x-forwarded-email", "").strip()
            if not user:
                raise AuthError(401, "invalid_identity", "The SSO hop sent no user.", "sso_no_user")
            groups = [g.strip() for g in headers.get("x-forwarded-groups", "").split(",") if g.strip()]
            models = list(self.sso_models)
            for group in groups:
                models.extend(self.sso_group_models.get(group, []))
            return Identity("sso", user, email=headers.get("x-forwarded-email") or None, groups=groups,
                            models=models, rate_per_minute=self.sso_rate, token_quota=self.sso_quota)
        if has_identity:
            raise AuthError(401, "invalid_api_key",
                            "Identity headers are accepted only from the SSO proxy; send an API key.",
                            "untrusted_identity_headers")
        if bearer:
            raise AuthError(401, "invalid_api_key", "Incorrect API key provided.", "malformed_key")
        raise AuthError(401, "invalid_api_key",
                        "You didn't provide an API key. Send 'Authorization: Bearer ek-…'.", "no_key")

    def _api_key(self, bearer: str, now: float) -> Identity:
        parts = bearer.split("-", 2)
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise AuthError(401, "invalid_api_key", "Incorrect API key provided.", "malformed_key")
        record = self.keys.get(parts[1])
        digest = hash_key(bearer)
        # Compare against a dummy when the id is unknown, so timing does not tell ids apart.
        expected = record.sha256 if record else "0" * 64
        if not hmac.compare_digest(digest, expected) or record is None:
            raise AuthError(401, "invalid_api_key", "Incorrect API key provided.", "wrong_key")
        if record.revoked:
            raise AuthError(401, "invalid_api_key", "This API key has been revoked.", "revoked_key")
        if record.expires is not None and now >= record.expires:
            raise AuthError(401, "invalid_api_key", "This API key has expired.", "expired_key")
        return Identity("api_key", record.owner or record.id, key_id=record.id, models=record.models,
                        rate_per_minute=record.rate_per_minute, token_quota=record.token_quota,
                        dlp_action=record.dlp_action)


def model_allowed(identity: Identity, model: str) -> bool:
    return "*" in identity.models or model in identity.models


class RateLimiter:
    """A token bucket per subject: ``rate_per_minute`` requests, bursting up to that many."""

    def __init__(self) -> None:
        self.buckets: dict[str, list[float]] = {}

    def allow(self, subject: str, rate_per_minute: float, now: float | None = None) -> bool:
        if rate_per_minute <= 0:
            return True
        now = time.monotonic() if now is None else now
        bucket = self.buckets.get(subject)
        if bucket is None:
            bucket = self.buckets[subject] = [rate_per_minute, now]
        tokens = min(rate_per_minute, bucket[0] + (now - bucket[1]) * rate_per_minute / 60.0)
        bucket[1] = now
        if tokens < 1:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1
        return True


class QuotaBook:
    """Tokens used per subject in the current period (UTC-aligned windows)."""

    def __init__(self, period_seconds: int = 86400):
        self.period = period_seconds
        self.used: dict[str, int] = {}
        self.window = None

    def _roll(self, now: float) -> None:
        window = int(now // self.period)
        if window != self.window:
            self.window, self.used = window, {}

    def remaining(self, subject: str, quota: int, now: float | None = None) -> int | None:
        if quota <= 0:
            return None
        self._roll(time.time() if now is None else now)
        return quota - self.used.get(subject, 0)

    def add(self, subject: str, tokens: int, now: float | None = None) -> None:
        self._roll(time.time() if now is None else now)
        self.used[subject] = self.used.get(subject, 0) + max(0, int(tokens))

    def replay(self, path: str, now: float | None = None) -> int:
        """Rebuild this period's usage from the audit log after a restart; returns records read."""
        now = time.time() if now is None else now
        self._roll(now)
        start = self.window * self.period
        count = 0
        if not os.path.isfile(path):
            return 0
        try:
            with open(path, "rb") as handle:
                for raw in handle:
                    try:
                        record = json.loads(raw)
                    except ValueError:
                        continue
                    if record.get("epoch", 0) < start:
                        continue
                    subject = record.get("subject")
                    tokens = (record.get("usage") or {}).get("total_tokens") or 0
                    if subject and tokens:
                        self.used[subject] = self.used.get(subject, 0) + int(tokens)
                        count += 1
        except OSError:
            return 0
        return count

"""Gateway configuration: one JSON file (the role renders it)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

from .dlp import ACTIONS

STRIP_DEFAULT = ["chat_template", "chat_template_kwargs", "prompt_embeds"]


@dataclass
class Config:
    listen: str = "127.0.0.1"
    port: int = 8443
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_min_version: str = "TLSv1.2"
    metrics_listen: str = "127.0.0.1"
    metrics_port: int = 9180
    upstream: str = "http://127.0.0.1:8080"
    upstream_api_key_file: str | None = None
    upstream_timeout: float = 600.0
    upstream_connections: int = 256
    keys_file: str | None = None
    trusted_proxies: list = field(default_factory=lambda: ["127.0.0.1/32", "::1/128"])
    models: list = field(default_factory=list)
    sso_models: list = field(default_factory=list)
    sso_group_models: dict = field(default_factory=dict)
    sso_rate_per_minute: float = 0
    sso_token_quota: int = 0
    quota_period_seconds: int = 86400
    max_body_bytes: int = 1048576
    max_tokens: int = 4096
    max_n: int = 4
    max_prompts: int = 64
    max_messages: int = 256
    strip_fields: list = field(default_factory=lambda: list(STRIP_DEFAULT))
    dlp_enabled: bool = True
    dlp_action: str = "pseudonymize"
    dlp_actions: dict = field(default_factory=dict)
    dlp_patterns: list = field(default_factory=list)
    audit_path: str = "/var/log/enclave-gateway/audit.jsonl"
    audit_fsync: bool = False
    audit_include_prompt: bool = False

    def validate(self) -> None:
        checks = [("dlp_action", self.dlp_action)] + [(f"dlp_actions.{k}", v) for k, v in self.dlp_actions.items()]
        for name, action in checks:
            if action not in ACTIONS:
                raise ValueError(f"{name}={action!r}: use one of {', '.join(ACTIONS)}")
        if self.max_body_bytes < 1024:
            raise ValueError("max_body_bytes must be at least 1024")


def load(path: str) -> Config:
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    known = {f.name for f in fields(Config)}
    data = {k: v for k, v in data.items() if not k.startswith("_")}   # _managed: a comment
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown settings {', '.join(unknown)}")
    config = Config(**data)
    config.validate()
    return config

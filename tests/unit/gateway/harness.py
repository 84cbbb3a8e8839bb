"""Runs the gateway in-process in front of the OpenAI-compatible backend double (tests/doubles)."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time

import aiohttp
from aiohttp import web

import openai_backend
from enclave_gateway.app import Gateway
from enclave_gateway.auth import hash_key
from enclave_gateway.config import Config

KEY_GOOD = "ek-alice-s3cretAlice"
KEY_OTHER_MODEL = "ek-bob-s3cretBob"
KEY_EXPIRED = "ek-carol-s3cretCarol"
KEY_REVOKED = "ek-dave-s3cretDave"
KEY_QUOTA = "ek-erin-s3cretErin"
KEY_RATE = "ek-frank-s3cretFrank"
KEY_BLOCK = "ek-gina-s3cretGina"


def keys_document() -> dict:
    def entry(key, **extra):
        base = {"id": key.split("-")[1], "sha256": hash_key(key), "owner": key.split("-")[1] + "@example.test",
                "models": ["tiny-llama"]}
        base.update(extra)
        return base
    return {"keys": [
        entry(KEY_GOOD, expires="2999-01-01T00:00:00Z"),
        entry(KEY_OTHER_MODEL, models=["other"]),
        entry(KEY_EXPIRED, expires="2020-01-01T00:00:00Z"),
        entry(KEY_REVOKED, revoked=True),
        entry(KEY_QUOTA, token_quota=40),
        entry(KEY_RATE, rate_per_minute=2),
        entry(KEY_BLOCK, dlp_action="block"),
    ]}


class Harness:
    def __init__(self, tmp_path, **overrides):
        self.tmp = tmp_path
        self.overrides = overrides
        self.records_path = str(tmp_path / "audit.jsonl")

    async def __aenter__(self):
        args = argparse.Namespace(models="tiny-llama,other", api_key_file=None, token_delay=0.0,
                                  first_token_delay=0.0, control_dir=None)
        self.backend = openai_backend.Backend(args)
        self.backend_server = await asyncio.start_server(self.backend.handle, "127.0.0.1", 0)
        backend_port = self.backend_server.sockets[0].getsockname()[1]
        keys_path = self.tmp / "keys.json"
        keys_path.write_text(json.dumps(keys_document()))
        settings = dict(upstream=f"http://127.0.0.1:{backend_port}", keys_file=str(keys_path),
                        audit_path=self.records_path, trusted_proxies=["127.0.0.1/32"],
                        sso_models=["tiny-llama"], models=["tiny-llama", "other"])
        settings.update(self.overrides)
        self.config = Config(**settings)
        self.gateway = Gateway(self.config)
        self.runner = web.AppRunner(self.gateway.api_app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self.metrics_runner = web.AppRunner(self.gateway.metrics_app(), access_log=None, handle_signals=False)
        await self.metrics_runner.setup()
        msite = web.TCPSite(self.metrics_runner, "127.0.0.1", 0)
        await msite.start()
        self.metrics_url = f"http://127.0.0.1:{self.metrics_runner.addresses[0][1]}/metrics"
        self.client = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc):
        await self.client.close()
        await self.runner.cleanup()
        await self.metrics_runner.cleanup()
        self.backend_server.close()
        with contextlib.suppress(Exception):
            await self.backend_server.wait_closed()

    async def post(self, path="/v1/chat/completions", body=None, key=KEY_GOOD, headers=None, raw=None):
        send = {}
        if key:
            send["Authorization"] = f"Bearer {key}"
        send.update(headers or {})
        data = raw if raw is not None else json.dumps(body if body is not None else chat()).encode()
        async with self.client.post(self.url + path, data=data, headers=send) as response:
            return response.status, await response.read(), response.headers.copy()

    def records(self) -> list[dict]:
        if not os.path.exists(self.records_path):
            return []
        with open(self.records_path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]


def chat(content="hello there", model="tiny-llama", **extra) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 8}
    body.update(extra)
    return body


def sse_events(raw: bytes) -> list:
    out = []
    for event in raw.split(b"\n\n"):
        if event.startswith(b"data: "):
            data = event[6:]
            out.append(data.decode() if data == b"[DONE]" else json.loads(data))
    return out


def streamed_text(raw: bytes) -> str:
    text = ""
    for event in sse_events(raw):
        if isinstance(event, dict):
            for choice in event.get("choices", []):
                text += (choice.get("delta") or {}).get("content") or choice.get("text") or ""
    return text


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


def now() -> float:
    return time.time()

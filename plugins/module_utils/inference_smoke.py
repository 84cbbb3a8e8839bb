# Copyright: enclave.llm contributors
# Apache License 2.0 (see LICENSE)
"""Quality smoke test of an OpenAI-compatible inference engine (vLLM), run by
playbooks/rolling_update.yml before a host goes back into rotation.

A small prompt set, each prompt with properties its answer must have: the
model is listed, the answer has the OpenAI shape, a finish reason of ``stop``
or ``length``, a token count inside ``min_tokens``..``max_tokens``, text that
matches ``expect`` (a regular expression) when one is given, the same text
again at temperature 0 when ``repeat`` is set (a model whose weights or
kernels broke rarely stays deterministic), and for a streamed prompt an event
stream that ends with ``[DONE]`` and carries its usage.

Every request goes through rest.request, so unit tests fake one function.
"""
from __future__ import annotations

import json
import re
import time
from typing import Any, Callable

from ansible_collections.enclave.llm.plugins.module_utils import rest

DEFAULT_PROMPTS: list[dict[str, Any]] = [
    {"prompt": "The capital of France is", "max_tokens": 8, "repeat": True},
    {"prompt": "Say hello.", "chat": True, "max_tokens": 8},
    {"prompt": "Count from one to ten:", "max_tokens": 16, "stream": True},
]
PROMPT_KEYS = {"prompt", "max_tokens", "min_tokens", "expect", "chat", "stream", "repeat"}
FINISH_REASONS = ("stop", "length")


class SmokeFailed(Exception):
    """The engine answered a prompt without the properties it must have."""


def normalise(prompts: Any) -> list[dict[str, Any]]:
    """Validated prompt set with defaults filled in; raises ValueError naming the bad entry."""
    if not isinstance(prompts, list) or not prompts:
        raise ValueError("prompts must be a non-empty list of {prompt, max_tokens, ...} entries")
    out = []
    for index, entry in enumerate(prompts):
        where = f"prompts[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str) or not entry["prompt"]:
            raise ValueError(f"{where} must be a mapping with a non-empty prompt string")
        unknown = set(entry) - PROMPT_KEYS
        if unknown:
            raise ValueError(f"{where} has unknown keys {sorted(unknown)}; allowed: {sorted(PROMPT_KEYS)}")
        item = {"max_tokens": 16, "min_tokens": 1, "expect": "", "chat": False, "stream": False,
                "repeat": False, **entry}
        for key in ("max_tokens", "min_tokens"):
            if not isinstance(item[key], int) or isinstance(item[key], bool) or item[key] < 1:
                raise ValueError(f"{where}.{key} must be a positive integer, got {item[key]!r}")
        if item["min_tokens"] > item["max_tokens"]:
            raise ValueError(f"{where}: min_tokens {item['min_tokens']} is above max_tokens {item['max_tokens']}")
        try:
            re.compile(item["expect"])
        except re.error as exc:
            raise ValueError(f"{where}.expect is not a regular expression: {exc}") from exc
        if item["stream"] and item["repeat"]:
            raise ValueError(f"{where}: repeat is checked on unstreamed answers; drop stream or repeat")
        out.append(item)
    return out


class Smoke:
    def __init__(self, url: str, model: str, token: str | None = None, ca_path: str | None = None,
                 validate_certs: bool = True, timeout: float = 30,
                 clock: Callable[[], float] = time.monotonic):
        self.url = url.rstrip("/")
        self.model = model
        self.token = token
        self.ca_path = ca_path
        self.validate_certs = validate_certs
        self.timeout = timeout
        self.clock = clock

    def _call(self, method: str, path: str, body: Any = None) -> rest.Response:
        try:
            return rest.request(method, self.url + path, body=body, token=self.token, ca_path=self.ca_path,
                                validate_certs=self.validate_certs, timeout=self.timeout)
        except rest.HttpError as exc:
            raise SmokeFailed(f"{exc}: {exc.body[:300]!r}" if exc.body else str(exc)) from exc

    def check_listed(self) -> None:
        payload = self._call("GET", "/v1/models").json()
        ids = [m.get("id") for m in payload.get("data", []) if isinstance(m, dict)] if isinstance(payload, dict) else []
        if self.model not in ids:
            raise SmokeFailed(f"{self.url}/v1/models does not list {self.model!r} (it lists {ids})")

    def _request(self, item: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": item["max_tokens"], "temperature": 0}
        if item["chat"]:
            body["messages"] = [{"role": "user", "content": item["prompt"]}]
            path = "/v1/chat/completions"
        else:
            body["prompt"] = item["prompt"]
            path = "/v1/completions"
        if item["stream"]:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return path, body

    @staticmethod
    def _text(choice: dict[str, Any], chat: bool, delta: bool = False) -> str:
        if chat:
            part = choice.get("delta" if delta else "message") or {}
            return part.get("content") or ""
        return choice.get("text") or ""

    def _answer(self, item: dict[str, Any]) -> tuple[str, str | None, int | None]:
        """(text, finish_reason, completion_tokens) of one prompt."""
        path, body = self._request(item)
        resp = self._call("POST", path, body)
        if not item["stream"]:
            payload = resp.json()
            choices = payload.get("choices") if isinstance(payload, dict) else None
            if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
                raise SmokeFailed(f"the answer has no choices: {str(payload)[:300]}")
            usage = payload.get("usage") or {}
            return self._text(choices[0], item["chat"]), choices[0].get("finish_reason"), \
                usage.get("completion_tokens")
        text, finish, tokens, done = [], None, None, False
        for raw in resp.body.decode("utf-8", "replace").splitlines():
            if not raw.startswith("data:"):
                continue
            data = raw[len("data:"):].strip()
            if data == "[DONE]":
                done = True
                continue
            if done:
                raise SmokeFailed("the event stream carries data after [DONE]")
            try:
                event = json.loads(data)
            except ValueError as exc:
                raise SmokeFailed(f"the event stream carries a malformed event: {data[:200]!r}") from exc
            for choice in event.get("choices") or []:
                text.append(self._text(choice, item["chat"], delta=True))
                finish = choice.get("finish_reason") or finish
            if event.get("usage"):
                tokens = event["usage"].get("completion_tokens")
        if not done:
            raise SmokeFailed("the event stream ended without [DONE] (a truncated answer)")
        return "".join(text), finish, tokens

    def check(self, item: dict[str, Any]) -> dict[str, Any]:
        started = self.clock()
        text, finish, tokens = self._answer(item)
        seconds = self.clock() - started
        label = f"prompt {item['prompt']!r}"
        if finish not in FINISH_REASONS:
            raise SmokeFailed(f"{label}: finish_reason {finish!r}, expected one of {list(FINISH_REASONS)}")
        if not isinstance(tokens, int) or not item["min_tokens"] <= tokens <= item["max_tokens"]:
            raise SmokeFailed(f"{label}: {tokens!r} completion tokens, expected {item['min_tokens']}.."
                              f"{item['max_tokens']}")
        if item["expect"] and not re.search(item["expect"], text):
            raise SmokeFailed(f"{label}: the answer {text[:200]!r} does not match {item['expect']!r}")
        if item["repeat"]:
            again = self._answer(item)[0]
            if again != text:
                raise SmokeFailed(f"{label}: two answers at temperature 0 differ ({text[:80]!r} then "
                                  f"{again[:80]!r}): the engine is not deterministic")
        return {"prompt": item["prompt"], "completion_tokens": tokens, "finish_reason": finish,
                "seconds": round(seconds, 3), "stream": item["stream"], "chat": item["chat"]}

    def run(self, prompts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.check_listed()
        return [self.check(item) for item in prompts]

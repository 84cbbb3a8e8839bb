# Copyright: enclave.llm contributors
# Apache License 2.0 (see LICENSE)
"""Readiness gate of an inference engine (vLLM or Ollama): wait for its health
endpoint, then for one real completion of one token, within one deadline.

Every request goes through rest.request; time goes through the ``clock`` and
``sleep`` seams so unit tests run without waiting.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ansible_collections.enclave.llm.plugins.module_utils import rest

ENGINES = ("openai", "ollama")


class NotReady(Exception):
    """The engine did not become ready before the deadline, or answered nonsense."""

    def __init__(self, message: str, **details: Any):
        super().__init__(message)
        self.details = details


@dataclass
class Gate:
    url: str
    model: str | None
    engine: str = "openai"
    token: str | None = None
    ca_path: str | None = None
    validate_certs: bool = True
    request_timeout: float = 30
    wait_timeout: float = 600
    interval: float = 2
    health_path: str = ""
    prompt: str = "Hello"
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def _call(self, method: str, path: str, body: Any = None) -> rest.Response:
        return rest.request(method, self.url.rstrip("/") + path, body=body, token=self.token,
                            ca_path=self.ca_path, validate_certs=self.validate_certs,
                            timeout=self.request_timeout)

    def _health_path(self) -> str:
        return self.health_path or ("/health" if self.engine == "openai" else "/")

    def completion_request(self) -> tuple[str, dict[str, Any]]:
        """The one-token request that proves the model answers (and loads it, for Ollama)."""
        if self.engine == "openai":
            return "/v1/completions", {"model": self.model, "prompt": self.prompt, "max_tokens": 1,
                                       "temperature": 0}
        return "/api/generate", {"model": self.model, "prompt": self.prompt, "stream": False,
                                 "options": {"num_predict": 1}}

    def check_completion(self, payload: Any) -> int:
        """Generated token count of a completion answer; raises NotReady on a malformed one."""
        if not isinstance(payload, dict):
            raise NotReady(f"{self.url}: the completion answer is not a JSON object: {str(payload)[:200]}")
        if self.engine == "openai":
            choices = payload.get("choices")
            usage = payload.get("usage") or {}
            if not choices or not isinstance(choices, list) or "text" not in choices[0]:
                raise NotReady(f"{self.url}: the completion answer for {self.model} has no choices[0].text")
            tokens = usage.get("completion_tokens")
        else:
            if "response" not in payload or not payload.get("done"):
                raise NotReady(f"{self.url}: the /api/generate answer for {self.model} is not a finished response")
            tokens = payload.get("eval_count", 1)
        if not isinstance(tokens, int) or tokens < 1:
            raise NotReady(f"{self.url}: the completion for {self.model} generated no token (usage {tokens!r})")
        return tokens

    def wait(self) -> dict[str, Any]:
        """Wait for health, then (with a model) for one completion. Returns timings; raises NotReady."""
        start = self.clock()
        deadline = start + self.wait_timeout
        attempts = 0
        last = "no answer yet"
        phase = "health"
        health_s: float | None = None
        while True:
            attempts += 1
            try:
                if phase == "health":
                    self._call("GET", self._health_path())
                    health_s = self.clock() - start
                    if not self.model:
                        return {"ready": True, "attempts": attempts, "health_s": round(health_s, 3),
                                "ready_s": round(health_s, 3)}
                    phase = "completion"
                    continue
                path, body = self.completion_request()
                started = self.clock()
                tokens = self.check_completion(self._call("POST", path, body).json())
                now = self.clock()
                return {"ready": True, "attempts": attempts, "health_s": round(health_s or 0.0, 3),
                        "ready_s": round(now - start, 3), "completion_s": round(now - started, 3),
                        "completion_tokens": tokens}
            except rest.HttpError as exc:
                if exc.status in (401, 403):
                    raise NotReady(f"{self.url} refused the API key (HTTP {exc.status}) during the {phase} "
                                   "check: the key file the gate reads must hold the key the engine was given",
                                   phase=phase, attempts=attempts) from exc
                if exc.status == 404 and phase == "completion":
                    raise NotReady(f"{self.url} does not serve the model {self.model!r} (HTTP 404): check the "
                                   "served model name", phase=phase, attempts=attempts) from exc
                last = str(exc)
            if self.clock() + self.interval > deadline:
                raise NotReady(f"{self.url} was not ready within {self.wait_timeout:g} s: the {phase} check "
                               f"still failed after {attempts} attempts (last: {last}); see the service's journal",
                               phase=phase, attempts=attempts, last_error=last)
            self.sleep(self.interval)

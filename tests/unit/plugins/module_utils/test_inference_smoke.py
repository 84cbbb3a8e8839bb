"""The quality smoke test (plugins/module_utils/inference_smoke.py) against a fake
rest.request that answers like vLLM, then bent one property at a time."""
from __future__ import annotations

import json

import pytest

from ansible_collections.enclave.llm.plugins.module_utils import inference_smoke as smoke
from ansible_collections.enclave.llm.plugins.module_utils import rest


class FakeEngine:
    """Answers /v1/models, /v1/completions and /v1/chat/completions like vLLM; knobs bend one property."""

    def __init__(self):
        self.models = ["tiny-llama"]
        self.text = " Paris, and the"
        self.tokens = 4
        self.finish = "length"
        self.drift = False          # a different text on every call
        self.cut_stream = False     # the stream stops before [DONE]
        self.calls: list[tuple[str, str, dict]] = []

    def __call__(self, method, url, *, body=None, token=None, **_):
        path = url.split("8000", 1)[1]
        self.calls.append((method, path, body))
        if path == "/v1/models":
            return rest.Response(200, {}, json.dumps({"data": [{"id": m} for m in self.models]}).encode())
        if body.get("model") not in self.models:
            raise rest.HttpError(f"POST {url} answered HTTP 404", 404, b'{"error": "no such model"}')
        text = self.text + (str(len(self.calls)) if self.drift else "")
        chat = path == "/v1/chat/completions"
        if not body.get("stream"):
            choice = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
            choice["finish_reason"] = self.finish
            payload = {"choices": [choice], "usage": {"completion_tokens": self.tokens}}
            return rest.Response(200, {}, json.dumps(payload).encode())
        events = []
        for word in text.split(" "):
            choice = {"delta": {"content": word + " "}} if chat else {"text": word + " "}
            events.append({"choices": [{**choice, "finish_reason": None}]})
        events[-1]["choices"][0]["finish_reason"] = self.finish
        events.append({"choices": [], "usage": {"completion_tokens": self.tokens}})
        lines = [f"data: {json.dumps(e)}\n\n" for e in events]
        if not self.cut_stream:
            lines.append("data: [DONE]\n\n")
        return rest.Response(200, {}, "".join(lines).encode())


@pytest.fixture
def engine(monkeypatch):
    fake = FakeEngine()
    monkeypatch.setattr(rest, "request", fake)
    return fake


def run(prompts=None):
    return smoke.Smoke("http://10.0.0.1:8000", "tiny-llama", token="k").run(
        smoke.normalise(prompts or smoke.DEFAULT_PROMPTS))


def test_default_prompt_set_passes_and_exercises_every_path(engine):
    results = run()
    assert [(r["chat"], r["stream"]) for r in results] == [(False, False), (True, False), (False, True)]
    assert all(r["completion_tokens"] == 4 and r["finish_reason"] == "length" for r in results)
    paths = [c[1] for c in engine.calls]
    # listed first, the repeated prompt twice, then chat, then the stream
    assert paths == ["/v1/models", "/v1/completions", "/v1/completions", "/v1/chat/completions", "/v1/completions"]
    assert all(c[2]["temperature"] == 0 for c in engine.calls[1:])
    assert engine.calls[-1][2]["stream_options"] == {"include_usage": True}


def test_unlisted_model_fails_naming_what_is_listed(engine):
    engine.models = ["other"]
    with pytest.raises(smoke.SmokeFailed, match=r"does not list 'tiny-llama' \(it lists \['other'\]\)"):
        run()


@pytest.mark.parametrize("knob,value,message", [
    ("finish", "abort", "finish_reason 'abort'"),
    ("finish", None, "finish_reason None"),
    ("tokens", 0, "0 completion tokens, expected 1..8"),
    ("tokens", 9, "9 completion tokens, expected 1..8"),
    ("tokens", None, "None completion tokens"),
    ("drift", True, "two answers at temperature 0 differ"),
])
def test_a_bent_property_fails(engine, knob, value, message):
    setattr(engine, knob, value)
    with pytest.raises(smoke.SmokeFailed, match=message):
        run()


def test_truncated_stream_fails(engine):
    engine.cut_stream = True
    with pytest.raises(smoke.SmokeFailed, match=r"without \[DONE\] \(a truncated answer\)"):
        run([{"prompt": "Count", "stream": True}])


def test_expect_and_min_tokens(engine):
    assert run([{"prompt": "Capital?", "chat": True, "expect": "(?i)paris"}])[0]["completion_tokens"] == 4
    with pytest.raises(smoke.SmokeFailed, match="does not match 'London'"):
        run([{"prompt": "Capital?", "expect": "London"}])
    with pytest.raises(smoke.SmokeFailed, match="4 completion tokens, expected 8..16"):
        run([{"prompt": "Long", "min_tokens": 8}])


def test_http_error_carries_the_engine_answer(engine):
    with pytest.raises(smoke.SmokeFailed, match="HTTP 404.*no such model"):
        smoke.Smoke("http://10.0.0.1:8000", "ghost").check({**smoke.normalise([{"prompt": "x"}])[0]})


@pytest.mark.parametrize("prompts,message", [
    ([], "non-empty list"),
    ([{"max_tokens": 4}], r"prompts\[0\] must be a mapping with a non-empty prompt"),
    ([{"prompt": "x", "temperature": 1}], r"unknown keys \['temperature'\]"),
    ([{"prompt": "x", "max_tokens": 0}], r"max_tokens must be a positive integer"),
    ([{"prompt": "x", "max_tokens": 4, "min_tokens": 5}], "min_tokens 5 is above max_tokens 4"),
    ([{"prompt": "x", "expect": "("}], "expect is not a regular expression"),
    ([{"prompt": "x", "stream": True, "repeat": True}], "drop stream or repeat"),
])
def test_bad_prompt_sets_are_refused(prompts, message):
    with pytest.raises(ValueError, match=message):
        smoke.normalise(prompts)

"""enclave.llm.inference_smoke's main(): check mode, argument errors and a full pass
against the fake engine of the module_utils tests (rest.request faked)."""
from __future__ import annotations

import pytest

from ansible_collections.enclave.llm.plugins.module_utils import rest
from ansible_collections.enclave.llm.plugins.modules import inference_smoke

from moduletest import run_module
from tests.unit.plugins.module_utils.test_inference_smoke import FakeEngine

URL = "http://10.0.0.1:8000"


@pytest.fixture
def engine(monkeypatch):
    fake = FakeEngine()
    monkeypatch.setattr(rest, "request", fake)
    return fake


def test_check_mode_sends_nothing(engine):
    result = run_module(inference_smoke, {"url": URL, "model": "tiny-llama"}, check_mode=True)
    assert result["passed"] is False and "check mode" in result["msg"]
    assert engine.calls == []


def test_default_prompts_pass_and_report_each(engine, tmp_path):
    key = tmp_path / "key"
    key.write_text("k\n")
    result = run_module(inference_smoke, {"url": URL, "model": "tiny-llama", "token_file": str(key)})
    assert result["passed"] is True and result["changed"] is False
    assert len(result["results"]) == 3


def test_failure_names_model_url_and_property(engine):
    engine.finish = "abort"
    result = run_module(inference_smoke, {"url": URL, "model": "tiny-llama"})
    assert result["failed"] is True
    assert result["msg"].startswith(f"tiny-llama at {URL} failed the smoke test: prompt")
    assert "finish_reason 'abort'" in result["msg"]


@pytest.mark.parametrize("args,message", [
    ({"prompts": [{"prompt": "x", "min_tokens": 9, "max_tokens": 4}]}, "above max_tokens 4; fix prompts"),
    ({"token_file": "/nonexistent/key"}, "cannot read the token file /nonexistent/key"),
])
def test_argument_errors_say_what_to_fix(engine, args, message):
    result = run_module(inference_smoke, {"url": URL, "model": "tiny-llama", **args})
    assert result["failed"] is True and message in result["msg"]
    assert engine.calls == []

"""The readiness gate (plugins/module_utils/inference_ready.py) against the TEST
DOUBLES of vLLM (tests/doubles/openai_backend.py) and Ollama
(tests/doubles/ollama_double.py) on loopback, plus the timeout path with a
fake clock."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ansible_collections.enclave.llm.plugins.module_utils import inference_ready as ir
from ansible_collections.enclave.llm.plugins.module_utils import rest

DOUBLES = Path(__file__).resolve().parents[3] / "doubles"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(args: list[str], port: int):
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the double did not start")


@pytest.fixture
def vllm_double(tmp_path):
    port = _free_port()
    key = tmp_path / "api-key"
    key.write_text("sekret-key\n")
    control = tmp_path / "control"
    control.mkdir()
    proc = _serve([str(DOUBLES / "openai_backend.py"), "--host", "127.0.0.1", "--port", str(port),
                   "--models", "tiny-llama", "--api-key-file", str(key), "--control-dir", str(control)], port)
    yield f"http://127.0.0.1:{port}", control
    proc.kill()
    proc.wait()


@pytest.fixture
def ollama_double(tmp_path):
    port = _free_port()
    proc = _serve([str(DOUBLES / "ollama_double.py"), "--host", "127.0.0.1", "--port", str(port),
                   "--models-dir", str(tmp_path / "models")], port)
    yield f"http://127.0.0.1:{port}"
    proc.kill()
    proc.wait()


def test_ready_against_the_vllm_double(vllm_double):
    url = vllm_double[0]
    result = ir.Gate(url=url, model="tiny-llama", token="sekret-key", wait_timeout=10, interval=0.1).wait()
    assert result["ready"] is True
    assert result["completion_tokens"] == 1
    assert result["attempts"] == 2


def test_wrong_key_fails_at_once_naming_the_key(vllm_double):
    url = vllm_double[0]
    started = time.monotonic()
    with pytest.raises(ir.NotReady, match="refused the API key"):
        ir.Gate(url=url, model="tiny-llama", token="wrong", wait_timeout=30, interval=0.1).wait()
    assert time.monotonic() - started < 5


def test_unknown_model_fails_naming_the_model(vllm_double):
    url = vllm_double[0]
    with pytest.raises(ir.NotReady, match="does not serve the model 'other'"):
        ir.Gate(url=url, model="other", token="sekret-key", wait_timeout=30, interval=0.1).wait()


def test_unhealthy_engine_times_out_naming_the_health_step(vllm_double):
    url, control = vllm_double
    (control / "unhealthy").write_text("")
    started = time.monotonic()
    with pytest.raises(ir.NotReady, match=r"not ready within 1 s: the health check still failed") as err:
        ir.Gate(url=url, model="tiny-llama", token="sekret-key", wait_timeout=1, interval=0.2).wait()
    assert 0.5 < time.monotonic() - started < 5
    assert "HTTP 503" in err.value.details["last_error"]


def test_ollama_gate_loads_a_pulled_model(ollama_double):
    rest.request("POST", ollama_double + "/api/pull", body={"model": "llama3.2:1b", "stream": False},
                 timeout=30)
    result = ir.Gate(url=ollama_double, model="llama3.2:1b", engine="ollama", wait_timeout=10,
                     interval=0.1).wait()
    assert result["ready"] is True
    running = rest.request("GET", ollama_double + "/api/ps").json()
    assert [m["name"] for m in running["models"]] == ["llama3.2:1b"]


def test_ollama_gate_fails_for_a_model_not_pulled(ollama_double):
    with pytest.raises(ir.NotReady, match="does not serve the model 'qwen2.5:0.5b'"):
        ir.Gate(url=ollama_double, model="qwen2.5:0.5b", engine="ollama", wait_timeout=5, interval=0.1).wait()


def test_connection_refused_until_the_deadline_with_a_fake_clock(monkeypatch):
    now = [0.0]
    calls = []

    def fake_request(method, url, **kwargs):
        calls.append(url)
        raise rest.HttpError(f"{method} {url} failed: Connection refused")

    monkeypatch.setattr(rest, "request", fake_request)
    gate = ir.Gate(url="http://10.0.0.1:8000", model="m", wait_timeout=60, interval=5,
                   clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    with pytest.raises(ir.NotReady, match="Connection refused") as err:
        gate.wait()
    assert len(calls) == 13  # t = 0, 5, ... 60 s
    assert err.value.details["phase"] == "health"
    assert all(c.endswith("/health") for c in calls)


@pytest.mark.parametrize("payload,message", [
    ([], "not a JSON object"),
    ({"choices": []}, "no choices"),
    ({"choices": [{"text": "x"}], "usage": {"completion_tokens": 0}}, "generated no token"),
])
def test_malformed_openai_answers(payload, message):
    with pytest.raises(ir.NotReady, match=message):
        ir.Gate(url="http://x", model="m").check_completion(payload)


def test_malformed_ollama_answer():
    with pytest.raises(ir.NotReady, match="not a finished response"):
        ir.Gate(url="http://x", model="m", engine="ollama").check_completion({"response": "", "done": False})


def test_health_only_without_a_model(ollama_double):
    result = ir.Gate(url=ollama_double, model=None, engine="ollama", wait_timeout=5, interval=0.1).wait()
    assert result["ready"] is True and "completion_tokens" not in result

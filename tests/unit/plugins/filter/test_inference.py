from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.enclave.llm.plugins.filter.inference import FilterModule, inference_backends, model_name_error

HOSTVARS = {
    "gpu01": {"ansible_host": "10.0.30.11",
              "vllm_models": [{"name": "tiny-llama", "model": "/m/t", "port": 8000},
                              {"name": "qwen2.5-7b", "model": "/m/q", "port": 8001}]},
    "gpu02": {"ansible_host": "10.0.30.12", "inference_address": "10.0.31.12",
              "vllm_models": [{"name": "tiny-llama", "model": "/m/t", "port": 8000}]},
    "cpu01": {"ansible_host": "10.0.30.13", "ollama_models": ["llama3.2:1b"]},
    "idle": {"ansible_host": "10.0.30.14"},
}


def test_groups_servers_by_model_sorted():
    result = inference_backends(["gpu01", "gpu02", "cpu01", "idle"], HOSTVARS)
    assert result == [
        {"model": "llama3.2:1b", "servers": [{"name": "cpu01", "address": "10.0.30.13", "port": 11434,
                                              "engine": "ollama"}]},
        {"model": "qwen2.5-7b", "servers": [{"name": "gpu01", "address": "10.0.30.11", "port": 8001,
                                             "engine": "vllm"}]},
        {"model": "tiny-llama", "servers": [
            {"name": "gpu01", "address": "10.0.30.11", "port": 8000, "engine": "vllm"},
            {"name": "gpu02", "address": "10.0.31.12", "port": 8000, "engine": "vllm"}]},
    ]


def test_ollama_port_override_and_address_fallback_to_name():
    result = inference_backends(["box"], {"box": {"ollama_models": "phi3", "ollama_port": "11500"}})
    assert result == [{"model": "phi3", "servers": [{"name": "box", "address": "box", "port": 11500,
                                                     "engine": "ollama"}]}]


@pytest.mark.parametrize("name", ["tiny-llama", "llama3.2:1b", "Qwen/Qwen2.5-7B-Instruct", "a", "m_1.2"])
def test_good_model_names(name):
    assert model_name_error(name) is None


@pytest.mark.parametrize("name", ["", None, "tiny llama", "bad;name", "x\ny", "-lead", "a'b", "é", "m" * 129,
                                  "a{b}", "../x"])
def test_odd_model_names_are_refused(name):
    assert model_name_error(name)


def test_odd_model_name_fails_naming_the_host():
    with pytest.raises(AnsibleFilterError, match=r"host gpu01: model name 'tiny llama'"):
        inference_backends(["gpu01"], {"gpu01": {"vllm_models": [{"name": "tiny llama", "port": 8000}]}})


@pytest.mark.parametrize("hostvars,message", [
    ({"h": {"vllm_models": [{"name": "m"}]}}, r"vllm_models\[0\] \(m\) needs a 'port'"),
    ({"h": {"vllm_models": [{"port": 1}]}}, r"needs a 'name'"),
    ({"h": {"vllm_models": [{"name": "m", "port": 70000}]}}, "outside 1-65535"),
    ({"h": {"vllm_models": [{"name": "m", "port": "x"}]}}, "is not a number"),
    ({"h": {"vllm_models": [{"name": "a", "port": 8000}, {"name": "b", "port": 8000}]}}, "already used by model 'a'"),
    ({"h": {"vllm_models": [{"name": "a", "port": 8000}, {"name": "a", "port": 8001}]}}, "serves model 'a' twice"),
    ({"h": {"vllm_models": "m"}}, "must be a list"),
    ({"h": {"ollama_models": ["m"], "ollama_port": 8000, "vllm_models": [{"name": "a", "port": 8000}]}},
     "also a vllm_models port"),
    ({"h": {"ansible_host": "bad host!", "ollama_models": ["m"]}}, "neither an IP address nor a host name"),
])
def test_bad_entries_fail_with_the_field_named(hostvars, message):
    with pytest.raises(AnsibleFilterError, match=message):
        inference_backends(list(hostvars), hostvars)


def test_no_inference_hosts_is_a_clear_error():
    with pytest.raises(AnsibleFilterError, match="no inference backends"):
        inference_backends([], {})
    with pytest.raises(AnsibleFilterError, match="no inference backends"):
        inference_backends(["idle"], HOSTVARS)
    assert inference_backends(None, {}, require=False) == []


def test_unknown_host_and_wrong_input_type():
    with pytest.raises(AnsibleFilterError, match="not in hostvars"):
        inference_backends(["ghost"], HOSTVARS)
    with pytest.raises(AnsibleFilterError, match="expects a list"):
        inference_backends({"a": 1}, HOSTVARS)


def test_filter_is_registered():
    assert FilterModule().filters()["inference_backends"] is inference_backends

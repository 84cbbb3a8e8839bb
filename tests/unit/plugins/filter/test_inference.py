from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

import base64

from ansible_collections.enclave.llm.plugins.filter.inference import (
    FilterModule, inference_backend_name, inference_backends, inference_check_keys, inference_host_servers,
    model_name_error)

HOSTVARS = {
    "gpu01": {"ansible_host": "10.0.30.11",
              "vllm_models": [{"name": "tiny-llama", "model": "/m/t", "port": 8000},
                              {"name": "qwen2.5-7b", "model": "/m/q", "port": 8001}]},
    "gpu02": {"ansible_host": "10.0.30.12", "inference_address": "10.0.31.12", "vllm_api_key_file": "/etc/k2",
              "vllm_models": [{"name": "tiny-llama", "model": "/m/t", "port": 8000}]},
    "cpu01": {"ansible_host": "10.0.30.13", "ollama_models": ["llama3.2:1b"]},
    "idle": {"ansible_host": "10.0.30.14"},
}


def test_groups_servers_by_model_sorted():
    result = inference_backends(["gpu01", "gpu02", "cpu01", "idle"], HOSTVARS)
    assert result == [
        {"model": "llama3.2:1b", "servers": [{"name": "cpu01", "address": "10.0.30.13", "port": 11434,
                                              "engine": "ollama", "api_key_file": None}]},
        {"model": "qwen2.5-7b", "servers": [{"name": "gpu01", "address": "10.0.30.11", "port": 8001,
                                             "engine": "vllm", "api_key_file": "/etc/vllm/api-key"}]},
        {"model": "tiny-llama", "servers": [
            {"name": "gpu01", "address": "10.0.30.11", "port": 8000, "engine": "vllm",
             "api_key_file": "/etc/vllm/api-key"},
            {"name": "gpu02", "address": "10.0.31.12", "port": 8000, "engine": "vllm", "api_key_file": "/etc/k2"}]},
    ]


def test_ollama_port_override_and_address_fallback_to_name():
    result = inference_backends(["box"], {"box": {"ollama_models": "phi3", "ollama_port": "11500"}})
    assert result == [{"model": "phi3", "servers": [{"name": "box", "address": "box", "port": 11500,
                                                     "engine": "ollama", "api_key_file": None}]}]


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


# --------------------------------------------------------------- health-check API keys

@pytest.mark.parametrize("value", ["", None])
def test_vllm_without_a_key_file_has_no_key(value):
    result = inference_backends(["h"], {"h": {"vllm_api_key_file": value,
                                              "vllm_models": [{"name": "m", "port": 8000}]}})
    assert result[0]["servers"][0]["api_key_file"] is None


@pytest.mark.parametrize("value", ["relative/key", "/etc/a key", 5, "/etc/k\n"])
def test_odd_key_file_path_fails_naming_the_host(value):
    with pytest.raises(AnsibleFilterError, match="host h: vllm_api_key_file .* must be an absolute path"):
        inference_backends(["h"], {"h": {"vllm_api_key_file": value, "vllm_models": [{"name": "m", "port": 8000}]}})


def test_ollama_only_host_ignores_a_bad_vllm_key_file():
    # The key file matters only for vLLM servers.
    result = inference_backends(["h"], {"h": {"vllm_api_key_file": "relative", "ollama_models": ["m"]}})
    assert result[0]["servers"][0]["api_key_file"] is None


@pytest.mark.parametrize("model,index,name", [
    ("tiny-llama", 1, "model1_tiny-llama"),
    ("llama3.2:1b", 2, "model2_llama3.2:1b"),
    ("Qwen/Qwen2.5-7B", "3", "model3_Qwen_Qwen2.5-7B"),
])
def test_backend_name(model, index, name):
    assert inference_backend_name(model, index) == name


@pytest.mark.parametrize("model", ["", None, 3])
def test_backend_name_needs_a_model(model):
    with pytest.raises(AnsibleFilterError, match="is not a model name"):
        inference_backend_name(model, 1)


def _slurped(name, path, text):
    return {"item": {"name": name, "api_key_file": path}, "content": base64.b64encode(text.encode()).decode()}


BACKENDS = inference_backends(["gpu01", "gpu02", "cpu01"], HOSTVARS)


def test_check_keys_one_line_per_keyed_server_named_like_the_backend():
    text = inference_check_keys(BACKENDS, [_slurped("gpu01", "/etc/vllm/api-key", "key-one\n"),
                                           _slurped("gpu02", "/etc/k2", "  key-two  \n\n")])
    # llama3.2:1b (index 1) is Ollama: no line. Sorted lines, one newline each.
    assert text == ("model2_qwen2.5-7b/gpu01 Bearer key-one\n"
                    "model3_tiny-llama/gpu01 Bearer key-one\n"
                    "model3_tiny-llama/gpu02 Bearer key-two\n")
    names = [line.split()[0].split("/")[0] for line in text.splitlines()]
    assert names[0] == inference_backend_name("qwen2.5-7b", 2)


def test_check_keys_accepts_name_file_pairs():
    pair = {"item": ["gpu01", "/etc/vllm/api-key"], "content": base64.b64encode(b"key-one").decode()}
    text = inference_check_keys(BACKENDS, [pair, _slurped("gpu02", "/etc/k2", "key-two")])
    assert "model3_tiny-llama/gpu01 Bearer key-one\n" in text


def test_check_keys_empty_when_no_server_needs_one():
    assert inference_check_keys(inference_backends(["cpu01"], HOSTVARS), []) == ""
    assert inference_check_keys([], None) == ""


def test_check_keys_missing_key_fails_naming_host_and_file():
    with pytest.raises(AnsibleFilterError, match=r"host gpu02: API key file /etc/k2 \(model tiny-llama\) was not read"):
        inference_check_keys(BACKENDS, [_slurped("gpu01", "/etc/vllm/api-key", "key-one")])


def test_check_keys_failed_slurp_counts_as_not_read():
    failed = {"item": {"name": "gpu02", "api_key_file": "/etc/k2"}, "failed": True, "msg": "file not found"}
    with pytest.raises(AnsibleFilterError, match="gpu02: API key file /etc/k2"):
        inference_check_keys(BACKENDS, [_slurped("gpu01", "/etc/vllm/api-key", "k"), failed])


@pytest.mark.parametrize("text,message", [
    ("", "exactly one line"),
    ("secret-a\nsecret-b\n", "holds 2 non-empty lines"),
    ("secret with-space", "spaces, control or non-ASCII"),
    ("secret\there", "spaces, control or non-ASCII"),
    ("ключ", "spaces, control or non-ASCII"),
    ("k" * 4097, "longer than 4096"),
])
def test_check_keys_unusable_key_is_refused_without_showing_it(text, message):
    with pytest.raises(AnsibleFilterError, match=message) as error:
        inference_check_keys(BACKENDS, [_slurped("gpu01", "/etc/vllm/api-key", text),
                                        _slurped("gpu02", "/etc/k2", "fine")])
    assert "gpu01" in str(error.value)
    if text.strip():
        assert text.split()[0] not in str(error.value)


def test_check_keys_not_base64_or_not_utf8():
    bad = {"item": {"name": "gpu01", "api_key_file": "/etc/vllm/api-key"}, "content": "%%%"}
    with pytest.raises(AnsibleFilterError, match="not UTF-8 text"):
        inference_check_keys(BACKENDS, [bad])
    latin = {"item": {"name": "gpu01", "api_key_file": "/etc/vllm/api-key"},
             "content": base64.b64encode(b"\xff\xfe").decode()}
    with pytest.raises(AnsibleFilterError, match="not UTF-8 text"):
        inference_check_keys(BACKENDS, [latin])


@pytest.mark.parametrize("entries", [[{"content": "eA=="}], [{"item": {"name": "h"}}], ["text"],
                                     [{"item": ["h"], "content": "eA=="}]])
def test_check_keys_wrong_input_shape(entries):
    with pytest.raises(AnsibleFilterError, match="expects slurp results"):
        inference_check_keys(BACKENDS, entries)
    with pytest.raises(AnsibleFilterError, match="expects the list of backends"):
        inference_check_keys({"a": 1}, [])


def test_new_filters_are_registered():
    filters = FilterModule().filters()
    assert filters["inference_backend_name"] is inference_backend_name
    assert filters["inference_check_keys"] is inference_check_keys


# --------------------------------------------------------------- rolling update: a host's servers

def test_host_servers_are_named_like_the_backends():
    backends = inference_backends(["gpu01", "gpu02", "cpu01", "idle"], HOSTVARS)
    assert inference_host_servers(backends, "gpu01") == [
        {"backend": "model2_qwen2.5-7b", "server": "gpu01", "model": "qwen2.5-7b", "port": 8001, "engine": "vllm"},
        {"backend": "model3_tiny-llama", "server": "gpu01", "model": "tiny-llama", "port": 8000, "engine": "vllm"}]
    assert [s["backend"] for s in inference_host_servers(backends, "gpu02")] == ["model3_tiny-llama"]
    assert inference_host_servers(backends, "idle") == []
    assert FilterModule().filters()["inference_host_servers"] is inference_host_servers


@pytest.mark.parametrize("backends,host,message", [
    ({}, "gpu01", "expects the list of backends"),
    ([], "", "is not an inventory host name"),
])
def test_host_servers_bad_input(backends, host, message):
    with pytest.raises(AnsibleFilterError, match=message):
        inference_host_servers(backends, host)

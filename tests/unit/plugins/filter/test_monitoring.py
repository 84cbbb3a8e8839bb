from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.enclave.llm.plugins.filter.monitoring import (
    FilterModule,
    is_duration,
    monitoring_config_errors,
    monitoring_scrape_configs,
    threshold_number,
)

HOSTVARS = {
    "store01": {"monitoring_address": "10.231.40.10", "group_names": ["lab", "zone_storage"]},
    "infer01": {"ansible_host": "10.231.30.11", "inference_address": "10.231.30.111",
                "group_names": ["zone_inference"],
                "vllm_models": [{"name": "tiny-llama", "port": 8000}, {"name": "other", "port": 8001}]},
    "infer02": {"ansible_host": "fd00::12", "group_names": ["zone_inference"]},
    "app01": {"group_names": ["zone_app"]},
}
TLS = {"ca_file": "/pki/ca.crt", "cert_file": "/pki/c.crt", "key_file": "/pki/c.key"}


def jobs(**overrides):
    base = [
        {"job": "node", "field": "monitoring_node_exporter_hosts", "hosts": ["store01", "infer01", "infer02"],
         "port": 9100, "scheme": "https", "client_cert": True},
        {"job": "vllm", "field": "monitoring_vllm_hosts", "hosts": ["infer01", "infer02"], "models_var": "vllm_models",
         "address_var": "inference_address", "engine": "vllm", "scheme": "http"},
        {"job": "haproxy", "field": "monitoring_haproxy_hosts", "hosts": ["app01"], "port": "8404", "scheme": "http"},
        {"job": "gateway", "field": "monitoring_gateway_hosts", "hosts": [], "port": 9180, "scheme": "http"},
    ]
    for job in base:
        job.update(overrides.get(job["job"], {}))
    return base


def test_scrape_configs_follow_the_inventory():
    configs = {c["job_name"]: c for c in monitoring_scrape_configs(HOSTVARS, jobs(), TLS)}
    assert set(configs) == {"node", "vllm", "haproxy"}  # no targets, no job
    node = configs["node"]
    assert node["scheme"] == "https"
    assert node["tls_config"] == TLS
    assert node["static_configs"] == [
        {"targets": ["10.231.40.10:9100"], "labels": {"host": "store01", "zone": "storage"}},
        {"targets": ["10.231.30.11:9100"], "labels": {"host": "infer01", "zone": "inference"}},
        {"targets": ["[fd00::12]:9100"], "labels": {"host": "infer02", "zone": "inference"}},
    ]
    vllm = configs["vllm"]
    assert "tls_config" not in vllm
    assert vllm["static_configs"] == [
        {"targets": ["10.231.30.111:8000"],
         "labels": {"host": "infer01", "zone": "inference", "model": "tiny-llama", "engine": "vllm"}},
        {"targets": ["10.231.30.111:8001"],
         "labels": {"host": "infer01", "zone": "inference", "model": "other", "engine": "vllm"}},
    ]
    # A string port (from templating) is accepted; the name is the address of last resort.
    assert configs["haproxy"]["static_configs"][0]["targets"] == ["app01:8404"]


def test_https_without_client_certificate_only_verifies_the_server():
    configs = monitoring_scrape_configs(HOSTVARS, [{"job": "prometheus", "hosts": ["store01"], "port": 9090,
                                                    "scheme": "https", "client_cert": False}], TLS)
    assert configs[0]["tls_config"] == {"ca_file": "/pki/ca.crt"}


def test_scrape_configs_refuse_bad_input():
    with pytest.raises(AnsibleFilterError, match="monitoring_haproxy_hosts names 'app99', which is not in the inventory"):
        monitoring_scrape_configs(HOSTVARS, jobs(haproxy={"hosts": ["app99"]}))


@pytest.mark.parametrize("overrides,message", [
    ({"haproxy": {"hosts": ["app99"]}}, "monitoring_haproxy_hosts names 'app99', which is not in the inventory"),
    ({"haproxy": {"hosts": "app01"}}, "monitoring_haproxy_hosts must be a list of inventory host names, got str"),
    ({"haproxy": {"port": 70000}}, "monitoring_haproxy_hosts: port 70000 must be an integer between 1 and 65535"),
    ({"haproxy": {"port": True}}, "port True must be an integer"),
    ({"haproxy": {"scheme": "ftp"}}, "scheme 'ftp' must be http or https"),
    ({"haproxy": {"job": "bad job"}}, "job name 'bad job' must match"),
    ({"haproxy": {"hosts": ["store01"], "port": 9100}}, "store01 target 10.231.40.10:9100 is also scraped by job node"),
])
def test_config_errors_name_the_variable_and_the_fix(overrides, message):
    errors = monitoring_config_errors(HOSTVARS, jobs(**overrides))
    assert any(message in e for e in errors), errors


@pytest.mark.parametrize("models,message", [
    ("tiny", "infer01: vllm_models must be a list"),
    (["tiny"], "infer01: vllm_models[0] must be a mapping"),
    ([{"name": "tiny llama", "port": 8000}], "infer01: vllm_models[0].name 'tiny llama' must be a served model name"),
    ([{"name": "tiny", "port": "http"}], "infer01: vllm_models[0].port 'http' must be an integer"),
    ([{"name": "a", "port": 8000}, {"name": "b", "port": 8000}], "infer01: vllm_models[1]: target 10.231.30.111:8000"),
])
def test_bad_served_models_are_reported(models, message):
    hostvars = dict(HOSTVARS, infer01=dict(HOSTVARS["infer01"], vllm_models=models))
    errors = monitoring_config_errors(hostvars, jobs())
    assert any(message in e for e in errors), errors


def test_valid_configuration_has_no_errors():
    thresholds = {"monitoring_gpu_temperature_max_celsius": 85, "monitoring_request_error_ratio_max": "0.05"}
    assert monitoring_config_errors(HOSTVARS, jobs(), "store01", thresholds, {"GPUMissing": "90s"}, ["GPUMissing"],
                                    {"monitoring_scrape_interval": "15s"}) == []


@pytest.mark.parametrize("var,value,message", [
    ("monitoring_gpu_temperature_max_celsius", "hot",
     "monitoring_gpu_temperature_max_celsius must be a number (degrees Celsius between 1 and 150), got 'hot'"),
    ("monitoring_gpu_temperature_max_celsius", [85], "must be a number"),
    ("monitoring_gpu_temperature_max_celsius", True, "must be a number"),
    ("monitoring_gpu_temperature_max_celsius", float("nan"), "must be a number"),
    ("monitoring_request_error_ratio_max", 5, "monitoring_request_error_ratio_max must be a ratio between 0 and 1, got 5"),
    ("monitoring_ttft_p95_max_seconds", 0, "must be seconds above 0"),
])
def test_thresholds_must_be_numbers_in_range(var, value, message):
    errors = monitoring_config_errors(HOSTVARS, [], None, {var: value})
    assert any(message in e for e in errors), errors


def test_server_host_must_exist():
    assert "monitoring_server_host names 'mon99', which is not in the inventory" in \
        monitoring_config_errors(HOSTVARS, [], "mon99")[0]
    assert "monitoring_server_host is empty" in monitoring_config_errors(HOSTVARS, [], "")[0]


def test_alert_duration_overrides_are_checked():
    errors = monitoring_config_errors(HOSTVARS, [], None, None, {"NoSuchAlert": "5m", "GPUMissing": "soon"},
                                      ["GPUMissing"])
    assert any("names alert 'NoSuchAlert', which does not exist" in e for e in errors)
    assert any("monitoring_alert_for_overrides.GPUMissing 'soon' is not a Prometheus duration" in e for e in errors)
    errors = monitoring_config_errors(HOSTVARS, [], durations={"monitoring_scrape_interval": "0s"})
    assert errors == ["monitoring_scrape_interval '0s' is not a Prometheus duration above zero, such as 15s or 1m"]


@pytest.mark.parametrize("value,expected", [("15s", True), ("1h30m", True), ("500ms", True), ("2w", True),
                                            ("", False), ("15", False), ("5 m", False), (5, False), ("1m1h", False)])
def test_is_duration(value, expected):
    assert is_duration(value) is expected


@pytest.mark.parametrize("value,expected", [(1, 1.0), (0.5, 0.5), ("2", 2.0), (" 3.5 ", 3.5), ("x", None),
                                            (None, None), (False, None), (float("inf"), None)])
def test_threshold_number(value, expected):
    assert threshold_number(value) == expected


def test_filters_are_registered():
    assert set(FilterModule().filters()) == {"monitoring_scrape_configs", "monitoring_config_errors"}

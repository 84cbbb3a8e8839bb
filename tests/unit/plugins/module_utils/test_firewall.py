from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.enclave.llm.plugins.filter.firewall import (
    FilterModule,
    firewall_allows,
    firewall_engine_ports,
    firewall_host_rules,
    firewall_zone_model,
)
from ansible_collections.enclave.llm.plugins.module_utils import firewall as fw

ZONE_CIDRS = {"dmz": ["10.231.10.0/24"], "app": ["10.231.20.0/24"], "inference": ["10.231.30.0/24"],
              "storage": ["10.231.40.0/24"]}
ADDRESSES = {"edge01": "10.231.10.10", "app01": "10.231.20.10", "infer01": "10.231.30.11",
             "infer02": "10.231.30.12", "store01": "10.231.40.10"}
ZONE_OF = {"edge01": "dmz", "app01": "app", "infer01": "inference", "infer02": "inference", "store01": "storage"}


def lab(**changes):
    """hostvars and groups of the lab inventory, with per-host changes."""
    hostvars = {h: {"firewall_address": a, "zone_cidrs": ZONE_CIDRS[ZONE_OF[h]]} for h, a in ADDRESSES.items()}
    groups = {"all": list(ADDRESSES), "lab": list(ADDRESSES)}
    for host, zone in ZONE_OF.items():
        groups.setdefault(f"zone_{zone}", []).append(host)
    for host, update in changes.items():
        hostvars[host].update(update)
    return hostvars, groups


MGMT = {"management": ["10.231.0.0/24"]}


def model(**changes):
    hostvars, groups = lab(**changes)
    return fw.zone_model(hostvars, groups, MGMT)


def errors_of(func, *args):
    with pytest.raises(fw.FirewallModelError) as info:
        func(*args)
    return info.value.errors


# ------------------------------------------------------------------ zones --
def test_zone_model_merges_cidrs_and_maps_hosts():
    hostvars, groups = lab(app01={"zone_cidrs": ["10.231.20.0/25", "10.231.20.128/25", "10.231.21.0/24"]})
    result = fw.zone_model(hostvars, groups, MGMT)
    assert result["zones"]["app"]["cidrs"] == ["10.231.20.0/23"]
    assert result["zones"]["inference"]["hosts"] == {"infer01": ["10.231.30.11"], "infer02": ["10.231.30.12"]}
    assert result["zones"]["management"] == {"cidrs": ["10.231.0.0/24"], "hosts": {}}
    assert result["host_zone"]["store01"] == "storage"


def test_ipv6_cidrs_and_addresses():
    hostvars, groups = lab(edge01={"zone_cidrs": ["10.231.10.0/24", "fd00:10::/64"],
                                   "firewall_address": ["10.231.10.10", "fd00:10::10"]})
    result = fw.zone_model(hostvars, groups, MGMT)
    assert result["zones"]["dmz"]["cidrs"] == ["10.231.10.0/24", "fd00:10::/64"]
    assert result["zones"]["dmz"]["hosts"]["edge01"] == ["10.231.10.10", "fd00:10::10"]


def test_overlapping_zone_cidrs_are_named():
    hostvars, groups = lab(app01={"zone_cidrs": ["10.231.20.0/24", "10.231.30.128/25"]})
    errors = errors_of(fw.zone_model, hostvars, groups, MGMT)
    assert errors == ["zones app and inference overlap in 10.231.30.128/25; zone CIDRs must be disjoint"]


def test_management_overlapping_a_zone():
    hostvars, groups = lab()
    errors = errors_of(fw.zone_model, hostvars, groups, {"management": ["10.231.0.0/16"]})
    assert len(errors) == 4 and all("overlap" in e and "management" in e for e in errors)


def test_host_in_two_zones_is_named():
    hostvars, groups = lab()
    groups["zone_app"].append("infer01")
    errors = errors_of(fw.zone_model, hostvars, groups, MGMT)
    assert errors == ["host infer01 is in more than one zone (zone_app, zone_inference); "
                      "a host belongs to exactly one zone"]


def test_host_address_outside_its_zone_is_named():
    hostvars, groups = lab(infer02={"firewall_address": "10.231.40.12"})
    errors = errors_of(fw.zone_model, hostvars, groups, MGMT)
    assert errors == ["host infer02: address 10.231.40.12 is outside the CIDRs of zone inference (10.231.30.0/24)"]


def test_host_address_that_is_not_an_address():
    hostvars, groups = lab(app01={"firewall_address": None, "ansible_host": "enclave-lab-app01"})
    errors = errors_of(fw.zone_model, hostvars, groups, MGMT)
    assert errors == ["host app01: address 'enclave-lab-app01' is not an IP address; set firewall_address "
                      "to the host's address in its zone"]


@pytest.mark.parametrize("cidr", ["10.231.20.0/33", "not-a-cidr", "10.300.0.0/16"])
def test_bad_cidr_names_zone_and_host(cidr):
    hostvars, groups = lab(app01={"zone_cidrs": [cidr]})
    errors = errors_of(fw.zone_model, hostvars, groups, MGMT)
    assert f"zone app: zone_cidrs of host app01: {cidr!r} is not a CIDR" in errors


def test_zone_without_cidrs_and_unknown_zone_group():
    hostvars, groups = lab(store01={"zone_cidrs": []})
    groups["zone_gpu"] = []
    errors = errors_of(fw.zone_model, hostvars, groups, MGMT)
    assert any(e.startswith("zone 'gpu' is not one of dmz, app, inference, storage, management") for e in errors)
    assert any(e.startswith("zone storage: no CIDRs; set zone_cidrs in group_vars of zone_storage") for e in errors)


def test_every_error_is_reported_at_once():
    hostvars, groups = lab(infer02={"firewall_address": "10.231.40.12"},
                           app01={"zone_cidrs": ["10.231.20.0/24", "10.231.30.0/24"]})
    groups["zone_dmz"].append("store01")
    errors = errors_of(fw.zone_model, hostvars, groups, MGMT)
    assert len(errors) == 4, errors  # store01 was the only storage host: that zone has no CIDRs left
    assert any("host store01 is in more than one zone" in e for e in errors)


# ------------------------------------------------------------------ ports --
@pytest.mark.parametrize("ports,ranges", [
    ([22], [(22, 22)]), (["8000-8003", 8004, "443"], [(443, 443), (8000, 8004)]), ([1, 65535], [(1, 1), (65535, 65535)]),
    (8000, [(8000, 8000)]),
])
def test_parse_ports(ports, ranges):
    assert fw.parse_ports(ports, "x") == (ranges, [])


@pytest.mark.parametrize("ports,fragment", [
    ([0], "port 0 is outside 1-65535"), ([65536], "port 65536 is outside 1-65535"), (["70000"], "outside 1-65535"),
    (["9-3"], "runs backwards"), (["http"], "is not a number"), ([True], "is not a number"), ([], "ports is empty"),
    (["1-70000"], "outside 1-65535"), ([-1], "outside 1-65535"),
])
def test_bad_ports(ports, fragment):
    ranges, errors = fw.parse_ports(ports, "rule 'x'")
    assert ranges == []
    assert errors and fragment in errors[0] and errors[0].startswith("rule 'x'")


# ------------------------------------------------------------------ flows --
DEFAULTS = fw.default_flows({})


def accepts(rules):
    """(proto, ports, sources) per rule, sources as CIDR text or 'any'."""
    return {(r["name"], r["proto"], r["ports"], "any" if r["any"] else " ".join(r["saddr4"] + r["saddr6"]))
            for r in rules}


def test_default_policy_per_zone():
    m = model()
    every = "10.231.0.0/24 10.231.10.0/24 10.231.20.0/24 10.231.30.0/24 10.231.40.0/24"
    expected = {
        "edge01": {("clients-to-edge", "tcp", "443", "any")},
        "app01": {("edge-to-app", "tcp", "443, 4180, 8443", "10.231.10.0/24")},
        "infer01": {("app-to-engines", "tcp", "8000, 11434", "10.231.20.0/24")},
        "store01": {("inference-to-storage", "tcp", "2049", "10.231.30.0/24"),
                    ("logs-to-collector", "tcp", "514, 2514", every),
                    ("syslog-udp-to-collector", "udp", "514", every)},
    }
    ssh = ("management-ssh", "tcp", "22", "10.231.0.0/24")
    for host, rules in expected.items():
        got = accepts(fw.host_rules(m, host, DEFAULTS, {}))
        assert got == rules | {ssh}, host
    assert all(r["saddr4"] for r in fw.host_rules(m, "store01", DEFAULTS, {}) if r["name"].startswith("logs"))


def test_collector_sources_include_inference():
    rules = fw.host_rules(model(), "store01", DEFAULTS, {})
    logs = next(r for r in rules if r["name"] == "logs-to-collector")
    assert fw.allows([logs], "10.231.30.11", 2514)


def test_multinode_only_when_enabled_and_only_inference():
    m = model()
    off = fw.host_rules(m, "infer01", DEFAULTS, {})
    assert not any(fw.allows(off, "10.231.30.12", p) for p in (29500, 6379, 8265, 29550))
    on = fw.host_rules(m, "infer01", fw.default_flows({"multinode": True}), {})
    assert all(fw.allows(on, "10.231.30.12", p) for p in (29500, 6379, 8265, 29550))
    assert not any(fw.allows(on, "10.231.20.10", p) for p in (29500, 6379, 8265, 29550))
    app = fw.host_rules(m, "app01", fw.default_flows({"multinode": True}), {})
    assert not fw.allows(app, "10.231.30.12", 29500)


def test_engine_ports_from_settings():
    rules = fw.host_rules(model(), "infer01", fw.default_flows({"engine_ports": [8000, 8001, 8002]}), {})
    assert accepts(rules) >= {("app-to-engines", "tcp", "8000-8002", "10.231.20.0/24")}
    assert not fw.allows(rules, "10.231.20.10", 11434)


def test_ssh_only_from_management():
    rules = fw.host_rules(model(), "app01", DEFAULTS, {})
    assert fw.allows(rules, "10.231.0.5", 22)
    for source in ("10.231.10.10", "10.231.20.11", "10.231.30.11", "10.231.40.10", "192.0.2.1"):
        assert not fw.allows(rules, source, 22), source


def test_published_rules_open_ports_on_their_host():
    published = [{"name": "node-exporter", "proto": "tcp", "ports": [9100], "from_zones": ["storage"]},
                 {"name": "prometheus", "proto": "tcp", "ports": [9090, 9093], "from_zones": ["management"]}]
    rules = fw.host_rules(model(), "store01", DEFAULTS, {"firewall_dependent_rules": published})
    assert fw.allows(rules, "10.231.40.10", 9100)
    assert fw.allows(rules, "10.231.0.9", 9093)
    assert not fw.allows(rules, "10.231.20.10", 9090)
    node = next(r for r in rules if r["name"] == "node-exporter")
    assert node["origin"] == "firewall_dependent_rules"


def test_rules_from_an_empty_zone_open_nothing():
    hostvars, groups = lab()
    m = fw.zone_model(hostvars, groups, {})  # no management zone in this inventory
    rules = fw.host_rules(m, "app01", DEFAULTS, {"firewall_rules": [
        {"name": "ui", "proto": "tcp", "ports": [3000], "from_zones": ["management"]}]})
    assert [r["name"] for r in rules] == ["edge-to-app"]


@pytest.mark.parametrize("rule,fragment", [
    ({"name": "x", "proto": "tcp", "ports": [70000], "from_zones": ["app"]}, "rule 'x': port 70000 is outside 1-65535"),
    ({"name": "x", "proto": "tcp", "ports": [0], "from_zones": ["app"]}, "rule 'x': port 0 is outside 1-65535"),
    ({"name": "x", "proto": "tcp", "ports": [80], "from_zones": ["apps"]}, "rule 'x': unknown zone 'apps' in from_zones"),
    ({"name": "x", "proto": "sctp", "ports": [80], "from_zones": ["app"]}, "rule 'x': proto 'sctp' is not tcp or udp"),
    ({"name": "X_1", "proto": "tcp", "ports": [80], "from_zones": ["app"]}, "rule 'X_1': name must be"),
    ({"name": "x", "proto": "tcp", "ports": [80], "from_zones": []}, "rule 'x': from_zones is empty"),
    ("open 80", "firewall_rules: 'open 80' is not a mapping"),
])
def test_bad_published_rule_names_the_rule(rule, fragment):
    errors = errors_of(fw.host_rules, model(), "app01", DEFAULTS, {"firewall_rules": [rule]})
    assert any(fragment in e for e in errors), errors
    assert all(e.startswith("firewall_rules") for e in errors)


def test_unknown_zone_in_a_flow_names_the_flow():
    flows = DEFAULTS + [{"name": "to-backup", "proto": "tcp", "ports": [873], "from_zones": ["storage"],
                         "to_zones": ["backup"]}]
    errors = errors_of(fw.host_rules, model(), "app01", flows, {})
    assert errors == ["firewall flow rule 'to-backup': unknown zone 'backup' in to_zones "
                      "(known: app, dmz, inference, management, storage)"]


def test_flow_without_to_zones():
    errors = errors_of(fw.host_rules, model(), "app01", [{"name": "f", "ports": [1], "from_zones": ["app"]}], {})
    assert errors == ["firewall flow 'f': to_zones is missing"]


@pytest.mark.parametrize("from_zones", [["app"], ["any"], ["inference", "storage"]])
def test_engine_internal_ports_never_leave_inference(from_zones):
    rule = {"name": "ray", "proto": "tcp", "ports": ["6000-6400"], "from_zones": from_zones}
    errors = errors_of(fw.host_rules, model(), "infer01", DEFAULTS, {"vllm_firewall_rules": [rule]})
    assert len(errors) == 1 and "opens engine-internal port(s) 6379" in errors[0]
    assert errors[0].startswith("vllm_firewall_rules rule 'ray'")


def test_engine_internal_port_from_inference_is_fine():
    rule = {"name": "ray", "proto": "tcp", "ports": [6379], "from_zones": ["inference"]}
    assert fw.host_rules(model(), "infer01", DEFAULTS, {"firewall_rules": [rule]})


def test_duplicate_rule_names_across_layers():
    rule = {"name": "clients-to-edge", "proto": "tcp", "ports": [8443], "from_zones": ["app"]}
    errors = errors_of(fw.host_rules, model(), "edge01", DEFAULTS, {"firewall_host_rules": [rule]})
    assert errors == ["firewall_host_rules rule 'clients-to-edge': name already used in firewall flow"]


def test_host_in_no_zone():
    assert errors_of(fw.host_rules, model(), "localhost", DEFAULTS, {})[0].startswith("host localhost is in no zone")


# ----------------------------------------------------------------- filters --
def test_filters_raise_ansible_errors_with_every_message():
    hostvars, groups = lab(infer02={"firewall_address": "10.231.40.12"})
    groups["zone_app"].append("edge01")
    with pytest.raises(AnsibleFilterError, match=r"infer02.*; host edge01|edge01.*; host infer02"):
        firewall_zone_model(hostvars, groups, MGMT)
    with pytest.raises(AnsibleFilterError, match="port 0 is outside"):
        firewall_host_rules(model(), "app01", [], {"firewall_rules": [
            {"name": "a", "proto": "tcp", "ports": [0], "from_zones": ["dmz"]}]})
    assert set(FilterModule().filters()) == {"firewall_zone_model", "firewall_default_flows", "firewall_host_rules",
                                             "firewall_allows", "firewall_matrix", "firewall_engine_ports"}


def test_allows_with_no_controller_address():
    assert firewall_allows([], "", 22) is True
    with pytest.raises(AnsibleFilterError):
        firewall_allows([], "nope", 22)


def test_engine_ports_from_inventory():
    hostvars = {"a": {"vllm_models": [{"name": "m", "port": 8001}, {"name": "n", "port": 8000}]},
                "b": {"ollama_models": ["llama3.2:1b"]}, "c": {}}
    assert firewall_engine_ports(["a", "b", "c"], hostvars) == [8000, 8001, 11434]
    assert firewall_engine_ports(["c"], hostvars) == [8000, 11434]
    assert firewall_engine_ports([], hostvars, [8000]) == [8000]


def test_matrix_lists_every_flow_once_per_destination():
    m = model()
    per_host = {h: fw.host_rules(m, h, DEFAULTS, {}) for h in ADDRESSES}
    table = fw.matrix_markdown(m, per_host)
    assert "| any (clients) | dmz | all | tcp | 443 | clients-to-edge | firewall flow |" in table
    assert "| app | inference | all | tcp | 8000, 11434 | app-to-engines | firewall flow |" in table
    assert "| management | inference | all | tcp | 22 | management-ssh | firewall flow |" in table
    assert "| inference | 10.231.30.0/24 | infer01 (10.231.30.11), infer02 (10.231.30.12) |" in table
    assert table.count("management-ssh") == 4
    assert "29500" not in table

"""The shipped inventories: the lab and the three reference scales.

Each one must parse (`ansible-inventory --graph`), let site.yml pass a syntax
check, and hold the shape its scale promises. The expectations below are written
from the reference architecture's three scales, not read from the inventories.
"""
from __future__ import annotations

import functools
import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
ZONES = ("zone_dmz", "zone_app", "zone_inference", "zone_storage")
INVENTORIES = ("lab", "small", "medium", "large")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    return env


@functools.lru_cache(maxsize=None)
def _inventory(name: str) -> dict:
    out = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", f"inventories/{name}", "--list"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout)


def _members(inv: dict, group: str) -> set[str]:
    """Hosts of a group, children included."""
    node = inv.get(group, {})
    hosts = set(node.get("hosts", []))
    for child in node.get("children", []):
        hosts |= _members(inv, child)
    return hosts


def _hostvars(inv: dict, host: str) -> dict:
    return inv["_meta"]["hostvars"][host]


@pytest.mark.parametrize("name", INVENTORIES)
def test_graph_parses(name):
    out = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", f"inventories/{name}", "--graph"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "@zone_inference" in out.stdout


@pytest.mark.parametrize("name", INVENTORIES)
def test_site_syntax(name):
    out = subprocess.run(
        [str(BIN / "ansible-playbook"), "--syntax-check", "-i", f"inventories/{name}", "site.yml"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("name", INVENTORIES)
def test_every_host_in_exactly_one_zone(name):
    inv = _inventory(name)
    hosts = set(inv["_meta"]["hostvars"]) | _members(inv, "all")
    for host in hosts:
        zones = [z for z in ZONES if host in _members(inv, z)]
        assert len(zones) == 1, f"{name}: {host} is in zones {zones}"


@pytest.mark.parametrize("name", ("small", "medium", "large"))
def test_addresses_inside_zone_cidrs(name):
    inv = _inventory(name)
    for zone in ZONES:
        for host in _members(inv, zone):
            hv = _hostvars(inv, host)
            addr = ipaddress.ip_address(hv["ansible_host"])
            nets = [ipaddress.ip_network(c) for c in hv["zone_cidrs"]]
            assert any(addr in n for n in nets), f"{name}: {host} {addr} outside {zone} {nets}"


@pytest.mark.parametrize("name", ("small", "medium", "large"))
def test_services_sit_in_their_zones(name):
    inv = _inventory(name)
    placement = {"edge": "zone_dmz", "auth": "zone_app", "gateway": "zone_app",
                 "balancer": "zone_app", "gpu": "zone_inference", "vllm": "zone_inference",
                 "audit_collector": "zone_storage", "monitoring": "zone_storage"}
    for group, zone in placement.items():
        members = _members(inv, group)
        assert members, f"{name}: group {group} is empty"
        assert members <= _members(inv, zone), f"{name}: {group} hosts outside {zone}"


def test_small_scale_has_one_server_and_a_standby():
    inv = _inventory("small")
    assert len(_members(inv, "vllm")) == 2
    assert len(_members(inv, "gateway")) == 1


def test_medium_scale_has_three_gateways_and_two_to_four_servers():
    inv = _inventory("medium")
    assert len(_members(inv, "gateway")) == 3
    assert 2 <= len(_members(inv, "vllm")) <= 4
    assert _members(inv, "model_store"), "medium shares model storage"


def test_large_scale_has_pools_per_model_size():
    inv = _inventory("large")
    small, large = _members(inv, "pool_small"), _members(inv, "pool_large")
    assert 4 <= len(small | large) and not small & large
    models_small = {m["name"] for h in small for m in _hostvars(inv, h)["vllm_models"]}
    models_large = {m["name"] for h in large for m in _hostvars(inv, h)["vllm_models"]}
    assert models_small and models_large and not models_small & models_large
    assert _members(inv, "monitoring").isdisjoint(_members(inv, "audit_collector"))


@pytest.mark.parametrize("name", INVENTORIES)
def test_zone_model_and_firewall_matrix(name, tmp_path):
    """The firewall's zone checks pass and the auditor's matrix is written, offline."""
    report = tmp_path / "matrix.md"
    out = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", f"inventories/{name}", "playbooks/firewall_matrix.yml",
         "-e", f"firewall_report_path={report}"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    matrix = report.read_text()
    assert "| any (clients) | dmz | all | tcp | 443 |" in matrix
    assert "| app | inference | all | tcp | 8000" in matrix


def _site_debug(name: str, tag: str) -> dict[str, object]:
    """Run only site.yml's never-tagged debug task `tag` offline; its message per host.

    `--skip-tags always` leaves out playbooks/validate.yml (it gathers facts);
    connection local means no host is contacted: only set_fact and debug run.
    """
    env = _env()
    env["ANSIBLE_STDOUT_CALLBACK"] = "ansible.builtin.json"
    out = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", f"inventories/{name}", "site.yml", "--tags", tag,
         "--skip-tags", "always", "-e", "ansible_connection=local"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=120,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr
    messages: dict[str, object] = {}
    for play in json.loads(out.stdout)["plays"]:
        for task in play["tasks"]:
            for host, result in task["hosts"].items():
                if result.get("action") == "ansible.builtin.debug" and "msg" in result:
                    assert host not in messages, f"{name}: two debug results for {host}"
                    messages[host] = result["msg"]
    return messages


# The rules each group's roles publish (names from the roles' defaults), written
# here, not read from the roles, so a play that stops publishing fails the test.
PUBLISHED = {
    "vllm": {"vllm-api"},
    "ollama": {"ollama-api"},
    "balancer": {"haproxy-api", "haproxy-metrics"},
    "gateway": {"gateway-api", "gateway-metrics"},
    "auth": {"oauth2-proxy"},
    "edge": {"edge-https", "edge-http-redirect"},
    "audit_collector": {"audit-relp"},
    "gpu": {"gpu-exporter"},
    "monitoring": {"prometheus"},
}


@pytest.mark.parametrize("name", INVENTORIES)
def test_firewall_play_receives_the_rules_of_what_each_host_runs(name):
    inv = _inventory(name)
    received = _site_debug(name, "site_firewall_rules")
    hosts = set(inv["_meta"]["hostvars"])
    assert set(received) == hosts, f"{name}: the firewall play misses {hosts - set(received)}"
    for host in sorted(hosts):
        expected = {"node-exporter"}
        for group, rules in PUBLISHED.items():
            if host in _members(inv, group):
                expected |= rules
        if not _hostvars(inv, host).get("vllm_models"):
            expected.discard("vllm-api")  # the vllm role opens its port only for models it serves
        names = [rule["name"] for rule in received[host]]
        assert len(names) == len(set(names)), f"{name}: {host} receives duplicate rules {names}"
        assert set(names) == expected, f"{name}: {host} receives {sorted(names)}, expected {sorted(expected)}"


@pytest.mark.parametrize("name", INVENTORIES)
def test_site_wiring_follows_the_host_groups(name):
    inv = _inventory(name)
    wiring = _site_debug(name, "site_wiring")

    def address(host):
        hv = _hostvars(inv, host)
        return hv.get("lab_ip") or hv["ansible_host"]

    gateways, auths = sorted(_members(inv, "gateway")), sorted(_members(inv, "auth"))
    balancers, edges = _members(inv, "balancer"), _members(inv, "edge")
    for host in edges:
        edge = wiring[host]["edge"]
        assert sorted(edge["nginx_edge_gateway_upstreams"]) == sorted(f"{address(g)}:8443" for g in gateways)
        assert sorted(edge["nginx_edge_oauth2_upstreams"]) == sorted(f"{address(a)}:4180" for a in auths)
    for host in gateways:
        gateway = wiring[host]["gateway"]
        assert set(gateway["gateway_trusted_proxies"]) == {"127.0.0.1/32", "::1/128"} | {
            f"{address(a)}/32" for a in auths}
        url = gateway["gateway_upstream_url"]
        if host in balancers and set(gateways) <= balancers:
            assert url == "http://127.0.0.1:8080", f"{name}: {host}"
            assert wiring[host]["balancer"]["haproxy_bind_address"] == "127.0.0.1"
        else:
            peer = {f"http://{address(b)}:8080" for b in balancers}
            assert url in peer, f"{name}: {host} sends to {url}, not a balancer"
    for host in balancers:
        if not set(gateways) <= balancers:
            assert wiring[host]["balancer"]["haproxy_bind_address"] == address(host)
    for host in auths:
        auth = wiring[host]["auth"]
        assert auth["oauth2_proxy_trusted_proxy_ips"] == sorted(
            f"{address(e)}/32" for e in edges) or set(auth["oauth2_proxy_trusted_proxy_ips"]) == {
            f"{address(e)}/32" for e in edges}
        (upstream,) = auth["oauth2_proxy_upstreams"]
        assert upstream in {f"https://{address(g)}:8443/" for g in gateways}
        if host in gateways:
            assert upstream == f"https://{address(host)}:8443/", f"{name}: {host} skips its own gateway"


def test_one_engine_key_for_every_vllm_and_the_gateway():
    """The gateway sends one upstream key to whichever vLLM HAProxy picks: both come from one variable."""
    import yaml

    wiring = yaml.safe_load((ROOT / "group_vars" / "all" / "site.yml").read_text())
    assert wiring["site_engine_api_key"] == "", "no key may live in the repository"
    assert wiring["vllm_api_key"] == "{{ site_engine_api_key }}"
    assert wiring["gateway_upstream_api_key"] == "{{ site_engine_api_key }}"

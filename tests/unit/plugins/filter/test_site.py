from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.enclave.llm.plugins.filter.site import (
    FilterModule,
    site_address,
    site_addresses,
    site_endpoints,
    site_host_cidrs,
    site_peer,
)

HOSTVARS = {
    "edge01": {"ansible_host": "enclave-lab-edge01", "firewall_address": "10.231.10.10"},
    "app01": {"ansible_host": "10.30.20.10"},
    "named": {"ansible_host": "gw.example.internal"},
    "bare": {},
    "v6": {"firewall_address": "fd00:0:0::0010"},
    "bad": {"firewall_address": "10.0.0.0/24"},
}


def test_firewall_address_wins_over_ansible_host():
    assert site_address("edge01", HOSTVARS) == "10.231.10.10"


def test_ansible_host_then_name():
    assert site_address("app01", HOSTVARS) == "10.30.20.10"
    assert site_address("named", HOSTVARS) == "gw.example.internal"
    assert site_address("bare", HOSTVARS) == "bare"


def test_ipv6_is_canonical():
    assert site_address("v6", HOSTVARS) == "fd00::10"


def test_a_cidr_is_refused_naming_the_host():
    with pytest.raises(AnsibleFilterError, match="host bad: address '10.0.0.0/24'"):
        site_address("bad", HOSTVARS)


def test_unknown_host_is_refused():
    with pytest.raises(AnsibleFilterError, match="'ghost' is not in hostvars"):
        site_address("ghost", HOSTVARS)


def test_addresses_keep_order():
    assert site_addresses(["app01", "edge01"], HOSTVARS) == ["10.30.20.10", "10.231.10.10"]
    assert site_addresses([], HOSTVARS) == []


def test_addresses_refuse_a_string():
    with pytest.raises(AnsibleFilterError, match="must be a list"):
        site_addresses("app01", HOSTVARS)


def test_peer_is_self_when_co_located():
    assert site_peer("app02", ["app01", "app02", "app03"], ["app01", "app02", "app03"]) == "app02"


def test_peer_round_robin_over_clients():
    balancers, gateways = ["lb01", "lb02"], ["gw01", "gw02", "gw03", "gw04"]
    assert [site_peer(g, balancers, gateways) for g in gateways] == ["lb01", "lb02", "lb01", "lb02"]


def test_peer_of_a_stranger_is_the_first():
    assert site_peer("edge01", ["lb01", "lb02"], ["gw01"]) == "lb01"
    assert site_peer("edge01", ["lb01", "lb02"]) == "lb01"


def test_peer_needs_a_candidate():
    with pytest.raises(AnsibleFilterError, match="host gw01: no candidate"):
        site_peer("gw01", [], ["gw01"])


def test_filters_are_registered():
    assert set(FilterModule().filters()) == {"site_address", "site_addresses", "site_endpoints", "site_host_cidrs", "site_peer"}


def test_endpoints_bracket_ipv6():
    assert site_endpoints(["app01", "v6", "named"], HOSTVARS, "8443") == [
        "10.30.20.10:8443", "[fd00::10]:8443", "gw.example.internal:8443"]


@pytest.mark.parametrize("port,fragment", [("x", "is not a number"), (0, "outside"), (65536, "outside")])
def test_endpoints_refuse_bad_ports(port, fragment):
    with pytest.raises(AnsibleFilterError, match=fragment):
        site_endpoints(["app01"], HOSTVARS, port)


def test_host_cidrs():
    assert site_host_cidrs(["edge01", "v6"], HOSTVARS) == ["10.231.10.10/32", "fd00::10/128"]


def test_host_cidrs_refuse_a_name():
    with pytest.raises(AnsibleFilterError, match="host named: 'gw.example.internal' is not an IP address"):
        site_host_cidrs(["named"], HOSTVARS)

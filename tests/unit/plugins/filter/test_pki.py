from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.enclave.llm.plugins.filter.pki import (
    FilterModule,
    dns_name_error,
    pki_certificate_errors,
    pki_host_addresses,
    pki_subject_alt_names,
)


@pytest.mark.parametrize("name", ["edge01", "api.lab.internal", "*.apps.example.com", "a-b.c", "x" * 63 + ".io",
                                  "EDGE01.Example.COM", "host.example."])
def test_valid_dns_names(name):
    assert dns_name_error(name) is None


@pytest.mark.parametrize("name,fragment", [
    ("bad_name", "label 'bad_name'"),
    ("-lead.example", "label '-lead'"),
    ("trail-.example", "label 'trail-'"),
    ("a..b", "label ''"),
    ("x" * 64 + ".io", "label"),
    ("*.com", "wildcard needs at least two labels"),
    ("a.*.example.com", "label '*'"),
    ("", "is not a DNS name"),
    (None, "is not a DNS name"),
    ("é.example", "label"),
    ("a" * 250 + ".com", "longer than 253"),
])
def test_invalid_dns_names(name, fragment):
    assert fragment in dns_name_error(name)


def test_sans_are_normalised_deduplicated_and_ordered():
    sans = pki_subject_alt_names(["Edge01", "edge01.", "10.0.0.1", "api.lab"], ["10.0.0.1", "2001:db8:0::1"])
    assert sans == ["DNS:edge01", "DNS:api.lab", "IP:10.0.0.1", "IP:2001:db8::1"]


def test_sans_accept_a_single_string():
    assert pki_subject_alt_names("edge01", "10.1.2.3") == ["DNS:edge01", "IP:10.1.2.3"]


@pytest.mark.parametrize("dns,ips,message", [
    (["bad_name"], [], "not a valid DNS name"),
    ([], ["10.0.0.300"], "is not an IP address"),
    ([], ["example.com"], "is not an IP address"),
    ([], [], "at least one DNS name or IP address"),
    ({"a": 1}, [], "must be a list"),
])
def test_sans_reject_bad_input(dns, ips, message):
    with pytest.raises(AnsibleFilterError, match=message):
        pki_subject_alt_names(dns, ips)


def test_host_addresses_drop_loopback_link_local_and_unspecified():
    kept = pki_host_addresses(["127.0.0.1", "10.1.1.1", "fe80::1", "::1", "0.0.0.0", "2001:db8::5", "10.1.1.1",
                               "not-an-ip"])
    assert kept == ["10.1.1.1", "2001:db8::5"]


def test_certificate_errors_name_host_certificate_and_field():
    errors = pki_certificate_errors(
        [{"name": "api", "dns": ["ok.example", "bad_name"], "ip": ["1.2.3.999"], "owner": "Svc",
          "extended_key_usage": ["codeSigning"]},
         {"name": "api"},
         {"name": "Bad Name"},
         "nope"],
        "infer01", ["infer01", "under_score"], ["10.0.0.1", "x"])
    assert errors == [
        "infer01: pki_host_dns_names entry 'under_score' is not a valid DNS name (label 'under_score': letters, "
        "digits and inner hyphens only, 1-63 characters)",
        "infer01: pki_host_ip_addresses entry 'x' is not an IP address",
        "infer01: pki_certificates[api].owner 'Svc' is not a valid user or group name",
        "infer01: pki_certificates[api].dns entry 'bad_name' is not a valid DNS name (label 'bad_name': letters, "
        "digits and inner hyphens only, 1-63 characters)",
        "infer01: pki_certificates[api].ip entry '1.2.3.999' is not an IP address",
        "infer01: pki_certificates[api].extended_key_usage 'codeSigning' must be one of serverAuth, clientAuth",
        "infer01: pki_certificates[api].name is used twice",
        "infer01: pki_certificates[Bad Name].name 'Bad Name' must match [a-z0-9][a-z0-9_.-]* (it names files)",
        "infer01: pki_certificates[3] must be a mapping, got str",
    ]


def test_certificate_errors_accept_a_good_definition():
    assert pki_certificate_errors([{"name": "host"}, {"name": "haproxy", "owner": "haproxy", "group": "haproxy",
                                                      "dns": ["llm.example"], "ip": ["10.0.0.5"],
                                                      "extended_key_usage": ["serverAuth", "clientAuth"]}],
                                  "app01", ["app01"], ["10.0.0.5"]) == []


def test_certificate_errors_reject_a_non_list():
    assert pki_certificate_errors({"name": "x"}, "h") == ["h: pki_certificates must be a list of certificate definitions"]


def test_filter_module_exports():
    assert set(FilterModule().filters()) == {"pki_subject_alt_names", "pki_host_addresses", "pki_certificate_errors"}

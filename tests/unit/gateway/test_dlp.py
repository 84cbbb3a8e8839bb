"""DLP detectors: every pattern, near-misses that must not match, pseudonymization."""
from __future__ import annotations

import pytest

from enclave_gateway import dlp

PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo\n-----END RSA PRIVATE KEY-----"


@pytest.mark.parametrize("text,kind,value", [
    ("my ssn is 123-45-6789 ok", "ssn", "123-45-6789"),
    ("card 4111 1111 1111 1111 exp", "credit_card", "4111 1111 1111 1111"),
    ("card 4111-1111-1111-1111", "credit_card", "4111-1111-1111-1111"),
    ("amex 378282246310005.", "credit_card", "378282246310005"),
    ("pay to GB82 WEST 1234 5698 7654 32 now", "iban", "GB82 WEST 1234 5698 7654 32"),
    ("iban DE89370400440532013000", "iban", "DE89370400440532013000"),
    (f"key:\n{PEM}\nend", "private_key", PEM),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA (truncated)", "private_key",
     "-----BEGIN OPENSSH PRIVATE KEY-----"),
    ("aws AKIAIOSFODNN7EXAMPLE here", "aws_access_key", "AKIAIOSFODNN7EXAMPLE"),
    ("gcp AIzaSyA-1234567890abcdefghijklmnopqrstu", "gcp_api_key", "AIzaSyA-1234567890abcdefghijklmnopqrstu"),
    ("DefaultEndpointsProtocol=https;AccountKey=" + "A" * 86 + "==;", "azure_storage_key",
     "AccountKey=" + "A" * 86 + "=="),
])
def test_each_pattern_matches(text, kind, value):
    found = dlp.scan(text, dlp.BUILTIN)
    assert [(f.type, f.value) for f in found] == [(kind, value)]


@pytest.mark.parametrize("text", [
    "a 16-digit number failing Luhn: 4111 1111 1111 1112",
    "order 1234567812345678 shipped",              # fails Luhn
    "ssn-like 000-12-3456 and 666-12-3456 and 900-12-3456",  # never issued areas
    "ssn-like 123-00-4567 and 123-45-0000",
    "phone 555-123-4567",
    "iban with a bad checksum GB83 WEST 1234 5698 7654 32",
    "AKIA short: AKIAIOSFODNN7EXAMP",
    "a public key -----BEGIN PUBLIC KEY----- is fine",
    "a 25-digit run 4111111111111111111111111",
    "AccountKey=tooShort==",
    "version 1.2.3-4 and date 2024-01-15",
])
def test_near_misses_do_not_match(text):
    assert dlp.scan(text, dlp.BUILTIN) == []


@pytest.mark.parametrize("digits,ok", [("4111111111111111", True), ("4111111111111112", False),
                                       ("79927398713", True), ("79927398710", False)])
def test_luhn(digits, ok):
    assert dlp.luhn_ok(digits) is ok


def test_extra_patterns_and_bad_names():
    extra = dlp.compile_extra([{"name": "employee_id", "regex": r"\bEMP-\d{6}\b"}])
    assert [f.type for f in dlp.scan("badge EMP-123456", dlp.BUILTIN + extra)] == ["employee_id"]
    with pytest.raises(ValueError, match="must match"):
        dlp.compile_extra([{"name": "Bad Name", "regex": "x"}])


def test_pseudonymize_same_value_same_placeholder_and_restore():
    text = "ssn 123-45-6789, again 123-45-6789, other 234-56-7890"
    pseudo = dlp.Pseudonymizer()
    replaced = pseudo.replace(text, dlp.scan(text, dlp.BUILTIN))
    assert replaced == "ssn [SSN_1], again [SSN_1], other [SSN_2]"
    assert pseudo.restore(replaced) == text


@pytest.mark.parametrize("pieces", [
    ["The value [SSN_1] is", " here"],
    ["The value [SS", "N_1] is here"],
    ["The value [", "S", "SN_", "1", "] is here"],
    ["The value [SSN_1", "] is here"],
])
def test_stream_restorer_handles_split_placeholders(pieces):
    pseudo = dlp.Pseudonymizer()
    pseudo.placeholder("ssn", "123-45-6789")
    restorer = pseudo.stream()
    out = "".join(restorer.feed(p) for p in pieces) + restorer.flush()
    assert out == "The value 123-45-6789 is here"


def test_stream_restorer_releases_brackets_that_are_not_placeholders():
    pseudo = dlp.Pseudonymizer()
    pseudo.placeholder("ssn", "123-45-6789")
    restorer = pseudo.stream()
    assert restorer.feed("list [a") == "list [a"
    assert restorer.feed("[SSN") == ""
    assert restorer.flush() == "[SSN"

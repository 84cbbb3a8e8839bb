"""The gateway role's keys filter: hashes only, and errors that name the entry, never the key."""
from __future__ import annotations

import hashlib

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.enclave.llm.plugins.filter.gateway import gateway_keys_document

KEY = "ek-alice-0123456789abcdefXYZ"


def test_key_becomes_its_sha256():
    doc = gateway_keys_document([{"id": "alice", "owner": "alice@example.test", "models": ["m"], "key": KEY,
                                  "expires": "2027-01-01", "rate_per_minute": 60, "token_quota": 1000}])
    (entry,) = doc["keys"]
    assert entry["sha256"] == hashlib.sha256(KEY.encode()).hexdigest()
    assert KEY not in str(doc) and "0123456789abcdef" not in str(doc)
    assert entry["expires"] == "2027-01-01T00:00:00Z" and entry["revoked"] is False


def test_sha256_given_directly_and_revocation():
    digest = "a" * 64
    doc = gateway_keys_document([{"id": "bob", "models": ["*"], "sha256": digest.upper(), "revoked": True}])
    assert doc["keys"][0]["sha256"] == digest and doc["keys"][0]["revoked"] is True


@pytest.mark.parametrize("entry,message", [
    ({"id": "a-b", "models": ["m"], "sha256": "a" * 64}, "no '-'"),
    ({"id": "alice", "models": ["m"]}, "exactly one of key"),
    ({"id": "alice", "models": ["m"], "key": KEY, "sha256": "a" * 64}, "exactly one of key"),
    ({"id": "alice", "models": ["m"], "key": "ek-bob-0123456789abcdefXYZ"}, "must read ek-alice-"),
    ({"id": "alice", "models": ["m"], "key": "ek-alice-short"}, "at least 16"),
    ({"id": "alice", "models": [], "key": KEY}, "non-empty list"),
    ({"id": "alice", "models": ["m"], "key": KEY, "expires": "next week"}, "ISO 8601"),
    ({"id": "alice", "models": ["m"], "key": KEY, "token_quota": -1}, "token_quota must be"),
    ({"id": "alice", "models": ["m"], "key": KEY, "dlp_action": "shred"}, "dlp_action must be"),
    ({"id": "alice", "models": ["m"], "sha256": "xyz"}, "64 hex"),
])
def test_errors_name_the_entry_not_the_key(entry, message):
    with pytest.raises(AnsibleFilterError, match=message) as info:
        gateway_keys_document([entry])
    assert "gateway_api_keys[0]" in str(info.value)
    assert "0123456789abcdef" not in str(info.value)


def test_duplicate_ids_are_refused():
    with pytest.raises(AnsibleFilterError, match="used twice"):
        gateway_keys_document([{"id": "x", "models": ["m"], "sha256": "a" * 64}] * 2)

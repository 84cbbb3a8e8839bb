"""The gateway in front of the OpenAI-compatible backend double (tests/doubles/openai_backend.py).

The double stands in for HAProxy + vLLM: it echoes the prompt that reached it, so
these tests see what the gateway changed before the "model" saw it.
"""
from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from harness import (KEY_BLOCK, KEY_EXPIRED, KEY_GOOD, KEY_OTHER_MODEL, KEY_QUOTA, KEY_RATE, KEY_REVOKED, Harness,
                     chat, run, sse_events, streamed_text)

SPOOF = {"X-Forwarded-User": "mallory", "X-Forwarded-Email": "ceo@example.test", "X-Forwarded-Groups": "admins"}

AUTH_MATRIX = [
    # (case, key, headers, model, trusted proxies, status, reason)
    ("no key", None, {}, "tiny-llama", ["127.0.0.1/32"], 401, "no_key"),
    ("wrong secret", "ek-alice-wrongsecret", {}, "tiny-llama", ["127.0.0.1/32"], 401, "wrong_key"),
    ("unknown id", "ek-zed-whatever", {}, "tiny-llama", ["127.0.0.1/32"], 401, "wrong_key"),
    ("malformed ek key", "ek-nosecret", {}, "tiny-llama", ["127.0.0.1/32"], 401, "malformed_key"),
    ("not an ek key", "sk-openai-style", {}, "tiny-llama", ["127.0.0.1/32"], 401, "malformed_key"),
    ("expired", KEY_EXPIRED, {}, "tiny-llama", ["127.0.0.1/32"], 401, "expired_key"),
    ("revoked", KEY_REVOKED, {}, "tiny-llama", ["127.0.0.1/32"], 401, "revoked_key"),
    ("key for another model", KEY_OTHER_MODEL, {}, "tiny-llama", ["127.0.0.1/32"], 403, "model_not_allowed"),
    ("spoofed identity from a non-proxy address", None, SPOOF, "tiny-llama", ["10.99.0.1/32"], 401,
     "untrusted_identity_headers"),
    ("trusted SSO user asking for a model it may not use", None, SPOOF, "other", ["127.0.0.1/32"], 403,
     "model_not_allowed"),
]


@pytest.mark.parametrize("case,key,headers,model,trusted,status,reason", AUTH_MATRIX, ids=[c[0] for c in AUTH_MATRIX])
def test_auth_matrix_refuses_with_openai_errors(tmp_path, case, key, headers, model, trusted, status, reason):
    async def scenario():
        async with Harness(tmp_path, trusted_proxies=trusted) as h:
            got, body, _unused = await h.post(body=chat(model=model), key=key, headers=headers)
            return got, json.loads(body), h.backend.requests, h.records()
    got, body, backend_requests, records = run(scenario())
    assert got == status
    assert set(body["error"]) >= {"message", "type", "code"}
    assert backend_requests == 0                         # nothing reached the model
    assert [(r["decision"], r["reason"], r["status"]) for r in records] == [("block", reason, status)]


def test_auth_matrix_has_zero_2xx_across_all_cases(tmp_path):
    async def scenario():
        statuses = []
        async with Harness(tmp_path, trusted_proxies=["10.99.0.1/32"]) as h:
            for _case, key, headers, model, _t, _s, _r in AUTH_MATRIX:
                for _unused in range(3):
                    statuses.append((await h.post(body=chat(model=model), key=key, headers=headers))[0])
            return statuses, h.backend.requests
    statuses, backend_requests = run(scenario())
    assert len(statuses) == 30 and not [s for s in statuses if 200 <= s < 300]
    assert backend_requests == 0


def test_valid_key_is_served_and_audited(tmp_path):
    async def scenario():
        async with Harness(tmp_path) as h:
            status, body, headers = await h.post(body=chat("hello gateway"),
                                                 headers={"X-Forwarded-For": "192.0.2.7", **SPOOF})
            return status, json.loads(body), headers, h.records(), h.backend.last_request
    status, body, headers, records, seen = run(scenario())
    assert status == 200 and "hello gateway" in body["choices"][0]["message"]["content"]
    (record,) = records
    assert record["request_id"] == headers["X-Request-Id"]
    # A key's identity wins; identity headers from a non-proxy hop never become the caller.
    assert record["identity"] == {"kind": "api_key", "user": "alice@example.test", "key_id": "alice"}
    assert record["source"] == "127.0.0.1" and record["forwarded_for"] == "192.0.2.7"
    assert record["model"] == "tiny-llama" and record["model_answered"] is True and record["upstream_model"]
    assert len(record["prompt_sha256"]) == 64 and "prompt" not in record
    assert record["prompt_chars"] == len("hello gateway")
    assert record["usage"]["completion_tokens"] == 8 and record["completion_chars"] > 0
    assert record["decision"] == "allow" and record["status"] == 200 and record["latency_ms"] > 0
    assert "hello gateway" not in json.dumps(record)      # the prompt itself is not in the audit record


def test_gateway_sets_model_and_request_id_headers_upstream(tmp_path):
    seen = {}

    async def scenario():
        async with Harness(tmp_path) as h:
            original = h.backend.route

            async def spy(method, path, headers, body, writer):
                seen.update(headers)
                await original(method, path, headers, body, writer)
            h.backend.route = spy
            status, _unused, headers = await h.post(headers={"X-Enclave-Model": "forged"})
            return status, headers
    status, headers = run(scenario())
    assert status == 200
    assert seen["x-enclave-model"] == "tiny-llama" and seen["x-request-id"] == headers["X-Request-Id"]
    assert "authorization" not in seen                    # the caller's key never reaches the engine


def test_sso_identity_from_trusted_proxy(tmp_path):
    async def scenario():
        async with Harness(tmp_path, trusted_proxies=["127.0.0.1/32"]) as h:
            status, _unused, _unused = await h.post(key=None, headers=SPOOF)
            return status, h.records()
    status, records = run(scenario())
    assert status == 200
    assert records[0]["identity"] == {"kind": "sso", "user": "mallory", "email": "ceo@example.test",
                                      "groups": ["admins"]}


@pytest.mark.parametrize("extra,param", [
    ({"max_tokens": 5000}, "max_tokens"), ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": "8"}, "max_tokens"),
    ({"max_completion_tokens": 99999}, "max_completion_tokens"), ({"n": 5}, "n"), ({"best_of": 9}, "best_of"),
])
def test_policy_caps(tmp_path, extra, param):
    async def scenario():
        async with Harness(tmp_path) as h:
            status, body, _unused = await h.post(body=chat(**extra))
            return status, json.loads(body), h.backend.requests
    status, body, backend_requests = run(scenario())
    assert status == 400 and body["error"]["param"] == param and backend_requests == 0


def test_prompt_count_caps(tmp_path):
    async def scenario():
        async with Harness(tmp_path, max_prompts=4, max_messages=3) as h:
            many = await h.post("/v1/completions", {"model": "tiny-llama", "prompt": ["a"] * 5})
            ok = await h.post("/v1/completions", {"model": "tiny-llama", "prompt": ["a"] * 4, "max_tokens": 2})
            msgs = await h.post(body={"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}] * 4})
            return many[0], ok[0], msgs[0]
    assert run(scenario()) == (400, 200, 400)


def test_advisory_fields_are_stripped(tmp_path):
    async def scenario():
        async with Harness(tmp_path) as h:
            body = chat(chat_template="{{ evil }}", chat_template_kwargs={"x": 1}, prompt_embeds="AAAA")
            status, _unused, _unused = await h.post(body=body)
            return status, h.backend.last_request, h.records()
    status, seen, records = run(scenario())
    assert status == 200
    assert not {"chat_template", "chat_template_kwargs", "prompt_embeds"} & set(seen)
    assert records[0]["stripped"] == ["chat_template", "chat_template_kwargs", "prompt_embeds"]


SENSITIVE = {
    "ssn": "123-45-6789",
    "credit_card": "4111 1111 1111 1111",
    "iban": "DE89370400440532013000",
    "private_key": "-----BEGIN PRIVATE KEY-----\nMIIBVAIBADANBgkqhkiG9w0BAQEFAASCAT4wggE6\n-----END PRIVATE KEY-----",
    "aws_access_key": "AKIAIOSFODNN7EXAMPLE",
    "gcp_api_key": "AIzaSyA-1234567890abcdefghijklmnopqrstu",
    "employee_id": "EMP-123456",
}
EXTRA = [{"name": "employee_id", "regex": r"\bEMP-\d{6}\b"}]


@pytest.mark.parametrize("kind", sorted(SENSITIVE))
def test_dlp_block_each_pattern(tmp_path, kind):
    async def scenario():
        async with Harness(tmp_path, dlp_action="block", dlp_patterns=EXTRA) as h:
            status, body, _unused = await h.post(body=chat(f"please use {SENSITIVE[kind]} for this"))
            return status, json.loads(body), h.backend.requests, h.records()
    status, body, backend_requests, records = run(scenario())
    assert status == 400 and body["error"]["code"] == "sensitive_data" and backend_requests == 0
    assert records[0]["dlp"]["findings"] == {kind: 1} and records[0]["reason"] == "dlp_block"
    assert SENSITIVE[kind] not in json.dumps(records[0])


def test_dlp_near_miss_passes(tmp_path):
    async def scenario():
        async with Harness(tmp_path, dlp_action="block") as h:
            status, _unused, _unused = await h.post(body=chat("order 4111 1111 1111 1112 and phone 555-123-4567"))
            return status, h.records()
    status, records = run(scenario())
    assert status == 200 and "dlp" not in records[0]


def test_dlp_log_action_forwards_and_records(tmp_path):
    async def scenario():
        async with Harness(tmp_path, dlp_action="log") as h:
            status, _unused, _unused = await h.post(body=chat("ssn 123-45-6789"))
            return status, h.backend.last_request, h.records()
    status, seen, records = run(scenario())
    assert status == 200 and "123-45-6789" in json.dumps(seen)
    assert records[0]["dlp"] == {"findings": {"ssn": 1}, "actions": {"ssn": "log"}}


def test_per_key_dlp_action_overrides_the_default(tmp_path):
    async def scenario():
        async with Harness(tmp_path, dlp_action="pseudonymize") as h:
            return (await h.post(body=chat("ssn 123-45-6789"), key=KEY_BLOCK))[0]
    assert run(scenario()) == 400


def test_pseudonymize_round_trip_plain(tmp_path):
    prompt = "ssn 123-45-6789 card 4111 1111 1111 1111 and again 123-45-6789"

    async def scenario():
        async with Harness(tmp_path, dlp_action="pseudonymize") as h:
            status, body, _unused = await h.post(body=chat(prompt, max_tokens=64))
            return status, json.loads(body), h.backend.last_request
    status, body, seen = run(scenario())
    sent = json.dumps(seen)
    assert "123-45-6789" not in sent and "4111 1111 1111 1111" not in sent
    assert "[SSN_1]" in sent and "[CREDIT_CARD_1]" in sent
    answer = body["choices"][0]["message"]["content"]
    assert "123-45-6789" in answer and "4111 1111 1111 1111" in answer and "[SSN_1]" not in answer


def test_pseudonymize_round_trip_streamed(tmp_path):
    prompt = "ssn 123-45-6789 key AKIAIOSFODNN7EXAMPLE"

    async def scenario():
        async with Harness(tmp_path, dlp_action="pseudonymize") as h:
            status, raw, headers = await h.post(body=chat(prompt, max_tokens=64, stream=True))
            return status, raw, headers, h.backend.last_request, h.records()
    status, raw, headers, seen, records = run(scenario())
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert "123-45-6789" not in json.dumps(seen) and "[AWS_ACCESS_KEY_1]" in json.dumps(seen)
    text = streamed_text(raw)
    assert "123-45-6789" in text and "AKIAIOSFODNN7EXAMPLE" in text and "[SSN_1]" not in text
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    # The usage chunk the gateway asked for is not shown to a client that did not ask for it.
    assert not [e for e in events if isinstance(e, dict) and "usage" in e]
    assert records[0]["usage"]["completion_tokens"] == 64 and not records[0]["usage"].get("estimated")
    assert records[0]["stream"] is True and records[0]["model_answered"] is True


def test_stream_passthrough_keeps_client_usage_request(tmp_path):
    async def scenario():
        async with Harness(tmp_path) as h:
            return await h.post(body=chat(stream=True, stream_options={"include_usage": True}))
    status, raw, _unused = run(scenario())
    assert status == 200 and [e for e in sse_events(raw) if isinstance(e, dict) and "usage" in e]


def test_token_quota_exhaustion(tmp_path):
    async def scenario():
        async with Harness(tmp_path) as h:
            statuses = [(await h.post(body=chat(max_tokens=16), key=KEY_QUOTA))[0] for _unused in range(4)]
            status, body, _unused = await h.post(key=KEY_QUOTA)
            return statuses, status, json.loads(body), h.records()
    statuses, status, body, records = run(scenario())
    # each answer uses ~20 tokens against a quota of 40: two pass, then the key is out of tokens
    assert statuses[:2] == [200, 200] and statuses[2:] == [429, 429]
    assert status == 429 and body["error"]["code"] == "insufficient_quota"
    assert records[-1]["reason"] == "quota_exhausted"


def test_quota_survives_a_restart(tmp_path):
    async def scenario():
        async with Harness(tmp_path) as h:
            for _unused in range(2):
                await h.post(body=chat(max_tokens=16), key=KEY_QUOTA)
        async with Harness(tmp_path) as h:          # same audit log: usage is replayed from it
            return (await h.post(key=KEY_QUOTA))[0]
    assert run(scenario()) == 429


def test_rate_limit(tmp_path):
    async def scenario():
        async with Harness(tmp_path) as h:
            return [(await h.post(key=KEY_RATE))[0] for _unused in range(3)]
    assert run(scenario()) == [200, 200, 429]


@pytest.mark.parametrize("raw,status,code", [
    (b'{"model": "tiny-llama", "messages": [', 400, "invalid_json"),
    (b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, "invalid_encoding"),
    (b'["not", "an", "object"]', 400, "invalid_json"),
    (b'{"messages": []}', 400, "missing_model"),
    (b"x" * (10 * 1024 * 1024), 413, "request_too_large"),
])
def test_bad_input_gets_a_clean_error_and_an_audit_record(tmp_path, raw, status, code):
    async def scenario():
        async with Harness(tmp_path) as h:
            got, body, _unused = await h.post(raw=raw)
            again, _unused, _unused = await h.post()                     # still serving afterwards
            return got, json.loads(body), again, h.records(), h.backend.requests
    got, body, again, records, backend_requests = run(scenario())
    assert (got, body["error"]["code"]) == (status, code)
    assert again == 200 and backend_requests == 1
    assert records[0]["status"] == status and records[0]["decision"] == "block"


def test_ten_thousand_prompts_are_refused(tmp_path):
    async def scenario():
        async with Harness(tmp_path) as h:
            return (await h.post("/v1/completions", {"model": "tiny-llama", "prompt": ["hi"] * 10000}))[0], \
                h.backend.requests
    assert run(scenario()) == (400, 0)


def test_sse_client_disconnect_mid_stream(tmp_path):
    async def scenario():
        async with Harness(tmp_path) as h:
            h.backend.args.token_delay = 0.01
            reader, writer = await asyncio.open_connection("127.0.0.1", int(h.url.rsplit(":", 1)[1]))
            body = json.dumps(chat(max_tokens=200, stream=True)).encode()
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         + f"Authorization: Bearer {KEY_GOOD}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                         + body)
            await writer.drain()
            first = await reader.readuntil(b"data: ")         # the stream has started
            writer.close()                                     # and the client goes away
            for _unused in range(100):                               # bounded: at most 5 s
                if h.records():
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            in_flight = h.backend.in_flight
            status, _unused, _unused = await h.post()
            return first, h.records(), status, in_flight
    first, records, status, in_flight = run(scenario())
    assert first.startswith(b"HTTP/1.1 200")
    assert records[0]["status"] == 499 and records[0]["reason"] == "client_disconnected"
    assert records[0]["usage"]["total_tokens"] < 200     # the upstream stream was cut, not read to the end
    assert in_flight == 0                                 # and the backend's request ended (no leak)
    assert status == 200


def test_unwritable_audit_log_refuses_requests(tmp_path):
    async def scenario():
        async with Harness(tmp_path, audit_path=str(tmp_path)) as h:     # a directory: cannot be opened
            status, body, _unused = await h.post()
            return status, json.loads(body), h.backend.requests
    status, body, backend_requests = run(scenario())
    assert status == 503 and body["error"]["code"] == "audit_unavailable" and backend_requests == 0


def test_audit_write_failure_withholds_the_answer(tmp_path):
    async def scenario():
        async with Harness(tmp_path, audit_path="/dev/full") as h:        # every write fails (ENOSPC)
            first = await h.post()
            second = await h.post()
            metrics = await (await h.client.get(h.metrics_url)).text()
            return first[0], second[0], metrics
    first, second, metrics = run(scenario())
    assert first == 503 and second == 503
    assert "enclave_gateway_audit_write_errors_total 2" in metrics


def test_models_lists_only_allowed_models(tmp_path):
    async def scenario():
        async with Harness(tmp_path) as h:
            async with h.client.get(h.url + "/v1/models", headers={"Authorization": f"Bearer {KEY_OTHER_MODEL}"}) as r:
                return r.status, await r.json()
    status, body = run(scenario())
    assert status == 200 and [m["id"] for m in body["data"]] == ["other"]


def test_model_listing_and_its_refusals_are_audited(tmp_path):
    edge_id = "ab" * 16

    async def scenario():
        async with Harness(tmp_path) as h:
            async with h.client.get(h.url + "/v1/models", headers={"X-Request-Id": edge_id}) as r:
                refused = r.status, await r.json(), r.headers.get("X-Request-Id")
            async with h.client.get(h.url + "/v1/models", headers={"Authorization": f"Bearer {KEY_OTHER_MODEL}",
                                                                   "X-Request-Id": "not an id\tinjected"}) as r:
                listed = r.status, r.headers.get("X-Request-Id")
            return refused, listed, h.records()
    (status, body, rid), (listed_status, listed_rid), records = run(scenario())
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert listed_status == 200
    refusal, listing = records[-2], records[-1]
    assert (refusal["request_id"], refusal["decision"], refusal["reason"], refusal["status"]) == (rid, "block", "no_key", 401)
    assert refusal["path"] == "/v1/models" and refusal["edge_request_id"] == edge_id
    assert (listing["request_id"], listing["decision"], listing["status"]) == (listed_rid, "allow", 200)
    assert "edge_request_id" not in listing          # a malformed id is not copied into the record


def test_metrics_names(tmp_path):
    async def scenario():
        async with Harness(tmp_path, dlp_action="log") as h:
            await h.post(body=chat("ssn 123-45-6789"))
            await h.post(body=chat(stream=True))
            await h.post(key=None)
            async with h.client.get(h.metrics_url) as r:
                return await r.text()
    text = run(scenario())
    for line in ('enclave_gateway_requests_total{model="tiny-llama",status="200",decision="allow"} 2',
                 'enclave_gateway_requests_total{model="",status="401",decision="block"} 1',
                 'enclave_gateway_blocked_total{reason="no_key"} 1',
                 'enclave_gateway_dlp_findings_total{type="ssn"} 1',
                 'enclave_gateway_tokens_total{model="tiny-llama",kind="completion"} 16',
                 "enclave_gateway_audit_records_total 3",
                 "enclave_gateway_audit_write_errors_total 0",
                 "enclave_gateway_request_duration_seconds_count 3",
                 "enclave_gateway_time_to_first_token_seconds_count 1"):
        assert line in text


def test_audit_log_of_a_session_verifies(tmp_path):
    from enclave_gateway.audit import verify

    async def scenario():
        async with Harness(tmp_path) as h:
            for key in (KEY_GOOD, None, KEY_REVOKED):
                await h.post(key=key)
            await h.post(body=chat(stream=True))
            return h.records_path
    path = run(scenario())
    result = verify([path], expect_genesis=True)
    assert result.ok and result.records == 4


def test_upstream_down_gives_502_and_a_record(tmp_path):
    async def scenario():
        async with Harness(tmp_path, upstream="http://127.0.0.1:9") as h:
            status, body, _unused = await h.post()
            return status, h.records()
    status, records = run(scenario())
    assert status == 502 and records[0]["reason"] == "upstream_error" and records[0]["model_answered"] is False


def test_client_helper_is_aiohttp():
    assert aiohttp.__version__ == "3.14.5"

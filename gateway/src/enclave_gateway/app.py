"""The gateway's HTTP service: auth → policy → DLP → upstream (HAProxy) → audit."""
from __future__ import annotations

import asyncio
import hashlib
import json
import re
import logging
import signal
import ssl
import time
import uuid
from datetime import datetime, timezone

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web
from aiohttp.client_exceptions import ClientConnectionResetError

from . import dlp
from .audit import AuditError, AuditLog
from .auth import AuthError, Authenticator, QuotaBook, RateLimiter, load_keys, model_allowed
from .config import Config
from .metrics import Metrics

log = logging.getLogger("enclave_gateway")
_EDGE_ID = re.compile(r"[0-9a-f]{16,64}")

API_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


class Refused(Exception):
    """A request the gateway answers itself with an OpenAI-style error."""

    def __init__(self, status: int, code: str, message: str, reason: str, kind: str = "invalid_request_error",
                 param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.reason, self.kind, self.param = (
            status, code, message, reason, kind, param)


def error_body(status: int, message: str, kind: str, code: str, param: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Gateway:
    def __init__(self, config: Config):
        self.config = config
        self.metrics = Metrics()
        self.audit = AuditLog(config.audit_path, fsync=config.audit_fsync)
        self.keys = load_keys(config.keys_file) if config.keys_file else {}
        self.auth = self._authenticator()
        self.rates = RateLimiter()
        self.quota = QuotaBook(config.quota_period_seconds)
        self.quota.replay(config.audit_path)
        self.detectors = dlp.BUILTIN + dlp.compile_extra(config.dlp_patterns)
        self.upstream_key = None
        if config.upstream_api_key_file:
            with open(config.upstream_api_key_file, encoding="utf-8") as handle:
                self.upstream_key = handle.readline().strip()
        self.session: ClientSession | None = None

    def _authenticator(self) -> Authenticator:
        c = self.config
        return Authenticator(self.keys, c.trusted_proxies, c.sso_models, c.sso_rate_per_minute, c.sso_token_quota,
                             c.sso_group_models)

    def reload(self) -> None:
        """SIGHUP: re-read the keys file (rotation, revocation) and reopen the audit log."""
        try:
            self.keys = load_keys(self.config.keys_file) if self.config.keys_file else {}
            self.auth = self._authenticator()
            log.info("reloaded %d API keys", len(self.keys))
        except (OSError, ValueError) as exc:
            log.error("keeping the previous keys: %s", exc)
        self.audit.reopen()

    # ------------------------------------------------------------------ app --
    def api_app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        for path in API_PATHS:
            app.router.add_post(path, self.handle)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    def metrics_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.render_metrics)
        return app

    async def _start(self, _app) -> None:
        connector = TCPConnector(limit=self.config.upstream_connections, keepalive_timeout=30)
        self.session = ClientSession(connector=connector, auto_decompress=False,
                                     timeout=ClientTimeout(total=None, sock_connect=10,
                                                           sock_read=self.config.upstream_timeout))

    async def _stop(self, _app) -> None:
        if self.session is not None:
            await self.session.close()
        self.audit.close()

    async def render_metrics(self, _request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    async def health(self, _request) -> web.Response:
        if not self.audit.ready():
            return web.json_response({"status": "audit log unwritable"}, status=503)
        return web.json_response({"status": "ok"})

    async def models(self, request) -> web.Response:
        """The models this caller may use; the listing and every refusal of it are audited."""
        started = time.perf_counter()
        now = time.time()
        rid = uuid.uuid4().hex
        record = self._new_record(request, rid, now, started)
        try:
            identity = self.auth.authenticate(request.headers, request.remote)
        except AuthError as exc:
            record.update(decision="block", reason=exc.reason, status=exc.status)
            self.metrics.blocked.inc(exc.reason)
            body = error_body(exc.status, exc.message, "invalid_request_error", exc.code)
            response = web.Response(status=exc.status, body=body, content_type="application/json",
                                    headers={"X-Request-Id": rid})
        else:
            record["_ctx"]["identity"] = identity
            names = [m for m in self.config.models if model_allowed(identity, m)]
            record["status"] = 200
            response = web.json_response({"object": "list", "data": [
                {"id": m, "object": "model", "owned_by": "enclave", "created": 0} for m in names]},
                headers={"X-Request-Id": rid})
        if not self._write_audit(record):
            response = self._audit_refusal(rid)
        self._observe(record, time.perf_counter() - started, record["_ctx"])
        return response

    @staticmethod
    def _new_record(request: web.Request, rid: str, now: float, started: float) -> dict:
        record: dict = {"ts": _iso(now), "epoch": round(now, 3), "request_id": rid, "source": request.remote,
                        "method": request.method, "path": request.path, "model": None, "stream": False,
                        "decision": "allow", "model_answered": False, "status": 0}
        if request.headers.get("X-Forwarded-For"):
            record["forwarded_for"] = request.headers["X-Forwarded-For"]
        # The edge's id of this request (its access log's request_id), so the two records can be joined;
        # kept only in the form nginx writes it (hex), never as free text from a client.
        edge_id = request.headers.get("X-Request-Id", "")
        if _EDGE_ID.fullmatch(edge_id):
            record["edge_request_id"] = edge_id
        record["_t0"], record["_ctx"] = started, {"identity": None, "pseudo": None, "ttft": None}
        return record

    # ------------------------------------------------------------- requests --
    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        now = time.time()
        rid = uuid.uuid4().hex
        record = self._new_record(request, rid, now, started)
        ctx = record["_ctx"]
        response: web.StreamResponse | None = None
        try:
            response = await self._process(request, rid, record, ctx, started)
        except Refused as exc:
            record.update(decision="block" if exc.status in (400, 401, 403, 413, 429) else "error",
                          reason=exc.reason, status=exc.status)
            self.metrics.blocked.inc(exc.reason)
            response = web.Response(status=exc.status, content_type="application/json",
                                    body=error_body(exc.status, exc.message, exc.kind, exc.code, exc.param),
                                    headers={"X-Request-Id": rid})
            if exc.status == 413:
                response.force_close()       # do not read (or linger over) the rest of an oversized body
        except asyncio.CancelledError:
            record.update(status=499, reason="client_disconnected", decision="error")
            raise
        finally:
            if record.get("audited") is None:
                written = self._write_audit(record)
                if not written and response is not None and not response.prepared:
                    response = self._audit_refusal(rid)
            self._observe(record, time.perf_counter() - started, ctx)
        return response

    def _audit_refusal(self, rid: str) -> web.Response:
        return web.Response(status=503, content_type="application/json", headers={"X-Request-Id": rid},
                            body=error_body(503, "The audit log cannot be written; the gateway refuses requests "
                                                 "it cannot audit.", "server_error", "audit_unavailable"))

    def _write_audit(self, record: dict) -> bool:
        record["audited"] = True
        ctx = record["_ctx"]
        record["latency_ms"] = round((time.perf_counter() - record["_t0"]) * 1000, 3)
        if ctx["ttft"] is not None:
            record["ttft_ms"] = round(ctx["ttft"] * 1000, 3)
        identity = ctx["identity"]
        if identity is not None:
            record["identity"] = identity.audit()
            record["subject"] = identity.subject
        out = {k: v for k, v in record.items() if k != "audited" and not k.startswith("_")}
        try:
            self.audit.write(out)
        except AuditError as exc:
            self.metrics.audit_errors.inc()
            log.error("%s", exc)
            return False
        self.metrics.audit_records.inc()
        return True

    def _observe(self, record: dict, latency: float, ctx: dict) -> None:
        model = record.get("model") or ""
        self.metrics.requests.inc(model, str(record["status"]), record["decision"])
        self.metrics.duration.observe(latency)
        if ctx["ttft"] is not None:
            self.metrics.ttft.observe(ctx["ttft"])
        usage = record.get("usage") or {}
        if usage.get("prompt_tokens"):
            self.metrics.tokens.inc(model, "prompt", amount=usage["prompt_tokens"])
        if usage.get("completion_tokens"):
            self.metrics.tokens.inc(model, "completion", amount=usage["completion_tokens"])

    async def _process(self, request: web.Request, rid: str, record: dict, ctx: dict,
                       started: float) -> web.StreamResponse:
        if not self.audit.ready():
            self.metrics.audit_errors.inc()
            record["audited"] = False     # nothing can be written; say so in the service log instead
            log.error("refusing request %s: %s", rid, self.audit.error)
            raise Refused(503, "audit_unavailable", "The audit log cannot be written; the gateway refuses "
                                                    "requests it cannot audit.", "audit_unavailable", "server_error")
        try:
            identity = self.auth.authenticate(request.headers, request.remote)
        except AuthError as exc:
            raise Refused(exc.status, exc.code, exc.message, exc.reason) from None
        ctx["identity"] = identity
        if not self.rates.allow(identity.subject, identity.rate_per_minute):
            raise Refused(429, "rate_limit_exceeded", "Rate limit reached for this key; slow down.",
                          "rate_limit", "rate_limit_error")
        remaining = self.quota.remaining(identity.subject, identity.token_quota)
        if remaining is not None and remaining <= 0:
            raise Refused(429, "insufficient_quota", "You exceeded your token quota for this period.",
                          "quota_exhausted", "insufficient_quota")
        body = await self._read_json(request)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise Refused(400, "missing_model", "'model' is required and must be a string.", "bad_request",
                          param="model")
        record["model"] = model
        record["stream"] = bool(body.get("stream"))
        if not model_allowed(identity, model):
            raise Refused(403, "model_not_allowed", f"This identity may not use the model '{model}'.",
                          "model_not_allowed", "permission_error", "model")
        self._policy(body, request.path, record)
        texts = dlp.prompt_texts(body)
        canonical = json.dumps(body.get("messages", body.get("prompt", body.get("input"))), sort_keys=True,
                               separators=(",", ":"), ensure_ascii=False)
        record["prompt_sha256"] = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        record["prompt_chars"] = sum(len(c[k]) for c, k in texts)
        if self.config.audit_include_prompt:
            record["prompt"] = canonical
        if self.config.dlp_enabled and texts:
            self._dlp(texts, identity, record, ctx)
        return await self._forward(request, body, rid, record, ctx, started)

    async def _read_json(self, request: web.Request) -> dict:
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise Refused(413, "request_too_large", f"The request body exceeds {limit} bytes.", "body_too_large")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise Refused(413, "request_too_large", f"The request body exceeds {limit} bytes.",
                          "body_too_large") from None
        try:
            body = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise Refused(400, "invalid_encoding", "The request body is not valid UTF-8.", "bad_request") from None
        except ValueError:
            raise Refused(400, "invalid_json", "The request body is not valid JSON.", "bad_request") from None
        if not isinstance(body, dict):
            raise Refused(400, "invalid_json", "The request body must be a JSON object.", "bad_request")
        return body

    def _policy(self, body: dict, path: str, record: dict) -> None:
        c = self.config
        for name in ("max_tokens", "max_completion_tokens"):
            value = body.get(name)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1 or value > c.max_tokens:
                raise Refused(400, "max_tokens_exceeded", f"'{name}' must be an integer from 1 to {c.max_tokens}.",
                              "policy_max_tokens", param=name)
        for name in ("n", "best_of"):
            value = body.get(name)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1 or value > c.max_n:
                raise Refused(400, "n_exceeded", f"'{name}' must be an integer from 1 to {c.max_n}.", "policy_n",
                              param=name)
        for name, cap in (("prompt", c.max_prompts), ("input", c.max_prompts), ("messages", c.max_messages)):
            value = body.get(name)
            if isinstance(value, list) and len(value) > cap:
                raise Refused(400, "too_many_prompts", f"'{name}' has {len(value)} items; at most {cap} allowed.",
                              "policy_prompts", param=name)
        if path == "/v1/chat/completions" and not isinstance(body.get("messages"), list):
            raise Refused(400, "invalid_messages", "'messages' must be a list.", "bad_request", param="messages")
        stripped = [name for name in c.strip_fields if name in body]
        for name in stripped:
            del body[name]
        if stripped:
            record["stripped"] = stripped

    def _dlp(self, texts, identity, record: dict, ctx: dict) -> None:
        findings_by_type: dict[str, int] = {}
        per_ref = []
        for container, key in texts:
            found = dlp.scan(container[key], self.detectors)
            if found:
                per_ref.append((container, key, found))
                for f in found:
                    findings_by_type[f.type] = findings_by_type.get(f.type, 0) + 1
        if not findings_by_type:
            return
        for kind, count in findings_by_type.items():
            self.metrics.dlp.inc(kind, amount=count)
        default = identity.dlp_action or self.config.dlp_action
        actions = {kind: self.config.dlp_actions.get(kind, default) for kind in findings_by_type}
        record["dlp"] = {"findings": findings_by_type, "actions": actions}
        if "block" in actions.values():
            blocked = sorted(k for k, a in actions.items() if a == "block")
            raise Refused(400, "sensitive_data", f"The prompt contains sensitive data ({', '.join(blocked)}); "
                                                 "remove it and retry.", "dlp_block")
        pseudo = dlp.Pseudonymizer()
        for container, key, found in per_ref:
            chosen = [f for f in found if actions[f.type] == "pseudonymize"]
            if chosen:
                container[key] = pseudo.replace(container[key], chosen)
        if pseudo.reverse:
            ctx["pseudo"] = pseudo

    def _upstream_headers(self, request: web.Request, rid: str, model: str, identity) -> dict:
        headers = {"Content-Type": "application/json", "X-Request-Id": rid, "X-Enclave-Model": model,
                   "X-Enclave-Subject": identity.subject}
        if "Accept" in request.headers:
            headers["Accept"] = request.headers["Accept"]
        if self.upstream_key:
            headers["Authorization"] = f"Bearer {self.upstream_key}"
        return headers

    async def _forward(self, request, body, rid, record, ctx, started) -> web.StreamResponse:
        stream = record["stream"]
        injected_usage = False
        if stream and request.path != "/v1/embeddings":
            options = body.get("stream_options")
            if not isinstance(options, dict) or not options.get("include_usage"):
                body["stream_options"] = dict(options or {}, include_usage=True)
                injected_usage = True
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        url = self.config.upstream.rstrip("/") + request.path
        headers = self._upstream_headers(request, rid, record["model"], ctx["identity"])
        try:
            upstream = await self.session.post(url, data=payload, headers=headers)
        except (ClientError, asyncio.TimeoutError, OSError) as exc:
            raise Refused(502, "upstream_unavailable", "The model backend is unavailable.", "upstream_error",
                          "server_error") from exc
        record["upstream_status"] = upstream.status
        try:
            content_type = upstream.headers.get("Content-Type", "")
            if stream and upstream.status == 200 and content_type.startswith("text/event-stream"):
                return await self._stream(request, upstream, rid, record, ctx, started, injected_usage)
            return await self._plain(upstream, rid, record, ctx)
        finally:
            upstream.release()

    async def _plain(self, upstream, rid, record, ctx) -> web.Response:
        try:
            raw = await upstream.read()
        except (ClientError, asyncio.TimeoutError) as exc:
            raise Refused(502, "upstream_error", "The model backend failed mid-response.", "upstream_error",
                          "server_error") from exc
        status = upstream.status
        record["status"] = status
        content_type = upstream.headers.get("Content-Type", "application/json")
        if content_type.startswith("application/json"):
            try:
                data = json.loads(raw)
            except ValueError:
                data = None
            if isinstance(data, dict):
                if status == 200 and ("choices" in data or "data" in data):
                    record["model_answered"] = status == 200
                    record["upstream_model"] = data.get("model")
                if isinstance(data.get("usage"), dict):
                    record["usage"] = _usage(data["usage"])
                    self.quota.add(ctx["identity"].subject, record["usage"]["total_tokens"])
                record["completion_chars"] = _completion_chars(data)
                if ctx["pseudo"] is not None:
                    data = _restore_all(data, ctx["pseudo"])
                    raw = json.dumps(data, ensure_ascii=False).encode("utf-8")
        if status >= 400:
            record["decision"] = "error"
            record["reason"] = "upstream_status"
        # The record is written before the answer leaves, so no unaudited answer is served.
        if not self._write_audit(record):
            return self._audit_refusal(rid)
        return web.Response(status=status, body=raw, headers={"Content-Type": content_type, "X-Request-Id": rid})

    async def _stream(self, request, upstream, rid, record, ctx, started, injected_usage) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Request-Id": rid,
            "X-Accel-Buffering": "no"})
        record["status"] = 200
        await response.prepare(request)
        pseudo = ctx["pseudo"]
        restorers: dict[int, dlp.StreamRestorer] = {}
        state = {"chars": 0, "events": 0, "usage": None, "model": None}
        buffer = b""
        try:
            async for chunk in upstream.content.iter_any():
                if ctx["ttft"] is None:
                    ctx["ttft"] = time.perf_counter() - started
                buffer += chunk
                if b"\n\n" not in buffer:
                    continue
                complete, _unused, buffer = buffer.rpartition(b"\n\n")
                out = []
                for event in complete.split(b"\n\n"):
                    processed = self._event(event, pseudo, restorers, state, injected_usage)
                    if processed is not None:
                        out.append(processed)
                if out:
                    await response.write(b"\n\n".join(out) + b"\n\n")
            if buffer.strip():
                processed = self._event(buffer, pseudo, restorers, state, injected_usage)
                if processed is not None:
                    await response.write(processed + b"\n\n")
            record["model_answered"] = state["events"] > 0
        except (ConnectionResetError, ClientConnectionResetError, BrokenPipeError):
            record.update(status=499, reason="client_disconnected", decision="error",
                          model_answered=state["events"] > 0)
            upstream.close()
        except (ClientError, asyncio.TimeoutError):
            record.update(reason="upstream_broken_stream", decision="error", model_answered=state["events"] > 0)
            upstream.close()
        finally:
            record["completion_chars"] = state["chars"]
            record["upstream_model"] = state["model"]
            usage = state["usage"] or {"prompt_tokens": 0, "completion_tokens": state["events"],
                                       "total_tokens": state["events"], "estimated": True}
            record["usage"] = usage
            self.quota.add(ctx["identity"].subject, usage["total_tokens"])
        if record["status"] == 200:
            self._write_audit(record)
            try:
                await response.write_eof()
            except (ConnectionResetError, ClientConnectionResetError):
                pass
        return response

    def _event(self, event: bytes, pseudo, restorers, state, injected_usage) -> bytes | None:
        """Account for one SSE event and restore placeholders; None drops the event."""
        if not event.startswith(b"data:"):
            return event
        data = event[5:].strip()
        if data == b"[DONE]":
            return event
        try:
            payload = json.loads(data)
        except ValueError:
            return event
        if not isinstance(payload, dict):
            return event
        choices = payload.get("choices") or []
        if state["model"] is None:
            state["model"] = payload.get("model")
        if isinstance(payload.get("usage"), dict):
            state["usage"] = _usage(payload["usage"])
            if injected_usage and not choices:
                return None
        changed = False
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            holder, key = (delta, "content") if isinstance(delta, dict) else (choice, "text")
            text = holder.get(key)
            if isinstance(text, str) and text:
                state["events"] += 1
                state["chars"] += len(text)
            if pseudo is None:
                continue
            restorer = restorers.get(choice.get("index", 0))
            if restorer is None:
                restorer = restorers[choice.get("index", 0)] = pseudo.stream()
            restored = restorer.feed(text) if isinstance(text, str) else ""
            if choice.get("finish_reason"):
                restored += restorer.flush()
            if restored != (text or ""):
                holder[key] = restored
                changed = True
        if changed:
            return b"data: " + json.dumps(payload, ensure_ascii=False).encode("utf-8")
        return event


def _usage(usage: dict) -> dict:
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": int(usage.get("total_tokens") or prompt + completion)}


def _completion_chars(data: dict) -> int:
    total = 0
    for choice in data.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else choice.get("text")
        if isinstance(text, str):
            total += len(text)
    return total


def _restore_all(value, pseudo: dlp.Pseudonymizer):
    if isinstance(value, str):
        return pseudo.restore(value)
    if isinstance(value, list):
        return [_restore_all(v, pseudo) for v in value]
    if isinstance(value, dict):
        return {k: _restore_all(v, pseudo) for k, v in value.items()}
    return value


def tls_context(config: Config) -> ssl.SSLContext | None:
    if not config.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = getattr(ssl.TLSVersion, config.tls_min_version.replace(".", "_"))
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


async def serve(config: Config) -> None:
    gateway = Gateway(config)
    api = web.AppRunner(gateway.api_app(), access_log=None, handle_signals=False)
    metrics = web.AppRunner(gateway.metrics_app(), access_log=None, handle_signals=False)
    await api.setup()
    await metrics.setup()
    await web.TCPSite(api, config.listen, config.port, ssl_context=tls_context(config), backlog=1024).start()
    await web.TCPSite(metrics, config.metrics_listen, config.metrics_port).start()
    log.info("enclave-gateway listening on %s:%d (metrics %s:%d), upstream %s", config.listen, config.port,
             config.metrics_listen, config.metrics_port, config.upstream)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, gateway.reload)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await api.cleanup()
    await metrics.cleanup()

"""TEST DOUBLE: a small OpenAI-compatible inference backend (stands in for vLLM).

It is a double, not an engine: it answers the vLLM HTTP surface the platform
uses (/health, /v1/models, /v1/chat/completions, /v1/completions, /metrics)
with generated text, at a fixed, configurable pace, so the edge, the balancer
and the gateway can be tested and benchmarked without a model. The real vLLM
is exercised by the inference scenario and the full stack.

Standard library only, so it runs with a bare python3 inside the lab hosts.

    python3 openai_backend.py --port 8000 --models tiny-llama,other \
        [--api-key-file F] [--token-delay 0.01] [--first-token-delay 0.05] [--control-dir D] \
        [--certfile CERT --keyfile KEY]   (serve HTTPS, e.g. standing in for a TLS hop)

GET /double/headers answers the request headers as received (what a proxy passed on).

Control (for failure tests), through files in --control-dir, read per request:
    unhealthy   -> /health answers 503
    models      -> one model name per line replaces --models in /v1/models
    slow        -> a float: extra seconds before the first byte
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import time
import uuid

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
           413: "Payload Too Large", 503: "Service Unavailable"}


class Backend:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.models = [m for m in args.models.split(",") if m]
        self.api_key = None
        if args.api_key_file:
            with open(args.api_key_file, encoding="utf-8") as handle:
                self.api_key = handle.readline().strip()
        self.requests = 0
        self.in_flight = 0
        self.tokens = 0
        self.last_request = None   # the last parsed completion request (tests read what reached the "model")

    def _control(self, name: str) -> str | None:
        if not self.args.control_dir:
            return None
        path = os.path.join(self.args.control_dir, name)
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read()
        except OSError:
            return None

    def served_models(self) -> list[str]:
        override = self._control("models")
        if override is not None:
            return [line.strip() for line in override.splitlines() if line.strip()]
        return self.models

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _version = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        key, value = line.split(":", 1)
                        headers[key.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0)
                body = await reader.readexactly(length) if length else b""
                keep_alive = headers.get("connection", "").lower() != "close"
                await self.route(method, path.split("?", 1)[0], headers, body, writer)
                if not keep_alive:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            try:
                writer.close()
                await writer.wait_closed()
            except (ConnectionError, RuntimeError):
                pass

    async def send(self, writer, status: int, payload, content_type="application/json", extra=None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        head = [f"HTTP/1.1 {status} {REASONS.get(status, 'OK')}", f"Content-Type: {content_type}",
                f"Content-Length: {len(data)}", "Server: openai-backend-double"]
        head += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        await writer.drain()

    def error(self, status: int, message: str, kind: str) -> dict:
        return {"error": {"message": message, "type": kind, "code": status}}

    async def route(self, method, path, headers, body, writer) -> None:
        self.requests += 1
        if path == "/health":
            unhealthy = self._control("unhealthy") is not None
            await self.send(writer, 503 if unhealthy else 200, b"" if not unhealthy else b"unhealthy",
                            content_type="text/plain")
            return
        if path == "/metrics":
            text = (f"vllm:num_requests_running {self.in_flight}\n"
                    f"vllm:generation_tokens_total {self.tokens}\n"
                    f"double_requests_total {self.requests}\n")
            await self.send(writer, 200, text.encode(), content_type="text/plain; version=0.0.4")
            return
        if path == "/double/headers":
            # Double only: the request headers as received, so tests can see what a proxy hop passed on.
            await self.send(writer, 200, headers)
            return
        if self.api_key and headers.get("authorization") != f"Bearer {self.api_key}":
            await self.send(writer, 401, self.error(401, "invalid API key", "invalid_request_error"))
            return
        if path == "/v1/models" and method == "GET":
            data = [{"id": m, "object": "model", "owned_by": "double", "created": 0} for m in self.served_models()]
            await self.send(writer, 200, {"object": "list", "data": data})
            return
        if path not in ("/v1/chat/completions", "/v1/completions"):
            await self.send(writer, 404, self.error(404, f"no route {path}", "not_found"))
            return
        if method != "POST":
            await self.send(writer, 405, self.error(405, "use POST", "invalid_request_error"))
            return
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            await self.send(writer, 400, self.error(400, "body is not JSON", "invalid_request_error"))
            return
        self.last_request = request
        model = request.get("model")
        if model not in self.served_models():
            await self.send(writer, 404, self.error(404, f"The model `{model}` does not exist.", "NotFoundError"))
            return
        await self.complete(path, request, writer)

    async def complete(self, path, request, writer) -> None:
        chat = path.endswith("chat/completions")
        max_tokens = int(request.get("max_tokens") or 16)
        prompt = json.dumps(request.get("messages") if chat else request.get("prompt"))
        # The answer echoes what reached the model, so tests can see what the gateway changed.
        words = (f"echo {prompt} ".split() * (max_tokens // 2 + 1))[:max_tokens]
        created, ident = int(time.time()), f"cmpl-{uuid.uuid4().hex[:12]}"
        usage = {"prompt_tokens": max(1, len(prompt) // 4), "completion_tokens": len(words)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        slow = float(self._control("slow") or 0)
        self.in_flight += 1
        try:
            await asyncio.sleep(self.args.first_token_delay + slow)
            if not request.get("stream"):
                await asyncio.sleep(self.args.token_delay * len(words))
                text = " ".join(words)
                choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                          if chat else {"index": 0, "text": text, "finish_reason": "length"})
                self.tokens += len(words)
                await self.send(writer, 200, {"id": ident, "object": "chat.completion" if chat else "text_completion",
                                              "created": created, "model": request["model"], "choices": [choice],
                                              "usage": usage})
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                         b"Transfer-Encoding: chunked\r\nServer: openai-backend-double\r\n\r\n")
            include_usage = (request.get("stream_options") or {}).get("include_usage", False)
            for index, word in enumerate(words):
                delta = ({"index": 0, "delta": {"content": ("" if index == 0 else " ") + word}, "finish_reason": None}
                         if chat else {"index": 0, "text": ("" if index == 0 else " ") + word, "finish_reason": None})
                await self._chunk(writer, {"id": ident, "object": "chat.completion.chunk" if chat else "text_completion",
                                           "created": created, "model": request["model"], "choices": [delta]})
                self.tokens += 1
                await asyncio.sleep(self.args.token_delay)
            final = {"id": ident, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
                     "model": request["model"], "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}
                                                            if chat else {"index": 0, "text": "",
                                                                          "finish_reason": "length"}]}
            await self._chunk(writer, final)
            if include_usage:
                await self._chunk(writer, {"id": ident, "object": "chat.completion.chunk", "created": created,
                                           "model": request["model"], "choices": [], "usage": usage})
            await self._raw_chunk(writer, b"data: [DONE]\n\n")
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        finally:
            self.in_flight -= 1

    async def _chunk(self, writer, event: dict) -> None:
        await self._raw_chunk(writer, b"data: " + json.dumps(event).encode() + b"\n\n")

    async def _raw_chunk(self, writer, data: bytes) -> None:
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await writer.drain()


async def main() -> None:
    parser = argparse.ArgumentParser(description="TEST DOUBLE: OpenAI-compatible backend")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--models", default="tiny-llama")
    parser.add_argument("--api-key-file")
    parser.add_argument("--token-delay", type=float, default=0.01)
    parser.add_argument("--first-token-delay", type=float, default=0.02)
    parser.add_argument("--control-dir")
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    args = parser.parse_args()
    backend = Backend(args)
    context = None
    if args.certfile:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.certfile, args.keyfile)
    server = await asyncio.start_server(backend.handle, args.host, args.port, backlog=1024, ssl=context)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())

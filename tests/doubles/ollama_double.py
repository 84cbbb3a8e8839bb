"""TEST DOUBLE: an Ollama-protocol server (stands in for Ollama, which no registry
reachable from these machines serves, and which needs a GPU or minutes of CPU per
answer).

It is a double, not an engine: it speaks the HTTP surface of Ollama that the
platform uses, with real state but no model behind it.

- ``GET /`` and ``HEAD /`` answer ``Ollama is running``; ``GET /api/version``.
- ``POST /api/pull`` streams NDJSON progress (``pulling manifest``, one
  ``pulling <digest>`` line per chunk of each layer with ``digest``/``total``/
  ``completed``, ``verifying sha256 digest``, ``writing manifest``, ``success``)
  and writes real blobs and a manifest under ``--models-dir`` in Ollama's layout
  (``blobs/sha256-<hex>``, ``manifests/<registry>/<namespace>/<name>/<tag>``),
  so a restarted double still lists what it pulled. A model the catalog lacks
  streams ``{"error": "pull model manifest: file does not exist"}``.
- ``GET /api/tags`` lists pulled models with ``digest`` (sha256 of the manifest,
  as Ollama computes it), ``size`` and ``details``; ``POST /api/show``,
  ``DELETE /api/delete``.
- ``POST /api/generate`` and ``POST /api/chat`` answer a short, fixed text
  (streamed NDJSON by default, one object with ``"stream": false``). An empty
  prompt (or no messages) only loads the model (``done_reason: load``); with
  ``keep_alive: 0`` it unloads it (``done_reason: unload``). ``keep_alive``
  takes seconds or a duration (``"10m"``, ``"1h"``), negative keeps the model
  loaded; the default is 5 minutes. A model that is not pulled answers 404.
- ``GET /api/ps`` lists loaded, unexpired models with ``expires_at``.
- ``GET /v1/models`` and ``POST /v1/chat/completions`` (Ollama's OpenAI
  compatibility; ``"stream": true`` answers server-sent events).

Standard library only, so it runs with a bare python3 inside the lab hosts.

    python3 ollama_double.py [--host 127.0.0.1] [--port 11434] [--models-dir D]
        [--catalog catalog.json] [--version-string 0.0.0-double] [--pull-delay 0.0]
        [--token-delay 0.0]

The catalog (JSON) maps a model name to its layers' sizes and details; without
one, a built-in catalog of three tiny models is used. Failure injection, read
per request from files in ``--control-dir``:

    pull_error    -> text: the pull streams it as ``{"error": ...}`` after the manifest
    unhealthy     -> every /api and /v1 request answers 503
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_CATALOG: dict[str, dict[str, Any]] = {
    "llama3.2:1b": {"layers": [{"media": "model", "size": 262144}, {"media": "template", "size": 1024},
                               {"media": "params", "size": 96}],
                    "details": {"format": "gguf", "family": "llama", "parameter_size": "1.2B",
                                "quantization_level": "Q8_0"}},
    "qwen2.5:0.5b": {"layers": [{"media": "model", "size": 131072}, {"media": "template", "size": 512}],
                     "details": {"format": "gguf", "family": "qwen2", "parameter_size": "494.03M",
                                 "quantization_level": "Q4_K_M"}},
    "tinyllama:latest": {"layers": [{"media": "model", "size": 65536}],
                         "details": {"format": "gguf", "family": "llama", "parameter_size": "1B",
                                     "quantization_level": "Q4_0"}},
}
ANSWER = "This is a short answer from the Ollama test double."
DEFAULT_KEEP_ALIVE_S = 300.0
CHUNK = 65536
MEDIA = {"model": "application/vnd.ollama.image.model", "template": "application/vnd.ollama.image.template",
         "params": "application/vnd.ollama.image.params", "license": "application/vnd.ollama.image.license"}


def normalize(name: str) -> str:
    """``llama3.2`` -> ``llama3.2:latest``; the registry host and namespace are kept."""
    base = name.rsplit("/", 1)[-1]
    return name if ":" in base else name + ":latest"


def keep_alive_seconds(value: Any) -> float:
    """Seconds a model stays loaded; negative means forever."""
    if value is None:
        return DEFAULT_KEEP_ALIVE_S
    if isinstance(value, (int, float)):
        return float(value)
    match = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(value))
    if not match:
        raise ValueError(f"time: invalid duration \"{value}\"")
    number = float(match.group(1))
    return number * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]


def now_iso(offset_s: float = 0.0) -> str:
    moment = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=offset_s)
    return moment.isoformat().replace("+00:00", "Z")


def blob_bytes(name: str, media: str, size: int) -> bytes:
    """Deterministic content for a layer, so every pull of a name gives the same digest."""
    seed = hashlib.sha256(f"{name}/{media}".encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


class Store:
    """Pulled models (on disk, Ollama's layout) and loaded models (in memory)."""

    def __init__(self, models_dir: str, catalog: dict[str, dict[str, Any]]):
        self.dir = models_dir
        self.catalog = {normalize(k): v for k, v in catalog.items()}
        self.loaded: dict[str, float] = {}   # name -> expiry (monotonic); inf for forever
        self.lock = threading.Lock()
        os.makedirs(os.path.join(self.dir, "blobs"), exist_ok=True)

    def _manifest_path(self, name: str) -> str:
        parts = normalize(name).split("/")
        repo, tag = parts[-1].split(":", 1)
        host = parts[0] if len(parts) == 3 else "registry.ollama.ai"
        namespace = parts[-2] if len(parts) >= 2 else "library"
        return os.path.join(self.dir, "manifests", host, namespace, repo, tag)

    def manifest(self, name: str) -> tuple[dict, str] | None:
        try:
            with open(self._manifest_path(name), "rb") as handle:
                raw = handle.read()
        except OSError:
            return None
        return json.loads(raw), hashlib.sha256(raw).hexdigest()

    def pulled(self) -> list[str]:
        return sorted(name for name in self.catalog if self.manifest(name))

    def entry(self, name: str) -> dict[str, Any] | None:
        found = self.manifest(name)
        if not found:
            return None
        manifest, digest = found
        size = sum(layer["size"] for layer in manifest["layers"])
        details = dict(self.catalog.get(normalize(name), {}).get("details", {}))
        details.setdefault("format", "gguf")
        return {"name": normalize(name), "model": normalize(name), "modified_at": manifest.get("created", now_iso()),
                "size": size, "digest": digest, "details": details}

    def write_blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = os.path.join(self.dir, "blobs", digest.replace(":", "-"))
        if not os.path.exists(path):
            tmp = path + "-partial"
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        return digest

    def write_manifest(self, name: str, layers: list[dict]) -> None:
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "created": now_iso(), "layers": layers}
        path = self._manifest_path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, sort_keys=True)
        os.replace(tmp, path)

    def delete(self, name: str) -> bool:
        try:
            os.unlink(self._manifest_path(name))
        except OSError:
            return False
        with self.lock:
            self.loaded.pop(normalize(name), None)
        return True

    def load(self, name: str, keep_alive_s: float) -> None:
        with self.lock:
            if keep_alive_s == 0:
                self.loaded.pop(name, None)
            else:
                self.loaded[name] = float("inf") if keep_alive_s < 0 else time.monotonic() + keep_alive_s

    def running(self) -> list[tuple[str, float]]:
        with self.lock:
            current = time.monotonic()
            self.loaded = {k: v for k, v in self.loaded.items() if v > current}
            return sorted(self.loaded.items())


class Handler(BaseHTTPRequestHandler):
    server_version = "OllamaTestDouble/1"
    protocol_version = "HTTP/1.1"
    store: Store
    args: argparse.Namespace

    def log_message(self, format: str, *args: Any) -> None:  # pylint: disable=redefined-builtin
        if self.args.verbose:
            super().log_message(format, *args)

    # ---------------------------------------------------------------- plumbing
    def _control(self, name: str) -> str | None:
        if not self.args.control_dir:
            return None
        try:
            with open(os.path.join(self.args.control_dir, name), encoding="utf-8") as handle:
                return handle.read().strip()
        except OSError:
            return None

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return {}
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("body must be a JSON object")
        return data

    def _json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _start_stream(self, content_type: str = "application/x-ndjson") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _line(self, payload: dict) -> None:
        self._chunk(json.dumps(payload).encode() + b"\n")

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _model_or_404(self, body: dict) -> str | None:
        name = body.get("model") or body.get("name")
        if not name:
            self._json(400, {"error": "model is required"})
            return None
        name = normalize(str(name))
        if not self.store.manifest(name):
            self._json(404, {"error": f"model '{name}' not found"})
            return None
        return name

    # ------------------------------------------------------------------ routes
    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/":
            data = b"Ollama is running"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            return
        if self._unhealthy():
            return
        if self.path == "/api/version":
            self._json(200, {"version": self.args.version_string})
        elif self.path == "/api/tags":
            self._json(200, {"models": [self.store.entry(n) for n in self.store.pulled()]})
        elif self.path == "/api/ps":
            models = []
            for name, expiry in self.store.running():
                entry = self.store.entry(name)
                if not entry:
                    continue
                left = 10 * 365 * 86400 if expiry == float("inf") else expiry - time.monotonic()
                entry = dict(entry, expires_at=now_iso(left), size_vram=entry["size"])
                entry.pop("modified_at", None)
                models.append(entry)
            self._json(200, {"models": models})
        elif self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [
                {"id": n, "object": "model", "created": 0, "owned_by": "library"} for n in self.store.pulled()]})
        else:
            self._json(404, {"error": "404 page not found"})

    def do_DELETE(self) -> None:  # noqa: N802
        if self._unhealthy():
            return
        if self.path != "/api/delete":
            self._json(404, {"error": "404 page not found"})
            return
        body = self._body()
        name = normalize(str(body.get("model") or body.get("name") or ""))
        if self.store.delete(name):
            self._json(200, {})
        else:
            self._json(404, {"error": f"model '{name}' not found"})

    def do_POST(self) -> None:  # noqa: N802
        if self._unhealthy():
            return
        try:
            body = self._body()
        except ValueError as exc:
            self._json(400, {"error": f"invalid request body: {exc}"})
            return
        routes = {"/api/pull": self._pull, "/api/generate": self._generate, "/api/chat": self._chat,
                  "/api/show": self._show, "/v1/chat/completions": self._openai_chat}
        handler = routes.get(self.path)
        if handler is None:
            self._json(404, {"error": "404 page not found"})
            return
        handler(body)

    def _unhealthy(self) -> bool:
        if self._control("unhealthy") is None:
            return False
        self._json(503, {"error": "server is unhealthy (test double control file)"})
        return True

    # -------------------------------------------------------------------- pull
    def _pull(self, body: dict) -> None:
        name = normalize(str(body.get("model") or body.get("name") or ""))
        stream = body.get("stream", True)
        spec = self.store.catalog.get(name)
        events: list[dict] = []

        def emit(event: dict) -> None:
            if stream:
                self._line(event)
            else:
                events.append(event)

        if stream:
            self._start_stream()
        emit({"status": "pulling manifest"})
        error = None
        if spec is None:
            error = "pull model manifest: file does not exist"
        elif self._control("pull_error"):
            error = self._control("pull_error")
        if error:
            if stream:
                self._line({"error": error})
                self._end_stream()
            else:
                self._json(500, {"error": error})
            return
        layers = []
        for layer in spec["layers"]:
            data = blob_bytes(name, layer["media"], int(layer["size"]))
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            total = len(data)
            for done in range(0, total, CHUNK):
                if self.args.pull_delay:
                    time.sleep(self.args.pull_delay)
                emit({"status": f"pulling {digest[7:19]}", "digest": digest, "total": total,
                      "completed": min(done + CHUNK, total)})
            if total == 0:
                emit({"status": f"pulling {digest[7:19]}", "digest": digest, "total": 0, "completed": 0})
            layers.append({"mediaType": MEDIA.get(layer["media"], MEDIA["model"]), "digest": self.store.write_blob(data),
                           "size": total})
        emit({"status": "verifying sha256 digest"})
        emit({"status": "writing manifest"})
        self.store.write_manifest(name, layers)
        emit({"status": "success"})
        if stream:
            self._end_stream()
        else:
            self._json(200, {"status": "success"})

    def _show(self, body: dict) -> None:
        name = self._model_or_404(body)
        if name:
            entry = self.store.entry(name)
            self._json(200, {"modelfile": f"# Modelfile of the Ollama test double\nFROM {name}\n",
                             "parameters": "", "template": "{{ .Prompt }}", "details": entry["details"],
                             "modified_at": entry["modified_at"]})

    # -------------------------------------------------------------- inference
    def _keep_alive(self, body: dict) -> float | None:
        try:
            return keep_alive_seconds(body.get("keep_alive"))
        except ValueError as exc:
            self._json(400, {"error": str(exc)})
            return None

    def _answer(self, name: str, body: dict, empty: bool, shape) -> None:
        keep_alive = self._keep_alive(body)
        if keep_alive is None:
            return
        self.store.load(name, keep_alive)
        base = {"model": name, "created_at": now_iso()}
        if empty:
            self._json(200, dict(base, **shape(""), done=True, done_reason="unload" if keep_alive == 0 else "load"))
            return
        started = time.monotonic_ns()
        words = ANSWER.split(" ")
        final = {"done": True, "done_reason": "stop", "prompt_eval_count": 8, "eval_count": len(words)}
        if not body.get("stream", True):
            if self.args.token_delay:
                time.sleep(self.args.token_delay * len(words))
            took = time.monotonic_ns() - started
            self._json(200, dict(base, **shape(ANSWER), **final, total_duration=took, load_duration=0,
                                 eval_duration=took))
            return
        self._start_stream()
        for index, word in enumerate(words):
            if self.args.token_delay:
                time.sleep(self.args.token_delay)
            piece = word if index == 0 else " " + word
            self._line(dict(base, created_at=now_iso(), **shape(piece), done=False))
        took = time.monotonic_ns() - started
        self._line(dict(base, created_at=now_iso(), **shape(""), **final, total_duration=took, load_duration=0,
                        eval_duration=took))
        self._end_stream()

    def _generate(self, body: dict) -> None:
        name = self._model_or_404(body)
        if name:
            self._answer(name, body, not body.get("prompt"), lambda text: {"response": text})

    def _chat(self, body: dict) -> None:
        name = self._model_or_404(body)
        if name:
            self._answer(name, body, not body.get("messages"),
                         lambda text: {"message": {"role": "assistant", "content": text}})

    def _openai_chat(self, body: dict) -> None:
        name = normalize(str(body.get("model") or ""))
        if not self.store.manifest(name):
            self._json(404, {"error": {"message": f"model \"{name}\" not found, try pulling it first",
                                       "type": "api_error", "param": None, "code": None}})
            return
        self.store.load(name, DEFAULT_KEEP_ALIVE_S)
        ident = f"chatcmpl-{int(time.time() * 1000) % 1000000}"
        words = ANSWER.split(" ")
        usage = {"prompt_tokens": 8, "completion_tokens": len(words), "total_tokens": 8 + len(words)}
        if not body.get("stream"):
            self._json(200, {"id": ident, "object": "chat.completion", "created": int(time.time()), "model": name,
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER},
                                          "finish_reason": "stop"}], "usage": usage})
            return
        self._start_stream("text/event-stream")
        for index, word in enumerate(words):
            if self.args.token_delay:
                time.sleep(self.args.token_delay)
            delta = {"role": "assistant", "content": word if index == 0 else " " + word}
            chunk = {"id": ident, "object": "chat.completion.chunk", "created": int(time.time()), "model": name,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            self._chunk(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        last = {"id": ident, "object": "chat.completion.chunk", "created": int(time.time()), "model": name,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        self._chunk(b"data: " + json.dumps(last).encode() + b"\n\n")
        self._chunk(b"data: [DONE]\n\n")
        self._end_stream()


def build_server(args: argparse.Namespace) -> ThreadingHTTPServer:
    catalog = DEFAULT_CATALOG
    if args.catalog:
        with open(args.catalog, encoding="utf-8") as handle:
            catalog = json.load(handle)
    handler = type("BoundHandler", (Handler,), {"store": Store(args.models_dir, catalog), "args": args})
    server = ThreadingHTTPServer((args.host, args.port), handler)
    server.daemon_threads = True
    return server


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Ollama-protocol TEST DOUBLE (no model behind it)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--models-dir", default=os.environ.get("OLLAMA_MODELS", "/tmp/ollama-double-models"))
    parser.add_argument("--catalog", help="JSON: {name: {layers: [{media, size}], details: {...}}}")
    parser.add_argument("--version-string", default="0.0.0-test-double")
    parser.add_argument("--pull-delay", type=float, default=0.0, help="seconds per 64 KiB progress step of a pull")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds per generated word")
    parser.add_argument("--control-dir")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    server = build_server(args)
    print(f"ollama test double listening on {args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()

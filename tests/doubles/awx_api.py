"""TEST DOUBLE: the part of the AWX / Automation Controller REST API that the
awx.awx modules call when they create execution environments, projects and job
templates (stands in for a controller; no AWX runs on these machines).

The shapes were recorded from awx.awx 24.6.1 (plugins/module_utils/controller_api.py
and the execution_environment, project and job_template modules):

- ``GET /api/v2/<collection>/?name=X`` (also ``or__id``/``or__name`` and other field
  filters) answers ``{count, next, previous, results}``;
- ``POST /api/v2/<collection>/`` creates (201) an object with ``id``, ``type``, ``url``,
  ``related`` and ``summary_fields``; ``PATCH <url>`` updates it (200);
- ``GET|POST <url><association>/`` lists or (dis)associates related objects (204);
- ``GET|POST|DELETE /api/v2/job_templates/<id>/survey_spec/``;
- every answer carries ``X-API-Product-Name: AWX`` and ``X-API-Product-Version``;
  requests without ``Authorization: Bearer <token>`` get 401.

It records every request; ``GET /_double/requests`` and ``GET /_double/state`` show
them, for tests. Standard library only.

    python3 awx_api.py --port 0 --token-file T [--seed seed.json] [--port-file P]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

API = "/api/v2/"
VERSION = "24.6.1"
ASSOCIATIONS = ("credentials", "labels", "instance_groups", "notification_templates_started",
                "notification_templates_success", "notification_templates_error")


class Store:
    """Objects by collection, with the associations and surveys AWX keeps beside them."""

    def __init__(self, seed: dict | None = None):
        self.lock = threading.Lock()
        self.objects: dict[str, dict[int, dict]] = {}
        self.associations: dict[tuple[str, int, str], list[int]] = {}
        self.surveys: dict[int, dict] = {}
        self.requests: list[dict] = []
        self.next_id = 1
        for collection, items in (seed or {}).items():
            for item in items:
                self.create(collection, item)

    def create(self, collection: str, fields: dict) -> dict:
        obj_id = self.next_id
        self.next_id += 1
        url = f"{API}{collection}/{obj_id}/"
        obj = dict(fields, id=obj_id, url=url, type=collection.rstrip("s"), summary_fields={},
                   related={name: f"{url}{name}/" for name in ASSOCIATIONS + ("survey_spec", "update")})
        if collection == "projects":
            obj.setdefault("scm_revision", "")
        self.objects.setdefault(collection, {})[obj_id] = obj
        return obj

    def find(self, collection: str, query: dict[str, str]) -> list[dict]:
        found = []
        for obj in self.objects.get(collection, {}).values():
            either = [(k[4:], v) for k, v in query.items() if k.startswith("or__")]
            if either and not any(str(obj.get(k)) == v for k, v in either):
                continue
            plain = [(k, v) for k, v in query.items() if not k.startswith("or__") and k not in ("page", "page_size")]
            if all(str(obj.get(k)) == v for k, v in plain):
                found.append(obj)
        return found


class Handler(BaseHTTPRequestHandler):
    store: Store
    token: str

    def _send(self, status: int, payload=None) -> None:
        body = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-API-Product-Name", "AWX")
        self.send_header("X-API-Product-Version", VERSION)
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}") if length else {}

    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query))
        body = self._body() if method in ("POST", "PATCH") else {}
        if parts.path.startswith("/_double/"):
            with self.store.lock:
                if parts.path == "/_double/requests":
                    self._send(200, self.store.requests)
                else:
                    self._send(200, {"objects": self.store.objects, "surveys": self.store.surveys,
                                     "associations": {"/".join(map(str, k)): v
                                                      for k, v in self.store.associations.items()}})
            return
        with self.store.lock:
            self.store.requests.append({"method": method, "path": parts.path, "query": query, "body": body,
                                        "auth": self.headers.get("Authorization") == f"Bearer {self.token}"})
            if self.headers.get("Authorization") != f"Bearer {self.token}":
                self._send(401, {"detail": "Authentication credentials were not provided."})
                return
            self._route(method, parts.path, query, body)

    def _route(self, method: str, path: str, query: dict, body: dict) -> None:
        match = re.fullmatch(r"/api/v2/([a-z_]+)/(?:(\d+)/(?:([a-z_]+)/)?)?", path)
        if not match:
            self._send(404, {"detail": "Not found."})
            return
        collection, obj_id, sub = match.group(1), match.group(2), match.group(3)
        store = self.store
        if obj_id is None:
            if method == "GET":
                results = store.find(collection, query)
                self._send(200, {"count": len(results), "next": None, "previous": None, "results": results})
            elif method == "POST":
                self._send(201, store.create(collection, body))
            else:
                self._send(405, {"detail": f"Method {method} not allowed."})
            return
        obj = store.objects.get(collection, {}).get(int(obj_id))
        if obj is None:
            self._send(404, {"detail": "Not found."})
            return
        if sub is None:
            if method == "GET":
                self._send(200, obj)
            elif method == "PATCH":
                obj.update(body)
                self._send(200, obj)
            else:
                self._send(405, {"detail": f"Method {method} not allowed."})
        elif sub == "survey_spec":
            if method == "GET":
                self._send(200, store.surveys.get(obj["id"], {}))
            elif method == "POST":
                store.surveys[obj["id"]] = body
                self._send(200, None)
            elif method == "DELETE":
                store.surveys.pop(obj["id"], None)
                self._send(200, None)
            else:
                self._send(405, {"detail": f"Method {method} not allowed."})
        elif sub in ASSOCIATIONS:
            key = (collection, obj["id"], sub)
            linked = store.associations.setdefault(key, [])
            if method == "GET":
                target = "credentials" if sub == "credentials" else sub
                results = [store.objects.get(target, {}).get(i, {"id": i}) for i in linked]
                self._send(200, {"count": len(results), "next": None, "previous": None, "results": results})
            elif method == "POST":
                if body.get("disassociate"):
                    linked[:] = [i for i in linked if i != body["id"]]
                elif body["id"] not in linked:
                    linked.append(body["id"])
                self._send(204, None)
            else:
                self._send(405, {"detail": f"Method {method} not allowed."})
        else:
            self._send(404, {"detail": "Not found."})

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PATCH(self) -> None:  # noqa: N802
        self._handle("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def log_message(self, format, *args) -> None:  # noqa: A002 (signature of the base class)
        pass


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="TEST DOUBLE: AWX API for awx.awx modules")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--seed")
    parser.add_argument("--port-file")
    args = parser.parse_args(argv)
    with open(args.token_file, encoding="utf-8") as handle:
        Handler.token = handle.read().strip()
    seed = None
    if args.seed:
        with open(args.seed, encoding="utf-8") as handle:
            seed = json.load(handle)
    Handler.store = Store(seed)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    if args.port_file:
        with open(args.port_file, "w", encoding="utf-8") as handle:
            handle.write(str(server.server_address[1]))
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

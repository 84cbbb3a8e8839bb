"""Test client run inside the balancer host of the haproxy scenario (stdlib only).

    lbclient.py request MODEL [--no-header] [--stream] [--max-tokens N] [--port P]
    lbclient.py load MODEL --seconds S --concurrency C         (bounded request loop)
    lbclient.py concurrent MODEL --count N [--max-tokens N]     (N streams at once)
    lbclient.py watch BACKEND SERVER STATE --timeout T          (first time the server is STATE)
    lbclient.py ramp BACKEND SERVER [--full 100]                (slowstart: weight samples once UP)
    lbclient.py stat                                            (show stat, as JSON)
    lbclient.py cmd 'set server b/s state drain'                (runtime API)
Every result is one JSON document on stdout; times are time.time() (the host
clock, which all lab containers share).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import threading
import time

SOCKET = os.environ.get("LBCLIENT_SOCKET", "/run/haproxy/admin.sock")
# The upstream key the gateway presents to the engines (gateway_upstream_api_key); the
# scenario's vLLM doubles on hap-b1/hap-b3 require it on /v1/*. Root-only file, read here.
UPSTREAM_KEY_FILE = "/opt/tests/upstream-key"


def _upstream_key() -> str | None:
    try:
        with open(UPSTREAM_KEY_FILE, encoding="utf-8") as handle:
            return handle.readline().strip() or None
    except OSError:
        return None


UPSTREAM_KEY = _upstream_key()


def runtime(command: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(SOCKET)
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode()


def stat() -> list[dict]:
    lines = runtime("show stat").splitlines()
    header = lines[0].lstrip("# ").split(",")
    return [dict(zip(header, line.split(","))) for line in lines[1:] if line]


def one(conn: http.client.HTTPConnection, model: str | None, header: bool, stream: bool, max_tokens: int,
        body_model: str | None = None) -> dict:
    payload = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens, "stream": stream,
               "model": body_model if body_model is not None else model}
    headers = {"Content-Type": "application/json"}
    if UPSTREAM_KEY:
        headers["Authorization"] = f"Bearer {UPSTREAM_KEY}"
    if header and model is not None:
        headers["X-Enclave-Model"] = model
    start = time.time()
    conn.request("POST", "/v1/chat/completions", body=json.dumps(payload), headers=headers)
    resp = conn.getresponse()
    chunks, arrivals = [], []
    while True:
        data = resp.read1(65536) if stream else resp.read()
        if not data:
            break
        chunks.append(data)
        arrivals.append(round(time.time() - start, 3))
        if not stream:
            break
    body = b"".join(chunks).decode(errors="replace")
    return {"status": resp.status, "headers": {k.lower(): v for k, v in resp.getheaders()}, "body": body,
            "arrivals": arrivals,
            "start": start, "end": time.time()}


def cmd_request(args) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=60)
    return one(conn, args.model, not args.no_header, args.stream, args.max_tokens, args.body_model)


def cmd_load(args) -> dict:
    deadline = time.time() + args.seconds
    results = {"ok": 0, "errors": 0, "statuses": {}, "first_errors": []}
    lock = threading.Lock()

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=30)
        for _attempt in range(100000):
            if time.time() >= deadline:
                break
            try:
                out = one(conn, args.model, True, False, args.max_tokens)
                status, detail = out["status"], out["body"][:200]
            except (OSError, http.client.HTTPException) as exc:
                status, detail = 0, f"{type(exc).__name__}: {exc}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=30)
            with lock:
                results["statuses"][str(status)] = results["statuses"].get(str(status), 0) + 1
                if status == 200:
                    results["ok"] += 1
                else:
                    results["errors"] += 1
                    if len(results["first_errors"]) < 5:
                        results["first_errors"].append({"t": time.time(), "status": status, "detail": detail})

    threads = [threading.Thread(target=worker) for _attempt in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(args.seconds + 60)
    return results


def cmd_concurrent(args) -> dict:
    out: list = [None] * args.count

    def worker(index):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=60)
            result = one(conn, args.model, True, True, args.max_tokens)
            out[index] = {"status": result["status"], "retry_after": result["headers"].get("retry-after"),
                          "body": result["body"][-300:], "elapsed": round(result["end"] - result["start"], 3)}
        except (OSError, http.client.HTTPException) as exc:
            out[index] = {"status": 0, "body": str(exc)}

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return {"results": out}


def cmd_watch(args) -> dict:
    deadline = time.time() + args.timeout
    while time.time() < deadline:
        for row in stat():
            if row["pxname"] == args.backend and row["svname"] == args.server and \
                    row["status"].split(" ")[0] == args.state:
                return {"time": time.time(), "row": row}
        time.sleep(0.02)
    return {"time": None}


def cmd_ramp(args) -> dict:
    """Wait for the server to be UP, then sample its effective weight until it is full."""
    up = cmd_watch(argparse.Namespace(backend=args.backend, server=args.server, state="UP", timeout=args.timeout))
    samples = []
    deadline = time.time() + args.timeout
    while up["time"] and time.time() < deadline:
        row = next(r for r in stat() if r["pxname"] == args.backend and r["svname"] == args.server)
        samples.append([round(time.time() - up["time"], 2), int(row["weight"] or 0)])
        if samples[-1][1] >= args.full:
            break
        time.sleep(0.2)
    return {"up": up["time"], "samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("request", "load", "concurrent"):
        p = sub.add_parser(name)
        p.add_argument("model")
        p.add_argument("--port", type=int, default=8080)
        p.add_argument("--max-tokens", type=int, default=4)
        if name == "request":
            p.add_argument("--no-header", action="store_true")
            p.add_argument("--stream", action="store_true")
            p.add_argument("--body-model")
        if name == "load":
            p.add_argument("--seconds", type=float, required=True)
            p.add_argument("--concurrency", type=int, default=4)
        if name == "concurrent":
            p.add_argument("--count", type=int, required=True)
    p = sub.add_parser("watch")
    p.add_argument("backend")
    p.add_argument("server")
    p.add_argument("state")
    p.add_argument("--timeout", type=float, default=10)
    p = sub.add_parser("ramp")
    p.add_argument("backend")
    p.add_argument("server")
    p.add_argument("--full", type=int, default=100)
    p.add_argument("--timeout", type=float, default=30)
    sub.add_parser("stat")
    p = sub.add_parser("cmd")
    p.add_argument("line")
    args = parser.parse_args()
    if args.command == "stat":
        result = stat()
    elif args.command == "cmd":
        result = {"output": runtime(args.line)}
    else:
        result = globals()[f"cmd_{args.command}"](args)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()

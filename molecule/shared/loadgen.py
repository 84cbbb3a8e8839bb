"""Steady, checked load for the stack tests, and HAProxy probes on the balancer host (stdlib only).

    loadgen.py run --out F --stop F [--url URL] [--connect ADDR] [--cafile F] [--key-file F] [--model M]
                   [--concurrency C] [--max-tokens N] [--max-seconds S] [--max-requests R] [--pause P] [--rate R]
        steady concurrent completions, half the workers streaming, to --url: HAProxy's
        loopback port by default (run inside the balancer host), or the front door
        (`--url https://edge01 --connect 10.231.10.10 --cafile ca.crt`: TCP to the
        address, the URL's host name in SNI, Host and the certificate check). Bounded in
        time and count, stops early when the stop file appears, paced to at most --rate
        requests a second (the edge and the gateway limit each credential); writes a JSON
        summary to --out when it ends (and prints it)
    loadgen.py stat                      the model servers' status, current and total sessions, as JSON
    loadgen.py wait SERVER STATUS --timeout T
        seconds until SERVER's status starts with STATUS (DOWN, UP, MAINT), as JSON

`stat` and `wait` read HAProxy's runtime socket through the haproxy scenario's test
client (molecule/haproxy/tests/lbclient.py, copied beside this file), so they run on
the balancer host; `run` needs no more than python3 and reaches any address, so it
runs there or on the controller.

Every answer is checked, not only its status: a non-streamed completion must carry
usage.completion_tokens == --max-tokens (the requests set ignore_eos), a streamed one
must end with [DONE] after a usage event with that count. Anything else is a failure
(no answer, or an error status) or a truncation (a 200 whose body stopped short).
The bearer key is read from --key-file, never taken from the command line.
"""
from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

KEY_FILE = "/opt/tests/api-key"
MODEL = "tiny-llama"
URL = "http://127.0.0.1:8080"
PATH = "/v1/completions"
PROMPT = "The rolling update"
OUTCOMES = ("ok", "failed", "truncated")


# ------------------------------------------------------------ the target --
class _PlainConnection(http.client.HTTPConnection):
    """HTTP to `address`, naming the URL's host in Host."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _TLSConnection(http.client.HTTPSConnection):
    """HTTPS to `address` with the URL's host in SNI, Host and the certificate check,
    as curl --resolve does: the edge answers only its server name."""

    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext):
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    address: str
    path: str
    context: ssl.SSLContext | None = None

    @classmethod
    def parse(cls, url: str, connect: str | None = None, cafile: str | None = None) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--url {url!r}: give http://HOST[:PORT] or https://HOST[:PORT]")
        context = None
        if parts.scheme == "https":
            context = ssl.create_default_context(cafile=cafile)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, connect or parts.hostname,
                   parts.path.rstrip("/") + PATH, context)

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.context is not None:
            return _TLSConnection(self.host, self.port, self.address, timeout, self.context)
        return _PlainConnection(self.host, self.port, self.address, timeout)


# ------------------------------------------------------ one checked answer --
@dataclass
class Answer:
    outcome: str          # ok, failed or truncated
    detail: str = ""
    tls: str | None = None


def check(status: int, data: str, stream: bool, max_tokens: int) -> tuple[str, str]:
    """(outcome, detail) of a whole response: its status, then its body."""
    if status != 200:
        return "failed", f"HTTP {status}: {data[:160]}"
    if not stream:
        try:
            tokens = json.loads(data)["usage"]["completion_tokens"]
        except (ValueError, KeyError, TypeError):
            return "truncated", f"not a whole completion: {data[-160:]!r}"
        return ("ok", "") if tokens == max_tokens else ("truncated", f"{tokens} of {max_tokens} tokens")
    events = [line[len("data:"):].strip() for line in data.splitlines() if line.startswith("data:")]
    if not events or events[-1] != "[DONE]":
        return "truncated", f"stream ended without [DONE] after {len(events)} events"
    try:
        tokens = json.loads(events[-2])["usage"]["completion_tokens"]
    except (ValueError, KeyError, TypeError, IndexError):
        return "truncated", "stream without its usage event"
    return ("ok", "") if tokens == max_tokens else ("truncated", f"{tokens} of {max_tokens} tokens streamed")


def one(target: Target, key: str, model: str, stream: bool, max_tokens: int, timeout: float) -> Answer:
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "ignore_eos": True,
            "temperature": 0, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    conn = target.connection(timeout)
    status, tls = 0, None
    try:
        conn.request("POST", target.path, body=json.dumps(body),
                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
        # Read before the answer: a response that closes the connection takes the socket away.
        if isinstance(conn.sock, ssl.SSLSocket):
            tls = conn.sock.version()
        resp = conn.getresponse()
        status = resp.status
        data = resp.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as exc:
        return Answer("truncated" if status == 200 else "failed", f"status {status}: {type(exc).__name__}: {exc}",
                      tls)
    finally:
        conn.close()
    return Answer(*check(status, data, stream, max_tokens), tls)


# ------------------------------------------------------------- the load --
def percentiles(values: list[float]) -> dict:
    """Nearest-rank p50, p99 and the maximum, in seconds (None without values)."""
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return round(ordered[max(0, math.ceil(len(ordered) * q / 100) - 1)], 3)

    return {"n": len(ordered), "p50": rank(50), "p99": rank(99), "max": round(ordered[-1], 3)}


def read_key(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        key = handle.readline().strip()
    if not key:
        raise ValueError(f"{path} holds no key")
    return key


class Pacer:
    """At most `rate` request starts a second across all workers (0: no pacing)."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next = time.monotonic()
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            slot = max(self.next, time.monotonic())
            self.next = slot + self.interval
        delay = slot - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def cmd_run(args) -> dict:
    target = Target.parse(args.url, args.connect, args.cafile)
    key = read_key(args.key_file)
    start = time.time()
    deadline = time.monotonic() + args.max_seconds
    lock = threading.Lock()
    pacer = Pacer(args.rate)
    counts: dict = {"requests": 0, "ok": 0, "failed": 0, "truncated": 0,
                    "stream": dict.fromkeys(OUTCOMES, 0), "plain": dict.fromkeys(OUTCOMES, 0)}
    latencies: dict[str, list[float]] = {"stream": [], "plain": []}
    tls: set[str] = set()
    problems: list[dict] = []
    claimed = [0]

    def claim() -> bool:
        """A request may start: within the bounds and no stop file (counted before it starts,
        so --max-requests is never exceeded)."""
        if time.monotonic() >= deadline or os.path.exists(args.stop):
            return False
        with lock:
            if claimed[0] >= args.max_requests:
                return False
            claimed[0] += 1
            return True

    def worker(stream: bool) -> None:
        kind = "stream" if stream else "plain"
        while True:
            pacer.wait()
            if not claim():
                return
            began, clock = time.time(), time.monotonic()
            answer = one(target, key, args.model, stream, args.max_tokens, args.request_timeout)
            took = time.monotonic() - clock
            with lock:
                counts["requests"] += 1
                counts[answer.outcome] += 1
                counts[kind][answer.outcome] += 1
                if answer.tls:
                    tls.add(answer.tls)
                if answer.outcome == "ok":
                    latencies[kind].append(took)
                elif len(problems) < 20:
                    problems.append({"start": round(began, 3), "end": round(time.time(), 3), "stream": stream,
                                     "outcome": answer.outcome, "detail": answer.detail})
            # A steady load, not a saturating one: the lab's two engines share two cores with
            # the restarts under test.
            time.sleep(args.pause)

    threads = [threading.Thread(target=worker, args=(i % 2 == 0,), daemon=True) for i in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(args.max_seconds + args.request_timeout + 5)
    ended = time.time()
    summary = {**counts, "problems": problems, "started": round(start, 3), "ended": round(ended, 3),
               "seconds": round(ended - start, 1), "url": args.url, "connect": args.connect,
               "tls_versions": sorted(tls), "concurrency": args.concurrency, "max_tokens": args.max_tokens,
               "pause": args.pause, "rate": args.rate,
               "latency_s": {"all": percentiles(latencies["stream"] + latencies["plain"]),
                             "stream": percentiles(latencies["stream"]), "plain": percentiles(latencies["plain"])},
               "stopped_by": "stop file" if os.path.exists(args.stop) else "bound"}
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(summary, handle)
    os.replace(tmp, args.out)
    return summary


# ----------------------------------------------- HAProxy, on its host only --
def servers() -> dict[str, dict]:
    """The model backends' servers from HAProxy's 'show stat' (the haproxy scenario's test client reads it)."""
    # Imported here: only stat and wait need it, and `run` also runs where it is not installed.
    from lbclient import stat  # molecule/haproxy/tests/lbclient.py, copied beside this file

    return {row["svname"]: {"backend": row["pxname"], "status": row["status"], "scur": int(row["scur"] or 0),
                            "stot": int(row["stot"] or 0)}
            for row in stat() if row.get("svname") not in ("FRONTEND", "BACKEND") and row["pxname"].startswith("model")}


def cmd_wait(args) -> dict:
    start = time.time()
    while time.time() - start < args.timeout:
        state = servers().get(args.server)
        if state and state["status"].startswith(args.status):
            return {"server": args.server, "status": state["status"], "seconds": round(time.time() - start, 3)}
        time.sleep(0.05)
    return {"server": args.server, "status": (servers().get(args.server) or {}).get("status"), "seconds": None}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    sub = top.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("--out", required=True)
    run.add_argument("--stop", required=True)
    run.add_argument("--url", default=URL, help=f"where the completions go (default {URL}, HAProxy on loopback)")
    run.add_argument("--connect", help="address to connect to instead of the URL's host (which SNI and Host name)")
    run.add_argument("--cafile", help="CA bundle that verifies an https URL's certificate (default: the system's)")
    run.add_argument("--key-file", default=KEY_FILE,
                     help=f"file whose first line is the bearer key (default {KEY_FILE})")
    run.add_argument("--model", default=MODEL)
    run.add_argument("--concurrency", type=int, default=6)
    run.add_argument("--max-tokens", type=int, default=48)
    run.add_argument("--max-seconds", type=float, default=900)
    run.add_argument("--max-requests", type=int, default=20000)
    run.add_argument("--request-timeout", type=float, default=120)
    run.add_argument("--pause", type=float, default=0.2, help="seconds each worker waits between requests")
    run.add_argument("--rate", type=float, default=0, help="most request starts a second, all workers (0: unpaced)")
    sub.add_parser("stat")
    wait = sub.add_parser("wait")
    wait.add_argument("server")
    wait.add_argument("status")
    wait.add_argument("--timeout", type=float, default=60)
    return top


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.cmd == "run":
        try:
            out = cmd_run(args)
        except (OSError, ValueError) as exc:
            print(f"loadgen: {exc}", file=sys.stderr)
            return 2
    elif args.cmd == "stat":
        out = servers()
    else:
        out = cmd_wait(args)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Load generator and HAProxy probe run on the balancer host of the rolling scenario (stdlib only).

    loadgen.py run --out F --stop F [--concurrency C] [--max-tokens N] [--max-seconds S] [--max-requests R] [--pause P]
        steady concurrent load through HAProxy's loopback port, half the workers streaming;
        bounded in time and count, and stops early when the stop file appears; writes a
        JSON summary to --out when it ends
    loadgen.py stat                      the servers' status, current and total sessions, as JSON
    loadgen.py wait SERVER STATUS --timeout T
        seconds until SERVER's status starts with STATUS (DOWN, UP, MAINT), as JSON

Every answer is checked, not only its status: a non-streamed completion must carry
usage.completion_tokens == --max-tokens (the requests set ignore_eos), a streamed one
must end with [DONE] after a usage event with that count. Anything else is a failure
(no answer, or an error status) or a truncation (a 200 whose body stopped short).
Traffic goes to 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time

from lbclient import stat  # molecule/haproxy/tests/lbclient.py, copied beside this file

KEY_FILE = "/opt/tests/api-key"
MODEL = "tiny-llama"


def servers() -> dict[str, dict]:
    """The model backends' servers from HAProxy's 'show stat' (the haproxy scenario's test client reads it)."""
    return {row["svname"]: {"backend": row["pxname"], "status": row["status"], "scur": int(row["scur"] or 0),
                            "stot": int(row["stot"] or 0)}
            for row in stat() if row.get("svname") not in ("FRONTEND", "BACKEND") and row["pxname"].startswith("model")}


def one(key: str, stream: bool, max_tokens: int, timeout: float) -> tuple[str, str]:
    """(outcome, detail): outcome is ok, failed or truncated."""
    body = {"model": MODEL, "prompt": "The rolling update", "max_tokens": max_tokens, "ignore_eos": True,
            "temperature": 0, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    conn = http.client.HTTPConnection("127.0.0.1", 8080, timeout=timeout)
    status = 0
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(body),
                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
        resp = conn.getresponse()
        status = resp.status
        data = resp.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as exc:
        return ("truncated" if status == 200 else "failed"), f"status {status}: {type(exc).__name__}: {exc}"
    finally:
        conn.close()
    if status != 200:
        return "failed", f"HTTP {status}: {data[:160]}"
    if not stream:
        try:
            tokens = json.loads(data)["usage"]["completion_tokens"]
        except (ValueError, KeyError, TypeError):
            return "truncated", f"not a whole completion: {data[-160:]!r}"
        return ("ok", "") if tokens == max_tokens else ("truncated", f"{tokens} of {max_tokens} tokens")
    events = [line[len("data: "):] for line in data.splitlines() if line.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        return "truncated", f"stream ended without [DONE] after {len(events)} events"
    try:
        tokens = json.loads(events[-2])["usage"]["completion_tokens"]
    except (ValueError, KeyError, TypeError, IndexError):
        return "truncated", "stream without its usage event"
    return ("ok", "") if tokens == max_tokens else ("truncated", f"{tokens} of {max_tokens} tokens streamed")


def cmd_run(args) -> dict:
    with open(KEY_FILE, encoding="utf-8") as handle:
        key = handle.readline().strip()
    start = time.time()
    deadline = start + args.max_seconds
    lock = threading.Lock()
    counts = {"requests": 0, "ok": 0, "failed": 0, "truncated": 0,
              "stream": {"ok": 0, "failed": 0, "truncated": 0}, "plain": {"ok": 0, "failed": 0, "truncated": 0}}
    problems: list[dict] = []

    def stopping() -> bool:
        return time.time() >= deadline or os.path.exists(args.stop) or counts["requests"] >= args.max_requests

    def worker(stream: bool) -> None:
        while not stopping():
            began = time.time()
            outcome, detail = one(key, stream, args.max_tokens, args.request_timeout)
            with lock:
                counts["requests"] += 1
                counts[outcome] += 1
                counts["stream" if stream else "plain"][outcome] += 1
                if outcome != "ok" and len(problems) < 20:
                    problems.append({"start": round(began, 3), "end": round(time.time(), 3), "stream": stream,
                                     "outcome": outcome, "detail": detail})
            # A steady load, not a saturating one: the lab's two engines share two cores with
            # the restarts under test.
            time.sleep(args.pause)

    threads = [threading.Thread(target=worker, args=(i % 2 == 0,), daemon=True) for i in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(args.max_seconds + args.request_timeout + 5)
    summary = {**counts, "problems": problems, "started": round(start, 3), "ended": round(time.time(), 3),
               "seconds": round(time.time() - start, 1), "concurrency": args.concurrency,
               "max_tokens": args.max_tokens, "pause": args.pause,
               "stopped_by": "stop file" if os.path.exists(args.stop) else "bound"}
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(summary, handle)
    os.replace(tmp, args.out)
    return summary


def cmd_wait(args) -> dict:
    start = time.time()
    while time.time() - start < args.timeout:
        state = servers().get(args.server)
        if state and state["status"].startswith(args.status):
            return {"server": args.server, "status": state["status"], "seconds": round(time.time() - start, 3)}
        time.sleep(0.05)
    return {"server": args.server, "status": (servers().get(args.server) or {}).get("status"), "seconds": None}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("--out", required=True)
    run.add_argument("--stop", required=True)
    run.add_argument("--concurrency", type=int, default=6)
    run.add_argument("--max-tokens", type=int, default=48)
    run.add_argument("--max-seconds", type=float, default=900)
    run.add_argument("--max-requests", type=int, default=20000)
    run.add_argument("--request-timeout", type=float, default=120)
    run.add_argument("--pause", type=float, default=0.2, help="seconds each worker waits between requests")
    sub.add_parser("stat")
    wait = sub.add_parser("wait")
    wait.add_argument("server")
    wait.add_argument("status")
    wait.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args(argv)
    if args.cmd == "run":
        out = cmd_run(args)
    elif args.cmd == "stat":
        out = servers()
    else:
        out = cmd_wait(args)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Benchmark: the audit gateway's added latency over going straight to the backend.

    python tools/bench_gateway.py [--requests 400] [--tokens 16] [--json out.json]

Starts the OpenAI-compatible backend DOUBLE (tests/doubles/openai_backend.py, a
stand-in for HAProxy + vLLM) and the gateway (gateway/src, plain HTTP on loopback,
audit log in a temporary directory) as separate processes, then for each mode
(DLP off; DLP on with a prompt holding an SSN that is pseudonymized and restored)
and each concurrency (1, 16, 64) sends streamed chat completions both directly to
the backend and through the gateway, interleaved in rounds so machine noise hits
both alike. It reports, per cell, p50/p99 of the time to the last byte, the added
latency (gateway minus direct, p50 and p99), and then the highest request rate with
100% success (open loop, rising rate, 3 s per step).

Everything shares this machine's cores (load generator, gateway, backend), so the
figures are an upper bound on the gateway's cost.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
KEY = "ek-bench-benchmarkbenchmarkbench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc), independent of how busy the machine is."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def start_gateway(tmp: Path, backend_port: int, dlp: bool) -> tuple[subprocess.Popen, int, int]:
    sys.path.insert(0, str(ROOT / "gateway" / "src"))
    from enclave_gateway.auth import hash_key  # pylint: disable=import-outside-toplevel
    port, metrics = free_port(), free_port()
    keys = tmp / f"keys-{dlp}.json"
    keys.write_text(json.dumps({"keys": [{"id": "bench", "sha256": hash_key(KEY), "owner": "bench",
                                          "models": ["tiny-llama"]}]}))
    config = tmp / f"config-{dlp}.json"
    config.write_text(json.dumps({"listen": "127.0.0.1", "port": port, "metrics_listen": "127.0.0.1",
                                  "metrics_port": metrics, "upstream": f"http://127.0.0.1:{backend_port}",
                                  "keys_file": str(keys), "audit_path": str(tmp / f"audit-{dlp}.jsonl"),
                                  "dlp_enabled": dlp, "dlp_action": "pseudonymize"}))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "gateway" / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "enclave_gateway", "serve", "--config", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, port, metrics


async def one(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict) -> tuple[bool, float]:
    started = time.perf_counter()
    try:
        async with session.post(url, data=body, headers=headers) as response:
            data = await response.read()
            ok = response.status == 200 and data.rstrip().endswith(b"data: [DONE]")
    except (aiohttp.ClientError, asyncio.TimeoutError):
        ok = False
    return ok, time.perf_counter() - started


async def closed_loop(url: str, body: bytes, headers: dict, concurrency: int, count: int) -> tuple[list[float], int]:
    connector = aiohttp.TCPConnector(limit=concurrency)
    latencies, failures = [], 0
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        await asyncio.gather(*(one(session, url, body, headers) for _unused in range(concurrency)))   # warm connections
        queue = iter(range(count))

        async def worker():
            nonlocal failures
            for _unused in queue:
                ok, elapsed = await one(session, url, body, headers)
                latencies.append(elapsed)
                failures += not ok
        await asyncio.gather(*(worker() for _unused in range(concurrency)))
    return latencies, failures


async def open_loop(url: str, body: bytes, headers: dict, rate: float, seconds: float) -> tuple[int, int, float]:
    connector = aiohttp.TCPConnector(limit=2000)
    tasks = []
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        start = time.perf_counter()
        total = int(rate * seconds)
        for index in range(total):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(session, url, body, headers)))
        results = await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    failures = sum(1 for ok, _lat in results if not ok)
    return total, failures, total / elapsed


async def bench(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    backend_port = free_port()
    backend = subprocess.Popen([sys.executable, str(ROOT / "tests" / "doubles" / "openai_backend.py"), "--host",
                                "127.0.0.1", "--port", str(backend_port), "--models", "tiny-llama", "--token-delay",
                                str(args.token_delay), "--first-token-delay", str(args.first_token_delay)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [backend]
    report: dict = {"requests_per_cell": args.requests, "tokens": args.tokens, "cores": os.cpu_count(), "cells": [],
                    "max_rate": {}}
    try:
        await wait_port(backend_port)
        for dlp in (False, True):
            gateway, port, _metrics = start_gateway(tmp, backend_port, dlp)
            procs.append(gateway)
            await wait_port(port)
            content = "my ssn is 123-45-6789, please summarise" if dlp else "please summarise this text"
            body = json.dumps({"model": "tiny-llama", "stream": True, "max_tokens": args.tokens,
                               "messages": [{"role": "user", "content": content}]}).encode()
            direct = (f"http://127.0.0.1:{backend_port}/v1/chat/completions", {"Content-Type": "application/json"})
            via = (f"http://127.0.0.1:{port}/v1/chat/completions",
                   {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
            for concurrency in (1, 16, 64):
                lat_d, lat_g, fail_d, fail_g = [], [], 0, 0
                per_round = max(concurrency, args.requests // args.rounds)
                gateway_cpu = 0.0
                for _round in range(args.rounds):
                    d, fd = await closed_loop(direct[0], body, direct[1], concurrency, per_round)
                    before = cpu_seconds(gateway.pid)
                    g, fg = await closed_loop(via[0], body, via[1], concurrency, per_round)
                    gateway_cpu += cpu_seconds(gateway.pid) - before
                    lat_d += d
                    lat_g += g
                    fail_d += fd
                    fail_g += fg
                cell = {"dlp": dlp, "concurrency": concurrency, "n": len(lat_g), "failures": fail_d + fail_g,
                        "direct_p50_ms": pct(lat_d, 50) * 1e3, "direct_p99_ms": pct(lat_d, 99) * 1e3,
                        "gateway_p50_ms": pct(lat_g, 50) * 1e3, "gateway_p99_ms": pct(lat_g, 99) * 1e3}
                cell["added_p50_ms"] = cell["gateway_p50_ms"] - cell["direct_p50_ms"]
                cell["added_p99_ms"] = cell["gateway_p99_ms"] - cell["direct_p99_ms"]
                cell["ratio_p50"] = cell["gateway_p50_ms"] / cell["direct_p50_ms"]
                # Each round also sends `concurrency` warm-up requests through the gateway.
                served = len(lat_g) + args.rounds * concurrency
                cell["gateway_cpu_ms_per_request"] = gateway_cpu / served * 1e3
                report["cells"].append(cell)
                print(f"dlp={'on ' if dlp else 'off'} c={concurrency:>2}  direct p50 {cell['direct_p50_ms']:7.2f} "
                      f"p99 {cell['direct_p99_ms']:7.2f} | gateway p50 {cell['gateway_p50_ms']:7.2f} "
                      f"p99 {cell['gateway_p99_ms']:7.2f} | added p50 {cell['added_p50_ms']:+6.2f} "
                      f"p99 {cell['added_p99_ms']:+6.2f} ms  ratio {cell['ratio_p50']:.2f}  "
                      f"gateway CPU {cell['gateway_cpu_ms_per_request']:.2f} ms/req  "
                      f"failures {cell['failures']}", flush=True)
            best = 0.0
            rate = args.start_rate
            while rate <= args.max_rate:
                total, failures, achieved = await open_loop(via[0], body, via[1], rate, args.step_seconds)
                print(f"dlp={'on ' if dlp else 'off'} open loop {rate:6.0f} req/s: {total} sent, {failures} failed, "
                      f"achieved {achieved:6.1f} req/s", flush=True)
                if failures or achieved < 0.95 * rate:
                    break
                best = rate
                rate *= 1.5
            report["max_rate"]["dlp_on" if dlp else "dlp_off"] = best
            print(f"dlp={'on ' if dlp else 'off'} highest 100%-success rate: {best:.0f} req/s", flush=True)
            gateway.terminate()
            gateway.wait(timeout=10)
            procs.remove(gateway)
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=600, help="requests per cell and path (split into rounds)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=16, help="streamed tokens per answer")
    parser.add_argument("--token-delay", type=float, default=0.0, help="backend double: seconds between tokens")
    parser.add_argument("--first-token-delay", type=float, default=0.0)
    parser.add_argument("--start-rate", type=float, default=50)
    parser.add_argument("--max-rate", type=float, default=5000)
    parser.add_argument("--step-seconds", type=float, default=3)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    report = asyncio.run(bench(args))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    cells16 = [c for c in report["cells"] if c["concurrency"] == 16]
    for cell in cells16:
        print(f"at 16 streams, dlp {'on' if cell['dlp'] else 'off'}: added p50 {cell['added_p50_ms']:.2f} ms "
              f"(aim < 1), p99 {cell['added_p99_ms']:.2f} ms (aim < 5); the gateway spent "
              f"{cell['gateway_cpu_ms_per_request']:.2f} ms of CPU per request (16 concurrent x that = the "
              f"queueing floor on one event loop)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

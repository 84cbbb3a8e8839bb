"""Benchmark: latency added by the edge (nginx) + the balancer (HAProxy) over a
direct call to the backend, and the highest request rate that still gets 100 %
success. A benchmark, not a test: it prints figures and asserts nothing.

    make bench-edge            (renders the configs, runs the rest in a lab container)
    python3 tools/bench_edge.py render OUT_DIR    (controller: the roles' own templates)
    python3 tools/bench_edge.py run OUT_DIR       (needs nginx, haproxy, openssl, python3)

The path measured is the production one, on loopback:
  client ─TLS 1.3─▶ nginx (enclave.llm.nginx_edge's template) ─TLS─▶ HAProxy
  (enclave.llm.haproxy's template; a TLS bind stands in for the gateway hop, which
  issue 6 builds) ─HTTP─▶ backend double (tests/doubles/openai_backend.py) at a
  fixed pace: first token after 20 ms, then 8 tokens 2 ms apart, streamed.
"direct" is the same client straight to the backend double over HTTP.
Rate limits are raised far above the offered load so they do not shape the result.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKEND_PORT, HAPROXY_PORT, EDGE_PORT = 18000, 18443, 19443
MODEL = "bench-model"
NAME = "edge.bench.internal"
MAX_TOKENS = 8
FIRST_TOKEN_DELAY, TOKEN_DELAY = 0.020, 0.002


# ------------------------------------------------------------------ render --
def render(out: Path) -> None:
    """Render the two roles' templates with bench values (runs where ansible is installed)."""
    from ansible.plugins.filter.core import FilterModule
    import jinja2

    out.mkdir(parents=True, exist_ok=True)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(ROOT / "roles")), trim_blocks=True,
                             keep_trailing_newline=True, extensions=["jinja2.ext.do"])
    env.filters.update(FilterModule().filters())
    sys.path.insert(0, str(ROOT / "plugins" / "filter"))
    from inference import FilterModule as InferenceFilters  # the collection's own filters, as enclave.llm.*
    env.filters.update({f"enclave.llm.{name}": func for name, func in InferenceFilters().filters().items()})
    common = {"ansible_managed": "rendered by tools/bench_edge.py", "inventory_hostname": "bench"}
    haproxy_defaults = _defaults("haproxy")
    haproxy_vars = {**haproxy_defaults, **common,
                    "__haproxy_chroot": str(out / "chroot"),
                    "haproxy_backends": [{"model": MODEL, "servers": [
                        {"name": "backend1", "address": "127.0.0.1", "port": BACKEND_PORT, "engine": "vllm"}]}],
                    "haproxy_bind_address": "127.0.0.1",
                    # A TLS bind stands in for the gateway's TLS hop (nginx talks TLS upstream).
                    "haproxy_port": f"{HAPROXY_PORT} ssl crt {out}/gateway.pem",
                    "haproxy_metrics_bind_address": "127.0.0.1", "haproxy_metrics_port": 18404,
                    "haproxy_runtime_socket": str(out / "admin.sock"),
                    "haproxy_server_maxconn": 512, "haproxy_queue_max": 4096, "haproxy_global_maxconn": 1800}
    text = env.get_template("haproxy/templates/etc/haproxy/haproxy.cfg.j2").render(**haproxy_vars)
    # Outside systemd and root: no chroot/user switch, logs dropped (syslog is not the subject here).
    text = "\n".join(line for line in text.splitlines()
                     if not line.strip().startswith(("chroot ", "user ", "group ", "daemon", "log /dev/log")))
    text = text.replace("mode 600 user root group root level admin", "mode 600 level admin")
    (out / "haproxy.cfg").write_text(text + "\n")

    nginx_vars = {**_defaults("nginx_edge"), **common,
                  "nginx_edge_server_names": [NAME], "nginx_edge_listen_address": "127.0.0.1",
                  "nginx_edge_port": EDGE_PORT, "nginx_edge_http_redirect": False,
                  "nginx_edge_gateway_upstreams": [f"127.0.0.1:{HAPROXY_PORT}"],
                  "nginx_edge_oauth2_upstreams": [f"127.0.0.1:{HAPROXY_PORT}"],
                  "nginx_edge_upstream_ca_file": str(out / "ca.crt"),
                  "nginx_edge_rate_per_address": "100000r/s", "nginx_edge_burst_per_address": 100000,
                  "nginx_edge_rate_per_credential": "100000r/s", "nginx_edge_burst_per_credential": 100000,
                  "__nginx_edge_cert": str(out / "edge.crt"), "__nginx_edge_key": str(out / "edge.key")}
    text = env.get_template("nginx_edge/templates/etc/nginx/conf.d/enclave-edge.conf.j2").render(**nginx_vars)
    text = text.replace("/var/log/nginx/enclave-edge.access.json", str(out / "access.json"))
    (out / "edge.conf").write_text(text)
    temp_paths = "".join(f"    {kind}_temp_path {out}/tmp-{kind};\n"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (out / "nginx.conf").write_text(
        f"worker_processes auto;\npid {out}/nginx.pid;\nerror_log {out}/nginx-error.log warn;\n"
        "events { worker_connections 8192; }\n"
        "http {\n    types { application/json json; text/plain txt; }\n    default_type application/octet-stream;\n"
        f"{temp_paths}    access_log {out}/access-default.log;\n    include {out}/edge.conf;\n}}\n")
    print(f"rendered haproxy.cfg, nginx.conf, edge.conf into {out}")


def _defaults(role: str) -> dict:
    import yaml
    values = yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text())
    return {k: v for k, v in values.items() if not (isinstance(v, str) and "{{" in v)}


# --------------------------------------------------------------------- run --
def certificates(out: Path) -> None:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(out / "ca.key"))
    openssl("req", "-x509", "-new", "-key", str(out / "ca.key"), "-subj", "/CN=bench CA", "-days", "2",
            "-out", str(out / "ca.crt"))
    for name, san in (("edge", NAME), ("gateway", "gateway")):
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(out / f"{name}.key"))
        openssl("req", "-new", "-key", str(out / f"{name}.key"), "-subj", f"/CN={san}", "-out", str(out / f"{name}.csr"))
        (out / f"{name}.ext").write_text(f"subjectAltName=DNS:{san}\nextendedKeyUsage=serverAuth\n")
        openssl("x509", "-req", "-in", str(out / f"{name}.csr"), "-CA", str(out / "ca.crt"), "-CAkey",
                str(out / "ca.key"), "-CAcreateserial", "-days", "2", "-extfile", str(out / f"{name}.ext"),
                "-out", str(out / f"{name}.crt"))
    (out / "gateway.pem").write_text((out / "gateway.crt").read_text() + (out / "gateway.key").read_text())


async def one_request(reader, writer, host: str, body: bytes) -> tuple[float, float, bool]:
    start = time.perf_counter()
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: " + host.encode() +
                 b"\r\nContent-Type: application/json\r\nAuthorization: Bearer ek-bench-0000\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    ok = head.startswith(b"HTTP/1.1 200")
    first = None
    chunked = b"chunked" in head.lower()
    if not chunked:
        length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")))
        await reader.readexactly(length)
        return time.perf_counter() - start, time.perf_counter() - start, False
    while True:
        size = int((await reader.readline()).strip(), 16)
        if first is None:
            first = time.perf_counter() - start
        if size == 0:
            await reader.readline()
            break
        await reader.readexactly(size + 2)
    return first, time.perf_counter() - start, ok


async def connection(target: str):
    if target == "direct":
        return await asyncio.open_connection("127.0.0.1", BACKEND_PORT), "127.0.0.1"
    ctx = ssl.create_default_context(cafile=str(OUT / "ca.crt"))
    return await asyncio.open_connection("127.0.0.1", EDGE_PORT, ssl=ctx, server_hostname=NAME), NAME


BODY = json.dumps({"model": MODEL, "stream": True, "max_tokens": MAX_TOKENS,
                   "messages": [{"role": "user", "content": "benchmark"}]}).encode()


async def closed_loop(target: str, concurrency: int, seconds: float) -> dict:
    ttfb, total, errors = [], [], 0
    # Connections (and TLS handshakes) are opened before the clock starts.
    conns = [await connection(target) for _index in range(concurrency)]
    deadline = time.perf_counter() + seconds

    async def worker(conn):
        nonlocal errors
        (reader, writer), host = conn
        for _attempt in range(1_000_000):
            if time.perf_counter() >= deadline:
                break
            try:
                first, whole, ok = await one_request(reader, writer, host, BODY)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                writer.close()
                (reader, writer), host = await connection(target)
                continue
            if ok:
                ttfb.append(first)
                total.append(whole)
            else:
                errors += 1
        writer.close()

    await asyncio.gather(*(worker(conn) for conn in conns))
    return {"n": len(total), "errors": errors, "rps": len(total) / seconds,
            "ttfb_p50": _pct(ttfb, 50), "ttfb_p99": _pct(ttfb, 99), "p50": _pct(total, 50), "p99": _pct(total, 99)}


async def open_loop(target: str, rate: int, seconds: float, limit: int = 1024) -> dict:
    """Send `rate` requests/s for `seconds` (new connection pool, at most `limit` in flight)."""
    pool: asyncio.Queue = asyncio.Queue()
    ok = failed = 0
    sem = asyncio.Semaphore(limit)

    async def fire():
        nonlocal ok, failed
        async with sem:
            try:
                conn = pool.get_nowait() if not pool.empty() else await connection(target)
                (reader, writer), host = conn
                _first, _whole, success = await asyncio.wait_for(one_request(reader, writer, host, BODY), 10)
                pool.put_nowait(conn)
            except (OSError, asyncio.IncompleteReadError, ValueError, asyncio.TimeoutError):
                success = False
            ok, failed = (ok + 1, failed) if success else (ok, failed + 1)

    tasks = []
    start = time.perf_counter()
    for index in range(int(rate * seconds)):
        delay = start + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire()))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    while not pool.empty():
        pool.get_nowait()[0][1].close()
    return {"rate": rate, "ok": ok, "failed": failed, "elapsed": elapsed}


def _pct(values: list[float], pct: int) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))] * 1000


def wait_port(port: int, timeout: float = 20) -> None:
    import socket
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"port {port} did not open")


def run(out: Path, seconds: float) -> None:
    global OUT
    OUT = out
    certificates(out)
    procs = []
    try:
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "tests/doubles/openai_backend.py"), "--host",
                                       "127.0.0.1", "--port", str(BACKEND_PORT), "--models", MODEL,
                                       "--first-token-delay", str(FIRST_TOKEN_DELAY), "--token-delay",
                                       str(TOKEN_DELAY)]))
        wait_port(BACKEND_PORT)
        subprocess.run(["haproxy", "-c", "-q", "-f", str(out / "haproxy.cfg")], check=True)
        procs.append(subprocess.Popen(["haproxy", "-db", "-f", str(out / "haproxy.cfg")]))
        nginx = ["nginx", "-e", str(out / "nginx-error.log"), "-p", str(out), "-c", str(out / "nginx.conf")]
        subprocess.run([*nginx, "-t", "-q"], check=True)
        procs.append(subprocess.Popen([*nginx, "-g", "daemon off;"]))
        wait_port(HAPROXY_PORT)
        wait_port(EDGE_PORT)
        time.sleep(2.5)  # HAProxy's rise checks
        asyncio.run(closed_loop("edge", 4, 1.0))  # warm-up
        print(f"bench-edge: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; backend double: "
              f"{MAX_TOKENS} streamed tokens, first after {FIRST_TOKEN_DELAY * 1000:.0f} ms, "
              f"then {TOKEN_DELAY * 1000:.0f} ms apart; {seconds:.0f} s per point")
        print(f"{'conc':>4} {'path':>6} {'req':>6} {'err':>4} {'rps':>7} {'ttfb p50':>9} {'ttfb p99':>9} "
              f"{'p50 ms':>8} {'p99 ms':>8}")
        summary = []
        for concurrency in (1, 16, 64):
            results = {}
            for target in ("direct", "edge"):
                r = asyncio.run(closed_loop(target, concurrency, seconds))
                results[target] = r
                print(f"{concurrency:>4} {target:>6} {r['n']:>6} {r['errors']:>4} {r['rps']:>7.0f} "
                      f"{r['ttfb_p50']:>9.2f} {r['ttfb_p99']:>9.2f} {r['p50']:>8.2f} {r['p99']:>8.2f}")
            summary.append((concurrency, results["edge"]["p50"] - results["direct"]["p50"],
                            results["edge"]["p99"] - results["direct"]["p99"],
                            results["edge"]["ttfb_p50"] - results["direct"]["ttfb_p50"],
                            results["edge"]["ttfb_p99"] - results["direct"]["ttfb_p99"]))
        print("added by nginx + HAProxy (edge - direct), ms:")
        for concurrency, p50, p99, t50, t99 in summary:
            print(f"  concurrency {concurrency:>2}: total p50 {p50:+.2f}  p99 {p99:+.2f}   "
                  f"first byte p50 {t50:+.2f}  p99 {t99:+.2f}")
        best = None
        window = min(seconds, 4)
        for rate in (50, 100, 200, 300, 400, 600, 800, 1200, 1600, 2400):
            r = asyncio.run(open_loop("edge", rate, window))
            achieved = r["ok"] / r["elapsed"]
            kept_pace = r["elapsed"] <= window * 1.25
            print(f"  open loop {rate:>5} req/s offered through the edge: {r['ok']} ok, {r['failed']} failed "
                  f"in {r['elapsed']:.1f} s ({achieved:.0f} req/s achieved)")
            if r["failed"] or not kept_pace:
                break
            best = rate
        print(f"highest rate served with 100% success, at the offered pace, through nginx + HAProxy: {best} req/s "
              "(a later point failed or fell behind the offered pace)")
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["render", "run"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    if args.command == "render":
        render(args.out.resolve())
    else:
        for tool in ("nginx", "haproxy", "openssl"):
            if not shutil.which(tool):
                raise SystemExit(f"bench-edge: {tool} is not installed (make bench-edge runs this in a lab container)")
        run(args.out.resolve(), args.seconds)


OUT = Path(".")

if __name__ == "__main__":
    main()

"""Probe (address, port, proto) triples from this host, in parallel, each with
a 1 s bound (PROBE_TIMEOUT): prints one JSON object {"addr port proto": "open"|"blocked"|"refused"|"error: ..."}.
TCP: connected = open, timeout = blocked (dropped), refused = reached but no listener.
UDP: an answer from the listener = open, silence or an ICMP error = blocked."""
import json
import os
import socket
import sys
from concurrent.futures import ThreadPoolExecutor

TIMEOUT = float(os.environ.get("PROBE_TIMEOUT", "1.0"))


def probe(item):
    addr, port, proto = item
    try:
        if proto == "tcp":
            with socket.create_connection((addr, port), timeout=TIMEOUT):
                return "open"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(TIMEOUT)
            s.connect((addr, port))
            s.send(b"ping")
            return "open" if s.recv(512).startswith(b"pong:") else "error: bad answer"
    except socket.timeout:
        return "blocked"
    except ConnectionRefusedError:
        return "refused" if proto == "tcp" else "blocked"
    except OSError as exc:
        return f"error: {exc}"


items = [(a, int(p), proto) for a, p, proto in json.loads(sys.argv[1])]
with ThreadPoolExecutor(max_workers=64) as pool:
    results = list(pool.map(probe, items))
print(json.dumps({f"{a} {p} {proto}": r for (a, p, proto), r in zip(items, results)}))

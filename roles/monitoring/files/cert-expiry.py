# Copyright: enclave.llm contributors
# Apache License 2.0 (see LICENSE)
"""Write when certificates expire, as Prometheus metrics for node_exporter's
textfile collector (installed by enclave.llm.monitoring, run by a systemd timer).

    python3 cert-expiry.py --output /var/lib/prometheus/node-exporter/enclave_certificates.prom \
        '/etc/enclave/pki/certs/*.crt' /etc/enclave/pki/ca.crt

Metrics: enclave_certificate_expiry_timestamp_seconds{path,name} for each
certificate (``*.fullchain.crt`` files are skipped: their leaf is ``<name>.crt``),
enclave_certificate_expiry_collector_errors (certificates that could not be read)
and enclave_certificate_expiry_collector_last_run_timestamp_seconds. The file is
replaced atomically, so node_exporter never reads half of it. Standard library and
the openssl command only.
"""
from __future__ import annotations

import argparse
import glob
import os
import ssl
import subprocess
import sys
import tempfile
import time

OPENSSL = os.environ.get("ENCLAVE_OPENSSL", "openssl")


def not_after(path: str) -> float:
    """The notAfter time of the first certificate in ``path``, as a Unix timestamp."""
    proc = subprocess.run([OPENSSL, "x509", "-noout", "-enddate", "-in", path], capture_output=True, text=True,
                          check=False, timeout=30)
    if proc.returncode != 0 or not proc.stdout.startswith("notAfter="):
        raise ValueError(proc.stderr.strip().splitlines()[0] if proc.stderr.strip() else "not a certificate")
    return float(ssl.cert_time_to_seconds(proc.stdout.strip().split("=", 1)[1]))


def certificate_files(patterns: list[str]) -> list[str]:
    """Files matching ``patterns``, sorted and without duplicates or full-chain copies."""
    found: set[str] = set()
    for pattern in patterns:
        for path in glob.glob(pattern):
            if os.path.isfile(path) and not path.endswith(".fullchain.crt"):
                found.add(path)
    return sorted(found)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(expiries: dict[str, float], errors: dict[str, str], now: float) -> str:
    """The textfile collector content for ``expiries`` (path -> timestamp) and ``errors``."""
    lines = ["# HELP enclave_certificate_expiry_timestamp_seconds When the certificate expires (notAfter).",
             "# TYPE enclave_certificate_expiry_timestamp_seconds gauge"]
    for path, stamp in sorted(expiries.items()):
        name = os.path.basename(path).rsplit(".", 1)[0]
        lines.append(f'enclave_certificate_expiry_timestamp_seconds{{path="{_label(path)}",name="{_label(name)}"}} '
                     f"{stamp:.0f}")
    lines += ["# HELP enclave_certificate_expiry_collector_errors Certificates that could not be read.",
              "# TYPE enclave_certificate_expiry_collector_errors gauge",
              f"enclave_certificate_expiry_collector_errors {len(errors)}",
              "# HELP enclave_certificate_expiry_collector_last_run_timestamp_seconds When the check last ran.",
              "# TYPE enclave_certificate_expiry_collector_last_run_timestamp_seconds gauge",
              f"enclave_certificate_expiry_collector_last_run_timestamp_seconds {now:.0f}"]
    return "\n".join(lines) + "\n"


def write_atomically(output: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(output))
    handle, tmp = tempfile.mkstemp(prefix=".enclave_certificates.", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def run(output: str, patterns: list[str], now: float | None = None) -> int:
    expiries: dict[str, float] = {}
    errors: dict[str, str] = {}
    for path in certificate_files(patterns):
        try:
            expiries[path] = not_after(path)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            errors[path] = str(exc)
            print(f"cert-expiry: {path}: {exc}", file=sys.stderr)
    write_atomically(output, render(expiries, errors, time.time() if now is None else now))
    # Unreadable certificates are reported by the errors metric (and alerted on),
    # not by failing the unit, so one bad file does not hide the others.
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="the .prom file in the textfile collector directory")
    parser.add_argument("patterns", nargs="+", help="certificate files or glob patterns")
    args = parser.parse_args(argv)
    return run(args.output, args.patterns)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

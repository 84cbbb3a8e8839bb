"""STAND-IN for nvidia_gpu_exporter (a double: no GPU, no nvidia-smi here).

The monitoring scenario packs this file, as ``nvidia_gpu_exporter``, into a
stand-in release archive, so that the role's real install path runs: pinned
sha256, unpack, versioned directory, symlink, systemd unit, TLS with a client
certificate. It answers like the real exporter on the surface Prometheus uses:
``--web.listen-address`` and ``--web.config.file`` (exporter-toolkit's
``tls_server_config``: cert_file, key_file, client_auth_type, client_ca_file),
``/metrics`` with ``nvidia_smi_*`` series for a fixed set of fake GPUs, and
``--version``. It measures nothing: the real exporter is not run here.

Standard library only. Fake GPU count: ``STANDIN_GPUS`` (default 2).
"""
from __future__ import annotations

import argparse
import os
import re
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "nvidia_gpu_exporter, version 0.0.0-standin (stand-in double, not the real exporter)"


def web_config(path: str | None) -> dict[str, str]:
    """The few keys of an exporter-toolkit web config the stand-in honours."""
    if not path:
        return {}
    found = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            match = re.match(r"^\s+(cert_file|key_file|client_auth_type|client_ca_file):\s*(\S+)\s*$", line)
            if match:
                found[match.group(1)] = match.group(2)
    return found


def metrics(gpus: int) -> str:
    lines = []
    for name, kind, value in (("gpu_info", "gauge", None), ("memory_used_bytes", "gauge", 1.2e9),
                              ("memory_total_bytes", "gauge", 8.0e10), ("temperature_gpu", "gauge", 41),
                              ("utilization_gpu_ratio", "gauge", 0.05),
                              ("ecc_errors_uncorrected_volatile_total", "gauge", 0)):
        lines += [f"# HELP nvidia_smi_{name} stand-in value", f"# TYPE nvidia_smi_{name} {kind}"]
        for index in range(gpus):
            uuid = f"GPU-00000000-0000-0000-0000-00000000000{index}"
            if value is None:
                lines.append(f'nvidia_smi_{name}{{uuid="{uuid}",index="{index}",name="STAND-IN GPU"}} 1')
            else:
                lines.append(f'nvidia_smi_{name}{{uuid="{uuid}"}} {value}')
    lines += ["# HELP nvidia_smi_command_exit_code stand-in value", "# TYPE nvidia_smi_command_exit_code gauge",
              "nvidia_smi_command_exit_code 0"]
    return "\n".join(lines) + "\n"


class Handler(BaseHTTPRequestHandler):
    gpus = 2

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404)
            return
        body = metrics(self.gpus).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:  # noqa: A002 (signature of the base class)
        pass


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="STAND-IN for nvidia_gpu_exporter")
    parser.add_argument("--web.listen-address", dest="listen", default=":9835")
    parser.add_argument("--web.config.file", dest="config")
    parser.add_argument("--version", action="store_true")
    args, _unknown = parser.parse_known_args(argv)
    if args.version:
        print(VERSION)
        return 0
    host, _sep, port = args.listen.rpartition(":")
    Handler.gpus = int(os.environ.get("STANDIN_GPUS", "2"))
    server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)
    config = web_config(args.config)
    if config.get("cert_file"):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(config["cert_file"], config["key_file"])
        if config.get("client_auth_type") == "RequireAndVerifyClientCert":
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(config["client_ca_file"])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"stand-in nvidia_gpu_exporter listening on {args.listen}", file=sys.stderr)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

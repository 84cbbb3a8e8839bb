"""STAND-IN for the oauth2-proxy binary (the real one cannot be fetched here).

It is packed by oauth2_proxy_standin_archive.py (for the oauth2_proxy Molecule
scenario and the podman lab) into a stand-in release archive
(oauth2-proxy-v<version>.linux-amd64/oauth2-proxy), so the role's real download,
checksum, unpack, configuration and unit paths run. It does no authentication.

    oauth2-proxy --version
    oauth2-proxy --config=FILE [--trusted-proxy-ip=CIDR ...]

With --config it reads the TOML file the role rendered, refuses to start (exit 1)
when the client id, client secret or cookie secret are not in its environment, or
when the cookie secret is not 16, 24 or 32 bytes, and then serves HTTPS on
https_address with tls_cert_file/tls_key_file:
    GET /ping           -> OK
    GET /standin/state  -> JSON: the parsed config (no secrets), the trusted proxy
                           IPs, which secrets were present, the uid it runs as.
Standard library only (python3.11 for tomllib); no __future__ import, so the archive builder
can put a line before the code.
"""

import base64
import http.server
import json
import os
import ssl
import sys
import tomllib

VERSION = os.environ.get("STANDIN_VERSION", "0.0.0")
SECRETS = ("OAUTH2_PROXY_CLIENT_ID", "OAUTH2_PROXY_CLIENT_SECRET", "OAUTH2_PROXY_COOKIE_SECRET")


def cookie_secret_ok(value: str) -> bool:
    if len(value) in (16, 24, 32):
        return True
    try:
        return len(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))) in (16, 24, 32)
    except ValueError:
        return False


def main(argv: list[str]) -> int:
    if "--version" in argv:
        print(f"oauth2-proxy v{VERSION} (STAND-IN for tests, not the real binary)")
        return 0
    config_path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    trusted = [a.split("=", 1)[1] for a in argv if a.startswith("--trusted-proxy-ip=")]
    if not config_path:
        print("stand-in: --config=FILE is required", file=sys.stderr)
        return 2
    with open(config_path, "rb") as handle:
        config = tomllib.load(handle)
    missing = [name for name in SECRETS if not os.environ.get(name)]
    if missing:
        print(f"stand-in: missing {', '.join(missing)} in the environment", file=sys.stderr)
        return 1
    if not cookie_secret_ok(os.environ["OAUTH2_PROXY_COOKIE_SECRET"]):
        print("stand-in: cookie_secret must be 16, 24 or 32 bytes", file=sys.stderr)
        return 1
    state = {"config": config, "trusted_proxy_ips": trusted, "secrets_present": {n: True for n in SECRETS},
             "uid": os.getuid(), "argv": argv, "version": VERSION}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = b"OK" if self.path == "/ping" else json.dumps(state).encode() \
                if self.path == "/standin/state" else b"stand-in: not found"
            self.send_response(200 if self.path in ("/ping", "/standin/state") else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    host, port = config["https_address"].rsplit(":", 1)
    server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config["tls_cert_file"], config["tls_key_file"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

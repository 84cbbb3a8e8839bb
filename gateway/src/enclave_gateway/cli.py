"""Command line: ``enclave-gateway serve|verify|hash-key``."""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from . import __version__
from .audit import verify
from .auth import KEY_PREFIX, hash_key
from .config import load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="enclave-gateway", description="enclave.llm audit gateway")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", required=True, help="JSON configuration file")
    check = sub.add_parser("check-config", help="load the configuration and the keys file, then exit")
    check.add_argument("--config", required=True)
    ver = sub.add_parser("verify", help="verify the hash chain of audit files (oldest first; .gz accepted)")
    ver.add_argument("files", nargs="+")
    ver.add_argument("--expect-genesis", action="store_true",
                     help="the first file must start a chain (prev = 64 zeros)")
    sub.add_parser("hash-key", help="read an ek-… key on stdin and print its sha256 (what the keys file stores)")
    args = parser.parse_args(argv)

    if args.command == "verify":
        result = verify(args.files, expect_genesis=args.expect_genesis)
        for problem in result.problems:
            print(problem)
        print(f"{'OK' if result.ok else 'BROKEN'}: {result.records} records, {len(result.problems)} problems")
        return 0 if result.ok else 1
    if args.command == "hash-key":
        key = sys.stdin.readline().strip()
        if not key.startswith(KEY_PREFIX):
            print(f"a key starts with {KEY_PREFIX}", file=sys.stderr)
            return 2
        print(hash_key(key))
        return 0
    config = load(args.config)
    if args.command == "check-config":
        from .app import Gateway
        gateway = Gateway(config)
        print(f"OK: {len(gateway.keys)} keys, audit log {config.audit_path}"
              f" {'writable' if gateway.audit.ready() else 'NOT writable'}")
        return 0 if gateway.audit.ready() else 1
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .app import serve as run
    asyncio.run(run(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""STAND-IN for the `ollama` binary (the real one cannot be fetched on these
machines). Packed by the ollama scenario into a stand-in release archive
(bin/ollama plus lib/ollama/ollama_double.py), so the role's download,
checksum, unpack, unit and hardening run for real. `ollama serve` reads
OLLAMA_HOST and OLLAMA_MODELS as Ollama does and starts the Ollama-protocol
TEST DOUBLE (tests/doubles/ollama_double.py); nothing here is an engine.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

VERSION = "0.0.0-standin"


def main(argv: list[str]) -> int:
    if argv[:1] in (["--version"], ["-v"]):
        print(f"ollama version is {VERSION} (stand-in)")
        return 0
    if argv[:1] != ["serve"]:
        print("stand-in ollama: only 'serve' and '--version' are supported", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lib" / "ollama"))
    import ollama_double  # pylint: disable=import-outside-toplevel

    host, _sep, port = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434").rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    models = os.environ.get("OLLAMA_MODELS", os.path.expanduser("~/.ollama/models"))
    ollama_double.main(["--host", host, "--port", port or "11434", "--models-dir", models,
                        "--version-string", VERSION])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

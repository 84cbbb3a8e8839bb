# Copyright: enclave.llm contributors
# Apache License 2.0 (see LICENSE)
"""Options of the enclave.llm modules that talk HTTP(S) to a service."""
from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  url:
    description:
      - Base URL of the service, for example V(https://10.231.30.11:8000) or V(http://127.0.0.1:11434).
    type: str
    required: true
  ca_path:
    description:
      - PEM bundle of the certificate authorities to trust, for an internal CA or a corporate proxy.
      - When unset, the system trust store is used.
    type: path
  validate_certs:
    description:
      - Verify the server certificate. Only disable it against a test double on loopback.
    type: bool
    default: true
  token_file:
    description:
      - File on the target holding the bearer token or API key (first line, whitespace stripped).
      - Read on the target and never logged; the secret never appears on a command line.
    type: path
  timeout:
    description:
      - Seconds a single HTTP request may take.
    type: float
    default: 30
"""

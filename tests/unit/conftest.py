"""Make `ansible_collections.enclave.llm` (a symlink to the repository root)
importable beside the collections the `ansible` package bundles: both
`ansible_collections` directories are parts of one namespace package."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "lab"))
# The test doubles (tests/doubles), importable by their module names.
sys.path.insert(0, str(ROOT / "tests" / "doubles"))

"""The lab tests reuse the Molecule verifiers' helpers (molecule/shared/labtest.py)
against inventories/lab; `make lab-test` sets the environment they read."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "molecule" / "shared"))

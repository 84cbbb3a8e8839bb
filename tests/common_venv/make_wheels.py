"""Write two tiny pure-Python wheels (probe_a 1.0 needs probe_b) into a directory.

The common `venv` test installs them from this wheelhouse with no index at all;
building them by hand keeps the test offline and free of build backends.
"""
from __future__ import annotations

import base64
import hashlib
import sys
import zipfile
from pathlib import Path


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def write_wheel(outdir: Path, name: str, version: str, requires: list[str]) -> Path:
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f'VERSION = "{version}"\n'.encode(),
        f"{dist}/METADATA": (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                             + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: enclave-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [_record_line(n, d) for n, d in files.items()] + [f"{dist}/RECORD,,"]
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = outdir / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for n, d in files.items():
            wheel.writestr(n, d)
    return path


def main(argv: list[str]) -> int:
    outdir = Path(argv[1])
    outdir.mkdir(parents=True, exist_ok=True)
    write_wheel(outdir, "probe_b", "1.0", [])
    write_wheel(outdir, "probe_a", "1.0", ["probe_b==1.0"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

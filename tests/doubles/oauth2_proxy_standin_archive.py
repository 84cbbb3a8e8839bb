"""Pack the oauth2-proxy STAND-IN (oauth2_proxy_standin.py) as release archives.

The real oauth2-proxy release cannot be fetched on these machines, so the
oauth2_proxy Molecule scenario and the podman lab install this stand-in through
the role's real download, checksum and unpack path. Each archive is laid out as
upstream's (oauth2-proxy-v<version>.linux-amd64/oauth2-proxy) and carries a
README saying it is a stand-in. Writes <out>/sha256 with the first version's
archive digest.

    python3 oauth2_proxy_standin_archive.py OUT_DIR VERSION [VERSION ...]
"""
from __future__ import annotations

import gzip
import hashlib
import io
import sys
import tarfile
from pathlib import Path

STANDIN = Path(__file__).with_name("oauth2_proxy_standin.py")


def pack(out: Path, version: str) -> Path:
    top = f"oauth2-proxy-v{version}.linux-amd64"
    body = (f"#!/usr/bin/python3\nimport os\nos.environ.setdefault('STANDIN_VERSION', '{version}')\n".encode()
            + STANDIN.read_bytes())
    archive = out / f"{top}.tar.gz"
    buf = io.BytesIO()
    # Fixed mtimes and gzip header: the same inputs give the same bytes, so the
    # checksum in the inventory stays valid from run to run.
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in ((f"{top}/oauth2-proxy", body, 0o755),
                                 (f"{top}/README.md", b"STAND-IN archive for tests, not oauth2-proxy\n", 0o644)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    archive.write_bytes(gzip.compress(buf.getvalue(), mtime=0))
    return archive


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    archives = [pack(out, version) for version in argv[1:]]
    (out / "sha256").write_text(hashlib.sha256(archives[0].read_bytes()).hexdigest())
    for archive in archives:
        print(archive)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

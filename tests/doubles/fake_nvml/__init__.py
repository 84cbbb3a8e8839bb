"""TEST DOUBLE: builds the fake NVML (fake_nvml.c) into a libnvidia-ml.so.1.

No GPU and no NVIDIA driver exist where the tests run; this shared library
stands in for the driver's NVML so that pynvml, unchanged, calls real C entry
points. See fake_nvml.c for the scenarios (FAKE_NVML_SCENARIO)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("fake_nvml.c")
SONAME = "libnvidia-ml.so.1"
SCENARIOS = ("healthy", "ecc", "hot", "mig", "unsupported", "lost", "no_driver")


def build(out_dir: Path) -> Path:
    """Compile the double into out_dir/libnvidia-ml.so.1 and return its path."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("the fake NVML double needs a C compiler (gcc): apt-get install gcc")
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / SONAME
    subprocess.run(
        [cc, "-shared", "-fPIC", "-O1", "-Wall", "-Wextra", "-Werror", f"-Wl,-soname,{SONAME}", "-o", str(lib), str(SOURCE)],
        check=True,
        timeout=60,
    )
    return lib

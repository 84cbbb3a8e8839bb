"""Stand-in for pypa's get-pip.py, which ansible-test downloads from a host
these machines cannot reach. ansible-test runs it (as get-pip.py) inside each
fresh sanity virtualenv with the pip version and options it wants; this does
the same from the interpreter's bundled ensurepip wheel, then the package index
pip is configured for (pip.conf, with its CA bundle)."""
import subprocess
import sys

# In a child process: ensurepip points PIP_CONFIG_FILE at /dev/null in its own
# environment, which would hide the host's pip.conf from the install below.
subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade"], stdout=subprocess.DEVNULL)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
packages = [a for a in args if not a.startswith("-")]
options = [a for a in args if a.startswith("-")]
if packages:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", *options, *packages])

#!/usr/bin/env bash
# ansible-test sanity needs the collection under .../ansible_collections/enclave/llm
# as a real path (it resolves symlinks), so it runs on a copy of the files git
# would ship: tracked plus untracked-but-not-ignored.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${SANITY_WORKDIR:-$root/tests/output/sanity-tree}"
dest="$work/ansible_collections/enclave/llm"
rm -rf "$work"
mkdir -p "$dest"
cd "$root"
git ls-files -z --cached --others --exclude-standard \
  | grep -zv '^ansible_collections/' \
  | xargs -0 -I{} cp --parents -P {} "$dest/"
cd "$dest"
git init -q . && git add -A >/dev/null
# ansible-test pins its own test tools (pylint, voluptuous...). They go into a
# virtualenv of their own, beside .venv, so they never change the pinned tools;
# its --venv mode is not used because it fetches pip from a host outside PyPI.
sanity_venv="$root/.venv-sanity"
if [ ! -x "$sanity_venv/bin/ansible-test" ] || [ "$root/requirements.txt" -nt "$sanity_venv/.installed" ]; then
  python3 -m venv "$sanity_venv"
  "$sanity_venv/bin/pip" install -q "$(grep '^ansible-core==' "$root/requirements.txt")"
  touch "$sanity_venv/.installed"
fi
# ansible-test bootstraps pip in its per-test virtualenvs with a get-pip.py it
# downloads from a host outside PyPI; give it the equivalent built on ensurepip.
pip_version="$("$sanity_venv/bin/python" -c 'from ansible_test._internal.python_requirements import PIP_VERSION as v; print(v)' 2>/dev/null || echo 24.2)"
mkdir -p ~/.ansible/test/cache
install -m 0644 "$root/tools/ansible-test/get_pip.py" ~/.ansible/test/cache/"get_pip_${pip_version//./_}.py"
pyver="$("$sanity_venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
"$sanity_venv/bin/ansible-test" sanity --local --requirements --python "$pyver" --color no "$@"

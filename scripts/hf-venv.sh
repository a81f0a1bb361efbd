#!/usr/bin/env bash
# Creates a venv for the transformers tests and benchmark of the smoe Python module and installs smoe into it:
#
#   scripts/hf-venv.sh VENV [--reuse SITE_PACKAGES]
#
# pip installs scripts/requirements-hf.txt (pinned; torch from the CPU-only index where it is reachable, else
# PyPI's CUDA build, ~6 GB), then `pip install .` builds smoe through scikit-build-core (pyproject.toml) against
# Debian's Eigen, xsimd and pybind11. --reuse adds an existing site-packages that already holds the pinned
# packages (a .pth file), so pip finds them satisfied and downloads only what is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv=${1:?usage: scripts/hf-venv.sh VENV [--reuse SITE_PACKAGES]}
python=${PYTHON:-python3}

"${python}" -m venv "${venv}"
if [[ "${2:-}" == "--reuse" ]]; then
  site=$("${venv}/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "${3:?--reuse needs a site-packages folder}" > "${site}/smoe-reuse.pth"
fi
"${venv}/bin/pip" install -q --upgrade pip
cpu_index=https://download.pytorch.org/whl/cpu
if "${venv}/bin/python" -c "import urllib.request as u; u.urlopen('${cpu_index}/', timeout=10)" 2>/dev/null; then
  "${venv}/bin/pip" install -q --index-url "${cpu_index}" --extra-index-url https://pypi.org/simple \
    "$(grep '^torch==' scripts/requirements-hf.txt)"
else
  echo "hf-venv: ${cpu_index} is unreachable; torch comes from PyPI"
fi
"${venv}/bin/pip" install -q -r scripts/requirements-hf.txt
"${venv}/bin/pip" install -q .
"${venv}/bin/python" -c 'import smoe, torch, transformers; print("hf-venv:", smoe.__file__, torch.__version__, transformers.__version__)'

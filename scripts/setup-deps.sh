#!/usr/bin/env bash
# Installs what building smoe and its tests needs on Debian 12 (bookworm), from Debian's own packages.
# Does nothing when every package is already installed, unless --update is given (CI), which always
# runs `apt-get update` and `apt-get install`. Needs root (or sudo) only when it installs.
set -euo pipefail

packages=(cmake ninja-build g++ clang libclang-rt-14-dev libeigen3-dev libxsimd-dev catch2 libbenchmark-dev nlohmann-json3-dev libopenmpi-dev openmpi-bin
          python3-dev pybind11-dev python3-numpy)

missing=()
for p in "${packages[@]}"; do
  [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" == "install ok installed" ]] || missing+=("$p")
done
if [[ "${1:-}" != "--update" && ${#missing[@]} -eq 0 ]]; then
  echo "setup-deps: all ${#packages[@]} packages present"
  exit 0
fi
echo "setup-deps: installing ${packages[*]} (missing: ${missing[*]:-none})"

sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "setup-deps: run as root (or install sudo)" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update
"${sudo[@]}" apt-get install -y --no-install-recommends "${packages[@]}"

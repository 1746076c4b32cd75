#!/usr/bin/env bash
# Installs lmtune's build dependencies (Debian packages) and its virtual environment (LibTorch via
# the torch wheel, plus the test-only Python peers). Idempotent: quiet and quick when all is present.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${LMTUNE_VENV:-$HOME/.cache/lmtune/venv}

debian_packages=(
  build-essential cmake ninja-build pkg-config git
  libpcre2-dev libicu-dev libsentencepiece-dev nlohmann-json3-dev libyaml-cpp-dev libcli11-dev libgloo-dev
  libspdlog-dev libfmt-dev libgtest-dev python3-venv
  strace  # tests: tests/e2e/test_checkpoint.py checks that checkpoints are synced with it
)

missing=()
for pkg in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "install-deps: installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [[ ! -x "$venv/bin/python" ]]; then
  echo "install-deps: creating the virtual environment at $venv"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
fi

# Reinstall only when the requirements changed since the last successful install.
stamp="$venv/.lmtune-requirements"
if ! cmp -s "$root/scripts/requirements.txt" "$stamp"; then
  echo "install-deps: installing Python packages into $venv (torch is large: this takes minutes once)"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$root/scripts/requirements.txt"
  cp "$root/scripts/requirements.txt" "$stamp"
fi

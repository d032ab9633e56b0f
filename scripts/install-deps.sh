#!/usr/bin/env bash
# Install the Debian packages named on the command line when any is missing (one apt-get update).
# Usage: scripts/install-deps.sh PACKAGE[:COMMAND] ...   (COMMAND defaults to PACKAGE)
set -euo pipefail
missing=()
for spec in "$@"; do
  pkg=${spec%%:*}; cmd=${spec#*:}
  if [[ "$cmd" == python3-venv ]]; then
    python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=("$pkg")
  elif ! command -v "$cmd" >/dev/null 2>&1; then
    missing+=("$pkg")
  fi
done
((${#missing[@]})) || exit 0
echo "installing Debian packages: ${missing[*]}"
sudo=""; [[ $(id -u) == 0 ]] || sudo="sudo"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"

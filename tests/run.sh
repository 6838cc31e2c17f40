#!/usr/bin/env bash
# Installs everything the tests need (Debian packages and Python extras) and runs lint, type checks and tests.
# This is the README's test command; .ci/run runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# One torch thread per process and no OpenMP spin-waiting: on 2 shared cores spinning makes torch 10-20x slower.
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONDONTWRITEBYTECODE=1

SYSTEM_PACKAGES=(dcmtk libgdcm-tools postgresql dicom3tools openssl chromium orthanc orthanc-python)
if [ "${MEDVERIFY_SKIP_APT:-0}" != "1" ]; then
  missing=()
  for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "== installing system packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

echo "== installing medverify with the test extras"
python3 -m pip install --no-compile -q -e ".[dev]"

echo "== ruff"
ruff check provenance detectors verifier tests benchmarks
echo "== mypy"
mypy provenance detectors verifier
echo "== docs (mkdocs build --strict)"
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
echo "== pytest"
python3 -m pytest -q -p no:cacheprovider "$@"

#!/usr/bin/env bash
# Set up everything TheraTwin needs on a fresh Debian machine, idempotently:
#   - Debian packages: Orthanc + DICOMweb plugin (PACS), dicom3tools/dcmtk/pixelmed (DICOM validators),
#     plastimatch (independent RT Dose reader), chromium + poppler (report checks), iproute2 (network namespaces)
#   - .venv with theratwin installed editable plus the test and cohort (Dask, pyarrow) extras
#   - Testing/fhir_server node_modules (Medplum FHIR engine)
#   - .venv-slicer with slicer-core for the TheraTwinLib tests
#   - .venv-web with theratwin[web] (trame-slicer, which pins slicer-core 5.11 and vtk 9.6) and Playwright, for
#     `theratwin web` and its tests in Debian's chromium; VTK renders offscreen through EGL (Mesa)
# Usage: scripts/bootstrap.sh [core|all]   ("core": only the Python package, for the demo)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
what=${1:-all}
PY=${PYTHON:-python3}

log() { printf '[bootstrap] %s\n' "$*" >&2; }

apt_packages=(orthanc orthanc-dicomweb dicom3tools dcmtk pixelmed-apps libpixelmed-java plastimatch
              chromium poppler-utils iproute2 nodejs npm libegl1 libegl-mesa0 libgl1-mesa-dri)

if [ "$what" = all ]; then
  missing=()
  for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  # node and npm may come from elsewhere (e.g. the image's own Node): do not ask apt for them then
  if command -v node >/dev/null && command -v npm >/dev/null; then
    missing=($(printf '%s\n' "${missing[@]}" | grep -vxE 'nodejs|npm' || true))
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts the packaged Orthanc as a service; the tests start their own instances
    $SUDO service orthanc stop >/dev/null 2>&1 || true
  fi
fi

if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  $PY -m venv .venv
fi
stamp=.venv/.theratwin-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log "installing theratwin into .venv"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1
  .venv/bin/python -m pip install -q -e ".[test,cohort]" 2> >(grep -v "WARNING: Location" >&2)
  touch "$stamp"
fi

if [ "$what" = all ]; then
  if [ -f Testing/fhir_server/package.json ]; then
    if [ ! -d Testing/fhir_server/node_modules ] || [ Testing/fhir_server/package.json -nt Testing/fhir_server/node_modules ]; then
      log "installing the FHIR test server (npm)"
      (cd Testing/fhir_server && { [ -f package-lock.json ] && npm ci --no-audit --no-fund -q || npm install --no-audit --no-fund -q; } >/dev/null)
      touch Testing/fhir_server/node_modules
    fi
  fi
  # side environments: VENV REQUIREMENTS EXTRAS WHAT -- (re)made when the requirements or pyproject change
  side_venv() {
    local venv=$1 requirements=$2 extras=$3 what=$4 stamp=$1/.installed
    [ -f "$requirements" ] || return 0
    if [ ! -f "$stamp" ] || [ "$requirements" -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
      log "creating $venv with $what"
      [ -x "$venv/bin/python" ] || $PY -m venv "$venv"
      "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
      "$venv/bin/python" -m pip install -q -r "$requirements"
      "$venv/bin/python" -m pip install -q -e ".[$extras]" 2> >(grep -v "WARNING: Location" >&2)
      touch "$stamp"
    fi
  }
  side_venv .venv-slicer Testing/slicer/requirements.txt test "slicer-core"
  # trame-slicer pins slicer-core 5.11 and vtk 9.6: its own environment; Debian's chromium is the tests' browser
  side_venv .venv-web Testing/web/requirements.txt web,test "theratwin[web] (trame-slicer) and Playwright"
fi
log "ready"

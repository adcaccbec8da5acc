#!/usr/bin/env bash
# Run every test suite; exits non-zero if any fails. Called by `make test` and CI.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
status=0
echo "== ruff"
.venv/bin/ruff check Logic Testing Modules Web || status=1
echo "== mypy (core and TheraTwinLib)"
.venv/bin/mypy || status=1
echo "== documentation examples (the >>> examples of the core's docstrings and of docs/*.md)"
.venv/bin/python -m pytest --doctest-modules Logic/theratwin --doctest-glob='*.md' docs -q -p no:cacheprovider || status=1
echo "== core and integration tests (pytest)"
# one pytest worker per core (pytest-xdist); each test file stays on one worker, so a file's servers start once
workers=${THERATWIN_TEST_WORKERS:-auto}
.venv/bin/python -m pytest Testing/python -q -p no:cacheprovider -n "$workers" --dist loadfile "$@" || status=1
if [ -d Testing/slicer ] && [ -x .venv-slicer/bin/python ]; then
  echo "== TheraTwinLib tests on slicer-core"
  .venv-slicer/bin/python -m pytest Testing/slicer -q -p no:cacheprovider || status=1
fi
if [ -n "${CI:-}" ]; then
  # in CI every environment is made by scripts/bootstrap.sh: a missing one is a broken install, never a pass
  for v in .venv-slicer .venv-web; do
    [ -x "$v/bin/python" ] || { echo "CI: $v is missing (scripts/bootstrap.sh all makes it)"; status=1; }
  done
fi
if [ -x .venv-web/bin/python ]; then
  # the web environment has trame-slicer's slicer-core 5.11: the adapter must work there too
  echo "== TheraTwinLib tests on slicer-core $(.venv-web/bin/python -c 'import importlib.metadata as m; print(m.version("slicer-core"))') (web environment)"
  .venv-web/bin/python -m pytest Testing/slicer -q -p no:cacheprovider || status=1
  echo "== theratwin web in headless Debian chromium (Playwright), with a real Orthanc"
  .venv-web/bin/python -m pytest Testing/web -q -p no:cacheprovider || status=1
fi
if [ -d Testing/benchmarks ] && ls Testing/benchmarks/test_*.py >/dev/null 2>&1; then
  echo "== benchmarks"
  .venv/bin/python -m pytest Testing/benchmarks -q -s -p no:cacheprovider || status=1
fi
exit $status

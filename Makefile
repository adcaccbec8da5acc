# Two commands that work on a fresh machine (see README.md):
#   make demo   - set everything up and run the built-in demo patient end to end (outputs in demo-out/)
#   make test   - set everything up and run all tests (unit, integration with real servers, Slicer adapter)
.PHONY: demo test bench lint setup

OUT ?= demo-out

setup:
	scripts/bootstrap.sh all

demo:
	scripts/bootstrap.sh core
	.venv/bin/theratwin demo --out $(OUT)

test:
	scripts/bootstrap.sh all
	scripts/run-tests.sh

bench:
	scripts/bootstrap.sh core
	.venv/bin/python -m pytest Testing/benchmarks -s -q

lint:
	.venv/bin/ruff check Logic Testing Modules Web

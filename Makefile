# Two commands on a fresh machine: `make demo` and `make test`.
# The heavy environment lives outside the checkout (~/.cache/sleap-rtc/env-<hash>).
SHELL := /bin/bash
ENV_PY = $(shell scripts/ensure-env.sh)
export QT_QPA_PLATFORM ?= offscreen
export SLEAP_SKIP_QT_FIX = 1
HEADLESS ?=
PYTEST_ARGS ?=

.PHONY: env demo test test-faults bench screenshots clean

env:
	@scripts/ensure-env.sh >/dev/null

demo:
	@py=$$(scripts/ensure-env.sh) && $$py -m sleap_rtc demo $(if $(HEADLESS),--headless,)

test:
	@py=$$(scripts/ensure-env.sh) && $$py -m pytest -q -m "not faults" $(PYTEST_ARGS)

test-faults:
	@py=$$(scripts/ensure-env.sh) && $$py -m pytest -q -m faults $(PYTEST_ARGS)

bench:
	@py=$$(scripts/ensure-env.sh) && $$py benchmarks/run_all.py

screenshots:
	@py=$$(scripts/ensure-env.sh) && $$py scripts/screenshots.py

clean:
	rm -rf .pytest_cache build dist *.egg-info

# Two commands on a fresh machine: `make demo` and `make test`.
# The heavy environment lives outside the checkout (~/.cache/sleap-rtc/env-<hash>).
SHELL := /bin/bash
export SLEAP_SKIP_QT_FIX = 1
# The cached environment is shared by every checkout on this machine: this checkout's code
# comes first on the path, for the tests and for every process they start.
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
HEADLESS ?=
PYTEST_ARGS ?=

.PHONY: env demo test test-faults test-native test-lab bench screenshots clean

env:
	@scripts/ensure-env.sh >/dev/null

demo:
	@py=$$(scripts/ensure-env.sh) && $$py -m sleap_rtc demo $(if $(HEADLESS),--headless,)

# Tests and screenshots draw offscreen; `make demo` opens a real window where there is a screen.
test test-faults test-native test-lab bench screenshots: export QT_QPA_PLATFORM ?= offscreen

test:
	@py=$$(scripts/ensure-env.sh) && $$py -m pytest -q -m "not faults and not native and not netlab" $(PYTEST_ARGS)

test-faults:
	@py=$$(scripts/ensure-env.sh) && $$py -m pytest -q -m faults $(PYTEST_ARGS)

# aiortc (this env) <-> libdatachannel (a Python 3.12 side env, scripts/ensure-fast-env.sh);
# skips with the reason where no Python 3.12 is available.
test-native:
	@py=$$(scripts/ensure-env.sh) && $$py -m pytest -q -m native tests/native $(PYTEST_ARGS)

# The network lab (tests/netlab): namespaces, NAT routers, coturn; root only (skips otherwise).
test-lab:
	@py=$$(scripts/ensure-env.sh) && $$py -m pytest -q -s -m netlab tests/netlab $(PYTEST_ARGS)

bench:
	@py=$$(scripts/ensure-env.sh) && $$py benchmarks/run_all.py

screenshots:
	@py=$$(scripts/ensure-env.sh) && $$py scripts/screenshots.py

clean:
	rm -rf .pytest_cache build dist *.egg-info

# Two commands on a fresh machine: `make demo` and `make test`.
# The heavy environment lives outside the checkout (~/.cache/sleap-rtc/env-<hash>).
SHELL := /bin/bash
export SLEAP_SKIP_QT_FIX = 1
# The cached environment is shared by every checkout on this machine: this checkout's code
# comes first on the path, for the tests and for every process they start.
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
HEADLESS ?=
PYTEST_ARGS ?=

.PHONY: env demo test test-infer test-faults test-redis test-native test-lab test-window bench screenshots clean

env:
	@scripts/ensure-env.sh >/dev/null

# The environment's bin/ first on PATH: SLEAP's own local training/inference start
# `sleap-nn` and `sleap` by name.
demo:
	@py=$$(scripts/ensure-env.sh) && PATH="$$(dirname $$py):$$PATH" $$py -m sleap_rtc demo $(if $(HEADLESS),--headless,)

# Tests draw offscreen (the window tests and screenshots use their own X display); `make demo`
# opens a real window where there is a screen.
test test-infer test-faults test-redis test-native test-lab bench: export QT_QPA_PLATFORM ?= offscreen

# The real-training GUI test gets a process of its own: aiortc objects of the in-process
# stand-in workers of earlier GUI tests outlive their test's event loop.
EXCLUDED := faults or redis or native or netlab or realwindow or infer
# (Exit 5, "no test collected", is fine for either half when PYTEST_ARGS picks tests.)
test:
	@py=$$(scripts/ensure-env.sh) && { $$py -m pytest -q -m "not ($(EXCLUDED) or own_process)" $(PYTEST_ARGS) || [ $$? -eq 5 ]; }
	@py=$$(scripts/ensure-env.sh) && { $$py -m pytest -q -m "own_process and not ($(EXCLUDED))" $(PYTEST_ARGS) || [ $$? -eq 5 ]; }

# Real inference on mp4 videos through the CLI, a real worker and sleap-nn (several minutes).
test-infer:
	@py=$$(scripts/ensure-env.sh) && PATH="$$(dirname $$py):$$PATH" $$py -m pytest -q -m infer $(PYTEST_ARGS)

test-faults:
	@py=$$(scripts/ensure-env.sh) && $$py -m pytest -q -m faults $(PYTEST_ARGS)

# Three server instances on a real Redis (installs redis-server with apt when root).
test-redis:
	@py=$$(scripts/ensure-env.sh) && $$py -m pytest -q -m redis $(or $(PYTEST_ARGS),tests/server)

# aiortc (this env) <-> libdatachannel (a Python 3.12 side env, scripts/ensure-fast-env.sh);
# skips with the reason where no Python 3.12 is available.
test-native:
	@py=$$(scripts/ensure-env.sh) && $$py -m pytest -q -m native tests/native $(PYTEST_ARGS)

# The network lab (tests/netlab): namespaces, NAT routers, coturn; root only (skips otherwise).
test-lab:
	@py=$$(scripts/ensure-env.sh) && $$py -m pytest -q -s -m netlab tests/netlab $(PYTEST_ARGS)

# The real SLEAP window on a private Xvfb display with openbox, driven by xdotool (its own
# process: Qt's platform is chosen once per process). Installs xvfb/openbox/xdotool as root.
test-window:
	@py=$$(scripts/ensure-env.sh) && PATH="$$(dirname $$py):$$PATH" QT_QPA_PLATFORM=xcb $$py -m pytest -q -m realwindow tests/window $(PYTEST_ARGS)

bench:
	@py=$$(scripts/ensure-env.sh) && $$py benchmarks/run_all.py

# Screenshots come from the real window too (Xvfb + openbox), not the offscreen platform.
screenshots:
	@py=$$(scripts/ensure-env.sh) && QT_QPA_PLATFORM=xcb $$py scripts/screenshots.py

clean:
	rm -rf .pytest_cache build dist *.egg-info

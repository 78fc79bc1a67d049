# imagekit: build, smoke-test and publish ML training images.
VENV     := .venv
PY       := $(VENV)/bin/python
IMAGEKIT := $(VENV)/bin/imagekit
PYTEST   := $(VENV)/bin/pytest
DEMO     ?= ocr-cpu

.PHONY: install engine base demo test unit lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

engine:
	@bash scripts/engine.sh

# The offline preparation this machine needs: a local base image made from
# Debian's mirror (no registry); builds fill the wheelhouse with the host's pip.
base: install engine
	$(IMAGEKIT) base bootstrap

demo: base
	$(IMAGEKIT) build $(DEMO)
	$(IMAGEKIT) smoke $(DEMO)

test: install engine
	$(PYTEST) tests

unit: install
	$(PYTEST) tests/unit

lint: install
	$(VENV)/bin/ruff check imagekit tests
	$(IMAGEKIT) lint --all

# imagekit against the plain docker CLI, measured side by side -> BENCHMARKS.md
# (slow: about 45 min; BENCH_ARGS=--quick checks the harness in a few minutes).
bench: base
	@command -v zip >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends zip >/dev/null; }
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .imagekit

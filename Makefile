# imagekit: build, smoke-test and publish ML training images.
VENV     := .venv
PY       := $(VENV)/bin/python
IMAGEKIT := $(VENV)/bin/imagekit
PYTEST   := $(VENV)/bin/pytest
DEMO     ?= ocr-cpu

CONSTRAINTS := constraints.txt

.PHONY: install constraints test-latest engine base demo test unit lint bench clean

install: $(VENV)/.installed

# Exact versions from constraints.txt: a new release of a dependency cannot
# change what `make install` gives (pyproject.toml keeps open ranges for users).
# imagekit's own modules are byte-compiled here, as pip does for an installed
# package: where PYTHONDONTWRITEBYTECODE is set, every command would otherwise
# compile them again (about 40 ms of each start).
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade -c $(CONSTRAINTS) pip
	$(VENV)/bin/pip install -q -c $(CONSTRAINTS) -e '.[test]'
	$(VENV)/bin/python -m compileall -q imagekit
	touch $@

# Regenerate constraints.txt on purpose from the newest releases, in a scratch
# venv (then `make install test` with it before committing the change).
constraints:
	rm -rf .venv.constraints
	python3 -m venv .venv.constraints
	.venv.constraints/bin/pip install -q --upgrade pip
	.venv.constraints/bin/pip install -q -e '.[test]'
	{ grep '^#' $(CONSTRAINTS); .venv.constraints/bin/pip freeze --all --exclude-editable \
	  | grep -viE '^(setuptools|wheel)=='; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf .venv.constraints
	@git diff --stat -- $(CONSTRAINTS) 2>/dev/null || true

# The unit tests against the newest releases, unconstrained, in .venv.latest:
# what tomorrow's `make constraints` would bring.
test-latest:
	rm -rf .venv.latest
	python3 -m venv .venv.latest
	.venv.latest/bin/pip install -q --upgrade pip
	.venv.latest/bin/pip install -q -e '.[test]'
	.venv.latest/bin/pytest tests/unit -q -p no:cacheprovider

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
	rm -rf $(VENV) .venv.latest .venv.constraints .imagekit
